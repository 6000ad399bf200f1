//! Path normalisation and the compact path -> package table.
//!
//! Package databases and the kernel name the same file differently: dpkg
//! on a merged-/usr Debian lists `/bin/dash` while an exec of it reports
//! `/usr/bin/dash`; lists contain `/.`; md5sums and apk paths are relative.
//! Every path, when indexed and when looked up, is brought to one
//! canonical form: absolute, no empty or `.` components, `..` applied
//! lexically (clamped at `/`), no trailing slash, and a first component that
//! the rootfs makes a symlink into `/usr` (`bin -> usr/bin`, `lib64 ->
//! usr/lib64`, Arch's `sbin -> usr/bin`) replaced by its target. Which top
//! level names are links is read from the rootfs itself ([`UsrAliases`]).
use std::hash::BuildHasher;

/// Longest path looked up or indexed (Linux PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// Top-level names that merged-/usr distributions make symlinks.
const ALIASABLE: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Top-level symlinks into /usr of one rootfs: (`bin`, `/usr/bin`)...
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsrAliases(Vec<(&'static str, Box<str>)>);

impl UsrAliases {
    /// From a reader of top-level symlink targets (None: not a symlink).
    pub fn detect(mut read_link: impl FnMut(&str) -> Option<String>) -> Self {
        let mut out = Vec::new();
        for &name in ALIASABLE {
            let Some(target) = read_link(name) else {
                continue;
            };
            let mut buf = [0u8; PATH_MAX];
            // A relative target is relative to `/`; normalise it, and keep
            // it only when it lands under /usr (not `bin -> /`, not loops).
            let rel = format!("/{target}");
            let Some(t) = normalise(&rel, &UsrAliases::default(), &mut buf) else {
                continue;
            };
            if t.starts_with("/usr/") {
                out.push((name, t.into()));
            }
        }
        UsrAliases(out)
    }

    /// The /usr target of a top-level name, if it is an alias.
    fn target(&self, first: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == first).map(|(_, t)| &**t)
    }
}

/// The canonical form of `path` written into `buf` (no allocation), or
/// None when it is not absolute or longer than [`PATH_MAX`].
pub fn normalise<'b>(
    path: &str,
    aliases: &UsrAliases,
    buf: &'b mut [u8; PATH_MAX],
) -> Option<&'b str> {
    if !path.starts_with('/') {
        return None;
    }
    let mut len = 0usize;
    let mut first = true;
    for comp in path.split('/') {
        match comp {
            "" | "." => continue,
            ".." => {
                // Back to the previous '/', clamped at the root.
                while len > 0 && buf[len - 1] != b'/' {
                    len -= 1;
                }
                len = len.saturating_sub(1);
                first = len == 0;
                continue;
            }
            _ => {}
        }
        let replaced = if first { aliases.target(comp) } else { None };
        let piece: &str = replaced.unwrap_or(comp);
        let need = piece.len() + usize::from(replaced.is_none());
        if len + need > PATH_MAX {
            return None;
        }
        if replaced.is_none() {
            buf[len] = b'/';
            len += 1;
        }
        buf[len..len + piece.len()].copy_from_slice(piece.as_bytes());
        len += piece.len();
        first = false;
    }
    if len == 0 {
        buf[0] = b'/';
        len = 1;
    }
    // Only whole UTF-8 components (and ASCII '/') were copied.
    std::str::from_utf8(&buf[..len]).ok()
}

/// Strings tagged with a number -> values: the strings in one arena, an
/// open-addressing table of entry indexes. Hashing is SipHash with a
/// per-table random key, so a hostile image cannot choose colliding paths;
/// lookups compare in the arena and allocate nothing.
#[derive(Debug)]
struct StrTable {
    arena: String,
    /// End offset of each string in the arena (start = previous end).
    ends: Vec<u32>,
    tags: Vec<u32>,
    values: Vec<u32>,
    /// 0 = empty, otherwise entry index + 1; length a power of two.
    slots: Vec<u32>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for StrTable {
    fn default() -> Self {
        StrTable {
            arena: String::new(),
            ends: Vec::new(),
            tags: Vec::new(),
            values: Vec::new(),
            slots: vec![0; 16],
            hasher: Default::default(),
        }
    }
}

/// Why a path was not added.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertError {
    /// Already owned (by this or another package): the first owner stays.
    Present,
    /// An arena would pass 4 GiB (u32 offsets).
    Full,
}

