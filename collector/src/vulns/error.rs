//! Why a scanner report was refused: every message names the file, says
//! what is wrong with it, and what to do.

use super::report::Format;

/// The display name of a format, as users know the scanner.
pub(crate) fn format_name(format: Format) -> &'static str {
    match format {
        Format::Trivy => "Trivy",
        Format::Grype => "Grype",
        Format::CycloneDx => "CycloneDX",
    }
}

/// A report that cannot be imported. `name` is the file's name (or the
/// name it was uploaded under).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "{name}: {size} bytes, over the {limit}-byte limit for one report: \
         scan fewer targets per report"
    )]
    TooLarge {
        name: String,
        size: usize,
        limit: usize,
    },
    #[error("{name}: {what}: {hint}")]
    NotJson {
        name: String,
        what: &'static str,
        hint: &'static str,
    },
    #[error(
        "{name}: truncated or malformed JSON at line {line} column {column}: {reason}; \
         write the report again (was it copied while the scanner was still writing it?)"
    )]
    Malformed {
        name: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "{name}: not a Trivy, Grype or CycloneDX JSON report (no SchemaVersion, matches or \
         bomFormat): write it with `trivy image -f json`, `grype -o json` or `-f cyclonedx`"
    )]
    NotAReport { name: String },
    #[error("{name}: {what}, which is not imported: {hint}")]
    Unsupported {
        name: String,
        what: String,
        hint: &'static str,
    },
    #[error(
        "{name}: a {} report whose content does not fit its format at line {line} \
         column {column}: {reason}; write it again with a current scanner",
        format_name(*format)
    )]
    Schema {
        name: String,
        format: Format,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "{name}: the {} report names no image digest (looked at {looked_at}), so it \
         cannot be joined with running images: {hint}",
        format_name(*format)
    )]
    NoDigest {
        name: String,
        format: Format,
        looked_at: &'static str,
        hint: &'static str,
    },
    #[error(
        "{name}: more than {cap} {what}, the most one report may hold: \
         split the scan into smaller reports"
    )]
    TooMany {
        name: String,
        what: &'static str,
        cap: usize,
    },
}

impl ReportError {
    /// A serde_json error met while reading `name` as `format`: a syntax
    /// or end-of-input error is a broken file, any other a shape that does
    /// not fit the format.
    pub(crate) fn from_json(name: &str, format: Format, e: &serde_json::Error) -> ReportError {
        if e.is_syntax() || e.is_eof() {
            return malformed(name, e);
        }
        ReportError::Schema {
            name: name.to_owned(),
            format,
            line: e.line(),
            column: e.column(),
            reason: strip_position(e),
        }
    }
}

pub(crate) fn malformed(name: &str, e: &serde_json::Error) -> ReportError {
    ReportError::Malformed {
        name: name.to_owned(),
        line: e.line(),
        column: e.column(),
        reason: strip_position(e),
    }
}

/// serde_json's message without its own " at line L column C" (the
/// error says the position once).
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}
