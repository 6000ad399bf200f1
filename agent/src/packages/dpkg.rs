//! dpkg databases: `var/lib/dpkg/status` with `info/<pkg>[:<arch>].list`,
//! `var/lib/dpkg/diversions`, and distroless's `var/lib/dpkg/status.d/`.
//!
//! Distroless (GoogleContainerTools/distroless `private/pkg/dpkg_status.go`,
//! and rules_distroless `dpkg_statusd.sh`) writes one control stanza per
//! package as `status.d/<pkg>` (no `Status:` field: every one is installed)
//! and the package's `md5sums` as `status.d/<pkg>.md5sums`, whose lines are
//! `<md5>  <path relative to />` and name regular files only. There are no
//! `.list` files in the classic layout; newer rules_distroless images also
//! write `info/<pkg>.list`, which is preferred when present (syft reads
//! the same two places; trivy skips the md5sums).
use super::{build::Builder, rootfs::RootFs, Package, PackageKind, PackagesError};
use std::collections::HashMap;

/// Largest `status` (Debian's full archive installed is ~30 MiB).
pub const MAX_STATUS_BYTES: u64 = 64 << 20;
/// Largest `.list`/`.md5sums` file, and `status.d` stanza file.
pub const MAX_LIST_BYTES: u64 = 16 << 20;
const MAX_DIVERSIONS_BYTES: u64 = 4 << 20;

const STATUS: &str = "var/lib/dpkg/status";
const STATUS_D: &str = "var/lib/dpkg/status.d";
const INFO: &str = "var/lib/dpkg/info";
const DIVERSIONS: &str = "var/lib/dpkg/diversions";

/// The fields of one control stanza that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stanza<'a> {
    pub package: Option<&'a str>,
    pub status: Option<&'a str>,
    pub version: Option<&'a str>,
    pub architecture: Option<&'a str>,
    pub source: Option<&'a str>,
    /// A field line was not UTF-8 or had no colon.
    pub malformed: bool,
}

/// Split deb822 text into stanzas (blank-line separated); continuation
/// lines (leading space or tab) are skipped, the first of repeated fields
/// wins, field names are case-insensitive.
pub fn stanzas(data: &[u8]) -> Vec<Stanza<'_>> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    let mut any = false;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            if any {
                out.push(std::mem::take(&mut cur));
                any = false;
            }
            continue;
        }
        any = true;
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some((key, value)) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_once(':'))
        else {
            cur.malformed = true;
            continue;
        };
        let value = value.trim();
        let slot = match key {
            k if k.eq_ignore_ascii_case("Package") => &mut cur.package,
            k if k.eq_ignore_ascii_case("Status") => &mut cur.status,
            k if k.eq_ignore_ascii_case("Version") => &mut cur.version,
            k if k.eq_ignore_ascii_case("Architecture") => &mut cur.architecture,
            k if k.eq_ignore_ascii_case("Source") => &mut cur.source,
            _ => continue,
        };
        slot.get_or_insert(value);
    }
    if any {
        out.push(cur);
    }
    out
}

/// dpkg's package name rule (plus upper case, which old archives had):
/// an alphanumeric, then alphanumerics and `+.-`. Also what keeps a name
/// usable in a file name (`info/<name>.list`): no `/`, no `..`.
pub fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'))
}

fn valid_arch(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

fn valid_version(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic())
}

/// Whether a `Status: <want> <flag> <state>` leaves the package's files on
/// disk. The state decides: `installed`, and the states of a package whose
/// files are unpacked but not (fully) configured. `not-installed`,
/// `config-files` (removed, conffiles kept) and `half-installed` do not.
/// The want flag is ignored: `deinstall ok installed` is still installed.
pub fn files_on_disk(status: &str) -> bool {
    let mut words = status.split_ascii_whitespace();
    let (Some(_want), Some(_flag), Some(state), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return false;
    };
    matches!(
        state,
        "installed" | "unpacked" | "half-configured" | "triggers-awaited" | "triggers-pending"
    )
}

