//! The Kafka output: every written batch is published to Kafka in a
//! transaction with its stream's position, and acked to its agent only
//! once that transaction committed.
//!
//! The stream loop (`service.rs`) writes a batch under the outputs lock
//! and takes its generation from [`crate::durable::Durability`]; here the
//! batch waits in [`Sink`]'s queue ([`crate::remote::Queue`]), in
//! generation order, for the writer task (`writer.rs`). The writer takes every batch queued (group commit),
//! produces their records and one position record per agent stream
//! (`positions.rs`) in one transaction, and commits it: the generations it
//! covered are then `Ok`, and acked. A failed transaction is aborted and
//! the same group tried again until it commits, so a stream's batches
//! commit in order and none is skipped (positions are high-water marks).
//!
//! Memory: past `--kafka-queue-mib` of queued rendered lines
//! [`crate::remote::Queue::admit`] holds streams before they write, so a Kafka outage
//! backs up into the agents' spools. Dedupe: the positions topic is read
//! back at start (read_committed) into the ledger, and a node's positions
//! again before each new agent stream's first batch, so an agent's resend
//! after a collector restart or a move between replicas is recognised.
pub mod config;
mod gate;
mod limits;
mod positions;
mod recover;
mod writer;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

pub use config::{KafkaArgs, Settings};
pub use limits::Limit;
pub use recover::{Partial, Recovered};

use crate::{
    delivery::Received,
    output::Lines,
    remote::{Down, Queue, Queued, Written},
};

/// A written batch waiting for Kafka.
#[derive(Debug)]
pub struct Pending {
    pub batch: Written,
    /// Per line: a finding (for --kafka-findings-topic).
    findings: Vec<bool>,
    /// Lines already in Kafka (a batch a crash tore; see `recover.rs`):
    /// not produced again.
    skip: BTreeSet<usize>,
    /// The offset of the claim of its node its stream made (`gate.rs`):
    /// `None` only without a refresh (never with Kafka as the output).
    claim: Option<i64>,
}

impl Pending {
    /// `skip`: lines of it Kafka already holds; `claim`: its stream's
    /// claim ([`Sink::refresh`]).
    pub fn new(
        gen: u64,
        batch: &Received,
        lines: &Lines,
        skip: BTreeSet<usize>,
        claim: Option<i64>,
    ) -> Self {
        Pending {
            batch: Written::new(gen, batch, lines),
            findings: batch
                .events
                .iter()
                .map(|e| e.kind == spyglass_proto::model::Kind::Finding)
                .collect(),
            skip,
            claim,
        }
    }

    /// The batch's events, skipped ones included.
    fn count(&self) -> usize {
        self.batch.count()
    }

    /// Each record to produce: (index in the batch, payload without its
    /// newline, is a finding).
    fn records(&self) -> impl Iterator<Item = (usize, &[u8], bool)> {
        (0..self.count())
            .zip(&self.findings)
            .filter(|(i, _)| !self.skip.contains(i))
            .map(|(i, &f)| (i, self.batch.line(i), f))
    }
}

impl Queued for Pending {
    fn gen(&self) -> u64 {
        self.batch.gen
    }

    fn bytes(&self) -> usize {
        self.batch.bytes()
    }
}

/// The first line of a batch longer than `max` bytes: (index, length).
fn oversized(lines: &Lines, max: usize) -> Option<(usize, usize)> {
    let mut start = 0;
    for (i, &end) in lines.ends().iter().enumerate() {
        if end - start > max {
            return Some((i, end - start));
        }
        start = end + 1;
    }
    None
}

/// What `/readyz` and `/metrics` show of the Kafka output.
#[derive(Debug, Default)]
pub struct Health {
    /// The positions were read and the producer is ready.
    pub started: AtomicBool,
    /// Why it is not ready (cleared by the next commit).
    down: Down,
    pub commits: AtomicU64,
    pub aborts: AtomicU64,
    pub records: AtomicU64,
    pub batches: AtomicU64,
    /// Sum of the commits' durations, microseconds.
    pub commit_micros: AtomicU64,
    pub producer_restarts: AtomicU64,
    pub oversized_batches: AtomicU64,
    /// Most bytes of one line now (`limits.rs`).
    pub record_limit: AtomicU64,
    /// Batches left out of a transaction because their node was claimed
    /// again since they arrived (`gate.rs`).
    pub fenced_batches: AtomicU64,
    /// When the transaction under way began (ms since the Unix epoch; 0:
    /// none), so a stalled one shows in `/readyz`.
    pub txn_since_ms: AtomicU64,
    /// librdkafka's words for the last refused SASL login, until a start
    /// or a new producer reports it.
    login: Down,
}

