//! The HTTPS webhook output: every written batch's lines are POSTed to
//! one receiver, and the batch is acked to its agent only once the
//! receiver answered 2xx to every POST carrying them.
//!
//! The stream loop (`service.rs`) writes a batch and queues it here
//! ([`crate::remote::Queue`], bounded by `--webhook-queue-mib`: past it
//! streams wait and agents keep their batches in their spools). One
//! writer thread (`writer.rs`, blocking HTTP) takes whole batches up to
//! `--webhook-batch-max-bytes`, POSTs them in order and retries each
//! POST until the receiver takes it; a 413 splits the POST in halves,
//! and a single line still refused gets its batch refused to the agent
//! (INVALID_ARGUMENT, as an event over Kafka's record limit).
//!
//! Dedupe is the collector's in-memory ledger: an agent's resend within
//! one collector process is not POSTed twice. Across a collector restart
//! delivery is at least once; receivers dedupe on the `Idempotency-Key`
//! header (the same POST retried) or on each line's `delivery` place.
pub mod config;
mod frame;
mod writer;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

pub use config::{Settings, WebhookArgs};

use crate::{
    durable::Failure,
    remote::{Down, Queue},
};

/// A written batch waiting for the receiver.
pub use crate::remote::Written as Pending;

/// What `/readyz` and `/metrics` show of the webhook output.
#[derive(Debug, Default)]
pub struct Health {
    /// Why it is not ready (cleared by the next POST taken).
    down: Down,
    /// POSTs answered, by status (`error`: no answer: connection, TLS,
    /// timeout).
    posts: Mutex<BTreeMap<String, u64>>,
    pub retries: AtomicU64,
    /// Body bytes and lines the receiver took.
    pub bytes: AtomicU64,
    pub lines: AtomicU64,
    /// Batches refused because the receiver refused one of their lines
    /// alone (413).
    pub oversized: AtomicU64,
}

impl Health {
    /// Why `/readyz` answers 503, if it does.
    pub fn not_ready(&self) -> Option<String> {
        self.down.why().map(|why| format!("webhook: {why}"))
    }

    pub fn up(&self) -> bool {
        self.not_ready().is_none()
    }

    fn answered(&self, status: &str) {
        *self
            .posts
            .lock()
            .expect("webhook posts lock")
            .entry(status.to_owned())
            .or_default() += 1;
    }

    /// POSTs answered so far, by status.
    pub fn posts(&self) -> BTreeMap<String, u64> {
        self.posts.lock().expect("webhook posts lock").clone()
    }
}

/// Batches the receiver refused (most recent kept), so their acks and
/// those of their resends say so.
const REFUSALS_KEPT: usize = 1024;

/// A refused batch: generation, node, stream, sequence, why.
type Refusal = (u64, String, String, u64, String);

/// The batches waiting for the receiver, and what it refused.
pub struct Sink {
    pub queue: Queue<Pending>,
    pub health: Arc<Health>,
    refused: Mutex<VecDeque<Refusal>>,
}

impl Sink {
    fn new(settings: &Settings) -> Self {
        Sink {
            queue: Queue::new(settings.queue_bytes),
            health: Arc::default(),
            refused: Mutex::default(),
        }
    }

    /// Record a refusal; call before the writer decides its generation.
    fn refuse(&self, p: &Pending, why: String) {
        let mut r = self.refused.lock().expect("webhook refusals lock");
        if r.len() >= REFUSALS_KEPT {
            r.pop_front();
        }
        r.push_back((p.gen, p.node.clone(), p.stream.clone(), p.sequence, why));
    }

    /// Generation `gen`: `None` until the writer decided it.
    pub fn outcome(&self, gen: u64) -> Option<Result<(), Failure>> {
        let o = self.queue.outcome(gen)?;
        let r = self.refused.lock().expect("webhook refusals lock");
        match r.iter().find(|f| f.0 == gen) {
            Some(f) => Some(Err(Failure::Refused(f.4.clone()))),
            None => Some(o.map_err(Failure::Sync)),
        }
    }

