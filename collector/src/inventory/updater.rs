//! The store task: fed from the ingest path once a batch is durably
//! written, it turns events into state changes ([`super::tracker`]) and
//! writes them in one transaction every [`FLUSH_EVERY`] or
//! [`FLUSH_ROWS`] rows. Ingest never waits for it: a full channel drops
//! the update, counts it and marks the store stale. A flush also ends
//! what a restarted agent did not re-announce ([`super::sweep`]); every
//! [`retention::EVERY`] the task deletes what ended longer ago than the
//! retention ([`super::retention`]).
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use sqlx::AnyPool;
use tokio::sync::mpsc;
use tracing::{info, warn};

use spyglass_proto::model::{Event, Kind};

use super::{
    changes,
    reach::Writer,
    retention::{self, Retention},
    tracker::Tracker,
    weigh,
};
use crate::delivery::Received;

/// Distinct containers a batch keeps one event each for; past it every
/// event is kept (correct, only more work for the store task).
const CONTAINERS_PER_BATCH: usize = 256;

/// Kinds that say no more than "this container is alive" (a process's
/// resource sample; a container's own is kept for its figures).
fn plain(ev: &Event) -> bool {
    matches!(
        ev.kind,
        Kind::Exec | Kind::Exit | Kind::Fork | Kind::Resources
    ) && ev.finding.is_none()
        && ev.agent.is_none()
        && changes::container_usage(ev).is_none()
}

impl Update {
    /// The part of a written batch the inventory needs, taken on the
    /// ingest task without copying: every event that says more than
    /// "alive" (network, agent, finding, lifecycle), and of the plain
    /// ones (exec, exit, fork, ...) one per container (the attributed
    /// one, else the latest); the others are dropped here, as they were
    /// before the inventory, so batches are not held longer.
    pub fn of_batch(batch: Received) -> Update {
        let received = now_ns();
        let mut events = batch.events;
        let latest = received.saturating_add(MAX_AHEAD_NS);
        let newest = events.iter().map(|e| e.time.0).max().unwrap_or(0);
        let ahead = newest.saturating_sub(latest).max(0);
        let last = newest - ahead;
        // Decided by reference, then `retain`: the events dropped are
        // dropped in place, only the few kept are moved (an event is a
        // few hundred bytes; moving each out cost a memcpy per event).
        let mut keep = vec![false; events.len()];
        // index of the plain event kept per container (a map: a batch of
        // 65,536 events over 256 containers is not scanned quadratically)
        let mut per_container: HashMap<&str, usize> = HashMap::new();
        for (i, ev) in events.iter().enumerate() {
            if !plain(ev) {
                keep[i] = true;
                continue;
            }
            let Some(c) = &ev.container else { continue };
            let room = per_container.len() < CONTAINERS_PER_BATCH;
            match per_container.get_mut(c.id.as_str()) {
                Some(j) => {
                    let old = &events[*j];
                    let (was, now) = (
                        old.container.as_ref().is_some_and(|k| k.meta.is_some()),
                        c.meta.is_some(),
                    );
                    if (now && !was) || (now == was && ev.time > old.time) {
                        keep[*j] = false;
                        keep[i] = true;
                        *j = i;
                    }
                }
                None if room => {
                    per_container.insert(c.id.as_str(), i);
                    keep[i] = true;
                }
                None => keep[i] = true,
            }
        }
        drop(per_container);
        let mut i = 0;
        events.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        // the few kept in a buffer their size: the batch's (up to 65,536
        // events' worth) would stay allocated while queued
        events.shrink_to_fit();
        let mut bytes = 0usize;
        for ev in &mut events {
            shift_times(ev, ahead, latest);
            weigh::strip(ev);
            bytes = bytes.saturating_add(weigh::bytes(ev));
        }
        let kib = (bytes / 1024) as u64 + 1;
        Update::Batch {
            node: batch.node_id,
            last,
            received,
            events,
            kib,
        }
    }
}

/// How far past the collector's clock an event's time may be for the
/// inventory: a node whose clock runs ahead, or an agent lying, would
/// pin `last_seen` (a node never stale, a finding first among the latest
/// for good). A batch whose newest event is later has all its times
/// moved back by as much, so their order and spacing stay (a close and a
/// listen again in one batch keep their order).
pub const MAX_AHEAD_NS: i64 = 5 * 60 * 1_000_000_000;

