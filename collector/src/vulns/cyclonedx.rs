//! CycloneDX JSON BOMs, spec 1.4 to 1.7: an SBOM (components), an SBOM
//! with vulnerabilities (`trivy -f cyclonedx`, `grype -o cyclonedx-json`),
//! or a VEX document (vulnerabilities with `analysis`, few or no
//! components). The image is `metadata.component`: syft puts the
//! manifest digest in its `version`, Trivy its image id, repo digests and
//! diff ids in `aquasecurity:trivy:*` properties and, for a pulled image,
//! a `pkg:oci/NAME@sha256%3A...` purl. Trivy sorts properties by value
//! (`pkg/sbom/cyclonedx/marshal.go`), so its diff ids lose their layer
//! order: they are kept only when there is one.

use std::collections::HashMap;

use serde::Deserialize;

use super::builder::{
    highest, kind, non_empty, null_default, package_from_purl, title_from, upstream, Builder,
    Limits,
};
use super::error::ReportError;
use super::purl::{decode, Purl};
use super::report::{Format, Package, Report, Severity, VexState, Vulnerability};

/// The spec versions read (`1.4` to `1.7`, as `specVersion` spells them).
const SPEC_MINORS: std::ops::RangeInclusive<u32> = 4..=7;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bom {
    #[serde(default, deserialize_with = "null_default")]
    spec_version: String,
    #[serde(default, deserialize_with = "null_default")]
    metadata: Metadata,
    #[serde(default, deserialize_with = "null_default")]
    components: Vec<Component>,
    #[serde(default, deserialize_with = "null_default")]
    vulnerabilities: Vec<CdxVulnerability>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default, deserialize_with = "null_default")]
    component: Option<Component>,
}

#[derive(Default, Deserialize)]
struct Component {
    #[serde(rename = "bom-ref", default, deserialize_with = "null_default")]
    bom_ref: String,
    #[serde(default, deserialize_with = "null_default")]
    r#type: String,
    #[serde(default, deserialize_with = "null_default")]
    group: String,
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    version: String,
    #[serde(default, deserialize_with = "null_default")]
    purl: String,
    #[serde(default, deserialize_with = "null_default")]
    properties: Vec<Property>,
    #[serde(default, deserialize_with = "null_default")]
    components: Vec<Component>,
}

#[derive(Default, Deserialize)]
struct Property {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    value: String,
}

impl Component {
    fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
            .filter(|v| !v.is_empty())
    }

    fn properties<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.properties
            .iter()
            .filter(move |p| p.name == name)
            .map(|p| p.value.as_str())
    }
}

#[derive(Default, Deserialize)]
struct CdxVulnerability {
    #[serde(default, deserialize_with = "null_default")]
    id: String,
    #[serde(default, deserialize_with = "null_default")]
    ratings: Vec<Rating>,
    #[serde(default, deserialize_with = "null_default")]
    description: String,
    /// Trivy writes "Upgrade NAME to version V" (joined by "; ").
    #[serde(default, deserialize_with = "null_default")]
    recommendation: String,
    #[serde(default, deserialize_with = "null_default")]
    analysis: Analysis,
    #[serde(default, deserialize_with = "null_default")]
    affects: Vec<Affects>,
}

#[derive(Default, Deserialize)]
struct Rating {
    #[serde(default, deserialize_with = "null_default")]
    severity: String,
}

#[derive(Default, Deserialize)]
struct Analysis {
    #[serde(default, deserialize_with = "null_default")]
    state: String,
}

#[derive(Default, Deserialize)]
struct Affects {
    #[serde(rename = "ref", default, deserialize_with = "null_default")]
    reference: String,
    #[serde(default, deserialize_with = "null_default")]
    versions: Vec<AffectedVersion>,
}

#[derive(Default, Deserialize)]
struct AffectedVersion {
    #[serde(default, deserialize_with = "null_default")]
    version: String,
    /// `affected`, `unaffected` or `unknown`.
    #[serde(default, deserialize_with = "null_default")]
    status: String,
}

pub(crate) fn parse(name: &str, bytes: &[u8], limits: Limits) -> Result<Report, ReportError> {
    let bom: Bom = serde_json::from_slice(bytes)
        .map_err(|e| ReportError::from_json(name, Format::CycloneDx, &e))?;
    check_spec(name, &bom.spec_version)?;
    let mut b = Builder::new(name, Format::CycloneDx, limits);
    if let Some(image) = &bom.metadata.component {
        subject(&mut b, image);
    }
    let mut packages = Packages::default();
    let mut stack: Vec<&Component> = bom.components.iter().rev().collect();
    while let Some(c) = stack.pop() {
        stack.extend(c.components.iter().rev());
        packages.add(&mut b, c)?;
    }
    for v in &bom.vulnerabilities {
        add_vulnerability(&mut b, &mut packages, v)?;
    }
    b.finish(
        "metadata.component's version, bom-ref, purl and aquasecurity:trivy properties",
        "write the BOM from the image (`syft IMAGE -o cyclonedx-json`, \
         `trivy image IMAGE -f cyclonedx`), or name the image in metadata.component \
         (a pkg:oci purl with its digest)",
    )
}