/// A stanza as a package, or None when it is not installed or unusable.
/// `need_status`: the main status file always has `Status:`; a missing
/// one there is a broken stanza. Distroless stanzas have none.
pub fn package_of(s: &Stanza<'_>, need_status: bool) -> Option<DebPackage> {
    match s.status {
        Some(st) if !files_on_disk(st) => return None,
        None if need_status => return None,
        _ => {}
    }
    let name = s.package.filter(|n| valid_name(n))?;
    let version = s.version.filter(|v| valid_version(v))?;
    let arch = s.architecture.filter(|a| valid_arch(a));
    let (source, source_version) = match s.source.map(parse_source) {
        Some((src, ver)) if valid_name(src) => (Some(src), ver.filter(|v| valid_version(v))),
        _ => (None, None),
    };
    Some(DebPackage {
        name: name.to_string(),
        version: version.to_string(),
        arch: arch.map(str::to_string),
        source: source.filter(|s| *s != name).map(str::to_string),
        source_version: source_version.filter(|v| *v != version).map(str::to_string),
    })
}

/// `Source: glibc` or `Source: bash (5.2.15-2)`.
fn parse_source(v: &str) -> (&str, Option<&str>) {
    match v.split_once('(') {
        Some((name, rest)) => (name.trim(), rest.strip_suffix(')').map(str::trim)),
        None => (v.trim(), None),
    }
}

/// An installed deb, before interning.
#[derive(Debug, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub arch: Option<String>,
    pub source: Option<String>,
    pub source_version: Option<String>,
}

/// The paths of a `.list` file that are not directories of the package:
/// a line followed by a line below it (`/usr/bin` then `/usr/bin/curl`) is a
/// directory (dpkg writes a directory before its contents). `/.` is the root.
pub fn list_paths(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && *l != b"/.")
        .peekable();
    std::iter::from_fn(move || loop {
        let line = lines.next()?;
        let is_dir = lines.peek().is_some_and(|next| {
            next.len() > line.len() && next.starts_with(line) && next[line.len()] == b'/'
        });
        if !is_dir {
            return Some(line);
        }
    })
}

/// The paths of an md5sums file (`<md5>  <path>`), relative to `/`.
pub fn md5sums_paths(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n').filter_map(|line| {
        let i = line.iter().position(|&b| b == b' ')?;
        let path = line[i..].trim_ascii_start();
        (i > 0 && !path.is_empty()).then_some(path)
    })
}

/// `diversions`: records of three lines (from, to, diverting package or
/// `:` for a local diversion). Returns from -> (to, by).
pub fn diversions(data: &[u8]) -> HashMap<String, (String, String)> {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks_exact(3)
        .map(|r| (r[0].to_string(), (r[1].to_string(), r[2].to_string())))
        .collect()
}

/// Read the dpkg database of `fs` into `b`; false when there is none.
pub(super) fn read(fs: &RootFs, b: &mut Builder) -> Result<bool, PackagesError> {
    let mut found = false;
    let diverted = match fs.read_db_file(DIVERSIONS, MAX_DIVERSIONS_BYTES)? {
        Some(d) => diversions(&d),
        None => HashMap::new(),
    };
    b.set_diversions(&diverted);
    if let Some(status) = fs.read_db_file(STATUS, MAX_STATUS_BYTES)? {
        found = true;
        b.charge(status.len())?;
        for st in stanzas(&status) {
            match package_of(&st, true) {
                Some(p) => add_with_list(fs, b, p, None)?,
                None => b.stats.skipped_stanzas += usize::from(!not_installed(&st)),
            }
        }
    }
    if let Some(names) = fs.list_dir(STATUS_D)? {
        found = true;
        for name in names
            .iter()
            .filter(|n| !n.ends_with(".md5sums") && !n.starts_with('.'))
        {
            let rel = format!("{STATUS_D}/{name}");
            let Some(data) = fs.read_db_file(&rel, MAX_LIST_BYTES)? else {
                continue;
            };
            b.charge(data.len())?;
            for st in stanzas(&data) {
                match package_of(&st, false) {
                    Some(p) => add_with_list(fs, b, p, Some(&rel))?,
                    None => b.stats.skipped_stanzas += usize::from(!not_installed(&st)),
                }
            }
        }
    }
    Ok(found)
}

