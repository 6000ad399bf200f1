//! The HTTPS webhook output: every written batch's lines are POSTed to
//! one receiver, and the batch is acked to its agent only once the
//! receiver answered 2xx to every POST carrying them.
//!
//! The stream loop (`service.rs`) writes a batch and queues it here
//! ([`crate::remote::Queue`], bounded by `--webhook-queue-mib`: past it
//! streams wait and agents keep their batches in their spools). One
//! writer thread (`writer.rs`, blocking HTTP) takes whole batches up to
//! `--webhook-batch-max-bytes`, POSTs them in order and retries each
//! POST until the receiver takes it. A 4xx that may judge the content
//! (413, 400, 403, 422, ... not 401, 407, 408, 429) splits the POST in
//! halves (`split.rs`); one line the receiver refuses alone while it
//! takes the lines around it is dropped from the webhook stream, counted
//! and logged, and the rest of its batch is delivered and acked. A
//! receiver refusing every line takes none: nothing is dropped, the
//! lines are tried again and `/readyz` names it.
//!
//! Dedupe is the collector's in-memory ledger: an agent's resend within
//! one collector process is not POSTed twice. Across a collector restart
//! delivery is at least once; receivers dedupe on the `Idempotency-Key`
//! header (the same POST retried) or on each line's `delivery` place.
pub mod config;
mod frame;
mod split;
mod writer;

use std::{
    collections::BTreeMap,
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
    /// Lines dropped because the receiver refused them alone while it
    /// took the others, by the status of the refusal.
    refused_lines: Mutex<BTreeMap<u16, u64>>,
    pub retries: AtomicU64,
    /// Body bytes and lines the receiver took.
    pub bytes: AtomicU64,
    pub lines: AtomicU64,
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

    fn refused_line(&self, status: u16) {
        *self
            .refused_lines
            .lock()
            .expect("webhook refused lines lock")
            .entry(status)
            .or_default() += 1;
    }

    /// Lines dropped so far because the receiver refused them alone, by
    /// status.
    pub fn refused_lines(&self) -> BTreeMap<u16, u64> {
        self.refused_lines
            .lock()
            .expect("webhook refused lines lock")
            .clone()
    }
}

/// The batches waiting for the receiver.
pub struct Sink {
    pub queue: Queue<Pending>,
    pub health: Arc<Health>,
}

impl Sink {
    fn new(settings: &Settings) -> Self {
        Sink {
            queue: Queue::new(settings.queue_bytes),
            health: Arc::default(),
        }
    }

    /// Generation `gen`: `None` until the writer decided it. The
    /// receiver refuses lines, never whole batches: a decided batch is
    /// acked.
    pub fn outcome(&self, gen: u64) -> Option<Result<(), Failure>> {
        Some(self.queue.outcome(gen)?.map_err(Failure::Sync))
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
        h.refused_line(403);
        h.refused_line(403);
        h.refused_line(413);
        assert_eq!(h.refused_lines(), BTreeMap::from([(403, 2), (413, 1)]));
    }
}
