//! What the remote outputs (Kafka, `kafka/`; the HTTPS webhook,
//! `webhook/`) share: a bounded queue of written batches, in generation
//! order, that one writer takes from and decides, and the generations it
//! decided, which their agents' acks wait for.
//!
//! The stream loop (`service.rs`) waits in [`Queue::admit`] before it
//! writes a batch (past the budget of queued bytes streams wait, so an
//! outage backs up into the agents' spools, not the collector's memory),
//! then [`Queue::submit`]s it with the generation
//! [`crate::durable::Durability::wrote`] gave it. The writer
//! [`Queue::take`]s groups, oldest first, and once their delivery is
//! settled calls [`Queue::decided`]; [`Remote`] is what
//! [`crate::durable::Durability`] asks before an ack.
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{watch, Notify};

use crate::{
    delivery::Received,
    durable::{Failure, SyncState},
    output::Lines,
};

/// A written batch as a remote output sends it: its place and its
/// rendered lines.
#[derive(Debug)]
pub struct Written {
    pub gen: u64,
    pub node: String,
    pub stream: String,
    pub sequence: u64,
    /// The rendered lines, each followed by `\n`.
    lines: Vec<u8>,
    /// Each line's end (before its newline).
    ends: Vec<usize>,
}

impl Written {
    pub fn new(gen: u64, batch: &Received, lines: &Lines) -> Self {
        Written {
            gen,
            node: batch.node_id.clone(),
            stream: batch.stream_id.clone(),
            sequence: batch.sequence,
            lines: lines.bytes().to_vec(),
            ends: lines.ends().to_vec(),
        }
    }

    /// A batch of `lines` (tests).
    #[cfg(test)]
    pub fn of_lines(gen: u64, sequence: u64, lines: &[&str]) -> Self {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            ends.push(buf.len());
            buf.push(b'\n');
        }
        Written {
            gen,
            node: "node-1".into(),
            stream: "s1".into(),
            sequence,
            lines: buf,
            ends,
        }
    }

    /// Lines in the batch.
    pub fn count(&self) -> usize {
        self.ends.len()
    }

    /// Line `i` without its newline.
    pub fn line(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.lines[start..self.ends[i]]
    }
}

impl Queued for Written {
    fn gen(&self) -> u64 {
        self.gen
    }

    fn bytes(&self) -> usize {
        self.lines.len()
    }
}

/// A written batch waiting in a [`Queue`].
pub trait Queued {
    /// Its write generation.
    fn gen(&self) -> u64;
    /// Bytes it holds (counted against the queue's budget).
    fn bytes(&self) -> usize;
}

/// The batches waiting for a remote output, and what its writer decided.
pub struct Queue<P> {
    queue: Mutex<VecDeque<P>>,
    /// Bytes queued (admission waits while it is over the budget).
    queued: watch::Sender<usize>,
    budget: usize,
    wake: Notify,
    /// Generations the writer decided (`SyncState`'s failures: refused
    /// for now, resent by the agents).
    decided: watch::Sender<SyncState>,
    /// Streams may write (for Kafka: the positions are in the ledger).
    open: watch::Sender<bool>,
    /// The collector is stopping: no batch is taken any more.
    closing: AtomicBool,
}

impl<P: Queued> Queue<P> {
    /// A queue holding at most about `budget` bytes (streams already
    /// admitted still add their batch), closed to streams until
    /// [`Queue::open`].
    pub fn new(budget: usize) -> Self {
        Queue {
            queue: Mutex::default(),
            queued: watch::Sender::new(0),
            budget: budget.max(1),
            wake: Notify::new(),
            decided: watch::Sender::new(SyncState::default()),
            open: watch::Sender::new(false),
            closing: AtomicBool::new(false),
        }
    }

    /// Wait until a batch may be written: the queue is open and under
    /// its budget. `false`: the collector is stopping and takes no more
    /// batches. Cancel-safe.
    pub async fn admit(&self) -> bool {
        let _ = self.open.subscribe().wait_for(|o| *o).await;
        let budget = self.budget;
        let _ = self.queued.subscribe().wait_for(|q| *q < budget).await;
        !self.closing.load(Ordering::Relaxed)
    }