/// A stanza left out only because it is not installed is not "skipped".
fn not_installed(st: &Stanza<'_>) -> bool {
    st.status.is_some_and(|s| !files_on_disk(s))
}

/// One package and its files: `info/<name>:<arch>.list`, `info/<name>.list`,
/// then (status.d) the md5sums beside its stanza file.
fn add_with_list(
    fs: &RootFs,
    b: &mut Builder,
    p: DebPackage,
    statusd: Option<&str>,
) -> Result<(), PackagesError> {
    let mut candidates = Vec::with_capacity(2);
    if let Some(arch) = &p.arch {
        candidates.push(format!("{INFO}/{}:{arch}.list", p.name));
    }
    candidates.push(format!("{INFO}/{}.list", p.name));
    let name = p.name.clone();
    let id = b.add_package(Package::deb(p, b.distro()));
    for rel in &candidates {
        if let Some(data) = fs.read_db_file(rel, MAX_LIST_BYTES)? {
            b.charge(data.len())?;
            for path in list_paths(&data) {
                b.add_deb_path(id, &name, path);
            }
            return Ok(());
        }
    }
    if let Some(stanza_file) = statusd {
        let rel = format!("{stanza_file}.md5sums");
        if let Some(data) = fs.read_db_file(&rel, MAX_LIST_BYTES)? {
            b.charge(data.len())?;
            for path in md5sums_paths(&data) {
                b.add_relative_path(id, path);
            }
            return Ok(());
        }
    }
    b.stats.packages_without_files += 1;
    Ok(())
}