/// A transaction open longer than this makes the output not ready.
const STALLED_MS: u64 = 5_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn set_down(&self, why: String) {
        self.down.set(why);
    }

    pub fn set_up(&self) {
        self.down.clear();
        self.login.clear();
    }

    /// The brokers refused the login: `why`, in plain words.
    pub fn login_refused(&self, why: &str) {
        self.login.set(why.to_owned());
    }

    /// A login was refused since the output last worked.
    pub fn login_was_refused(&self) -> bool {
        self.login.why().is_some()
    }

    /// Why a start or a new producer failed: a refused login when the
    /// client saw one since the output last worked (the failure itself is
    /// then a timeout of what waited for the brokers), else `why`.
    pub fn explain(&self, why: String) -> String {
        self.login.why().unwrap_or(why)
    }

    /// Why `/readyz` answers 503, if it does.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(why) = self.down.why() {
            return Some(format!("kafka: {why}"));
        }
        let since = self.txn_since_ms.load(Ordering::Relaxed);
        let open = now_ms().saturating_sub(since);
        if since != 0 && open > STALLED_MS {
            return Some(format!(
                "kafka: a transaction has waited {} s for its records' acknowledgements (brokers unreachable?)",
                open / 1000
            ));
        }
        (!self.started.load(Ordering::Relaxed))
            .then(|| "kafka: starting (reading the positions topic)".to_owned())
    }

    pub fn up(&self) -> bool {
        self.not_ready().is_none()
    }

    /// A transaction committed `records` of `batches` in `took`.
    fn committed(&self, records: usize, batches: usize, took: std::time::Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.batches.fetch_add(batches as u64, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.set_up();
    }

    /// A transaction began (`true`) or ended.
    fn in_txn(&self, open: bool) {
        self.txn_since_ms
            .store(if open { now_ms().max(1) } else { 0 }, Ordering::Relaxed);
    }
}

/// An agent stream: (node, stream id).
type Stream = (String, String);

/// The batches waiting for Kafka, and what the writer committed.
pub struct Sink {
    /// Written batches in generation order; a generation is decided
    /// once a committed transaction covered it (a failed transaction is
    /// tried again, so none is decided failed).
    pub queue: Queue<Pending>,
    pub health: Arc<Health>,
    /// Most bytes of one line: the flag's, or a topic's smaller
    /// `max.message.bytes` once read (`limits.rs`).
    limit: Mutex<Limit>,
    /// Per agent stream, a batch a crash tore: its sequence and the
    /// lines Kafka holds of it.
    partial: Mutex<HashMap<Stream, (u64, BTreeSet<usize>)>>,
    settings: Settings,
    /// Partitions of the positions topic (read at start).
    positions_partitions: std::sync::atomic::AtomicI32,
    /// Refreshes at once (each is a consumer reading one partition).
    refreshing: tokio::sync::Semaphore,
    /// Claims waiting for the writer's next transaction: the node, and
    /// who waits for the claim's offset.
    claims: Mutex<Vec<ClaimRequest>>,
    claim_wake: tokio::sync::Notify,
}

/// A node to claim, and who waits for the claim's offset once committed.
struct ClaimRequest {
    node: String,
    done: tokio::sync::oneshot::Sender<i64>,
}

