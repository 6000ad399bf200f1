//! `--vuln-reports DIR`: a directory of scanner reports, imported into
//! the store as they appear, change and go (docs/vulnerabilities.md).
//!
//! Every [`SCAN_EVERY`] the directory is listed. A `*.json` file whose
//! size or modification time changed is read (at most
//! [`MAX_REPORT_BYTES`]), hashed, and, when its bytes differ from what
//! the store holds under its name, parsed and saved. A file that does not
//! parse is logged with its name and reason and counted; the store keeps
//! what it held for that name (the previous good version stays
//! answered). A file removed from the directory is removed from the
//! store. Names starting with `.` are skipped (write a report to
//! `.x.json`, then rename it, and the import never sees half a file;
//! Kubernetes' ConfigMap volumes keep their data under `..data`).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use tracing::{info, warn};

use super::reports;

/// How often the directory is listed.
pub const SCAN_EVERY: Duration = Duration::from_secs(5);
/// The largest report read (the parsers' limit).
const MAX_REPORT_BYTES: u64 = crate::vulns::MAX_REPORT_BYTES as u64;
/// Prefix of the names of reports sent to the API: the directory scan
/// never deletes them.
pub const API_PREFIX: &str = "api:";
/// Most rejected files remembered with their reason.
const MAX_REJECTS: usize = 256;

/// The import's counters, for /metrics.
#[derive(Default)]
pub struct ImportHealth {
    pub imported: AtomicU64,
    pub rejected: AtomicU64,
    pub removed: AtomicU64,
    /// The last rejection of each file still rejected: name -> reason.
    pub rejects: Mutex<HashMap<String, String>>,
}

impl ImportHealth {
    fn reject(&self, name: &str, why: String) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let mut r = self.rejects.lock().expect("rejects lock");
        if r.len() < MAX_REJECTS || r.contains_key(name) {
            r.insert(name.to_owned(), why);
        }
    }

    fn accepted(&self, name: &str) {
        self.rejects.lock().expect("rejects lock").remove(name);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{name}: {size} bytes, over the {max} bytes a report may hold: split it, or scan one image per report")]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("{name}: cannot read it: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Store(#[from] reports::ReportStoreError),
}

/// What one import did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The store held these bytes already.
    Unchanged,
    /// A newer scan of the image superseded these bytes: not imported.
    Superseded,
    Saved(reports::Saved),
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Import `bytes` as report `name`: parsed off the runtime, saved unless
/// the store holds the same bytes under that name.
pub async fn import(pool: &AnyPool, name: &str, bytes: Vec<u8>) -> Result<Outcome, ImportError> {
    let sha = hex(&Sha256::digest(&bytes));
    if reports::stored_sha(pool, name).await?.as_deref() == Some(sha.as_str()) {
        return Ok(Outcome::Unchanged);
    }
    if reports::is_superseded(pool, name, &sha).await? {
        return Ok(Outcome::Superseded);
    }
    let owned = name.to_owned();
    let report = tokio::task::spawn_blocking(move || crate::vulns::parse(&owned, &bytes))
        .await
        .map_err(|e| ImportError::Parse(format!("{name}: the parser failed: {e}")))?
        .map_err(|e| ImportError::Parse(e.to_string()))?;
    let saved = reports::save(pool, name, &sha, &report, now_ns()).await?;
    Ok(Outcome::Saved(saved))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A report file's size and modification time: unchanged, not read again.
type Stamp = (u64, Option<SystemTime>);

/// The report files of `dir` (regular files, symlinks followed, `*.json`,
/// no leading `.`), by name.
fn list(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, Stamp)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `api:` names are the API's uploads
        if name.starts_with('.') || name.starts_with(API_PREFIX) || !name.ends_with(".json") {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            out.push((name, path, (meta.len(), meta.modified().ok())));
        }
    }
    out.sort();
    Ok(out)
}

/// One scan of the directory: import what changed, remove what went.
async fn scan(
    pool: &AnyPool,
    dir: &Path,
    seen: &mut HashMap<String, Stamp>,
    health: &ImportHealth,
) -> std::io::Result<()> {
    let files = list(dir)?;
    for (name, path, stamp) in &files {
        if seen.get(name) == Some(stamp) {
            continue;
        }
        seen.insert(name.clone(), *stamp);
        match read_and_import(pool, name, path, stamp.0).await {
            Ok(Outcome::Unchanged | Outcome::Superseded) => health.accepted(name),
            Ok(Outcome::Saved(saved)) => {
                health.imported.fetch_add(1, Ordering::Relaxed);
                health.accepted(name);
                info!(report = %name, superseded = ?saved.superseded, "vulnerability report imported");
            }
            Err(ImportError::Store(e)) => {
                // not the file's fault: read it again next scan
                seen.remove(name);
                warn!(report = %name, error = %e, "vulnerability report not saved; retrying");
            }
            Err(e) => {
                warn!(report = %name, error = %e, "vulnerability report rejected; the store keeps what it held for it");
                health.reject(name, e.to_string());
            }
        }
    }
    seen.retain(|name, _| files.iter().any(|(n, _, _)| n == name));
    // a refused file that went is no longer refused
    health
        .rejects
        .lock()
        .expect("rejects lock")
        .retain(|name, _| name.starts_with(API_PREFIX) || files.iter().any(|(n, _, _)| n == name));
    remove_gone(pool, &files, health).await;
    Ok(())
}

async fn read_and_import(
    pool: &AnyPool,
    name: &str,
    path: &Path,
    size: u64,
) -> Result<Outcome, ImportError> {
    if size > MAX_REPORT_BYTES {
        return Err(ImportError::TooLarge {
            name: name.to_owned(),
            size,
            max: MAX_REPORT_BYTES,
        });
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| ImportError::Read {
            name: name.to_owned(),
            source,
        })?;
    import(pool, name, bytes).await
}

/// Delete the stored reports of files no longer in the directory.
async fn remove_gone(pool: &AnyPool, files: &[(String, PathBuf, Stamp)], health: &ImportHealth) {
    let stored = match reports::names(pool).await {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot list the stored vulnerability reports");
            return;
        }
    };
    for name in stored {
        if name.starts_with(API_PREFIX) || files.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        match reports::delete(pool, &name).await {
            Ok(()) => {
                health.removed.fetch_add(1, Ordering::Relaxed);
                health.rejects.lock().expect("rejects lock").remove(&name);
                info!(report = %name, "vulnerability report removed (its file is gone)");
            }
            Err(e) => warn!(report = %name, error = %e, "cannot remove a vulnerability report"),
        }
    }
}

/// Watch `dir` until the process ends.
pub fn spawn(pool: AnyPool, dir: PathBuf, health: Arc<ImportHealth>) {
    tokio::spawn(async move {
        let mut seen = HashMap::new();
        let mut failing = false;
        loop {
            match scan(&pool, &dir, &mut seen, &health).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    warn!(dir = %dir.display(), error = %e, "cannot list the vulnerability reports directory (--vuln-reports); retrying");
                }
                Err(_) => {}
            }
            tokio::time::sleep(SCAN_EVERY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_non_json_files_are_not_reports() {
        let dir = std::env::temp_dir().join(format!("sg-report-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub.json")).unwrap();
        for f in ["a.json", ".b.json", "c.txt", "d.cdx.json"] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        let names: Vec<String> = list(&dir).unwrap().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, ["a.json", "d.cdx.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }
}