impl StrTable {
    fn key(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    /// The slot holding (`tag`, `s`), or the empty slot where it would go.
    fn probe(&self, tag: u32, s: &str) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = (self.hasher.hash_one((tag, s)) as usize) & mask;
        loop {
            match self.slots[i] {
                0 => return i,
                v if self.tags[v as usize - 1] == tag && self.key(v as usize - 1) == s => return i,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn get(&self, tag: u32, s: &str) -> Option<u32> {
        match self.slots[self.probe(tag, s)] {
            0 => None,
            v => Some(self.values[v as usize - 1]),
        }
    }

    /// Insert at `slot` (from [`StrTable::probe`], empty); the entry index.
    fn insert_at(
        &mut self,
        slot: usize,
        tag: u32,
        s: &str,
        value: u32,
    ) -> Result<u32, InsertError> {
        let end = u32::try_from(self.arena.len() + s.len()).map_err(|_| InsertError::Full)?;
        self.arena.push_str(s);
        self.ends.push(end);
        self.tags.push(tag);
        self.values.push(value);
        let index = self.ends.len() as u32 - 1;
        self.slots[slot] = index + 1;
        // Load factor at most 1/2: short probe sequences.
        if self.ends.len() * 2 > self.slots.len() {
            self.slots = vec![0; self.slots.len() * 2];
            for i in 0..self.ends.len() {
                let slot = self.probe(self.tags[i], self.key(i));
                self.slots[slot] = i as u32 + 1;
            }
        }
        Ok(index)
    }

    fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.tags.shrink_to_fit();
        self.values.shrink_to_fit();
    }

    fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + 4 * (self.ends.capacity()
                + self.tags.capacity()
                + self.values.capacity()
                + self.slots.capacity())
    }
}

/// Canonical paths -> package numbers, stored as (directory, file name):
/// each directory once (a Debian system has ~10x fewer directories than
/// files, and its paths average 64 bytes), each file name tagged with its
/// directory's number. About 20 bytes per path plus its file name; a
/// lookup is two hash probes.
#[derive(Debug, Default)]
pub struct PathTable {
    /// Directory -> its own number (tag 0).
    dirs: StrTable,
    /// (directory number, file name) -> owner.
    files: StrTable,
}

/// `/usr/bin/curl` -> (`/usr/bin`, `curl`); `/x` -> (`/`, `x`).
fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

impl PathTable {
    pub fn len(&self) -> usize {
        self.files.ends.len()
    }

    pub fn get(&self, path: &str) -> Option<u32> {
        let (dir, name) = split(path);
        let d = self.dirs.get(0, dir)?;
        self.files.get(d, name)
    }

    pub fn insert(&mut self, path: &str, owner: u32) -> Result<(), InsertError> {
        let (dir, name) = split(path);
        let slot = self.dirs.probe(0, dir);
        let d = match self.dirs.slots[slot] {
            0 => {
                let next = self.dirs.ends.len() as u32;
                self.dirs.insert_at(slot, 0, dir, next)?
            }
            v => v - 1,
        };
        let slot = self.files.probe(d, name);
        if self.files.slots[slot] != 0 {
            return Err(InsertError::Present);
        }
        self.files.insert_at(slot, d, name, owner).map(drop)
    }

    /// Drop spare capacity once built.
    pub fn shrink(&mut self) {
        self.dirs.shrink();
        self.files.shrink();
    }

