//! Whether the store can be reached, and what the store task does while
//! it cannot. Ingest never waits for the store: while the database is
//! away (a PostgreSQL restarting, a network cut) the changes stay in the
//! tracker, where many changes to one row are one row, and the rows of
//! the flush that failed are held; both are written, oldest first, when
//! the database answers again. Past [`MAX_PENDING_ROWS`] they are dropped
//! and the store is marked stale, as when an update is dropped.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use sqlx::AnyPool;
use tracing::{debug, info, warn};

use super::{
    rows::Rows,
    store::{self, StoreError},
    tracker::Tracker,
    Health,
};

/// Rows kept (held and waiting in the tracker) while the store is
/// unreachable; past it they are dropped and the store is stale.
pub const MAX_PENDING_ROWS: usize = 200_000;
/// First pause before trying an unreachable store again; it doubles up
/// to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether the store can be reached, for the API, /readyz and /metrics.
#[derive(Debug, Default)]
pub struct Reach {
    /// Why the store cannot be reached; `None`: it can (or has not
    /// failed yet).
    down: Mutex<Option<String>>,
    /// Times the store became unreachable since the start.
    pub outages: AtomicU64,
    /// Rows waiting for the store to come back.
    pub pending_rows: AtomicU64,
    /// Rows dropped because more than [`MAX_PENDING_ROWS`] waited.
    pub dropped_rows: AtomicU64,
}

impl Reach {
    /// Why the store cannot be reached now, if it cannot.
    pub fn down(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store failed to answer, for `why`.
    pub fn set_down(&self, why: String) {
        let mut d = self.lock();
        if d.is_none() {
            self.outages.fetch_add(1, Ordering::Relaxed);
            warn!(reason = %why, "inventory store unreachable: changes are kept and written when it answers again");
        }
        *d = Some(why);
    }

    fn set_up(&self) {
        if self.lock().take().is_some() {
            info!("inventory store reachable again");
        }
    }
}

/// The store task's writer: migrations when the database is first
/// reached, writes, and the rows held while it is unreachable.
pub struct Writer {
    pool: AnyPool,
    /// PostgreSQL's URL (`None`: SQLite), to tell why it is unreachable.
    url: Option<String>,
    /// The migrations have not run yet (PostgreSQL was away at start).
    migrate: bool,
    /// The rows of the flush that failed for an unreachable store.
    held: Option<Rows>,
    /// While unreachable: when to try again, and the pause after that.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Writer {
    /// A writer on `pool` (PostgreSQL at `url`); `migrate`: run the
    /// migrations before the first write (the server was away at start).
    pub fn new(pool: AnyPool, url: Option<String>, migrate: bool) -> Writer {
        Writer {
            pool,
            url,
            migrate,
            held: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    /// Write what the tracker holds (and what is held from a failed
    /// flush, first). While the store is unreachable, between tries,
    /// only keeps the wait bounded.
    pub async fn flush(&mut self, tracker: &mut Tracker, health: &Health) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            self.bound(tracker, health);
            return;
        }
        if self.migrate {
            let url = self.url.as_deref().unwrap_or_default();
            if let Err(e) = store::migrate(&self.pool, url).await {
                return self.failed(e, None, tracker, health).await;
            }
            info!("inventory store migrated");
            self.migrate = false;
        }
        if let Some(rows) = self.held.take() {
            if let Err(e) = self.write(&rows, health).await {
                return self.failed(e, Some(rows), tracker, health).await;
            }
        }
        let rows = tracker.take();
        if rows.is_empty() {
            if health.reach.down().is_some() {
                // nothing to write: ask the database whether it is back
                let probe = sqlx::query("SELECT 1").execute(&self.pool).await;
                match probe {
                    Ok(_) => self.reached(health),
                    Err(source) => {
                        let e = StoreError::Write { rows: 0, source };
                        self.failed(e, None, tracker, health).await;
                    }
                }
            }
            return;
        }
        match self.write(&rows, health).await {
            Ok(()) => self.reached(health),
            Err(e) => self.failed(e, Some(rows), tracker, health).await,
        }
    }

    async fn write(&self, rows: &Rows, health: &Health) -> Result<(), StoreError> {
        store::write(&self.pool, rows).await?;
        health.flushes.fetch_add(1, Ordering::Relaxed);
        health.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        debug!(rows = rows.len(), "inventory flushed");
        Ok(())
    }

    fn reached(&mut self, health: &Health) {
        self.retry_at = None;
        self.backoff = FIRST_BACKOFF;
        health.reach.pending_rows.store(0, Ordering::Relaxed);
        health.reach.set_up();
    }

