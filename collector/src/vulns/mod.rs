//! Vulnerability context: scanner reports parsed into one shape
//! ([`report::Report`]), joined with the fleet's images.
//!
//! [`parse`] reads Trivy JSON, Grype JSON and CycloneDX JSON (SBOM, SBOM
//! with vulnerabilities, VEX), telling them apart by their content.

mod builder;
mod cyclonedx;
mod detect;
mod digest;
mod error;
mod grype;
mod purl;
pub mod report;
#[cfg(test)]
mod tests;
mod trivy;

pub use error::ReportError;

use builder::Limits;
use detect::Detected;

/// The largest report read (512 MiB): check a file's size against it
/// before reading it whole.
pub const MAX_REPORT_BYTES: usize = 512 << 20;
/// The most packages one report may list.
pub const MAX_PACKAGES: usize = 1_000_000;
/// The most vulnerabilities (id and package pairs) one report may list.
pub const MAX_VULNERABILITIES: usize = 1_000_000;

const LIMITS: Limits = Limits {
    bytes: MAX_REPORT_BYTES,
    packages: MAX_PACKAGES,
    vulnerabilities: MAX_VULNERABILITIES,
};

/// Parses the report `bytes`, named `name` in errors (its file name, or
/// the name it was uploaded under). The format is taken from the content:
/// Trivy JSON (`SchemaVersion` with `ArtifactName` or `Results`), Grype
/// JSON (`matches` and `source`, `descriptor.name` "grype"), CycloneDX
/// JSON (`bomFormat` "CycloneDX", spec 1.4 to 1.7). Unknown fields are
/// ignored; a report must name the image by at least one digest.
pub fn parse(name: &str, bytes: &[u8]) -> Result<report::Report, ReportError> {
    parse_with(name, bytes, LIMITS)
}

fn parse_with(name: &str, bytes: &[u8], limits: Limits) -> Result<report::Report, ReportError> {
    if bytes.len() > limits.bytes {
        return Err(ReportError::TooLarge {
            name: name.to_owned(),
            size: bytes.len(),
            limit: limits.bytes,
        });
    }
    // A byte order mark, as some Windows tools write, is not JSON.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match detect::detect(name, bytes)? {
        Detected::Trivy => trivy::parse(name, bytes, limits),
        Detected::Grype => grype::parse(name, bytes, limits),
        Detected::CycloneDx => cyclonedx::parse(name, bytes, limits),
    }
}
