//! Package ownership of files: which installed OS package owns an executed
//! path, read from a container's own package database.
//!
//! Entry points: [`PackageIndex::read`] on a root filesystem directory
//! (`/proc/PID/root` of a container process, or any directory), built
//! once per image; then [`PackageIndex::owner`] per exec, with the path the
//! kernel reports (resolved, as seen inside the container's mount
//! namespace). `None` means `unpackaged`: no package lists that path.
//! For a path reported as the program asked for it (sched_process_exec's
//! `filename`, e.g. `/usr/bin/awk`, an alternatives symlink no package
//! lists), [`PackageIndex::owner_resolving`] resolves its symlinks inside
//! the rootfs ([`RootFs::resolve`]) when the plain lookup misses.
//!
//! Databases read:
//! - dpkg: `var/lib/dpkg/status` (a package counts when its state leaves
//!   files on disk: `installed`, `unpacked`, `half-configured`,
//!   `triggers-*`; not `config-files` nor `not-installed`) and its files
//!   from `var/lib/dpkg/info/<name>:<arch>.list` or `<name>.list`;
//!   `var/lib/dpkg/diversions` (a file diverted by another package is
//!   owned at its new name); distroless's `var/lib/dpkg/status.d/<pkg>`
//!   stanzas with their files from `status.d/<pkg>.md5sums` (see `dpkg.rs`).
//! - apk: `lib/apk/db/installed` (see `apk.rs`).
//! - rpm (the sqlite/BerkeleyDB rpmdb) is NOT read yet: an RHEL, Fedora
//!   or Amazon Linux image gives an empty index and every path is
//!   unpackaged. Neither is apk v3's `installed.adb`.
//!
//! Paths are normalised the same way when indexed and when looked up
//! (see `paths.rs`): `/./`, `//`, trailing slashes, and merged-/usr, read
//! from the rootfs's own top-level symlinks (`bin -> usr/bin`): on such a
//! rootfs dpkg's `/bin/dash` owns `/usr/bin/dash` and an exec of `/bin/x`
//! finds a package listing `/usr/bin/x`. Other symlinks are followed only
//! by `owner_resolving`.
//! Directories a package lists are not indexed. A path listed by two
//! packages keeps its first owner. Paths that are not UTF-8 are skipped.
//!
//! The rootfs is untrusted (an image's author controls it): files are
//! opened with `openat2(RESOLVE_IN_ROOT)` so no symlink or `..` leads out
//! of it, database files must be regular files (a symlinked `status` or
//! `.list` is an error), and sizes are bounded: `status` and apk's
//! `installed` 64 MiB, each `.list`/`.md5sums` 16 MiB, 256 MiB read in
//! all (see `rootfs.rs`). Hostile content (binary bytes, huge lines, missing
//! fields, names such as `../../etc/shadow`) skips the stanza and is
//! counted in [`IndexStats`]; nothing in it can panic the parser.
//!
//! Memory: one [`Package`] per package; each owned path stored as its
//! directory (once per directory) and its file name, with about 20 bytes
//! of table per path. This Debian host (781 packages, 101,586 paths, 8 MB
//! of lists) indexes in ~70 ms into ~5 MiB of heap (peak RSS +9 MiB while
//! reading); a lookup normalises into a stack buffer, makes two hash
//! probes (~150 ns) and allocates nothing. See `index_of_this_host_bench`.
mod apk;
mod build;
mod dpkg;
#[cfg(test)]
mod fuzz;
mod paths;
mod purl;
mod rootfs;
#[cfg(test)]
mod tests;

pub use purl::Distro;
pub use rootfs::RootFs;
use serde::Serialize;
use std::path::PathBuf;

/// What a lookup answers: one installed package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Package {
    pub kind: PackageKind,
    pub name: Box<str>,
    pub version: Box<str>,
    /// The source package (dpkg `Source:`, apk origin), None when it is
    /// the binary package's own name.
    pub source: Option<Box<str>>,
    /// The source version when it differs from `version` (a binNMU such
    /// as bash 5.2.15-2+b8 from source 5.2.15-2): what Debian's security
    /// tracker and OSV match on.
    pub source_version: Option<Box<str>>,
    pub arch: Option<Box<str>>,
    /// `pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64&distro=debian-12`.
    pub purl: Box<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    Deb,
    Apk,
}

/// A package database found in the rootfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    Dpkg,
    Apk,
}

/// What was left out while indexing, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexStats {
    /// Stanzas or records unusable (missing or invalid name or version,
    /// no Status in the status file). Not-installed packages are not
    /// counted.
    pub skipped_stanzas: usize,
    /// Installed packages with no file list found.
    pub packages_without_files: usize,
    /// Paths listed again (by the same or another package).
    pub shared_paths: usize,
    /// Paths not UTF-8, not absolute or longer than PATH_MAX.
    pub unusable_paths: usize,
    /// Database bytes read.
    pub bytes_read: usize,
    /// The package databases found (none: an empty index).
    pub databases: Vec<Database>,
}