    /// Streams may write.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Take no more batches (the collector is stopping); what is queued
    /// is still delivered ([`Queue::drain`]).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        // streams waiting for room see it once a decision frees some
    }

    /// Wait until every queued batch was decided, at most `limit`.
    pub async fn drain(&self, limit: Duration) -> bool {
        let mut rx = self.queued.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|q| *q == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Queue a written batch; call in generation order.
    pub fn submit(&self, p: P) {
        let n = p.bytes();
        self.queue.lock().expect("remote queue lock").push_back(p);
        self.queued.send_modify(|q| *q += n);
        self.wake.notify_one();
    }

    /// Bytes waiting for a decision.
    pub fn waiting_bytes(&self) -> u64 {
        *self.queued.borrow() as u64
    }

    /// Whether no batch waits.
    pub fn idle(&self) -> bool {
        self.queue.lock().expect("remote queue lock").is_empty()
    }

    /// Wait for queued batches and take them, oldest first, up to
    /// `max_bytes` (at least one).
    pub async fn take(&self, max_bytes: usize) -> Vec<P> {
        loop {
            let notified = self.wake.notified();
            let out = self.try_take(max_bytes);
            if !out.is_empty() {
                return out;
            }
            notified.await;
        }
    }

    /// Take the queued batches, oldest first, up to `max_bytes` (at
    /// least one when any is queued); none when none is.
    pub fn try_take(&self, max_bytes: usize) -> Vec<P> {
        let mut q = self.queue.lock().expect("remote queue lock");
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(p) = q.front() {
            if !out.is_empty() && bytes + p.bytes() > max_bytes {
                break;
            }
            bytes += p.bytes();
            out.extend(q.pop_front());
        }
        out
    }

    /// The writer settled `group` with `result`; its bytes leave the
    /// queue's budget.
    pub fn decided(&self, group: &[P], result: Result<(), String>) {
        let n: usize = group.iter().map(Queued::bytes).sum();
        if let Some(last) = group.last() {
            self.decided.send_modify(|s| s.cover(last.gen(), result));
        }
        self.queued.send_modify(|q| *q = q.saturating_sub(n));
    }

    /// [`Queue::decided`] batch by batch: `result(i)` for the group's
    /// `i`th batch (runs of one result decided together, in order).
    pub fn decided_each(&self, group: &[P], result: impl Fn(usize) -> Result<(), String>) {
        let mut start = 0;
        while start < group.len() {
            let r = result(start);
            let mut end = start + 1;
            while end < group.len() && result(end) == r {
                end += 1;
            }
            self.decided(&group[start..end], r);
            start = end;
        }
    }

    /// Generation `gen`: `None` until the writer decided it.
    pub fn outcome(&self, gen: u64) -> Option<Result<(), String>> {
        self.decided.borrow().outcome(gen)
    }

    /// Wait until the writer decided `gen`: its result. Cancel-safe.
    pub async fn wait(&self, gen: u64) -> Result<(), String> {
        let mut rx = self.decided.subscribe();
        let state = rx
            .wait_for(|s| s.covered >= gen)
            .await
            .map_err(|_| "the remote output's writer ended".to_owned())?;
        state.outcome(gen).unwrap_or(Ok(()))
    }
}

/// Why a remote output is not ready (cleared by its next success), for
/// `/readyz`.
#[derive(Debug, Default)]
pub struct Down(Mutex<Option<String>>);

impl Down {
    pub fn set(&self, why: String) {
        *self.0.lock().expect("remote health lock") = Some(why);
    }

    pub fn clear(&self) {
        *self.0.lock().expect("remote health lock") = None;
    }

    pub fn why(&self) -> Option<String> {
        self.0.lock().expect("remote health lock").clone()
    }
}

/// The remote output whose acceptance gates the agents' acks, if any.
#[derive(Clone)]
pub enum Remote {
    Kafka(Arc<crate::kafka::Sink>),
    Webhook(Arc<crate::webhook::Sink>),
}

