//! Trivy's JSON report (`trivy image -f json`, `trivy sbom -f json`),
//! schema version 2, as aquasecurity/trivy `pkg/types/report.go` writes
//! it. Packages are listed with `--list-all-pkgs` (the default in recent
//! Trivy); without it only vulnerable packages appear, and each
//! vulnerability's package is added from the vulnerability itself.

use std::collections::HashMap;

use serde::Deserialize;

use super::builder::{kind, non_empty, null_default, Builder, Limits};
use super::error::ReportError;
use super::purl::Purl;
use super::report::{Format, Package, Report, Severity, Vulnerability};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Doc {
    #[serde(default, deserialize_with = "null_default")]
    artifact_name: String,
    /// `container_image`, `filesystem`, `cyclonedx` (`trivy sbom`), ...
    #[serde(default, deserialize_with = "null_default")]
    artifact_type: String,
    #[serde(default, deserialize_with = "null_default")]
    metadata: Metadata,
    #[serde(default, deserialize_with = "null_default")]
    results: Vec<TrivyResult>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(rename = "ImageID", default, deserialize_with = "null_default")]
    image_id: String,
    #[serde(rename = "DiffIDs", default, deserialize_with = "null_default")]
    diff_ids: Vec<String>,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_default")]
    repo_tags: Vec<String>,
    #[serde(rename = "RepoDigests", default, deserialize_with = "null_default")]
    repo_digests: Vec<String>,
    #[serde(rename = "Layers", default, deserialize_with = "null_default")]
    layers: Vec<Layer>,
}

