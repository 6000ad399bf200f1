//! The store task: fed from the ingest path once a batch is durably
//! written, it turns events into state changes ([`super::tracker`]) and
//! writes them in one transaction every [`FLUSH_EVERY`] or
//! [`FLUSH_ROWS`] rows. Ingest never waits for it: a full channel drops
//! the update, counts it and marks the store stale.
use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use sqlx::AnyPool;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{changes, store, tracker::Tracker};
use crate::delivery::Received;

/// Batches waiting for the store task; beyond it updates are dropped.
pub const CHANNEL_BATCHES: usize = 128;
/// Longest time a change waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A flush starts early with this many rows waiting.
pub const FLUSH_ROWS: usize = 5_000;

/// What ingest tells the store task.
#[derive(Debug)]
pub enum Update {
    /// A batch written and synced.
    Batch(Received),
    /// An agent's stream opened or closed.
    Connected {
        node: String,
        connected: bool,
        at: i64,
    },
}

/// The store's health, for /metrics and the API.
#[derive(Debug, Default)]
pub struct Health {
    /// Updates (batches, connection changes) dropped: the channel was full.
    pub dropped: AtomicU64,
    /// Events those dropped batches held.
    pub dropped_events: AtomicU64,
    /// Transactions committed, and rows written by them.
    pub flushes: AtomicU64,
    pub rows: AtomicU64,
    /// Flushes that failed (their rows are lost to the store).
    pub errors: AtomicU64,
    /// Something was dropped or failed since the start: the inventory
    /// may miss state until the agents report it again.
    pub stale: AtomicBool,
}

/// Ingest's end of the store task: never waits.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<Update>,
    pub health: Arc<Health>,
}

impl Feed {
    /// Hand an update to the store task, or count it dropped.
    pub fn send(&self, update: Update) {
        if let Err(e) = self.tx.try_send(update) {
            let update = match e {
                mpsc::error::TrySendError::Full(u) | mpsc::error::TrySendError::Closed(u) => u,
            };
            let h = &self.health;
            h.dropped.fetch_add(1, Ordering::Relaxed);
            if let Update::Batch(b) = &update {
                h.dropped_events
                    .fetch_add(b.events.len() as u64, Ordering::Relaxed);
            }
            if !h.stale.swap(true, Ordering::Relaxed) {
                warn!("the inventory store fell behind: updates dropped, the store is stale");
            }
        }
    }
}

pub(super) fn internet(ip: IpAddr) -> bool {
    super::addr::is_internet(ip, &[])
}

/// Start the store task on `pool`.
pub fn spawn(pool: AnyPool) -> Feed {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let health = Arc::new(Health::default());
    tokio::spawn(run(pool, rx, health.clone()));
    Feed { tx, health }
}

fn take_in(tracker: &mut Tracker, update: &Update) {
    match update {
        Update::Batch(b) => {
            let mut scratch = Vec::with_capacity(4);
            for ev in &b.events {
                scratch.clear();
                changes::derive(ev, internet, &mut scratch);
                for c in scratch.iter() {
                    tracker.apply(c);
                }
            }
        }
        Update::Connected {
            node,
            connected,
            at,
        } => tracker.connected(node, *connected, *at),
    }
}

async fn flush(pool: &AnyPool, tracker: &mut Tracker, health: &Health) {
    let rows = tracker.take();
    if rows.is_empty() {
        return;
    }
    match store::write(pool, &rows).await {
        Ok(()) => {
            health.flushes.fetch_add(1, Ordering::Relaxed);
            health.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
            debug!(rows = rows.len(), "inventory flushed");
        }
        Err(e) => {
            health.errors.fetch_add(1, Ordering::Relaxed);
            health.stale.store(true, Ordering::Relaxed);
            warn!(error = %e, "inventory flush failed; the store is stale");
        }
    }
}

async fn run(pool: AnyPool, mut rx: mpsc::Receiver<Update>, health: Arc<Health>) {
    let mut tracker = Tracker::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = rx.recv() => {
                let Some(update) = update else { break };
                take_in(&mut tracker, &update);
                if tracker.rows.len() >= FLUSH_ROWS {
                    flush(&pool, &mut tracker, &health).await;
                }
            }
            _ = tick.tick() => flush(&pool, &mut tracker, &health).await,
        }
    }
    flush(&pool, &mut tracker, &health).await;
}