    async fn failed(
        &mut self,
        e: StoreError,
        rows: Option<Rows>,
        tracker: &mut Tracker,
        health: &Health,
    ) {
        if e.unreachable() {
            let why = store::reason(self.url.as_deref(), &e).await;
            health.reach.set_down(why);
            if let Some(rows) = rows {
                self.held = Some(rows);
            }
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            self.bound(tracker, health);
            return;
        }
        health.errors.fetch_add(1, Ordering::Relaxed);
        health.stale.store(true, Ordering::Relaxed);
        // metadata is written when first known: re-learn it from the
        // next events rather than never write it
        tracker.forget();
        tracker.abandon_restarts();
        let n = rows.as_ref().map_or(0, Rows::len);
        warn!(error = %e, rows = n, "inventory flush failed; the store is stale until the next events write it again");
    }

    /// Keep what waits for an unreachable store under
    /// [`MAX_PENDING_ROWS`]: past it, drop it all and mark the store
    /// stale (the agents' next events write the state again).
    fn bound(&mut self, tracker: &mut Tracker, health: &Health) {
        let held = self.held.as_ref().map_or(0, Rows::len);
        let waiting = held + tracker.rows.len();
        health
            .reach
            .pending_rows
            .store(waiting as u64, Ordering::Relaxed);
        if waiting <= MAX_PENDING_ROWS {
            return;
        }
        self.held = None;
        drop(tracker.take());
        tracker.forget();
        tracker.abandon_restarts();
        health.reach.pending_rows.store(0, Ordering::Relaxed);
        health
            .reach
            .dropped_rows
            .fetch_add(waiting as u64, Ordering::Relaxed);
        health.stale.store(true, Ordering::Relaxed);
        warn!(
            rows = waiting,
            "inventory store unreachable too long: the changes kept for it are dropped; the store is stale"
        );
    }
}

/// The health endpoints with the store's state. `/readyz` keeps
/// ingest's answer (a collector whose store is away still receives and
/// writes its output: taking it out of its Service would stop that) and
/// adds whether it can answer queries, and why not; `/readyz/queries`
/// answers 503 with the reason while the store is unreachable.
pub fn readiness(
    path: &str,
    store: Option<&Reach>,
    ingest: impl FnOnce(&str) -> (u16, String),
) -> (u16, String) {
    let down = store.and_then(Reach::down);
    match (path, store, down) {
        ("/readyz/queries", None, _) => (503, "no inventory store (--store none)\n".into()),
        ("/readyz/queries", Some(_), Some(why)) => (503, format!("store unreachable: {why}\n")),
        ("/readyz/queries", Some(_), None) => (200, "ready for queries\n".into()),
        ("/readyz", Some(_), Some(why)) => {
            let (code, body) = ingest(path);
            (
                code,
                format!("{body}not ready for queries: store unreachable: {why}\n"),
            )
        }
        _ => ingest(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_keeps_ingest_and_tells_about_queries() {
        let ingest = |p: &str| (200, format!("ready {p}\n"));
        let r = Reach::default();
        assert_eq!(
            readiness("/readyz", Some(&r), ingest),
            (200, "ready /readyz\n".into())
        );
        assert_eq!(
            readiness("/readyz/queries", Some(&r), ingest),
            (200, "ready for queries\n".into())
        );
        r.set_down("connection refused".into());
        assert_eq!(
            readiness("/readyz", Some(&r), ingest),
            (
                200,
                "ready /readyz\nnot ready for queries: store unreachable: connection refused\n"
                    .into()
            )
        );
        assert_eq!(
            readiness("/readyz/queries", Some(&r), ingest),
            (503, "store unreachable: connection refused\n".into())
        );
        assert_eq!(
            readiness("/metrics", Some(&r), ingest).1,
            "ready /metrics\n"
        );
        assert_eq!(readiness("/readyz/queries", None, ingest).0, 503);
    }

    #[test]
    fn an_outage_is_counted_once_and_cleared() {
        let r = Reach::default();
        assert_eq!(r.down(), None);
        r.set_down("a".into());
        r.set_down("b".into());
        assert_eq!(r.down().as_deref(), Some("b"));
        assert_eq!(r.outages.load(Ordering::Relaxed), 1);
        r.set_up();
        assert_eq!(r.down(), None);
        r.set_down("c".into());
        assert_eq!(r.outages.load(Ordering::Relaxed), 2);
    }
}
