//! Assembles a [`Report`] from any format: packages kept once each
//! (vulnerabilities point at them by index), vulnerabilities once per
//! (id, package), caps on both, and the subject's digests.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

use super::digest::SubjectBuilder;
use super::error::ReportError;
use super::purl::Purl;
use super::report::{Format, Package, Report, Severity, Vulnerability};

/// Bounds on what one report may hold (hostile or runaway input).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) bytes: usize,
    pub(crate) packages: usize,
    pub(crate) vulnerabilities: usize,
}

/// A package's identity for de-duplication (`Package` has no `Hash`).
type PackageKey = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn key_of(p: &Package) -> PackageKey {
    (
        p.kind.clone(),
        p.name.clone(),
        p.version.clone(),
        p.source.clone(),
        p.arch.clone(),
        p.purl.clone(),
    )
}

pub(crate) struct Builder<'a> {
    name: &'a str,
    format: Format,
    limits: Limits,
    pub(crate) subject: SubjectBuilder,
    packages: Vec<Package>,
    package_index: HashMap<PackageKey, usize>,
    vulnerabilities: Vec<Vulnerability>,
    vulnerability_index: HashMap<(String, usize), usize>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(name: &'a str, format: Format, limits: Limits) -> Builder<'a> {
        Builder {
            name,
            format,
            limits,
            subject: SubjectBuilder::default(),
            packages: Vec::new(),
            package_index: HashMap::new(),
            vulnerabilities: Vec::new(),
            vulnerability_index: HashMap::new(),
        }
    }

    /// The index of `p`, added unless an identical package is there.
    pub(crate) fn package(&mut self, p: Package) -> Result<usize, ReportError> {
        let key = key_of(&p);
        if let Some(&i) = self.package_index.get(&key) {
            return Ok(i);
        }
        if self.packages.len() >= self.limits.packages {
            return Err(self.too_many("packages", self.limits.packages));
        }
        let i = self.packages.len();
        self.packages.push(p);
        self.package_index.insert(key, i);
        Ok(i)
    }

    /// The name of package `i` (an index this builder returned).
    pub(crate) fn package_name(&self, i: usize) -> &str {
        &self.packages[i].name
    }

    /// Adds `v`; a second statement of the same id on the same package
    /// completes the first (highest severity, first fix, title and VEX
    /// found) rather than repeating it.
    pub(crate) fn vulnerability(&mut self, v: Vulnerability) -> Result<(), ReportError> {
        let key = (v.id.clone(), v.package);
        if let Some(&i) = self.vulnerability_index.get(&key) {
            let known = &mut self.vulnerabilities[i];
            known.severity = known.severity.max(v.severity);
            known.fixed_version = known.fixed_version.take().or(v.fixed_version);
            known.title = known.title.take().or(v.title);
            known.vex = known.vex.or(v.vex);
            return Ok(());
        }
        if self.vulnerabilities.len() >= self.limits.vulnerabilities {
            return Err(self.too_many("vulnerabilities", self.limits.vulnerabilities));
        }
        self.vulnerability_index
            .insert(key, self.vulnerabilities.len());
        self.vulnerabilities.push(v);
        Ok(())
    }

    fn too_many(&self, what: &'static str, cap: usize) -> ReportError {
        ReportError::TooMany {
            name: self.name.to_owned(),
            what,
            cap,
        }
    }

    /// The report, or [`ReportError::NoDigest`] when nothing names the
    /// image (`looked_at` and `hint` say where the format keeps them).
    pub(crate) fn finish(
        self,
        looked_at: &'static str,
        hint: &'static str,
    ) -> Result<Report, ReportError> {
        if !self.subject.has_digest() {
            return Err(ReportError::NoDigest {
                name: self.name.to_owned(),
                format: self.format,
                looked_at,
                hint,
            });
        }
        Ok(Report {
            format: self.format,
            subject: self.subject.finish(),
            packages: self.packages,
            vulnerabilities: self.vulnerabilities,
        })
    }
}

/// A package known only by its purl (a vulnerability or VEX statement
/// naming a package the report does not list).
pub(crate) fn package_from_purl(purl: &str) -> Option<Package> {
    let p = Purl::parse(purl)?;
    Some(Package {
        kind: p.ty.clone(),
        name: p.name.clone(),
        version: p.native_version().unwrap_or_default(),
        source: upstream(&p),
        arch: p.qualifier("arch").map(str::to_owned),
        purl: Some(purl.trim().to_owned()),
    })
}

/// The source package a purl names (syft's `upstream=curl` or
/// `upstream=openssl@3.0`).
pub(crate) fn upstream(p: &Purl) -> Option<String> {
    let u = p.qualifier("upstream")?;
    Some(u.split_once('@').map_or(u, |(n, _)| n).to_owned())
}