fn check_spec(name: &str, spec: &str) -> Result<(), ReportError> {
    let minor = spec
        .trim()
        .strip_prefix("1.")
        .and_then(|m| m.parse::<u32>().ok());
    if minor.is_some_and(|m| SPEC_MINORS.contains(&m)) {
        return Ok(());
    }
    Err(ReportError::Unsupported {
        name: name.to_owned(),
        what: format!("a CycloneDX BOM of spec version {spec:?}"),
        hint: "spec versions 1.4 to 1.7 are read: write it again with a current scanner",
    })
}

fn subject(b: &mut Builder<'_>, image: &Component) {
    if let Some(purl) = Purl::parse(&image.purl).filter(|p| p.ty == "oci") {
        if let Some(v) = &purl.version {
            b.subject.manifest(v);
        }
    }
    for d in image.properties("aquasecurity:trivy:RepoDigest") {
        b.subject.reference(d);
    }
    b.subject.manifest(&image.version);
    b.subject.manifest(&image.bom_ref);
    if let Some(id) = image.property("aquasecurity:trivy:ImageID") {
        b.subject.config(id);
    }
    // Trivy sorts a component's properties by value: the layer order is
    // lost.
    b.subject
        .unordered_diff_ids(image.properties("aquasecurity:trivy:DiffID"));
    for t in image.properties("aquasecurity:trivy:RepoTag") {
        b.subject.reference(t);
    }
}

/// The BOM's packages, by bom-ref and by purl.
#[derive(Default)]
struct Packages<'a> {
    by_ref: HashMap<&'a str, usize>,
    by_purl: HashMap<String, usize>,
}

/// Component types that are not installed packages.
const NOT_PACKAGES: &[&str] = &[
    "operating-system",
    "container",
    "file",
    "data",
    "device",
    "platform",
    "machine-learning-model",
    "cryptographic-asset",
];

impl<'a> Packages<'a> {
    fn add(&mut self, b: &mut Builder<'_>, c: &'a Component) -> Result<(), ReportError> {
        if c.name.is_empty() || NOT_PACKAGES.contains(&c.r#type.as_str()) {
            return Ok(());
        }
        let purl = Purl::parse(&c.purl);
        let scanner_type = c
            .property("aquasecurity:trivy:PkgType")
            .or_else(|| c.property("syft:package:type"))
            .unwrap_or_default();
        let name = match (c.group.as_str(), purl.as_ref().map(|p| p.ty.as_str())) {
            ("", _) => c.name.clone(),
            (g, Some("maven")) => format!("{g}:{}", c.name),
            (g, _) => format!("{g}/{}", c.name),
        };
        let source = c
            .property("aquasecurity:trivy:SrcName")
            .or_else(|| c.property("syft:metadata:source"))
            .map(str::to_owned)
            .or_else(|| purl.as_ref().and_then(upstream));
        let arch = purl
            .as_ref()
            .and_then(|p| p.qualifier("arch"))
            .or_else(|| c.property("syft:metadata:architecture"))
            .map(str::to_owned);
        // Older Trivy BOMs keep a Debian or RPM epoch only in the purl
        // (`epoch=1`): put it back, as Trivy's InstalledVersion has it.
        let version = match purl.as_ref().and_then(|p| p.qualifier("epoch")) {
            Some(e) if e != "0" && !c.version.contains(':') => format!("{e}:{}", c.version),
            _ => c.version.clone(),
        };
        let i = b.package(Package {
            kind: kind(purl.as_ref(), scanner_type),
            name,
            version,
            source,
            arch,
            purl: non_empty(&c.purl),
        })?;
        if !c.bom_ref.is_empty() {
            self.by_ref.insert(&c.bom_ref, i);
        }
        if !c.purl.is_empty() {
            self.by_purl.insert(c.purl.trim().to_owned(), i);
        }
        Ok(())
    }