#[derive(Default, Deserialize)]
struct Layer {
    #[serde(rename = "DiffID", default, deserialize_with = "null_default")]
    diff_id: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyResult {
    /// `debian`, `alpine`, `jar`, `pip`, ... (the ecosystem).
    #[serde(default, deserialize_with = "null_default")]
    r#type: String,
    #[serde(default, deserialize_with = "null_default")]
    packages: Vec<TrivyPackage>,
    #[serde(default, deserialize_with = "null_default")]
    vulnerabilities: Vec<TrivyVulnerability>,
}

#[derive(Default, Deserialize)]
struct Identifier {
    #[serde(rename = "PURL", default, deserialize_with = "null_default")]
    purl: String,
    #[serde(rename = "UID", default, deserialize_with = "null_default")]
    uid: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyPackage {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    identifier: Identifier,
    #[serde(default, deserialize_with = "null_default")]
    version: String,
    #[serde(default, deserialize_with = "null_default")]
    release: String,
    #[serde(default, deserialize_with = "null_default")]
    epoch: i64,
    #[serde(default, deserialize_with = "null_default")]
    arch: String,
    #[serde(default, deserialize_with = "null_default")]
    src_name: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyVulnerability {
    #[serde(rename = "VulnerabilityID", default, deserialize_with = "null_default")]
    vulnerability_id: String,
    #[serde(default, deserialize_with = "null_default")]
    pkg_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pkg_identifier: Identifier,
    #[serde(default, deserialize_with = "null_default")]
    installed_version: String,
    #[serde(default, deserialize_with = "null_default")]
    fixed_version: String,
    #[serde(default, deserialize_with = "null_default")]
    severity: String,
    #[serde(default, deserialize_with = "null_default")]
    title: String,
}

pub(crate) fn parse(name: &str, bytes: &[u8], limits: Limits) -> Result<Report, ReportError> {
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| ReportError::from_json(name, Format::Trivy, &e))?;
    let mut b = Builder::new(name, Format::Trivy, limits);
    subject(&mut b, &doc);
    for result in &doc.results {
        add_result(&mut b, result)?;
    }
    b.finish(
        "Metadata.ImageID, RepoDigests, DiffIDs and an ArtifactName with @sha256:",
        "scan the image (`trivy image IMAGE -f json`), not a directory or a file system",
    )
}

fn subject(b: &mut Builder<'_>, doc: &Doc) {
    let m = &doc.metadata;
    b.subject.config(&m.image_id);
    for d in &m.repo_digests {
        b.subject.reference(d);
    }
    if matches!(doc.artifact_type.as_str(), "cyclonedx" | "spdx") {
        // `trivy sbom`: the diff ids come from the BOM's properties,
        // which Trivy sorts by value; the layer order is lost.
        b.subject
            .unordered_diff_ids(m.diff_ids.iter().map(String::as_str));
    } else if m.diff_ids.is_empty() {
        for l in &m.layers {
            b.subject.diff_id(&l.diff_id);
        }
    } else {
        for d in &m.diff_ids {
            b.subject.diff_id(d);
        }
    }
    for t in &m.repo_tags {
        b.subject.reference(t);
    }
    if doc.artifact_name.contains("@sha256:") {
        b.subject.reference(&doc.artifact_name);
    }
}

/// Trivy's package version: `epoch:version-release` (its
/// `utils.FormatVersion`, the same string as a vulnerability's
/// `InstalledVersion`).
fn trivy_version(epoch: i64, version: &str, release: &str) -> String {
    let mut v = version.to_owned();
    if !release.is_empty() {
        v = format!("{v}-{release}");
    }
    if epoch != 0 {
        v = format!("{epoch}:{v}");
    }
    v
}

/// One result's packages, then its vulnerabilities joined to them (by
/// the package's UID, else its purl, else name and installed version).
fn add_result(b: &mut Builder<'_>, r: &TrivyResult) -> Result<(), ReportError> {
    let mut by_uid: HashMap<&str, usize> = HashMap::new();
    let mut by_purl: HashMap<&str, usize> = HashMap::new();
    let mut by_version: HashMap<(&str, String), usize> = HashMap::new();
    for p in &r.packages {
        let purl = Purl::parse(&p.identifier.purl);
        let version = trivy_version(p.epoch, &p.version, &p.release);
        let package = Package {
            kind: kind(purl.as_ref(), &r.r#type),
            name: p.name.clone(),
            version: version.clone(),
            source: non_empty(&p.src_name),
            arch: non_empty(&p.arch).or_else(|| arch_of(purl.as_ref())),
            purl: non_empty(&p.identifier.purl),
        };
        let i = b.package(package)?;
        if !p.identifier.uid.is_empty() {
            by_uid.insert(&p.identifier.uid, i);
        }
        if !p.identifier.purl.is_empty() {
            by_purl.insert(&p.identifier.purl, i);
        }
        by_version.insert((&p.name, version), i);
    }
    for v in &r.vulnerabilities {
        let id = &v.pkg_identifier;
        let known = by_uid
            .get(id.uid.as_str())
            .or_else(|| by_purl.get(id.purl.as_str()))
            .or_else(|| by_version.get(&(v.pkg_name.as_str(), v.installed_version.clone())));
        let package = match known {
            Some(&i) => i,
            None => b.package(unlisted(r, v))?,
        };
        b.vulnerability(Vulnerability {
            id: v.vulnerability_id.clone(),
            package,
            severity: Severity::parse(&v.severity),
            fixed_version: non_empty(&v.fixed_version),
            title: non_empty(&v.title),
            // Trivy leaves out what VEX documents rule out (`--vex`); its
            // `Status` is the vendor's fix status, not a VEX statement.
            vex: None,
        })?;
    }
    Ok(())
}

/// The package of a vulnerability whose package is not listed (a report
/// written without `--list-all-pkgs`).
fn unlisted(r: &TrivyResult, v: &TrivyVulnerability) -> Package {
    let purl = Purl::parse(&v.pkg_identifier.purl);
    Package {
        kind: kind(purl.as_ref(), &r.r#type),
        name: v.pkg_name.clone(),
        version: v.installed_version.clone(),
        source: None,
        arch: arch_of(purl.as_ref()),
        purl: non_empty(&v.pkg_identifier.purl),
    }
}

fn arch_of(purl: Option<&Purl>) -> Option<String> {
    purl.and_then(|p| p.qualifier("arch")).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_formed_as_trivy_forms_installed_version() {
        assert_eq!(trivy_version(1, "1.2.13.dfsg", "1"), "1:1.2.13.dfsg-1");
        assert_eq!(
            trivy_version(0, "7.88.1", "10+deb12u15"),
            "7.88.1-10+deb12u15"
        );
        assert_eq!(trivy_version(0, "1.36.1-r15", ""), "1.36.1-r15");
    }
}
