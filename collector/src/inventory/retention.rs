//! Retention: what has ended is kept for a while (to answer "what ran
//! here yesterday"), then deleted, so a node that churns containers does
//! not grow the store without bound. Exited containers are kept
//! `--retain-exited` after their exit, closed listeners `--retain-closed`
//! after their close; with a container's row go its destinations and its
//! closed findings. Run by the store task every [`EVERY`].
//!
//! Portable SQL (SQLite and PostgreSQL), every value bound.
use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sqlx::AnyPool;

/// How often the store task deletes what is past retention.
pub const EVERY: Duration = Duration::from_secs(60);

/// The default of both `--retain-exited` and `--retain-closed`.
pub const DEFAULT: Keep = Keep::For(Duration::from_secs(24 * 3600));

/// Longest retention accepted (more is a typo: use `forever`).
const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(
        "{0:?} is not a retention: give a number with a unit (90s, 30m, 24h, 7d) or `forever`"
    )]
    Parse(String),
    #[error("{0:?} is longer than 10 years: use `forever` to keep ended rows for good")]
    TooLong(String),
    #[error("deleting ended rows past retention ({what}): {source}")]
    Delete {
        what: &'static str,
        source: sqlx::Error,
    },
}

/// How long ended rows are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    For(Duration),
    Forever,
}

impl FromStr for Keep {
    type Err = RetentionError;

    fn from_str(s: &str) -> Result<Self, RetentionError> {
        if s == "forever" {
            return Ok(Keep::Forever);
        }
        let bad = || RetentionError::Parse(s.to_owned());
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let long = || RetentionError::TooLong(s.to_owned());
        let n: u64 = match n.parse() {
            Ok(n) => n,
            Err(_) if n.is_empty() => return Err(bad()),
            Err(_) => return Err(long()), // all digits: too many of them
        };
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        let d = n
            .checked_mul(secs)
            .map(Duration::from_secs)
            .filter(|d| *d <= MAX)
            .ok_or_else(long)?;
        Ok(Keep::For(d))
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Forever => f.write_str("forever"),
            Keep::For(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

impl Keep {
    /// Rows that ended before this time (Unix ns) are past retention at
    /// `now`; None: kept forever.
    fn cutoff(self, now: SystemTime) -> Option<i64> {
        let Keep::For(d) = self else { return None };
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ns = now.saturating_sub(d).as_nanos();
        Some(i64::try_from(ns).unwrap_or(i64::MAX))
    }
}

/// `--retain-exited` and `--retain-closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub exited: Keep,
    pub closed: Keep,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            exited: DEFAULT,
            closed: DEFAULT,
        }
    }
}

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub containers: u64,
    pub listeners: u64,
    pub egress: u64,
    pub findings: u64,
}

impl Deleted {
    pub fn any(&self) -> bool {
        *self != Deleted::default()
    }
}

const LISTENERS: &str = "DELETE FROM listeners WHERE closed IS NOT NULL AND closed < $1";

const CONTAINERS: &str = "DELETE FROM containers WHERE exited IS NOT NULL AND exited < $1";

/// A container's destinations go with its row (the host's, `''`, stay).
const EGRESS: &str = "DELETE FROM egress WHERE container_id <> '' AND last_seen < $1 \
    AND NOT EXISTS (SELECT 1 FROM containers c \
    WHERE c.node = egress.node AND c.id = egress.container_id)";

/// A container's closed findings go with its row; open ones stay.
const FINDINGS: &str = "DELETE FROM findings WHERE open = 0 AND container_id <> '' \
    AND last_seen < $1 AND NOT EXISTS (SELECT 1 FROM containers c \
    WHERE c.node = findings.node AND c.id = findings.container_id)";

async fn delete(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    what: &'static str,
    sql: &'static str,
    cutoff: i64,
) -> Result<u64, RetentionError> {
    let done = sqlx::query(sql)
        .bind(cutoff)
        .execute(&mut **tx)
        .await
        .map_err(|source| RetentionError::Delete { what, source })?;
    Ok(done.rows_affected())
}