    /// Why the receiver refused batch `sequence` of a stream, if it did
    /// (for a resend found a duplicate).
    pub fn refused(&self, node: &str, stream: &str, sequence: u64) -> Option<String> {
        let r = self.refused.lock().expect("webhook refusals lock");
        r.iter()
            .find(|f| f.3 == sequence && f.1 == node && f.2 == stream)
            .map(|f| f.4.clone())
    }
}

/// Start the writer thread; the queue is open at once.
pub fn start(settings: Settings) -> std::io::Result<Arc<Sink>> {
    let sink = Arc::new(Sink::new(&settings));
    sink.queue.open();
    let rt = tokio::runtime::Handle::current();
    let s = sink.clone();
    std::thread::Builder::new()
        .name("webhook".into())
        .spawn(move || writer::run(&s, &settings, &rt))?;
    Ok(sink)
}

/// Count a POST's answer (`None`: none came).
fn count_answer(h: &Health, status: Option<u16>) {
    match status {
        Some(s) => h.answered(&s.to_string()),
        None => h.answered("error"),
    }
}

/// The receiver took `lines` lines in `bytes` bytes.
fn count_taken(h: &Health, lines: usize, bytes: usize) {
    h.lines.fetch_add(lines as u64, Ordering::Relaxed);
    h.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    h.down.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(gen: u64, seq: u64) -> Pending {
        Pending::of_lines(gen, seq, &["{}"])
    }

    fn settings() -> Settings {
        config::WebhookArgs {
            url: Some("http://127.0.0.1:1/x".into()),
            ca_file: None,
            token_file: None,
            auth_scheme: "Bearer".into(),
            headers: vec![],
            body: config::Body::Ndjson,
            batch_max_bytes: 1 << 20,
            queue_mib: 1,
            timeout_s: 1,
            max_backoff_s: 1,
        }
        .settings()
        .unwrap()
        .unwrap()
    }

    #[test]
    fn a_refused_batch_is_refused_for_its_generation_and_its_resends() {
        let sink = Sink::new(&settings());
        sink.queue.open();
        let (a, b) = (pending(1, 10), pending(2, 11));
        assert_eq!(a.line(0), b"{}");
        sink.refuse(&b, "413".into());
        sink.queue.submit(a);
        sink.queue.submit(b);
        let group = futures_take(&sink);
        assert_eq!(sink.outcome(1), None);
        sink.queue.decided(&group, Ok(()));
        assert_eq!(sink.outcome(1), Some(Ok(())));
        assert_eq!(sink.outcome(2), Some(Err(Failure::Refused("413".into()))));
        assert_eq!(sink.refused("node-1", "s1", 11).as_deref(), Some("413"));
        assert_eq!(sink.refused("node-1", "s1", 10), None);
        assert_eq!(sink.refused("node-1", "other", 11), None);
        for i in 0..REFUSALS_KEPT as u64 {
            sink.refuse(&pending(100 + i, 100 + i), "x".into());
        }
        assert_eq!(
            sink.refused("node-1", "s1", 11),
            None,
            "the oldest is let go"
        );
    }

    fn futures_take(sink: &Sink) -> Vec<Pending> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(sink.queue.take(1 << 20))
    }

    #[test]
    fn health_names_the_reason_and_counts_answers() {
        let h = Health::default();
        assert!(h.up());
        h.down.set("https://h/x answered 503".into());
        assert_eq!(
            h.not_ready().as_deref(),
            Some("webhook: https://h/x answered 503")
        );
        count_answer(&h, Some(503));
        count_answer(&h, None);
        count_taken(&h, 3, 30);
        assert!(h.up());
        assert_eq!(h.posts().get("503"), Some(&1));
        assert_eq!(h.posts().get("error"), Some(&1));
        assert_eq!(h.lines.load(Ordering::Relaxed), 3);
    }
}