/// A package's ecosystem: the purl's type where there is a purl,
/// otherwise the scanner's own word for it mapped to the purl type
/// (Trivy's result `Type` or package type, syft's and Grype's `type`).
pub(crate) fn kind(purl: Option<&Purl>, scanner_type: &str) -> String {
    if let Some(p) = purl {
        return p.ty.clone();
    }
    let t = scanner_type.trim().to_ascii_lowercase();
    let kind = match t.as_str() {
        "debian" | "ubuntu" | "deb" | "distroless" => "deb",
        "alpine" | "wolfi" | "chainguard" | "apk" | "minimos" => "apk",
        "redhat" | "centos" | "rocky" | "alma" | "amazon" | "oracle" | "fedora" | "photon"
        | "cbl-mariner" | "azurelinux" | "rpm" | "echo" => "rpm",
        "pip" | "pipenv" | "poetry" | "uv" | "python-pkg" | "python" | "conda-pkg" => "pypi",
        "npm" | "yarn" | "pnpm" | "bun" | "node-pkg" | "javascript" => "npm",
        "gomod" | "gobinary" | "go-module" | "go" => "golang",
        "jar" | "pom" | "gradle" | "sbt" | "java-archive" | "jenkins-plugin" => "maven",
        "cargo" | "rust-binary" | "rust-crate" | "rustbinary" => "cargo",
        "gemspec" | "bundler" | "gem" => "gem",
        "composer" | "composer-vendor" | "php-composer" | "php-pecl" => "composer",
        "nuget" | "dotnet-core" | "packages-props" | "dotnet" => "nuget",
        "" => "unknown",
        other if other.contains("suse") => "rpm",
        other => other,
    };
    kind.to_owned()
}

/// A short title from a description: its first line, at most 200
/// characters (Grype and CycloneDX carry no separate title).
pub(crate) fn title_from(description: &str) -> Option<String> {
    let line = description.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
    })
}

/// The highest of some severities (`Unknown` when there are none).
pub(crate) fn highest<I: IntoIterator<Item = Severity>>(severities: I) -> Severity {
    severities.into_iter().max().unwrap_or(Severity::Unknown)
}

/// `Some(s)` unless `s` is empty.
pub(crate) fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// For `#[serde(default, deserialize_with = "null_default")]`: a JSON
/// `null` reads as the default, as a missing field does (scanners write
/// `null` for empty lists).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        bytes: 1 << 20,
        packages: 2,
        vulnerabilities: 2,
    };

    fn pkg(name: &str) -> Package {
        Package {
            kind: "deb".into(),
            name: name.into(),
            version: "1".into(),
            source: None,
            arch: None,
            purl: None,
        }
    }

    fn vuln(id: &str, package: usize, severity: Severity) -> Vulnerability {
        Vulnerability {
            id: id.into(),
            package,
            severity,
            fixed_version: None,
            title: None,
            vex: None,
        }
    }

    #[test]
    fn packages_are_kept_once_and_capped() {
        let mut b = Builder::new("r.json", Format::Trivy, LIMITS);
        assert_eq!(b.package(pkg("a")).unwrap(), 0);
        assert_eq!(b.package(pkg("b")).unwrap(), 1);
        assert_eq!(b.package(pkg("a")).unwrap(), 0);
        let err = b.package(pkg("c")).unwrap_err().to_string();
        assert_eq!(
            err,
            "r.json: more than 2 packages, the most one report may hold: \
             split the scan into smaller reports"
        );
    }

    #[test]
    fn a_repeated_vulnerability_completes_the_first_and_the_cap_holds() {
        let mut b = Builder::new("r.json", Format::Grype, LIMITS);
        b.vulnerability(vuln("CVE-1", 0, Severity::Low)).unwrap();
        let mut again = vuln("CVE-1", 0, Severity::High);
        again.fixed_version = Some("2".into());
        b.vulnerability(again).unwrap();
        b.vulnerability(vuln("CVE-1", 1, Severity::Low)).unwrap();
        let err = b
            .vulnerability(vuln("CVE-2", 0, Severity::Low))
            .unwrap_err();
        assert!(
            err.to_string().contains("more than 2 vulnerabilities"),
            "{err}"
        );
        b.subject.config(&format!("sha256:{}", "a".repeat(64)));
        let r = b.finish("x", "y").unwrap();
        assert_eq!(r.vulnerabilities.len(), 2);
        assert_eq!(r.vulnerabilities[0].severity, Severity::High);
        assert_eq!(r.vulnerabilities[0].fixed_version.as_deref(), Some("2"));
    }

    #[test]
    fn kinds_follow_the_purl_then_the_scanner_type() {
        let p = Purl::parse("pkg:apk/alpine/musl@1.2.4-r2").unwrap();
        assert_eq!(kind(Some(&p), "debian"), "apk");
        assert_eq!(kind(None, "debian"), "deb");
        assert_eq!(kind(None, "Python"), "pypi");
        assert_eq!(kind(None, "suse linux enterprise server"), "rpm");
        assert_eq!(kind(None, "go-module"), "golang");
        assert_eq!(kind(None, "conan"), "conan");
        assert_eq!(kind(None, ""), "unknown");
    }

    #[test]
    fn titles_are_first_lines_cut_at_200_characters() {
        assert_eq!(
            title_from("\n  first line \nsecond").as_deref(),
            Some("first line")
        );
        let long = "é".repeat(250);
        let t = title_from(&long).unwrap();
        assert_eq!(t.chars().count(), 203);
        assert_eq!(title_from(" \n "), None);
    }
}