impl Package {
    fn deb(p: DebPackage, distro: Option<&super::purl::Distro>) -> Package {
        let namespace = distro.map_or("debian", |d| d.id.as_str());
        let purl = super::purl::build(
            "deb",
            namespace,
            &p.name,
            &p.version,
            p.arch.as_deref(),
            distro.map(super::purl::Distro::qualifier).as_deref(),
        );
        Package {
            kind: PackageKind::Deb,
            name: p.name.into(),
            version: p.version.into(),
            source: p.source.map(Into::into),
            source_version: p.source_version.map(Into::into),
            arch: p.arch.map(Into::into),
            purl: purl.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_FIXTURE: &[u8] = include_bytes!("testdata/dpkg-status");

    #[test]
    fn real_status_stanzas_become_packages() {
        let pkgs: Vec<DebPackage> = stanzas(STATUS_FIXTURE)
            .iter()
            .filter_map(|s| package_of(s, true))
            .collect();
        let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
        // The fixture's removed package (deinstall ok config-files) is not here.
        assert_eq!(names, ["bash", "dash", "libc6", "curl", "dpkg"]);
        assert_eq!(
            pkgs[0],
            DebPackage {
                name: "bash".into(),
                version: "5.2.15-2+b8".into(),
                arch: Some("amd64".into()),
                source: None,
                source_version: Some("5.2.15-2".into()),
            }
        );
        assert_eq!(pkgs[2].source.as_deref(), Some("glibc"));
        assert_eq!(pkgs[2].source_version, None);
        assert_eq!(pkgs[3].version, "7.88.1-10+deb12u15");
    }

    #[test]
    fn status_states() {
        assert!(files_on_disk("install ok installed"));
        assert!(files_on_disk("deinstall ok installed"));
        assert!(files_on_disk("install ok unpacked"));
        assert!(!files_on_disk("deinstall ok config-files"));
        assert!(!files_on_disk("purge ok not-installed"));
        assert!(!files_on_disk("install reinstreq half-installed"));
        assert!(!files_on_disk("installed"));
        assert!(!files_on_disk("install ok installed extra"));
    }

    #[test]
    fn a_deinstalled_stanza_is_no_package_and_a_missing_status_only_counts_in_status_d() {
        let text = b"Package: nano\nStatus: deinstall ok config-files\nVersion: 7.2-1\nArchitecture: amd64\n\n\
                     Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n";
        let st = stanzas(text);
        assert_eq!(st.len(), 2);
        assert_eq!(package_of(&st[0], true), None);
        assert_eq!(package_of(&st[0], false), None);
        assert_eq!(
            package_of(&st[1], true),
            None,
            "the status file needs Status:"
        );
        assert_eq!(package_of(&st[1], false).unwrap().name, "tzdata");
    }

    #[test]
    fn hostile_names_and_garbage_are_skipped_without_panic() {
        let text = b"Package: ../../etc/shadow\nStatus: install ok installed\nVersion: 1\n\n\
                     Package: ok\nStatus: install ok installed\nVersion: 1 2\n\n\
                     \xff\xfe\x00garbage\nPackage: x\n\n\n\n:\n: \nPackage:\nVersion:\n\n\
                     Package: fine\nStatus: install ok installed\nVersion: 1.0\nArchitecture: ../x\nSource: ../y (1)\n";
        let pkgs: Vec<DebPackage> = stanzas(text)
            .iter()
            .filter_map(|s| package_of(s, true))
            .collect();
        assert_eq!(pkgs.len(), 1);
        assert_eq!(pkgs[0].name, "fine");
        assert_eq!(pkgs[0].arch, None, "an unusable arch is dropped");
        assert_eq!(pkgs[0].source, None);
        let huge = vec![b'A'; 1 << 20];
        assert!(stanzas(&huge)
            .iter()
            .all(|s| package_of(s, false).is_none()));
        assert!(stanzas(b"").is_empty());
        assert!(stanzas(b"\n\n \n").is_empty());
    }

    #[test]
    fn list_paths_leave_out_directories() {
        let dash: Vec<&[u8]> = list_paths(include_bytes!("testdata/dash.list")).collect();
        let dash: Vec<&str> = dash
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect();
        assert!(dash.contains(&"/bin/dash"));
        assert!(dash.contains(&"/bin/sh"));
        assert!(dash.contains(&"/usr/share/doc/dash/copyright"));
        assert!(!dash.contains(&"/bin"));
        assert!(!dash.contains(&"/usr/share/doc/dash"));
        assert!(!dash.contains(&"/."));
        // `/usr/bin/x` then `/usr/bin/xy`: a prefix that is not a parent.
        let l: Vec<&[u8]> = list_paths(b"/usr/bin/x\n/usr/bin/xy\n").collect();
        assert_eq!(l, [&b"/usr/bin/x"[..], b"/usr/bin/xy"]);
    }

    #[test]
    fn md5sums_paths_are_relative_and_may_hold_spaces() {
        let text = b"7a4179e324c784b99e98fedee05260f7  bin/cat\n\
                     d5b9e0a0a8d0ffc5b6f5c5c8a8b2c3d1  usr/share/doc/x/a file\nnohash\n  \n";
        let p: Vec<&[u8]> = md5sums_paths(text).collect();
        assert_eq!(p, [&b"bin/cat"[..], b"usr/share/doc/x/a file"]);
    }

    #[test]
    fn diversions_are_triplets() {
        let d = diversions(b"/bin/sh\n/bin/sh.distrib\ndash\n/usr/bin/pg_config\n/usr/bin/pg_config.libpq-dev\npostgresql-common\n/x\n");
        assert_eq!(d.len(), 2);
        assert_eq!(
            d["/usr/bin/pg_config"],
            (
                "/usr/bin/pg_config.libpq-dev".into(),
                "postgresql-common".into()
            )
        );
    }
}
