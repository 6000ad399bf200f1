//! Scanner reports in the store (docs/vulnerabilities.md). Saving a
//! report writes its digests, its image's layers and its vulnerabilities
//! in one
//! transaction, replacing the earlier report of the same name and every
//! earlier report of the same image (one that names any of its digests):
//! a new scan of an image supersedes the old one, so a vulnerability
//! fixed since is gone from the answers. A report that fails to parse is
//! never saved, so what was imported before stays.
use sqlx::{Any, AnyPool, Transaction};

use crate::vulns::report::{Report, Severity, VexState};

#[derive(Debug, thiserror::Error)]
pub enum ReportStoreError {
    #[error("saving report {name} in the inventory: {source}")]
    Save { name: String, source: sqlx::Error },
    #[error("reading report state from the inventory: {0}")]
    Read(sqlx::Error),
}

/// Rows of one multi-row INSERT: 12 columns x 50 = 600 bound values,
/// under SQLite's and PostgreSQL's limits and short enough that binding
/// stays linear.
const CHUNK: usize = 50;

/// What a saved report replaced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Saved {
    /// Earlier reports of the same image (other names) it superseded.
    pub superseded: Vec<String>,
}

/// The sha256 the store holds for report `name`, if it holds it.
pub async fn stored_sha(pool: &AnyPool, name: &str) -> Result<Option<String>, ReportStoreError> {
    sqlx::query_scalar::<_, String>("SELECT sha256 FROM vuln_reports WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(ReportStoreError::Read)
}

/// The names of every stored report.
pub async fn names(pool: &AnyPool) -> Result<Vec<String>, ReportStoreError> {
    sqlx::query_scalar::<_, String>("SELECT name FROM vuln_reports ORDER BY name")
        .fetch_all(pool)
        .await
        .map_err(ReportStoreError::Read)
}

/// Save `report` under `name` (its bytes hash to `sha256`) at `now`
/// (Unix ns).
pub async fn save(
    pool: &AnyPool,
    name: &str,
    sha256: &str,
    report: &Report,
    now: i64,
) -> Result<Saved, ReportStoreError> {
    let wrap = |source| ReportStoreError::Save {
        name: name.to_owned(),
        source,
    };
    let format = format_word(report);
    let mut tx = pool.begin().await.map_err(wrap)?;
    let old = superseded(&mut tx, name, &format, report)
        .await
        .map_err(wrap)?;
    for (old_name, old_sha) in &old {
        delete_in(&mut tx, old_name).await.map_err(wrap)?;
        sqlx::query(
            "INSERT INTO vuln_superseded (name, sha256, at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(old_name)
        .bind(old_sha)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(wrap)?;
    }
    delete_in(&mut tx, name).await.map_err(wrap)?;
    insert(&mut tx, name, sha256, &format, report, now)
        .await
        .map_err(wrap)?;
    tx.commit().await.map_err(wrap)?;
    Ok(Saved {
        superseded: old.into_iter().map(|(n, _)| n).collect(),
    })
}

/// Delete report `name` (its file was removed).
pub async fn delete(pool: &AnyPool, name: &str) -> Result<(), ReportStoreError> {
    let wrap = |source| ReportStoreError::Save {
        name: name.to_owned(),
        source,
    };
    let mut tx = pool.begin().await.map_err(wrap)?;
    delete_in(&mut tx, name).await.map_err(wrap)?;
    sqlx::query("DELETE FROM vuln_superseded WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(wrap)?;
    tx.commit().await.map_err(wrap)
}

/// Every digest `report` names, with its kind.
fn digests(report: &Report) -> Vec<(&str, &'static str)> {
    let s = &report.subject;
    let all = s
        .manifest_digests
        .iter()
        .map(|d| (d.as_str(), "manifest"))
        .chain(s.index_digests.iter().map(|d| (d.as_str(), "index")))
        .chain(s.config_digest.iter().map(|d| (d.as_str(), "config")));
    let mut out: Vec<(&str, &'static str)> = Vec::new();
    for (d, kind) in all {
        if !out.iter().any(|(have, _)| *have == d) {
            out.push((d, kind));
        }
    }
    out
}

/// The reports `report` (of format `format`) supersedes: earlier scans
/// of the same image by the same kind of scanner. With a config digest:
/// those of the same config (a multi-platform index digest names every
/// platform's image, so it does not decide); without: those without one
/// naming one of its manifest or index digests. A Grype scan leaves a
/// Trivy scan of the image in place, and a CycloneDX VEX or SBOM leaves
/// both.
async fn superseded(
    tx: &mut Transaction<'_, Any>,
    name: &str,
    format: &str,
    report: &Report,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    let found: Vec<(String, String)> = match &report.subject.config_digest {
        Some(config) => {
            sqlx::query_as(
                "SELECT DISTINCT r.name, r.sha256 FROM vuln_reports r \
                 JOIN vuln_report_digests d ON d.report = r.name \
                 WHERE d.kind = 'config' AND d.digest = $1 AND r.format = $2 AND r.name <> $3",
            )
            .bind(config)
            .bind(format)
            .bind(name)
            .fetch_all(&mut **tx)
            .await?
        }
        None => {
            let mut all = Vec::new();
            for (digest, _) in digests(report) {
                let found: Vec<(String, String)> = sqlx::query_as(
                    "SELECT DISTINCT r.name, r.sha256 FROM vuln_reports r \
                     JOIN vuln_report_digests d ON d.report = r.name \
                     WHERE d.digest = $1 AND r.format = $2 AND r.name <> $3 \
                     AND NOT EXISTS (SELECT 1 FROM vuln_report_digests c \
                        WHERE c.report = r.name AND c.kind = 'config')",
                )
                .bind(digest)
                .bind(format)
                .bind(name)
                .fetch_all(&mut **tx)
                .await?;
                all.extend(found);
            }
            all
        }
    };
    for f in found {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out.sort();
    Ok(out)
}

/// Whether the store superseded report `name` with these bytes (a
/// newer scan of its image came since): importing it again would bring
/// back what the newer scan no longer says.
pub async fn is_superseded(
    pool: &AnyPool,
    name: &str,
    sha256: &str,
) -> Result<bool, ReportStoreError> {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM vuln_superseded WHERE name = $1 AND sha256 = $2",
    )
    .bind(name)
    .bind(sha256)
    .fetch_one(pool)
    .await
    .map(|n| n > 0)
    .map_err(ReportStoreError::Read)
}

async fn delete_in(tx: &mut Transaction<'_, Any>, name: &str) -> Result<(), sqlx::Error> {
    for table in [
        "DELETE FROM vulns WHERE report = $1",
        "DELETE FROM vuln_report_digests WHERE report = $1",
        "DELETE FROM vuln_reports WHERE name = $1",
    ] {
        sqlx::query(table).bind(name).execute(&mut **tx).await?;
    }
    Ok(())
}

fn rank(s: Severity) -> i64 {
    match s {
        Severity::Unknown => 0,
        Severity::Negligible => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

fn vex_word(v: Option<VexState>) -> &'static str {
    match v {
        None => "",
        Some(VexState::Affected) => "affected",
        Some(VexState::NotAffected) => "not_affected",
        Some(VexState::Fixed) => "fixed",
        Some(VexState::UnderInvestigation) => "under_investigation",
    }
}

/// `INSERT INTO table (cols) VALUES ($1, ..), ($n, ..) ON CONFLICT DO
/// NOTHING` for `rows` rows of `cols` columns.
fn insert_sql(table: &str, cols: &[&str], rows: usize) -> String {
    let mut s = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols.len() {
            if c > 0 {
                s.push_str(", ");
            }
            n += 1;
            s.push_str(&format!("${n}"));
        }
        s.push(')');
    }
    s.push_str(" ON CONFLICT DO NOTHING");
    s
}

/// The report's format as stored (`trivy`, `grype`, `cyclone_dx`).
fn format_word(report: &Report) -> String {
    serde_json::to_value(report.format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn insert(
    tx: &mut Transaction<'_, Any>,
    name: &str,
    sha256: &str,
    format: &str,
    report: &Report,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vuln_reports (name, format, sha256, imported, packages, vulnerabilities) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(name)
    .bind(format)
    .bind(sha256)
    .bind(now)
    .bind(i64::try_from(report.packages.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(report.vulnerabilities.len()).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    for (digest, kind) in digests(report) {
        sqlx::query(
            "INSERT INTO vuln_report_digests (report, digest, kind) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(digest)
        .bind(kind)
        .execute(&mut **tx)
        .await?;
    }
    // a base image registered by its report: its layers join the
    // hierarchy (kept when the report goes: they are the image's)
    if let Some(config) = &report.subject.config_digest {
        super::lineage::write_layers(tx, config, &report.subject.diff_ids).await?;
    }
    insert_vulns(tx, name, report).await
}

const VULN_COLUMNS: &[&str] = &[
    "report",
    "id",
    "kind",
    "package",
    "version",
    "source_package",
    "purl",
    "severity",
    "severity_rank",
    "fixed_version",
    "title",
    "vex",
];

async fn insert_vulns(
    tx: &mut Transaction<'_, Any>,
    name: &str,
    report: &Report,
) -> Result<(), sqlx::Error> {
    // the parsers index packages they hold; one that did not is skipped
    let rows: Vec<_> = report
        .vulnerabilities
        .iter()
        .filter_map(|v| report.packages.get(v.package).map(|p| (v, p)))
        .collect();
    for chunk in rows.chunks(CHUNK) {
        let sql = insert_sql("vulns", VULN_COLUMNS, chunk.len());
        let mut q = sqlx::query(&sql);
        for (v, p) in chunk {
            q = q
                .bind(name)
                .bind(v.id.as_str())
                .bind(p.kind.as_str())
                .bind(p.name.as_str())
                .bind(p.version.as_str())
                .bind(p.source.clone().unwrap_or_default())
                .bind(p.purl.clone().unwrap_or_default())
                .bind(v.severity.as_str())
                .bind(rank(v.severity))
                .bind(v.fixed_version.clone().unwrap_or_default())
                .bind(v.title.clone().unwrap_or_default())
                .bind(vex_word(v.vex));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_row_insert_numbers_every_value() {
        assert_eq!(
            insert_sql("t", &["a", "b"], 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn severities_rank_in_order() {
        let all = [
            Severity::Unknown,
            Severity::Negligible,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ];
        let ranks: Vec<i64> = all.iter().map(|s| rank(*s)).collect();
        assert_eq!(ranks, [0, 1, 2, 3, 4, 5]);
    }
}