/// Delete what is past `r` at `now`, in one transaction.
pub async fn run(pool: &AnyPool, r: Retention, now: SystemTime) -> Result<Deleted, RetentionError> {
    let mut out = Deleted::default();
    let (closed, exited) = (r.closed.cutoff(now), r.exited.cutoff(now));
    if closed.is_none() && exited.is_none() {
        return Ok(out);
    }
    let begin = |source| RetentionError::Delete {
        what: "transaction",
        source,
    };
    let mut tx = pool.begin().await.map_err(begin)?;
    if let Some(t) = closed {
        out.listeners = delete(&mut tx, "listeners", LISTENERS, t).await?;
    }
    if let Some(t) = exited {
        out.containers = delete(&mut tx, "containers", CONTAINERS, t).await?;
        out.egress = delete(&mut tx, "egress", EGRESS, t).await?;
        out.findings = delete(&mut tx, "findings", FINDINGS, t).await?;
    }
    tx.commit().await.map_err(begin)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_with_their_unit_or_say_how_to_write_them() {
        let h = |n: u64| Keep::For(Duration::from_secs(n * 3600));
        assert_eq!("24h".parse::<Keep>().unwrap(), h(24));
        assert_eq!("7d".parse::<Keep>().unwrap(), h(168));
        assert_eq!(
            "90s".parse::<Keep>().unwrap(),
            Keep::For(Duration::from_secs(90))
        );
        assert_eq!(
            "0m".parse::<Keep>().unwrap(),
            Keep::For(Duration::ZERO),
            "delete at once"
        );
        assert_eq!("forever".parse::<Keep>().unwrap(), Keep::Forever);
        for bad in ["", "24", "h", "1.5h", "-1h", "24 h", "24H", "1w", "1hh"] {
            let e = bad.parse::<Keep>().unwrap_err().to_string();
            assert!(e.contains("90s, 30m, 24h, 7d"), "{bad:?}: {e}");
        }
        for long in ["3651d", "99999999999999999999d", "18446744073709551615d"] {
            let e = long.parse::<Keep>().unwrap_err().to_string();
            assert!(e.contains("forever") && !e.contains("90s"), "{long:?}: {e}");
        }
        assert_eq!(Retention::default().exited, h(24));
    }

    async fn count(pool: &AnyPool, table: &str) -> Vec<String> {
        use sqlx::Row;
        let sql = match table {
            "containers" => "SELECT id FROM containers ORDER BY id",
            "listeners" => "SELECT container_id || ':' || port FROM listeners ORDER BY 1",
            "egress" => "SELECT container_id || '>' || address FROM egress ORDER BY 1",
            _ => "SELECT container_id || '/' || rule FROM findings ORDER BY 1",
        };
        sqlx::query(sql)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    }

    /// Rows ended before the retention are deleted from a real SQLite
    /// file, with what belongs to them; what is live or recent stays.
    #[tokio::test(flavor = "current_thread")]
    async fn what_ended_before_the_retention_is_deleted_from_a_real_store() {
        let dir = std::env::temp_dir().join(format!("spyglass-ret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pool = super::super::store::open(&dir.join("inv.db"))
            .await
            .unwrap();
        const S: i64 = 1_000_000_000;
        // containers: (id, exited)
        for (id, exited) in [
            ("old", Some(10 * S)),
            ("recent", Some(95 * S)),
            ("live", None),
        ] {
            sqlx::query(
                "INSERT INTO containers (node, id, first_seen, last_seen, exited) \
                 VALUES ('n', $1, 0, $2, $3)",
            )
            .bind(id)
            .bind(exited.unwrap_or(99 * S))
            .bind(exited)
            .execute(&pool)
            .await
            .unwrap();
        }
        // listeners: (container, port, closed)
        for (c, port, closed) in [
            ("live", 1, Some(10 * S)),
            ("live", 2, Some(95 * S)),
            ("live", 3, None),
            ("", 22, Some(10 * S)),
        ] {
            sqlx::query(
                "INSERT INTO listeners (node, container_id, protocol, address, port, \
                 wildcard, since, last_seen, closed) VALUES ('n', $1, 'tcp', '0.0.0.0', $2, 1, 0, 0, $3)",
            )
            .bind(c)
            .bind(port)
            .bind(closed)
            .execute(&pool)
            .await
            .unwrap();
        }
        for c in ["old", "recent", "live", ""] {
            sqlx::query(
                "INSERT INTO egress (node, container_id, protocol, address, port, internet, \
                 first_seen, last_seen, count) VALUES ('n', $1, 'tcp', '1.1.1.1', 443, 1, 0, $2, 1)",
            )
            .bind(c)
            .bind(9 * S)
            .execute(&pool)
            .await
            .unwrap();
            for (rule, open) in [("closed", 0), ("open", 1)] {
                sqlx::query(
                    "INSERT INTO findings (node, container_id, rule, subject, severity, summary, \
                     count, first_seen, last_seen, open) VALUES ('n', $1, $2, 's', 'high', 'x', 1, 0, $3, $4)",
                )
                .bind(c)
                .bind(rule)
                .bind(9 * S)
                .bind(open)
                .execute(&pool)
                .await
                .unwrap();
            }
        }
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let keep = |secs| Keep::For(Duration::from_secs(secs));
        // forever: nothing goes
        let forever = Retention {
            exited: Keep::Forever,
            closed: Keep::Forever,
        };
        assert!(!run(&pool, forever, now).await.unwrap().any());
        let r = Retention {
            exited: keep(60),
            closed: keep(60),
        };
        let d = run(&pool, r, now).await.unwrap();
        assert_eq!(
            d,
            Deleted {
                containers: 1,
                listeners: 2,
                egress: 1,
                findings: 1
            }
        );
        assert_eq!(count(&pool, "containers").await, ["live", "recent"]);
        assert_eq!(count(&pool, "listeners").await, ["live:2", "live:3"]);
        assert_eq!(
            count(&pool, "egress").await,
            [">1.1.1.1", "live>1.1.1.1", "recent>1.1.1.1"],
            "the host's and live or recent containers' destinations stay"
        );
        assert_eq!(
            count(&pool, "findings").await,
            [
                "/closed",
                "/open",
                "live/closed",
                "live/open",
                "old/open",
                "recent/closed",
                "recent/open"
            ],
            "an open finding stays"
        );
        // a second pass deletes nothing more
        assert!(!run(&pool, r, now).await.unwrap().any());
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cutoff_is_now_minus_the_retention() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            Keep::For(Duration::from_secs(10)).cutoff(now),
            Some(990_000_000_000)
        );
        assert_eq!(Keep::Forever.cutoff(now), None);
        assert_eq!(Keep::For(Duration::from_secs(5000)).cutoff(now), Some(0));
    }
}
