//! Which format a report is, from its top-level keys only (one pass that
//! skips every value it does not look at).

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::{malformed, ReportError};

pub(crate) enum Detected {
    Trivy,
    Grype,
    CycloneDx,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "SchemaVersion")]
    schema_version: Option<IgnoredAny>,
    #[serde(rename = "ArtifactName")]
    artifact_name: Option<IgnoredAny>,
    #[serde(rename = "Results")]
    results: Option<IgnoredAny>,
    matches: Option<IgnoredAny>,
    source: Option<IgnoredAny>,
    descriptor: Option<Descriptor>,
    #[serde(rename = "bomFormat")]
    bom_format: Option<String>,
    artifacts: Option<IgnoredAny>,
    #[serde(rename = "spdxVersion")]
    spdx_version: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Descriptor {
    name: Option<String>,
}

pub(crate) fn detect(name: &str, bytes: &[u8]) -> Result<Detected, ReportError> {
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
    match first {
        None => {
            return Err(not_json(
                name,
                "empty",
                "the scanner wrote nothing: run it again",
            ));
        }
        Some(b'<') => {
            return Err(not_json(
                name,
                "XML, not JSON",
                "write the report as JSON (`-f json`, `-o json`, `-o cyclonedx-json`)",
            ));
        }
        Some(b'{') => {}
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            // Valid JSON perhaps, but not an object: not a report.
            serde_json::from_slice::<IgnoredAny>(bytes).map_err(|e| malformed(name, &e))?;
            return Err(ReportError::NotAReport {
                name: name.to_owned(),
            });
        }
        Some(_) => {
            return Err(not_json(
                name,
                "not JSON (it does not start with `{`)",
                "import the scanner's JSON output: `trivy image -f json`, `grype -o json` \
                 or `-f cyclonedx`",
            ));
        }
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            malformed(name, &e)
        } else {
            ReportError::NotAReport {
                name: name.to_owned(),
            }
        }
    })?;
    classify(name, &probe)
}

fn classify(name: &str, p: &Probe) -> Result<Detected, ReportError> {
    let descriptor = p.descriptor.as_ref().and_then(|d| d.name.as_deref());
    if let Some(format) = &p.bom_format {
        if format == "CycloneDX" {
            return Ok(Detected::CycloneDx);
        }
    }
    if p.matches.is_some() && p.source.is_some() && matches!(descriptor, None | Some("grype")) {
        return Ok(Detected::Grype);
    }
    if p.schema_version.is_some() && (p.artifact_name.is_some() || p.results.is_some()) {
        return Ok(Detected::Trivy);
    }
    if p.artifacts.is_some() && descriptor == Some("syft") {
        return Err(ReportError::Unsupported {
            name: name.to_owned(),
            what: "a syft JSON SBOM".to_owned(),
            hint: "scan it with `grype sbom:FILE -o json`, or write the SBOM with \
                   `syft IMAGE -o cyclonedx-json`",
        });
    }
    if p.spdx_version.is_some() {
        return Err(ReportError::Unsupported {
            name: name.to_owned(),
            what: "an SPDX document".to_owned(),
            hint: "write a CycloneDX BOM instead (`syft IMAGE -o cyclonedx-json`, \
                   `trivy image IMAGE -f cyclonedx`)",
        });
    }
    Err(ReportError::NotAReport {
        name: name.to_owned(),
    })
}

fn not_json(name: &str, what: &'static str, hint: &'static str) -> ReportError {
    ReportError::NotJson {
        name: name.to_owned(),
        what,
        hint,
    }
}
