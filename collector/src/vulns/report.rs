//! One scanner report in the collector's terms: what image it is about,
//! the packages installed in it, and the vulnerabilities of those
//! packages. Every supported format (Trivy JSON, Grype JSON, CycloneDX
//! BOM and VEX) is parsed into this one shape; the store, the joins, the
//! API and the findings read only this.

use serde::{Deserialize, Serialize};

/// The format a report was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Trivy,
    Grype,
    CycloneDx,
}

/// What a report is about: any of these digests names the image (a
/// report names some, the fleet's containers name others; the join takes
/// any). All are `sha256:<64 hex>`, lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Manifest digests (from `name@sha256:...` repo digests, or a
    /// manifest digest field).
    pub manifest_digests: Vec<String>,
    /// The multi-platform index digest, where the report names one.
    pub index_digests: Vec<String>,
    /// The image id: the config blob's digest.
    pub config_digest: Option<String>,
    /// The layers' uncompressed digests (`rootfs.diff_ids`), base first:
    /// the image hierarchy matches their prefixes.
    pub diff_ids: Vec<String>,
    /// References as the scanner saw them (`repo:tag`, `repo@digest`).
    pub refs: Vec<String>,
}

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// The ecosystem: `deb`, `apk`, `rpm`, `pypi`, `npm`, `golang`, ...
    /// (the purl type where there is one).
    pub kind: String,
    pub name: String,
    pub version: String,
    /// The source package (Debian `Source:`, apk origin), if known.
    pub source: Option<String>,
    pub arch: Option<String>,
    pub purl: Option<String>,
}

/// A vulnerability's severity, as the report rates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Unknown,
    Negligible,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// A scanner's word for it (any case); anything else is `Unknown`.
    pub fn parse(s: &str) -> Severity {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" | "important" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" => Severity::Low,
            "negligible" | "none" | "info" => Severity::Negligible,
            _ => Severity::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Negligible => "negligible",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What a VEX statement in the report says of a vulnerability in a
/// package (CycloneDX `analysis.state`, OpenVEX `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VexState {
    Affected,
    NotAffected,
    Fixed,
    UnderInvestigation,
}

/// One vulnerability of one installed package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vulnerability {
    /// `CVE-...`, `GHSA-...`, `DSA-...`: as the report names it.
    pub id: String,
    /// Index into [`Report::packages`].
    pub package: usize,
    pub severity: Severity,
    /// The version that fixes it, where one is known.
    pub fixed_version: Option<String>,
    pub title: Option<String>,
    /// A VEX statement about it, where the report carries one.
    pub vex: Option<VexState>,
}

/// A parsed report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub format: Format,
    pub subject: Subject,
    pub packages: Vec<Package>,
    pub vulnerabilities: Vec<Vulnerability>,
}
