//! Package URLs (purl) for deb and apk packages, and the distribution
//! they carry, read from the rootfs's os-release.
//!
//! Spec: <https://github.com/package-url/purl-spec> (types `deb` and `apk`:
//! the namespace is the vendor, lowercased, e.g. `debian`, `ubuntu`,
//! `alpine`; the name is lowercased; qualifiers `arch` and `distro`, sorted
//! by key). Percent-encoding keeps the alphanumerics, `.-_~` and the colon
//! (an epoch such as `1:2.4.47-2` stays readable); everything else becomes
//! `%XX`, so `+deb12u8` is `%2Bdeb12u8`. The `distro` value is
//! `<ID>-<VERSION_ID>` (`debian-12`, `alpine-3.20.3`), as syft and trivy
//! write it for Debian. A dozen lines of encoder rather than the
//! `packageurl` crate: only building is needed, never parsing.
use std::fmt::Write;

/// The distribution of a rootfs (os-release `ID` and `VERSION_ID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distro {
    pub id: String,
    pub version_id: Option<String>,
}

impl Distro {
    /// Parse os-release(5) text: `KEY=value` lines, values optionally
    /// quoted with `"` or `'`, backslash escapes inside double quotes.
    pub fn parse(text: &str) -> Option<Distro> {
        let mut id = None;
        let mut version_id = None;
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key.trim() {
                "ID" if !value.is_empty() => id = Some(value.to_ascii_lowercase()),
                "VERSION_ID" if !value.is_empty() => version_id = Some(value),
                _ => {}
            }
        }
        Some(Distro {
            id: id?,
            version_id,
        })
    }

    /// The `distro` qualifier value.
    pub fn qualifier(&self) -> String {
        match &self.version_id {
            Some(v) => format!("{}-{v}", self.id),
            None => self.id.clone(),
        }
    }
}

fn unquote(v: &str) -> String {
    let bytes = v.as_bytes();
    if bytes.len() >= 2 && bytes[0] == b'\'' && bytes[bytes.len() - 1] == b'\'' {
        return v[1..v.len() - 1].to_string();
    }
    if bytes.len() >= 2 && bytes[0] == b'"' && bytes[bytes.len() - 1] == b'"' {
        let mut out = String::new();
        let mut escaped = false;
        for c in v[1..v.len() - 1].chars() {
            if escaped || c != '\\' {
                out.push(c);
                escaped = false;
            } else {
                escaped = true;
            }
        }
        return out;
    }
    v.to_string()
}

/// Percent-encode one purl component.
fn encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `pkg:<ty>/<namespace>/<name>@<version>?arch=..&distro=..`.
pub fn build(
    ty: &str,
    namespace: &str,
    name: &str,
    version: &str,
    arch: Option<&str>,
    distro: Option<&str>,
) -> String {
    let mut out = format!("pkg:{ty}/");
    encode(&mut out, &namespace.to_ascii_lowercase());
    out.push('/');
    encode(&mut out, &name.to_ascii_lowercase());
    out.push('@');
    encode(&mut out, version);
    // Qualifiers sorted by key: arch < distro.
    let mut sep = '?';
    for (key, value) in [("arch", arch), ("distro", distro)] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push(sep);
            out.push_str(key);
            out.push('=');
            encode(&mut out, v);
            sep = '&';
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_purl_matches_the_spec_examples() {
        assert_eq!(
            build(
                "deb",
                "debian",
                "curl",
                "7.88.1-10+deb12u8",
                Some("amd64"),
                Some("debian-12")
            ),
            "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64&distro=debian-12"
        );
        // From the purl-spec deb type definition.
        assert_eq!(
            build(
                "deb",
                "debian",
                "attr",
                "1:2.4.47-2+b1",
                Some("amd64"),
                None
            ),
            "pkg:deb/debian/attr@1:2.4.47-2%2Bb1?arch=amd64"
        );
        assert_eq!(
            build("deb", "Ubuntu", "dpkg", "1.19.0.4", None, None),
            "pkg:deb/ubuntu/dpkg@1.19.0.4"
        );
    }

    #[test]
    fn apk_purl() {
        assert_eq!(
            build(
                "apk",
                "alpine",
                "busybox",
                "1.36.1-r29",
                Some("x86_64"),
                Some("alpine-3.20.3")
            ),
            "pkg:apk/alpine/busybox@1.36.1-r29?arch=x86_64&distro=alpine-3.20.3"
        );
        // Odd bytes are encoded, never passed through.
        assert_eq!(
            build("apk", "alpine", "a b&c", "1?#", None, None),
            "pkg:apk/alpine/a%20b%26c@1%3F%23"
        );
    }

    #[test]
    fn os_release_is_parsed_like_systemd_writes_it() {
        // This host's /usr/lib/os-release (Debian 12).
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                      VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        let d = Distro::parse(debian).unwrap();
        assert_eq!(
            d,
            Distro {
                id: "debian".into(),
                version_id: Some("12".into())
            }
        );
        assert_eq!(d.qualifier(), "debian-12");
        // Alpine's unquoted form; a sid without VERSION_ID.
        let alpine =
            Distro::parse("NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\n").unwrap();
        assert_eq!(alpine.qualifier(), "alpine-3.20.3");
        assert_eq!(
            Distro::parse("ID='debian'\n").unwrap().qualifier(),
            "debian"
        );
        assert_eq!(Distro::parse("NAME=x\n\0\u{fffd}==\n"), None);
    }
}