    /// The package an `affects[].ref` names: a bom-ref of this BOM, a
    /// BOM-Link into another (`urn:cdx:SERIAL/VERSION#BOM-REF`), or a
    /// purl; a purl not listed adds its package. `None` for a ref into
    /// another BOM that is not a purl (nothing here says what it is), and
    /// for the image itself.
    fn resolve(
        &mut self,
        b: &mut Builder<'_>,
        reference: &str,
    ) -> Result<Option<usize>, ReportError> {
        let r = reference.trim();
        if let Some(&i) = self.by_ref.get(r) {
            return Ok(Some(i));
        }
        // A BOM-Link's fragment is the bom-ref, percent-encoded.
        let decoded;
        let r = match r.strip_prefix("urn:cdx:").and_then(|l| l.split_once('#')) {
            Some((_, fragment)) => {
                decoded = decode(fragment);
                if let Some(&i) = self.by_ref.get(decoded.as_str()) {
                    return Ok(Some(i));
                }
                decoded.as_str()
            }
            None => r,
        };
        if let Some(&i) = self.by_purl.get(r) {
            return Ok(Some(i));
        }
        // A statement about the image itself (its pkg:oci purl) names no
        // package: a report holds vulnerabilities of packages only.
        let Some(package) = package_from_purl(r).filter(|p| p.kind != "oci") else {
            return Ok(None);
        };
        let i = b.package(package)?;
        self.by_purl.insert(r.to_owned(), i);
        Ok(Some(i))
    }
}

/// CycloneDX `analysis.state` onto [`VexState`]:
/// - `exploitable` -> `Affected` (it applies and can be exploited);
/// - `in_triage` -> `UnderInvestigation`;
/// - `not_affected` and `false_positive` -> `NotAffected` (a false
///   positive is a finding that does not apply to the package at all);
/// - `resolved` and `resolved_with_pedigree` -> `Fixed` (remediated in
///   this build; the pedigree only says how);
/// - no state, or one this version does not know -> no statement.
fn vex_state(state: &str) -> Option<VexState> {
    match state {
        "exploitable" => Some(VexState::Affected),
        "in_triage" => Some(VexState::UnderInvestigation),
        "not_affected" | "false_positive" => Some(VexState::NotAffected),
        "resolved" | "resolved_with_pedigree" => Some(VexState::Fixed),
        _ => None,
    }
}

fn add_vulnerability(
    b: &mut Builder<'_>,
    packages: &mut Packages<'_>,
    v: &CdxVulnerability,
) -> Result<(), ReportError> {
    let severity = highest(v.ratings.iter().map(|r| Severity::parse(&r.severity)));
    let vex = vex_state(&v.analysis.state);
    let title = title_from(&v.description);
    for a in &v.affects {
        let Some(package) = packages.resolve(b, &a.reference)? else {
            continue;
        };
        let fixed_version = a
            .versions
            .iter()
            .find(|x| x.status == "unaffected")
            .and_then(|x| non_empty(&x.version))
            .or_else(|| recommended(&v.recommendation, b.package_name(package)));
        b.vulnerability(Vulnerability {
            id: v.id.clone(),
            package,
            severity,
            fixed_version,
            title: title.clone(),
            vex,
        })?;
    }
    Ok(())
}

/// The version Trivy recommends for `package`: its recommendation reads
/// "Upgrade NAME to version V" for each package, joined by "; ".
fn recommended(recommendation: &str, package: &str) -> Option<String> {
    recommendation.split("; ").find_map(|r| {
        let rest = r.trim().strip_prefix("Upgrade ")?;
        let (name, version) = rest.split_once(" to version ")?;
        (name == package)
            .then(|| version.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_analysis_state_has_its_statement() {
        assert_eq!(vex_state("exploitable"), Some(VexState::Affected));
        assert_eq!(vex_state("in_triage"), Some(VexState::UnderInvestigation));
        assert_eq!(vex_state("false_positive"), Some(VexState::NotAffected));
        assert_eq!(vex_state("not_affected"), Some(VexState::NotAffected));
        assert_eq!(vex_state("resolved"), Some(VexState::Fixed));
        assert_eq!(vex_state("resolved_with_pedigree"), Some(VexState::Fixed));
        assert_eq!(vex_state(""), None);
        assert_eq!(vex_state("maybe"), None);
    }

    #[test]
    fn trivy_recommendations_give_each_package_its_version() {
        let r = "Upgrade libcurl4 to version 7.88.1-10+deb12u16; Upgrade curl to version 7.88.1-10+deb12u16";
        assert_eq!(
            recommended(r, "curl").as_deref(),
            Some("7.88.1-10+deb12u16")
        );
        assert_eq!(
            recommended(r, "libcurl4").as_deref(),
            Some("7.88.1-10+deb12u16")
        );
        assert_eq!(recommended(r, "zlib1g"), None);
        assert_eq!(recommended("", "curl"), None);
    }

    #[test]
    fn spec_versions_1_4_to_1_7_are_read() {
        for ok in ["1.4", "1.5", "1.6", "1.7"] {
            assert!(check_spec("b.json", ok).is_ok(), "{ok}");
        }
        for bad in ["1.3", "1.8", "2.0", "", "1.x"] {
            let e = check_spec("b.json", bad).unwrap_err().to_string();
            assert!(
                e.starts_with("b.json: a CycloneDX BOM of spec version"),
                "{e}"
            );
        }
    }
}
