//! Package URLs (<https://github.com/package-url/purl-spec>), read only as
//! far as a report needs: type, name, version and qualifiers, percent
//! decoded. Scanners write them; nothing here writes one.

/// The parts of a purl a report uses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Purl {
    /// Lower case: `deb`, `apk`, `rpm`, `pypi`, `oci`, ...
    pub(crate) ty: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    qualifiers: Vec<(String, String)>,
}

impl Purl {
    /// `pkg:type/namespace/name@version?qualifiers#subpath`; `None` when
    /// `s` is not one (no `pkg:` scheme, no type or no name).
    pub(crate) fn parse(s: &str) -> Option<Purl> {
        let s = s.trim();
        let rest = s
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("pkg:"))
            .map(|_| &s[4..])?;
        let rest = rest.trim_start_matches('/');
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (rest, qualifiers) = match rest.split_once('?') {
            Some((r, q)) => (r, parse_qualifiers(q)),
            None => (rest, Vec::new()),
        };
        let (path, version) = match rest.rsplit_once('@') {
            // `pkg:npm/@scope/name` without a version: the `@` starts a segment.
            Some((p, v)) if !p.is_empty() && !p.ends_with('/') => (p, Some(decode(v))),
            _ => (rest, None),
        };
        let (ty, path) = path.split_once('/')?;
        let path = path.trim_matches('/');
        let (namespace, name) = match path.rsplit_once('/') {
            Some((ns, n)) => (Some(decode(ns)), n),
            None => (None, path),
        };
        if ty.is_empty() || name.is_empty() {
            return None;
        }
        Some(Purl {
            ty: ty.to_ascii_lowercase(),
            namespace,
            name: decode(name),
            version: version.filter(|v| !v.is_empty()),
            qualifiers,
        })
    }

    /// A qualifier's value (`arch`, `distro`, `epoch`, `upstream`, ...).
    pub(crate) fn qualifier(&self, key: &str) -> Option<&str> {
        self.qualifiers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The version as the ecosystem spells it: a Debian or RPM epoch kept
    /// in a qualifier (`epoch=1`, as Trivy writes) goes back in front
    /// (`1:1.2.13.dfsg-1`), so it compares with the package database's.
    pub(crate) fn native_version(&self) -> Option<String> {
        let v = self.version.as_deref()?;
        match self.qualifier("epoch") {
            Some(e) if e != "0" && !v.contains(':') => Some(format!("{e}:{v}")),
            _ => Some(v.to_owned()),
        }
    }
}

fn parse_qualifiers(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), decode(v)))
        .collect()
}

/// Percent-decoding; a `%` not followed by two hex digits stays as it is.
pub(crate) fn decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trivy_and_syft_debian_purls() {
        let p = Purl::parse(
            "pkg:deb/debian/zlib1g@1.2.13.dfsg-1?arch=amd64&distro=debian-12.11&epoch=1",
        )
        .unwrap();
        assert_eq!(p.ty, "deb");
        assert_eq!(p.namespace.as_deref(), Some("debian"));
        assert_eq!(p.name, "zlib1g");
        assert_eq!(p.version.as_deref(), Some("1.2.13.dfsg-1"));
        assert_eq!(p.native_version().as_deref(), Some("1:1.2.13.dfsg-1"));
        assert_eq!(p.qualifier("arch"), Some("amd64"));
        assert_eq!(p.qualifier("upstream"), None);

        let p = Purl::parse(
            "pkg:deb/debian/libcurl4@7.88.1-10%2Bdeb12u15?arch=amd64&distro=debian-12&upstream=curl",
        )
        .unwrap();
        assert_eq!(p.version.as_deref(), Some("7.88.1-10+deb12u15"));
        assert_eq!(p.qualifier("upstream"), Some("curl"));
        // syft keeps the epoch in the version: not doubled.
        let p = Purl::parse("pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?epoch=1").unwrap();
        assert_eq!(p.native_version().as_deref(), Some("1:1.2.13.dfsg-1"));
    }

    #[test]
    fn reads_oci_npm_and_odd_purls() {
        let p = Purl::parse("pkg:oci/app@sha256%3Aabc?repository_url=example.org%2Fapp").unwrap();
        assert_eq!((p.ty.as_str(), p.name.as_str()), ("oci", "app"));
        assert_eq!(p.version.as_deref(), Some("sha256:abc"));
        assert_eq!(p.qualifier("repository_url"), Some("example.org/app"));

        let p = Purl::parse("pkg:npm/%40types/node@20.1.0#sub/path").unwrap();
        assert_eq!(p.namespace.as_deref(), Some("@types"));
        assert_eq!(p.version.as_deref(), Some("20.1.0"));
        let p = Purl::parse("pkg:npm/@types/node").unwrap();
        assert_eq!(
            (p.namespace.as_deref(), p.name.as_str(), p.version),
            (Some("@types"), "node", None)
        );
        assert_eq!(
            Purl::parse("PKG:Golang/a/b@v1%zz")
                .unwrap()
                .version
                .as_deref(),
            Some("v1%zz")
        );

        for bad in [
            "",
            "deb/debian/x@1",
            "pkg:",
            "pkg:deb",
            "pkg:deb/",
            "pkg:/x@1",
        ] {
            assert_eq!(Purl::parse(bad), None, "{bad:?}");
        }
    }
}