/// Errors reading a rootfs's package database. A rootfs without any
/// database is not an error (an empty index: every path unpackaged).
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    #[error("opening root filesystem {root}: {source} (is the process gone, or the path wrong?)")]
    OpenRoot {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "reading {file} in root filesystem {root}: {source}{}",
        kernel_hint(source)
    )]
    Read {
        root: PathBuf,
        file: String,
        source: std::io::Error,
    },
    #[error("{file} in root filesystem {root} is {what}, not a regular file: refused (package database files are read only as regular files, never through symlinks)")]
    NotRegular {
        root: PathBuf,
        file: String,
        what: &'static str,
    },
    #[error("{file} in root filesystem {root} is {size} bytes, over the {limit}-byte limit: refused as corrupt or hostile")]
    TooLarge {
        root: PathBuf,
        file: String,
        size: u64,
        limit: u64,
    },
    #[error("the package database of root filesystem {root} is over {limit} bytes in all: refused as corrupt or hostile")]
    TotalTooLarge { root: PathBuf, limit: usize },
    #[error(
        "{dir} in root filesystem {root} has over {limit} entries: refused as corrupt or hostile"
    )]
    TooManyEntries {
        root: PathBuf,
        dir: String,
        limit: usize,
    },
}

fn kernel_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSYS) {
        " (openat2 needs Linux 5.6 or later)"
    } else {
        ""
    }
}

/// Path -> owning package for one root filesystem.
#[derive(Debug)]
pub struct PackageIndex {
    packages: Vec<Package>,
    paths: paths::PathTable,
    aliases: paths::UsrAliases,
    distro: Option<Distro>,
    stats: IndexStats,
}

/// Where os-release lives (os-release(5): the first that exists).
const OS_RELEASE: &[&str] = &["etc/os-release", "usr/lib/os-release"];
const MAX_OS_RELEASE_BYTES: u64 = 64 << 10;

/// The rootfs's os-release, if readable: only the purls' vendor and
/// `distro` depend on it, so a broken one is logged, not fatal.
fn read_distro(fs: &rootfs::RootFs) -> Option<Distro> {
    for rel in OS_RELEASE {
        match fs.read_config_file(rel, MAX_OS_RELEASE_BYTES) {
            Ok(Some(text)) => return Distro::parse(&String::from_utf8_lossy(&text)),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "os-release unreadable: purls get the default vendor and no distro");
                return None;
            }
        }
    }
    None
}

impl PackageIndex {
    /// Read the package databases of the root filesystem at `root`.
    pub fn read(root: &std::path::Path) -> Result<PackageIndex, PackagesError> {
        Self::read_from(&RootFs::open(root)?)
    }

    /// The same from an opened root (kept to [`PackageIndex::owner_resolving`]
    /// exec paths later).
    pub fn read_from(fs: &RootFs) -> Result<PackageIndex, PackagesError> {
        let aliases = paths::UsrAliases::detect(|name| fs.top_level_link(name));
        let distro = read_distro(fs);
        let mut b = build::Builder::new(fs.path().to_path_buf(), aliases, distro);
        let mut databases = Vec::new();
        if dpkg::read(fs, &mut b)? {
            databases.push(Database::Dpkg);
        }
        if apk::read(fs, &mut b)? {
            databases.push(Database::Apk);
        }
        b.stats.databases = databases;
        Ok(b.finish())
    }

    /// The package owning `path` (absolute, as the kernel reports an
    /// exec), or None: unpackaged. No allocation.
    pub fn owner(&self, path: &str) -> Option<&Package> {
        let mut buf = [0u8; paths::PATH_MAX];
        let p = paths::normalise(path, &self.aliases, &mut buf)?;
        self.paths.get(p).map(|i| &self.packages[i as usize])
    }

    /// [`PackageIndex::owner`] of `path`, or else of `path` with its
    /// symlinks resolved inside `root` (the rootfs this index was read
    /// from): for exec paths reported as asked (`/usr/bin/awk`, an
    /// alternatives link) rather than resolved. A miss costs the walk:
    /// three syscalls per component and link followed (~29 us for
    /// `/usr/bin/awk` -> `/etc/alternatives/awk` -> `/usr/bin/mawk` here),
    /// so a caller on the exec path should remember answers per (image,
    /// path). None when the resolution fails (a vanished file).
    pub fn owner_resolving(&self, root: &RootFs, path: &str) -> Option<&Package> {
        self.owner(path)
            .or_else(|| self.owner(&root.resolve(path).ok()?))
    }

    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// Number of owned paths indexed.
    pub fn path_count(&self) -> usize {
        self.paths.len()
    }

    pub fn databases(&self) -> &[Database] {
        &self.stats.databases
    }

    /// The rootfs's distribution (os-release), if it says.
    pub fn distro(&self) -> Option<&Distro> {
        self.distro.as_ref()
    }

    pub fn stats(&self) -> &IndexStats {
        &self.stats
    }

    /// Approximate heap bytes held by the index.
    pub fn heap_bytes(&self) -> usize {
        let strings: usize = self
            .packages
            .iter()
            .map(|p| {
                p.name.len()
                    + p.version.len()
                    + p.purl.len()
                    + p.source.as_ref().map_or(0, |s| s.len())
                    + p.source_version.as_ref().map_or(0, |s| s.len())
                    + p.arch.as_ref().map_or(0, |s| s.len())
            })
            .sum();
        self.paths.heap_bytes()
            + strings
            + self.packages.capacity() * std::mem::size_of::<Package>()
    }
}