    /// Heap bytes held (capacities).
    pub fn heap_bytes(&self) -> usize {
        self.dirs.heap_bytes() + self.files.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str, aliases: &UsrAliases) -> Option<String> {
        let mut buf = [0u8; PATH_MAX];
        normalise(path, aliases, &mut buf).map(str::to_string)
    }

    fn merged() -> UsrAliases {
        UsrAliases::detect(|name| match name {
            "bin" => Some("usr/bin".into()),
            "sbin" => Some("usr/sbin".into()),
            "lib" => Some("usr/lib".into()),
            "lib64" => Some("/usr/lib64".into()),
            _ => None,
        })
    }

    #[test]
    fn plain_paths_are_cleaned() {
        let none = UsrAliases::default();
        assert_eq!(
            norm("/usr/bin/curl", &none).as_deref(),
            Some("/usr/bin/curl")
        );
        assert_eq!(
            norm("/usr//bin/./curl/", &none).as_deref(),
            Some("/usr/bin/curl")
        );
        assert_eq!(norm("/.", &none).as_deref(), Some("/"));
        assert_eq!(
            norm("/usr/lib/../bin/x", &none).as_deref(),
            Some("/usr/bin/x")
        );
        assert_eq!(
            norm("/../../etc/passwd", &none).as_deref(),
            Some("/etc/passwd")
        );
        assert_eq!(
            norm("usr/bin/curl", &none),
            None,
            "relative paths are refused"
        );
        assert_eq!(norm(&format!("/{}", "a".repeat(PATH_MAX)), &none), None);
    }

    #[test]
    fn merged_usr_aliases_only_the_first_component() {
        let m = merged();
        assert_eq!(norm("/bin/dash", &m).as_deref(), Some("/usr/bin/dash"));
        assert_eq!(
            norm("/lib64/ld-linux-x86-64.so.2", &m).as_deref(),
            Some("/usr/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(norm("/usr/bin/dash", &m).as_deref(), Some("/usr/bin/dash"));
        assert_eq!(norm("/opt/bin/x", &m).as_deref(), Some("/opt/bin/x"));
        assert_eq!(norm("/bin", &m).as_deref(), Some("/usr/bin"));
        assert_eq!(norm("/usr/../bin/sh", &m).as_deref(), Some("/usr/bin/sh"));
    }

    #[test]
    fn aliases_come_only_from_links_into_usr() {
        let a = UsrAliases::detect(|name| match name {
            "bin" => Some("/".into()),
            "sbin" => Some("usr/bin".into()),
            "lib" => Some("../../usr/lib".into()),
            "lib64" => Some("/opt/lib64".into()),
            _ => None,
        });
        assert_eq!(
            a,
            UsrAliases(vec![
                ("sbin", "/usr/bin".into()),
                ("lib", "/usr/lib".into())
            ])
        );
        assert_eq!(UsrAliases::detect(|_| None), UsrAliases::default());
    }

    #[test]
    fn table_finds_inserted_paths_and_keeps_the_first_owner() {
        let mut t = PathTable::default();
        for i in 0..1000u32 {
            t.insert(&format!("/usr/lib/x/file{i}"), i).unwrap();
        }
        assert_eq!(t.insert("/usr/lib/x/file7", 99), Err(InsertError::Present));
        assert_eq!(t.len(), 1000);
        for i in 0..1000u32 {
            assert_eq!(t.get(&format!("/usr/lib/x/file{i}")), Some(i));
        }
        assert_eq!(t.get("/usr/lib/x/file1000"), None);
        assert_eq!(
            t.get("/usr/lib/x"),
            None,
            "a directory of files is not a file"
        );
        assert_eq!(t.get(""), None);
        // Files at the root, and the same name in two directories.
        t.insert("/init", 5000).unwrap();
        t.insert("/usr/lib/y/file7", 5001).unwrap();
        assert_eq!(t.get("/init"), Some(5000));
        assert_eq!(t.get("/usr/lib/y/file7"), Some(5001));
        assert_eq!(t.get("/usr/lib/x/file7"), Some(7));
        assert_eq!(t.len(), 1002);
    }
}