/// An event's times (and its finding's) moved back by `ahead`, and none
/// later than `latest`. The output file keeps what the agent sent; only
/// the inventory's copy moves.
fn shift_times(ev: &mut Event, ahead: i64, latest: i64) {
    let at = |t: i64| t.saturating_sub(ahead).min(latest);
    ev.time.0 = at(ev.time.0);
    if let Some(f) = ev.finding.as_mut() {
        f.first_seen.0 = at(f.first_seen.0);
        f.last_seen.0 = at(f.last_seen.0);
    }
}

/// What may wait for the store task by default, KiB (512 MiB,
/// `--store-queue-mib`); beyond it updates are dropped. Weighed by what
/// the kept events hold in memory ([`weigh`]), not counted in batches: a
/// thousand nodes each sending a small batch a second must not fill it
/// while one flush runs, a thousand nodes' startup snapshots fit while
/// the store catches up (`cargo xtask bench --fleet`), and one node sending
/// batches of a few huge events cannot make the collector hold
/// gigabytes.
pub const MAX_QUEUED_KIB: u64 = 524_288;

/// Longest time a change waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A flush starts early with this many rows waiting.
pub const FLUSH_ROWS: usize = 5_000;

impl Update {
    /// What it counts against [`MAX_QUEUED_KIB`].
    fn weight(&self) -> u64 {
        match self {
            Update::Batch { kib, .. } => *kib,
            Update::Connected { .. } => 1,
        }
    }
}

/// What ingest tells the store task.
#[derive(Debug)]
pub enum Update {
    /// What the inventory needs of a batch written and synced
    /// ([`Update::of_batch`]).
    Batch {
        node: String,
        /// The latest event time in the batch.
        last: i64,
        /// When the collector received it (Unix ns).
        received: i64,
        events: Vec<Event>,
        /// Its weight in the queue, KiB ([`weigh`]).
        kib: u64,
    },
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
    /// Updates (batches, connection changes) dropped: the queue held
    /// [`MAX_QUEUED_KIB`] already.
    pub dropped: AtomicU64,
    /// KiB queued for the store task now ([`weigh`]).
    pub queued: AtomicU64,
    /// Events those dropped updates held (what the inventory keeps of a
    /// batch, [`Update::of_batch`]).
    pub dropped_events: AtomicU64,
    /// Transactions committed, and rows written by them.
    pub flushes: AtomicU64,
    pub rows: AtomicU64,
    /// Flushes that failed (their rows are lost to the store).
    pub errors: AtomicU64,
    /// Something was dropped or failed since the start: the inventory
    /// may miss state until the agents report it again.
    pub stale: AtomicBool,
    /// Whether the database answers ([`super::reach`]).
    pub reach: super::reach::Reach,
}

/// Ingest's end of the store task: never waits.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::UnboundedSender<Update>,
    pub health: Arc<Health>,
    /// The queue's bound, KiB ([`MAX_QUEUED_KIB`] by default).
    max_kib: u64,
}