impl Remote {
    pub fn kafka(&self) -> Option<&Arc<crate::kafka::Sink>> {
        match self {
            Remote::Kafka(k) => Some(k),
            Remote::Webhook(_) => None,
        }
    }

    pub fn webhook(&self) -> Option<&Arc<crate::webhook::Sink>> {
        match self {
            Remote::Webhook(w) => Some(w),
            Remote::Kafka(_) => None,
        }
    }

    /// The output's name, as logs and `/readyz` say it.
    pub fn name(&self) -> &'static str {
        match self {
            Remote::Kafka(_) => "kafka",
            Remote::Webhook(_) => "webhook",
        }
    }

    /// Why `/readyz` answers 503 for this output, if it does.
    pub fn not_ready(&self) -> Option<String> {
        match self {
            Remote::Kafka(k) => k.health.not_ready(),
            Remote::Webhook(w) => w.health.not_ready(),
        }
    }

    /// See [`Queue::admit`].
    pub async fn admit(&self) -> bool {
        match self {
            Remote::Kafka(k) => k.queue.admit().await,
            Remote::Webhook(w) => w.queue.admit().await,
        }
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        match self {
            Remote::Kafka(k) => k.queue.close(),
            Remote::Webhook(w) => w.queue.close(),
        }
    }

    /// See [`Queue::drain`].
    pub async fn drain(&self, limit: Duration) -> bool {
        match self {
            Remote::Kafka(k) => k.queue.drain(limit).await,
            Remote::Webhook(w) => w.queue.drain(limit).await,
        }
    }

    /// Generation `gen`: `None` until decided; a webhook's receiver may
    /// have refused it for good.
    pub fn outcome(&self, gen: u64) -> Option<Result<(), Failure>> {
        match self {
            // Kafka decides a batch failed only when it fenced it
            Remote::Kafka(k) => Some(k.queue.outcome(gen)?.map_err(Failure::Fenced)),
            Remote::Webhook(w) => w.outcome(gen),
        }
    }

    /// Wait until `gen` is decided. Cancel-safe.
    pub async fn wait(&self, gen: u64) -> Result<(), String> {
        match self {
            Remote::Kafka(k) => k.queue.wait(gen).await,
            Remote::Webhook(w) => w.queue.wait(gen).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P(u64, usize);

    impl Queued for P {
        fn gen(&self) -> u64 {
            self.0
        }
        fn bytes(&self) -> usize {
            self.1
        }
    }

    #[tokio::test]
    async fn groups_are_taken_in_order_and_decide_their_generations() {
        let q = Queue::new(1000);
        q.open();
        for g in 1..=3 {
            q.submit(P(g, 100));
        }
        let group = q.take(250).await;
        assert_eq!(group.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(q.outcome(1), None);
        q.decided(&group, Ok(()));
        assert_eq!(q.outcome(2), Some(Ok(())));
        assert_eq!(q.outcome(3), None);
        assert_eq!(q.waiting_bytes(), 100);
        let group = q.try_take(250);
        assert_eq!(group.len(), 1);
        assert!(q.try_take(250).is_empty(), "nothing left to take");
        q.decided(&group, Err("broker gone".into()));
        assert_eq!(q.wait(3).await, Err("broker gone".into()));
        assert_eq!(q.waiting_bytes(), 0);
        assert!(q.idle());
        assert!(q.drain(Duration::from_millis(1)).await);
    }

    #[tokio::test]
    async fn admission_waits_until_open_and_for_room_and_stops_when_closing() {
        let q = Arc::new(Queue::new(150));
        let admitted = |q: &Arc<Queue<P>>| {
            let q = q.clone();
            tokio::spawn(async move { q.admit().await })
        };
        let first = admitted(&q);
        tokio::task::yield_now().await;
        assert!(!first.is_finished(), "admitted before it was open");
        q.open();
        assert!(first.await.unwrap());
        q.submit(P(1, 200));
        let second = admitted(&q);
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "admitted over the budget");
        assert!(!q.drain(Duration::from_millis(1)).await);
        q.close();
        let group = q.take(1 << 20).await;
        q.decided(&group, Ok(()));
        assert!(!second.await.unwrap(), "admitted while closing");
    }
}