/// Longest wait for a claim to commit before a new stream's first batch
/// is refused (`UNAVAILABLE`: the agent resends it).
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Sink {
    pub fn new(settings: &Settings) -> Self {
        Sink {
            queue: Queue::new(settings.queue_bytes),
            health: Arc::default(),
            limit: Mutex::new(Limit::of_flag(settings.max_record_bytes)),
            partial: Mutex::default(),
            settings: settings.clone(),
            positions_partitions: std::sync::atomic::AtomicI32::new(1),
            refreshing: tokio::sync::Semaphore::new(4),
            claims: Mutex::default(),
            claim_wake: tokio::sync::Notify::new(),
        }
    }

    /// Claim `node` (a committed claim record, `gate.rs`): its offset.
    async fn claim(&self, node: &str) -> Result<i64, String> {
        let (done, offset) = tokio::sync::oneshot::channel();
        self.claims
            .lock()
            .expect("kafka claims lock")
            .push(ClaimRequest {
                node: node.to_owned(),
                done,
            });
        self.claim_wake.notify_one();
        match tokio::time::timeout(CLAIM_WAIT, offset).await {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(_)) => Err(format!(
                "the claim of node {node} was not confirmed by Kafka (a commit that may or may not \
                 have gone through); the agent resends"
            )),
            Err(_) => Err(format!(
                "claiming node {node} in Kafka took over {} s",
                CLAIM_WAIT.as_secs()
            )),
        }
    }

    /// The claims to write in the next transaction.
    fn take_claims(&self) -> Vec<ClaimRequest> {
        std::mem::take(&mut *self.claims.lock().expect("kafka claims lock"))
    }

    /// What Kafka holds of `node`'s streams now: another replica may have
    /// written its batches since this one last did (the agent moved).
    /// Claim the node, read its positions partition past the claim and
    /// recover past it, so a batch already in Kafka is not written twice
    /// and one another replica still holds is fenced there (`gate.rs`).
    /// Call it before a new stream's first batch: the stream's claim
    /// (every batch of the stream carries it), and what Kafka holds: all
    /// it will hold of the node's batches sent before.
    pub async fn refresh(&self, node: &str) -> Result<(i64, Recovered), String> {
        let claim = self.claim(node).await?;
        let _one = self.refreshing.acquire().await;
        let (s, node) = (self.settings.clone(), node.to_owned());
        let parts = self.positions_partitions.load(Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let marks = positions::read_node(&s, &node, parts, Some(claim))?;
            recover::scan(&s, marks)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading where node's streams stand in Kafka: {e}"))
        .map(|r| (claim, r))
    }

    /// The first line of `lines` over the record limit: (index, length,
    /// the limit).
    pub fn oversized(&self, lines: &Lines) -> Option<(usize, usize, Limit)> {
        let limit = self.limit.lock().expect("kafka limit lock");
        oversized(lines, limit.line_bytes).map(|(i, len)| (i, len, limit.clone()))
    }

    fn set_limit(&self, limit: Limit) {
        self.health
            .record_limit
            .store(limit.line_bytes as u64, Ordering::Relaxed);
        *self.limit.lock().expect("kafka limit lock") = limit;
    }

    /// The producer's `message.max.bytes` under the current limit.
    fn producer_max(&self) -> usize {
        self.limit.lock().expect("kafka limit lock").producer_max()
    }

    /// Remember the torn batches recovery found.
    pub fn torn(&self, partial: Vec<Partial>) {
        let mut map = self.partial.lock().expect("kafka partial lock");
        for p in partial {
            map.insert((p.node, p.stream), (p.sequence, p.present));
        }
    }

    /// The lines of batch `seq` of a stream that Kafka already holds
    /// (none but for a batch a crash tore). A later batch of the stream
    /// ends the record.
    pub fn present(&self, node: &str, stream: &str, seq: u64) -> BTreeSet<usize> {
        let mut map = self.partial.lock().expect("kafka partial lock");
        let key = (node.to_owned(), stream.to_owned());
        match map.get(&key) {
            Some((s, present)) if *s == seq => present.clone(),
            Some((s, _)) if *s < seq => {
                map.remove(&key);
                BTreeSet::new()
            }
            _ => BTreeSet::new(),
        }
    }

    /// The positions are in the ledger: streams may write.
    pub fn open(&self) {
        self.queue.open();
        self.health.started.store(true, Ordering::Relaxed);
    }
}

/// Start the Kafka writer. It connects, reads the positions topic and
/// hands its marks over the returned channel: put them in the ledger,
/// then call [`Sink::open`]. It retries while Kafka is unreachable
/// (`/readyz` says why meanwhile).
pub fn start(settings: Settings) -> (Arc<Sink>, tokio::sync::oneshot::Receiver<Recovered>) {
    let sink = Arc::new(Sink::new(&settings));
    sink.set_limit(Limit::of_flag(settings.max_record_bytes));
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(writer::run(sink.clone(), settings, tx));
    (sink, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_lines_and_route_findings() {
        let p = Pending {
            batch: Written::of_lines(1, 1, &[r#"{"a":1}"#, r#"{"f":2}"#]),
            findings: vec![false, true],
            skip: BTreeSet::new(),
            claim: None,
        };
        let got: Vec<_> = p.records().collect();
        assert_eq!(
            got,
            [(0, &b"{\"a\":1}"[..], false), (1, &b"{\"f\":2}"[..], true)]
        );
        let torn = Pending {
            skip: [0].into(),
            ..p
        };
        let got: Vec<_> = torn.records().collect();
        assert_eq!(got, [(1, &b"{\"f\":2}"[..], true)]);
        assert_eq!(torn.count(), 2);
    }
}