impl Feed {
    /// Hand an update to the store task, or count it dropped.
    pub fn send(&self, update: Update) {
        let h = &self.health;
        let weight = update.weight();
        let room = h
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + weight <= self.max_kib).then_some(q + weight)
            })
            .is_ok();
        let refused = if room {
            self.tx.send(update).err().map(|e| {
                h.queued.fetch_sub(weight, Ordering::AcqRel);
                e.0
            })
        } else {
            Some(update)
        };
        if let Some(update) = refused {
            h.dropped.fetch_add(1, Ordering::AcqRel);
            if let Update::Batch { events, .. } = &update {
                h.dropped_events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
            }
            if !h.stale.swap(true, Ordering::Relaxed) {
                warn!("the inventory store fell behind: updates dropped, the store is stale");
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub(super) fn internet(ip: IpAddr) -> bool {
    super::addr::is_internet(ip, &[])
}

/// Start the store task, writing with `writer`, deleting from `pool`
/// what ended longer ago than `retention`; at most `max_kib` wait for
/// it.
pub fn spawn(writer: Writer, pool: AnyPool, retention: Retention, max_kib: u64) -> Feed {
    let (tx, rx) = mpsc::unbounded_channel();
    let health = Arc::new(Health::default());
    let ended = Ended { pool, retention };
    tokio::spawn(run(writer, rx, health.clone(), ended));
    Feed {
        tx,
        health,
        max_kib,
    }
}

/// What the store task deletes past retention, and where.
struct Ended {
    pool: AnyPool,
    retention: Retention,
}

impl Ended {
    /// Delete what is past retention; what the store no longer holds is
    /// no longer taken as written.
    async fn delete(&self, tracker: &mut Tracker, health: &Health) {
        if health.reach.down().is_some() {
            return; // tried again at the next pass
        }
        let now = std::time::SystemTime::now();
        match retention::run(&self.pool, self.retention, now).await {
            Ok(d) if d.any() => {
                info!(
                    containers = d.containers,
                    listeners = d.listeners,
                    egress = d.egress,
                    findings = d.findings,
                    "inventory: deleted ended rows past retention"
                );
                tracker.forget_ended();
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "inventory retention pass failed; trying again at the next");
            }
        }
    }
}

fn take_in(tracker: &mut Tracker, update: &Update) {
    match update {
        Update::Batch {
            node,
            last,
            received,
            events,
            ..
        } => {
            // a batch without events (`last` 0) says nothing of the
            // node's time or lag
            if *last > 0 {
                tracker.apply(&changes::Change::Node { node, at: *last });
                tracker.lag(node, received.saturating_sub(*last) / 1_000_000);
            }
            let mut scratch = Vec::with_capacity(4);
            for ev in events {
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

async fn run(
    mut writer: Writer,
    mut rx: mpsc::UnboundedReceiver<Update>,
    health: Arc<Health>,
    ended: Ended,
) {
    let mut tracker = Tracker::default();
    // updates dropped so far: a new drop abandons the open restarts
    let mut dropped = 0;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retain = tokio::time::interval(retention::EVERY);
    retain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = rx.recv() => {
                let Some(update) = update else { break };
                // checked before the update: a node's snapshot_complete is
                // sent after its dropped re-announcements were counted
                let now_dropped = health.dropped.load(Ordering::Acquire);
                if now_dropped != dropped {
                    dropped = now_dropped;
                    tracker.abandon_restarts();
                }
                take_in(&mut tracker, &update);
                health.queued.fetch_sub(update.weight(), Ordering::AcqRel);
                if tracker.rows.len() >= FLUSH_ROWS {
                    writer.flush(&mut tracker, &health).await;
                }
            }
            _ = tick.tick() => writer.flush(&mut tracker, &health).await,
            _ = retain.tick() => {
                // what is written first, so the tracker's rows are not
                // taken as written while their rows are deleted
                writer.flush(&mut tracker, &health).await;
                ended.delete(&mut tracker, &health).await;
            }
        }
    }
    writer.flush(&mut tracker, &health).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spyglass_proto::model::{Container, ContainerMeta, Runtime, Timestamp};

    use super::*;

    fn ev(kind: Kind, t: i64, container: Option<(&str, bool)>) -> Event {
        let mut e = Event::new(kind, Timestamp(t), "n1".into());
        e.container = container.map(|(id, attributed)| {
            let mut c = Container::from_cgroup(id.into(), Runtime::Containerd, None);
            if attributed {
                c.fill(&Arc::new(ContainerMeta::default()));
            }
            c
        });
        e
    }

    /// Node n1's batch `sequence` of `events`.
    fn batch_of(sequence: u64, events: Vec<Event>) -> Received {
        Received {
            node_id: "n1".into(),
            stream_id: "s".into(),
            sequence,
            sent_unix_nano: 0,
            events,
        }
    }

    /// A batch of one listen whose container has a label of `value_bytes`.
    fn heavy(value_bytes: usize) -> Update {
        let mut listen = ev(Kind::Listen, 1, Some(("a", true)));
        let c = listen.container.as_mut().unwrap();
        let mut meta = ContainerMeta::default();
        meta.labels.insert("k".into(), "x".repeat(value_bytes));
        c.meta = Some(Arc::new(meta));
        let mut finding = spyglass_proto::model::samples::finding();
        finding.finding.as_mut().unwrap().evidence =
            vec![Event::new(Kind::Exec, Timestamp(1), "n1".into()); 10_000];
        Update::of_batch(batch_of(1, vec![listen, finding]))
    }

    #[test]
    fn the_queue_weighs_what_batches_hold_not_how_many_events() {
        // one node sending batches holding 8 MiB labels: the queue
        // (nobody draining it, bound 128 MiB) holds 128 MiB, then refuses
        let (tx, _rx) = mpsc::unbounded_channel();
        let feed = Feed {
            tx,
            health: Arc::new(Health::default()),
            max_kib: 128 * 1024,
        };
        for _ in 0..40 {
            feed.send(heavy(8 << 20));
        }
        let h = &feed.health;
        let queued = h.queued.load(Ordering::Relaxed);
        assert!(queued <= 128 * 1024, "{queued}");
        assert_eq!(h.dropped.load(Ordering::Relaxed), 40 - 15, "{queued}");
        assert!(h.stale.load(Ordering::Relaxed));
        // a finding's evidence (10,000 events) is not held: a small batch
        // weighs a few KiB, in a buffer its size
        let Update::Batch { events, kib, .. } = heavy(0) else {
            panic!("not a batch")
        };
        assert_eq!(events.capacity(), 2);
        assert!(events[1].finding.as_ref().unwrap().evidence.is_empty());
        assert!(kib < 8, "{kib}");
    }

    #[test]
    fn a_batch_ahead_of_the_collector_s_clock_moves_back_in_one_piece() {
        let hour = 3_600 * 1_000_000_000;
        let ahead = now_ns() + hour;
        let mut finding = spyglass_proto::model::samples::finding();
        finding.time.0 = ahead;
        // a finding claiming to last a year more is cut at the bound
        finding.finding.as_mut().unwrap().last_seen.0 = ahead + 365 * 24 * hour;
        let batch = batch_of(
            1,
            vec![
                ev(Kind::Close, ahead, Some(("a", true))),
                ev(Kind::Listen, ahead + 1_000, Some(("a", true))),
                finding,
            ],
        );
        let Update::Batch {
            last,
            received,
            events,
            ..
        } = Update::of_batch(batch)
        else {
            panic!("not a batch")
        };
        let bound = received + MAX_AHEAD_NS;
        assert_eq!(last, bound);
        // the close, then the listen again, 1 us later as sent
        assert_eq!((events[0].time.0, events[1].time.0), (bound - 1_000, bound));
        assert_eq!(events[2].time.0, bound - 1_000);
        assert_eq!(events[2].finding.as_ref().unwrap().last_seen.0, bound);
        // a batch within the bound keeps its times
        let now = now_ns();
        let Update::Batch { events, .. } = Update::of_batch(batch_of(
            2,
            vec![
                ev(Kind::Close, now, Some(("a", true))),
                ev(Kind::Close, 5, None),
            ],
        )) else {
            panic!("not a batch")
        };
        assert_eq!((events[0].time.0, events[1].time.0), (now, 5));
    }

    #[test]
    fn a_batch_keeps_one_plain_event_per_container_and_everything_else() {
        let batch = batch_of(
            1,
            vec![
                ev(Kind::Exec, 1, None),               // host exec: dropped
                ev(Kind::Exec, 2, Some(("a", false))), // replaced by the attributed
                ev(Kind::Exec, 3, Some(("a", true))),
                ev(Kind::Exit, 9, Some(("a", false))), // later but unattributed
                ev(Kind::Fork, 4, Some(("b", true))),
                ev(Kind::Exec, 5, Some(("b", true))), // later: kept instead
                ev(Kind::Listen, 6, Some(("a", false))),
                ev(Kind::Close, 7, None),
            ],
        );
        let Update::Batch {
            node, last, events, ..
        } = Update::of_batch(batch)
        else {
            panic!("not a batch")
        };
        assert_eq!((node.as_str(), last), ("n1", 9));
        let got: Vec<(Kind, i64)> = events.iter().map(|e| (e.kind, e.time.0)).collect();
        assert_eq!(
            got,
            [
                (Kind::Exec, 3),
                (Kind::Exec, 5),
                (Kind::Listen, 6),
                (Kind::Close, 7)
            ]
        );
    }
}
