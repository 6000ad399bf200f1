//! apk's installed database, `lib/apk/db/installed` (apk-tools v2 text
//! format, which Alpine's apk writes): blank-line separated records of
//! `<letter>:<value>` lines. Used here: `P` name, `V` version, `A` arch,
//! `o` origin (the source package), `F` a directory (relative to `/`) and
//! `R` a file in the directory of the last `F` (in `/` before any `F`).
//! Every record of the file is installed. apk v3's binary `installed.adb`
//! is not read.
use super::{build::Builder, purl, rootfs::RootFs, Package, PackageKind, PackagesError};

/// Largest `installed` file (a full Alpine desktop is ~10 MiB).
pub const MAX_INSTALLED_BYTES: u64 = 64 << 20;
const INSTALLED: &str = "lib/apk/db/installed";

/// One package record and its files (relative paths).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApkRecord<'a> {
    pub name: Option<&'a str>,
    pub version: Option<&'a str>,
    pub arch: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub files: Vec<String>,
}

/// apk's package name rule: `[a-zA-Z0-9._+-]`, starting alphanumeric.
fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'))
}

/// Parse the records; lines that are not UTF-8 or not `X:value` are
/// skipped, as are `R` lines whose directory was unusable.
pub fn records(data: &[u8]) -> Vec<ApkRecord<'_>> {
    let mut out = Vec::new();
    let mut cur = ApkRecord::default();
    let mut dir: Option<&str> = Some("");
    let mut any = false;
    for line in data.split(|&b| b == b'\n') {
        if line.is_empty() {
            if any {
                out.push(std::mem::take(&mut cur));
                dir = Some("");
                any = false;
            }
            continue;
        }
        any = true;
        let Some(line) = std::str::from_utf8(line).ok() else {
            continue;
        };
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "P" => _ = cur.name.get_or_insert(value),
            "V" => _ = cur.version.get_or_insert(value),
            "A" => _ = cur.arch.get_or_insert(value),
            "o" => _ = cur.origin.get_or_insert(value),
            // A directory that is absolute or empty is unusable: its files
            // are skipped rather than misplaced.
            "F" => dir = (!value.is_empty() && !value.starts_with('/')).then_some(value),
            "R" if !value.is_empty() && !value.contains('/') => {
                if let Some(d) = dir {
                    cur.files.push(if d.is_empty() {
                        value.to_string()
                    } else {
                        format!("{d}/{value}")
                    });
                }
            }
            _ => {}
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Read the apk database of `fs` into `b`; false when there is none.
pub(super) fn read(fs: &RootFs, b: &mut Builder) -> Result<bool, PackagesError> {
    let Some(data) = fs.read_db_file(INSTALLED, MAX_INSTALLED_BYTES)? else {
        return Ok(false);
    };
    b.charge(data.len())?;
    for rec in records(&data) {
        let (Some(name), Some(version)) = (
            rec.name.filter(|n| valid_name(n)),
            rec.version.filter(|v| !v.is_empty()),
        ) else {
            b.stats.skipped_stanzas += 1;
            continue;
        };
        let distro = b.distro();
        let purl = purl::build(
            "apk",
            distro.map_or("alpine", |d| d.id.as_str()),
            name,
            version,
            rec.arch,
            distro.map(purl::Distro::qualifier).as_deref(),
        );
        let id = b.add_package(Package {
            kind: PackageKind::Apk,
            name: name.into(),
            version: version.into(),
            source: rec
                .origin
                .filter(|o| valid_name(o) && *o != name)
                .map(Into::into),
            source_version: None,
            arch: rec.arch.filter(|a| !a.is_empty()).map(Into::into),
            purl: purl.into(),
        });
        if rec.files.is_empty() {
            b.stats.packages_without_files += 1;
        }
        for f in &rec.files {
            b.add_relative_path(id, f.as_bytes());
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALLED_FIXTURE: &[u8] = include_bytes!("testdata/apk-installed");

    #[test]
    fn records_of_a_real_format_database() {
        let r = records(INSTALLED_FIXTURE);
        let names: Vec<_> = r.iter().map(|r| r.name.unwrap()).collect();
        assert_eq!(
            names,
            ["musl", "busybox", "busybox-binsh", "libcrypto3", "curl"]
        );
        let busybox = &r[1];
        assert_eq!(busybox.version, Some("1.36.1-r29"));
        assert_eq!(busybox.arch, Some("x86_64"));
        assert_eq!(busybox.origin, Some("busybox"));
        assert!(busybox.files.contains(&"bin/busybox".to_string()));
        assert!(busybox
            .files
            .contains(&"etc/busybox-paths.d/busybox".to_string()));
        assert_eq!(r[2].origin, Some("busybox"));
        assert_eq!(r[2].files, ["bin/sh"]);
        assert_eq!(r[3].origin, Some("openssl"));
        assert!(r[0].files.contains(&"lib/ld-musl-x86_64.so.1".to_string()));
    }

    #[test]
    fn files_before_any_directory_are_at_the_root_and_garbage_is_skipped() {
        let text = b"P:a\nV:1\nR:top\nF:/abs\nR:lost\nF:usr/bin\nR:x\nR:../../etc/y\n\xff\xfe\nnocolon\n\nP:b\n";
        let r = records(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].files, ["top", "usr/bin/x"]);
        assert_eq!(r[1].version, None);
        assert!(records(b"").is_empty());
        assert!(records(&[0u8; 4096]).iter().all(|r| r.name.is_none()));
    }
}
