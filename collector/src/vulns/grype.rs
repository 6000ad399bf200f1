//! Grype's JSON report (`grype IMAGE -o json`), as anchore/grype
//! `grype/presenter/models` writes it. For an image, `source.target` is
//! syft's `ImageMetadata`: `imageID` (the config digest),
//! `manifestDigest`, `repoDigests`, `tags`, and `layers[].digest`, which
//! are the layers' diff ids (stereoscope's layer digest, as syft's own
//! JSON shows next to the config's `rootfs.diff_ids`). Matches that VEX
//! documents removed (`--vex`) are in `ignoredMatches` with the rule's
//! `vex-status`: they are kept with that statement.

use serde::Deserialize;

use super::builder::{kind, non_empty, null_default, title_from, upstream, Builder, Limits};
use super::error::ReportError;
use super::purl::Purl;
use super::report::{Format, Package, Report, Severity, VexState, Vulnerability};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    #[serde(default, deserialize_with = "null_default")]
    matches: Vec<Match>,
    #[serde(default, deserialize_with = "null_default")]
    ignored_matches: Vec<Match>,
    #[serde(default, deserialize_with = "null_default")]
    source: Source,
}

#[derive(Default, Deserialize)]
struct Source {
    /// `image`, `directory`, `file`, `sbom-file`, `purl`, ...
    #[serde(default, deserialize_with = "null_default")]
    r#type: String,
    #[serde(default, deserialize_with = "null_default")]
    target: Target,
}

/// An object for an image, a path or a purl (a string) otherwise.
#[derive(Deserialize)]
#[serde(untagged)]
enum Target {
    Image(ImageTarget),
    Other(serde::de::IgnoredAny),
}

impl Default for Target {
    fn default() -> Target {
        Target::Other(serde::de::IgnoredAny)
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageTarget {
    #[serde(rename = "imageID", default, deserialize_with = "null_default")]
    image_id: String,
    #[serde(default, deserialize_with = "null_default")]
    manifest_digest: String,
    #[serde(default, deserialize_with = "null_default")]
    repo_digests: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    layers: Vec<LayerTarget>,
}

#[derive(Default, Deserialize)]
struct LayerTarget {
    #[serde(default, deserialize_with = "null_default")]
    digest: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Match {
    #[serde(default, deserialize_with = "null_default")]
    vulnerability: GrypeVulnerability,
    #[serde(default, deserialize_with = "null_default")]
    artifact: Artifact,
    /// Only in `ignoredMatches`.
    #[serde(default, deserialize_with = "null_default")]
    applied_ignore_rules: Vec<IgnoreRule>,
}

#[derive(Default, Deserialize)]
struct GrypeVulnerability {
    #[serde(default, deserialize_with = "null_default")]
    id: String,
    #[serde(default, deserialize_with = "null_default")]
    severity: String,
    #[serde(default, deserialize_with = "null_default")]
    description: String,
    #[serde(default, deserialize_with = "null_default")]
    fix: Fix,
}

#[derive(Default, Deserialize)]
struct Fix {
    #[serde(default, deserialize_with = "null_default")]
    versions: Vec<String>,
}

#[derive(Default, Deserialize)]
struct Artifact {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    version: String,
    /// syft's package type: `deb`, `apk`, `rpm`, `python`, `go-module`, ...
    #[serde(default, deserialize_with = "null_default")]
    r#type: String,
    #[serde(default, deserialize_with = "null_default")]
    purl: String,
    #[serde(default, deserialize_with = "null_default")]
    upstreams: Vec<Upstream>,
}

#[derive(Default, Deserialize)]
struct Upstream {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
}

#[derive(Default, Deserialize)]
struct IgnoreRule {
    #[serde(rename = "vex-status", default, deserialize_with = "null_default")]
    vex_status: String,
}

pub(crate) fn parse(name: &str, bytes: &[u8], limits: Limits) -> Result<Report, ReportError> {
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| ReportError::from_json(name, Format::Grype, &e))?;
    let mut b = Builder::new(name, Format::Grype, limits);
    if let Target::Image(t) = &doc.source.target {
        subject(&mut b, t);
    }
    for m in &doc.matches {
        add_match(&mut b, m, None)?;
    }
    for m in &doc.ignored_matches {
        // An ignored match without a VEX statement was hidden by the
        // user's own ignore rules: it stays out.
        if let Some(vex) = m
            .applied_ignore_rules
            .iter()
            .find_map(|r| vex_state(&r.vex_status))
        {
            add_match(&mut b, m, Some(vex))?;
        }
    }
    let hint = if doc.source.r#type.is_empty() || doc.source.r#type == "image" {
        "scan the image (`grype IMAGE -o json`)"
    } else {
        "grype scanned a directory, file or SBOM, not an image: scan the image (`grype IMAGE -o json`)"
    };
    b.finish(
        "source.target imageID, manifestDigest, repoDigests and layers",
        hint,
    )
}

fn subject(b: &mut Builder<'_>, t: &ImageTarget) {
    b.subject.config(&t.image_id);
    b.subject.manifest(&t.manifest_digest);
    for d in &t.repo_digests {
        b.subject.reference(d);
    }
    for l in &t.layers {
        b.subject.diff_id(&l.digest);
    }
    for tag in &t.tags {
        b.subject.reference(tag);
    }
}

fn add_match(b: &mut Builder<'_>, m: &Match, vex: Option<VexState>) -> Result<(), ReportError> {
    let a = &m.artifact;
    let purl = Purl::parse(&a.purl);
    let package = b.package(Package {
        kind: kind(purl.as_ref(), &a.r#type),
        name: a.name.clone(),
        version: a.version.clone(),
        source: a
            .upstreams
            .iter()
            .find_map(|u| non_empty(&u.name))
            .or_else(|| purl.as_ref().and_then(upstream)),
        arch: purl
            .as_ref()
            .and_then(|p| p.qualifier("arch"))
            .map(str::to_owned),
        purl: non_empty(&a.purl),
    })?;
    let v = &m.vulnerability;
    b.vulnerability(Vulnerability {
        id: v.id.clone(),
        package,
        severity: Severity::parse(&v.severity),
        fixed_version: v.fix.versions.iter().find_map(|f| non_empty(f)),
        title: title_from(&v.description),
        vex,
    })
}

/// OpenVEX statuses, as Grype's ignore rules carry them.
fn vex_state(status: &str) -> Option<VexState> {
    match status {
        "not_affected" => Some(VexState::NotAffected),
        "fixed" => Some(VexState::Fixed),
        "affected" => Some(VexState::Affected),
        "under_investigation" => Some(VexState::UnderInvestigation),
        _ => None,
    }
}
