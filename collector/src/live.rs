//! The live event stream (`GET /api/v1/events?follow=1&...`): the events
//! of every batch the collector accepts, filtered per client, as
//! newline-delimited JSON in the shape of the JSON lines output (the
//! shared renderer, [`crate::output::render_line`]).
//!
//! Ingest never waits for a client: each client has a bounded queue of
//! [`QUEUE_LINES`] lines, filled with `try_send`. A client that reads too
//! slowly loses lines; the next line it gets is a marker
//! `{"missed":N}` saying how many, and the loss is counted
//! (`spyglass_collector_api_stream_dropped_total`). With no client the
//! hook costs one atomic load per batch: nothing is rendered.
//!
//! An empty line is a keepalive, sent when the stream opens and after
//! [`KEEPALIVE`] without a line, so a client that went away is noticed
//! (and its place freed) even when nothing matches its filters.
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, RwLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use spyglass_proto::model::{Event, Kind};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{
    delivery::Received,
    inventory::filters::FilterError,
    output::{render_line, Format, Lines},
};

/// Lines one client's queue holds; past it the client misses lines.
pub const QUEUE_LINES: usize = 1024;
/// Longest quiet time before a keepalive (an empty line).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Lines queued for a client are sent together up to this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Default most clients streaming at once (`--api-max-stream-clients`).
pub const DEFAULT_MAX_CLIENTS: usize = 64;
/// Longest filter value accepted (as the inventory's filters).
const MAX_VALUE: usize = 1024;
/// The query names the stream takes.
const NAMES: &[&str] = &["follow", "node", "namespace", "pod", "kind", "rule"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LiveError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(
        "/api/v1/events only streams: add follow=1 (the collector keeps no event \
         history to list; its output file is the record)"
    )]
    NoFollow,
    #[error(
        "{0} clients are streaming events already (--api-max-stream-clients); \
         try again when one has left"
    )]
    Full(usize),
}

/// What a client asks for: every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub node: Option<String>,
    /// The containerd namespace or the Kubernetes pod namespace (as the
    /// inventory's `namespace` filter).
    pub namespace: Option<String>,
    /// The Kubernetes pod name.
    pub pod: Option<String>,
    /// Any of these kinds.
    pub kinds: Option<Vec<Kind>>,
    /// A finding's rule id.
    pub rule: Option<String>,
}

fn bad(name: &'static str, why: String) -> LiveError {
    FilterError::Bad { name, why }.into()
}

impl Filter {
    /// The filter of a query string; `follow=1` (or `true`) is required.
    pub fn parse(pairs: &[(String, String)]) -> Result<Filter, LiveError> {
        let mut f = Filter::default();
        let mut follow = false;
        let mut seen: Vec<&'static str> = Vec::new();
        for (name, value) in pairs {
            let Some(&name) = NAMES.iter().find(|n| **n == name) else {
                return Err(FilterError::Unknown {
                    name: name.chars().take(64).collect(),
                    known: NAMES.join(", "),
                }
                .into());
            };
            if seen.contains(&name) {
                return Err(FilterError::Twice { name }.into());
            }
            seen.push(name);
            if value.is_empty() || value.len() > MAX_VALUE {
                return Err(bad(name, format!("give a value of 1 to {MAX_VALUE} bytes")));
            }
            let v = Some(value.clone());
            match name {
                "follow" => {
                    follow = matches!(value.as_str(), "1" | "true");
                    if !follow && !matches!(value.as_str(), "0" | "false") {
                        return Err(bad(name, format!("{value:?} is not 1 or true")));
                    }
                }
                "node" => f.node = v,
                "namespace" => f.namespace = v,
                "pod" => f.pod = v,
                "rule" => f.rule = v,
                _ => f.kinds = Some(kinds(value)?),
            }
        }
        if !follow {
            return Err(LiveError::NoFollow);
        }
        Ok(f)
    }

    /// Whether `ev` passes every given field.
    pub fn matches(&self, ev: &Event) -> bool {
        let c = ev.container.as_ref();
        let pod = c.and_then(|c| c.pod.as_ref());
        let given = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        self.kinds.as_ref().is_none_or(|k| k.contains(&ev.kind))
            && given(&self.node, Some(&ev.node))
            && given(&self.pod, pod.map(|p| p.name.as_str()))
            && given(&self.rule, ev.finding.as_ref().map(|f| &*f.rule_id))
            && self.namespace.as_deref().is_none_or(|ns| {
                c.and_then(|c| c.meta.as_ref())
                    .is_some_and(|m| m.namespace == ns)
                    || pod.is_some_and(|p| p.namespace == ns)
            })
    }
}

/// `kind=exec,connect`: each a kind word.
fn kinds(value: &str) -> Result<Vec<Kind>, LiveError> {
    value
        .split(',')
        .map(|w| {
            Kind::parse(w.trim()).ok_or_else(|| {
                bad(
                    "kind",
                    format!(
                        "{:?} is not one of {}",
                        w.chars().take(64).collect::<String>(),
                        Kind::WORDS.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// One client: what it asked for, its queue, what it missed.
struct Client {
    id: u64,
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
    /// Lines dropped since its last marker (shared with its stream,
    /// which says it when its queue is empty; `swap` on both sides, so
    /// each is said once).
    missed: Arc<AtomicU64>,
}

/// The marker a lagging client gets before its next line.
fn marker(missed: u64) -> Bytes {
    Bytes::from(format!("{{\"missed\":{missed}}}\n"))
}

impl Client {
    /// Queue `line` (never waits); a full queue counts it missed. A
    /// pending marker goes first, so it stands where the gap is.
    fn offer(&self, line: &Bytes, dropped: &AtomicU64) {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        let room = missed == 0 || {
            let sent = self.tx.try_send(marker(missed)).is_ok();
            if !sent {
                self.missed.fetch_add(missed, Ordering::Relaxed);
            }
            sent
        };
        let queued = room
            && match self.tx.try_send(line.clone()) {
                Ok(()) => true,
                // gone: its stream ends and its place is freed
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(_)) => false,
            };
        if !queued {
            self.missed.fetch_add(1, Ordering::Relaxed);
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The clients streaming now, fed by ingest.
pub struct Hub {
    max_clients: usize,
    /// Copied on (rare) change, read by ingest without holding the lock.
    clients: RwLock<Arc<Vec<Arc<Client>>>>,
    /// `clients.len()`, read by ingest before anything else.
    open: AtomicUsize,
    next_id: AtomicU64,
    /// Lines dropped for clients that read too slowly.
    pub dropped: AtomicU64,
    /// Clients refused: `max_clients` were streaming.
    pub refused: AtomicU64,
}

impl Hub {
    pub fn new(max_clients: usize) -> Hub {
        Hub {
            max_clients: max_clients.max(1),
            clients: RwLock::new(Arc::new(Vec::new())),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Hand an accepted batch's events to the clients whose filters
    /// they match. Each matching event's line is taken from `rendered`
    /// (the output's JSON lines of this batch) when given, else rendered
    /// once. Never waits.
    pub fn publish(&self, batch: &Received, rendered: Option<&Lines>) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let clients = self.clients.read().expect("live clients lock").clone();
        for (index, ev) in batch.events.iter().enumerate() {
            let mut line: Option<Bytes> = None;
            for c in clients.iter().filter(|c| c.filter.matches(ev)) {
                let line = line.get_or_insert_with(|| {
                    if let Some(l) = rendered.and_then(|r| r.line(index)) {
                        return Bytes::copy_from_slice(l);
                    }
                    let mut buf = Vec::with_capacity(1024);
                    render_line(Format::Json, ev, &batch.delivery(index), &mut buf);
                    buf.push(b'\n');
                    Bytes::from(buf)
                });
                c.offer(line, &self.dropped);
            }
        }
    }

    /// A new client with `filter`, or [`LiveError::Full`].
    pub fn subscribe(self: &Arc<Self>, filter: Filter) -> Result<Follow, LiveError> {
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        let missed = Arc::new(AtomicU64::new(0));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients.write().expect("live clients lock");
        if clients.len() >= self.max_clients {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(LiveError::Full(self.max_clients));
        }
        info!(client = id, filter = ?filter, "event stream client joined");
        let mut next = Vec::clone(&clients);
        next.push(Arc::new(Client {
            id,
            filter,
            tx,
            missed: missed.clone(),
        }));
        self.open.store(next.len(), Ordering::Relaxed);
        *clients = Arc::new(next);
        Ok(Follow {
            rx,
            missed,
            keepalive: Box::pin(tokio::time::sleep(Duration::ZERO)),
            slot: Slot {
                hub: self.clone(),
                id,
            },
        })
    }

    fn leave(&self, id: u64) {
        let mut clients = self.clients.write().expect("live clients lock");
        let next: Vec<_> = clients.iter().filter(|c| c.id != id).cloned().collect();
        self.open.store(next.len(), Ordering::Relaxed);
        *clients = Arc::new(next);
        debug!(client = id, "event stream client left");
    }

    /// Clients streaming now.
    pub fn clients(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The stream's metric families, Prometheus text.
    pub fn metrics(&self, s: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, kind, v) in [
            (
                "spyglass_collector_api_stream_clients",
                "Clients following the live event stream (/api/v1/events?follow=1).",
                "gauge",
                self.clients() as u64,
            ),
            (
                "spyglass_collector_api_stream_dropped_total",
                "Event lines dropped for stream clients that read too slowly (each such client is told how many with a {\"missed\":N} line).",
                "counter",
                get(&self.dropped),
            ),
            (
                "spyglass_collector_api_stream_refused_total",
                "Stream clients refused with 503: --api-max-stream-clients were streaming.",
                "counter",
                get(&self.refused),
            ),
        ] {
            spyglass_proto::endpoints::single(s, name, help, kind, v);
        }
    }
}

/// A client's place; freed when its stream is dropped (the client went
/// away, or the connection broke).
struct Slot {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}

/// One client's response body: its lines, and keepalives.
pub struct Follow {
    rx: mpsc::Receiver<Bytes>,
    /// Its client's missed lines, said here when the queue is empty
    /// (after the last burst no line may come to carry the marker).
    missed: Arc<AtomicU64>,
    keepalive: Pin<Box<tokio::time::Sleep>>,
    slot: Slot,
}

impl Follow {
    /// `first` and the lines queued behind it, up to [`CHUNK_BYTES`], as
    /// one chunk: a client keeping up with a busy stream gets a few large
    /// writes rather than one per line.
    fn more(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        let mut chunk: Option<Vec<u8>> = None;
        while chunk.as_ref().map_or(first.len(), Vec::len) < CHUNK_BYTES {
            let Poll::Ready(Some(line)) = self.rx.poll_recv(cx) else {
                break;
            };
            chunk
                .get_or_insert_with(|| {
                    let mut c = Vec::with_capacity(CHUNK_BYTES + 4096);
                    c.extend_from_slice(&first);
                    c
                })
                .extend_from_slice(&line);
        }
        chunk.map_or(first, Bytes::from)
    }
}

impl tokio_stream::Stream for Follow {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = tokio::time::Instant::now() + KEEPALIVE;
        if let Poll::Ready(line) = this.rx.poll_recv(cx) {
            this.keepalive.as_mut().reset(next);
            let Some(first) = line else {
                return Poll::Ready(None);
            };
            return Poll::Ready(Some(Ok(this.more(first, cx))));
        }
        // the queue is empty (not only out of this turn's budget): every
        // line before the gap is out
        if this.rx.is_empty() {
            let missed = this.missed.swap(0, Ordering::Relaxed);
            if missed > 0 {
                return Poll::Ready(Some(Ok(marker(missed))));
            }
        }
        if this.keepalive.as_mut().poll(cx).is_ready() {
            this.keepalive.as_mut().reset(next);
            debug!(client = this.slot.id, "event stream keepalive");
            return Poll::Ready(Some(Ok(Bytes::from_static(b"\n"))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spyglass_proto::model::{
        Action, Container, ContainerMeta, FindingInfo, Pod, Runtime, Severity, Timestamp,
    };
    use tokio_stream::StreamExt;

    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<Filter, LiveError> {
        let p: Vec<_> = pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        Filter::parse(&p)
    }

    /// An event on `node`, in containerd namespace `ns` (and pod
    /// `pod` of namespace `pod_ns` when given).
    fn ev(kind: Kind, node: &str, ns: Option<&str>, pod: Option<(&str, &str)>) -> Event {
        let mut e = Event::new(kind, Timestamp(1), node.into());
        if let Some(ns) = ns {
            let mut c = Container::from_cgroup("c1".into(), Runtime::Containerd, None);
            c.pod = pod.map(|(pns, name)| Pod {
                name: name.into(),
                namespace: pns.into(),
                uid: "u".into(),
                labels: BTreeMap::new(),
            });
            c.meta = Some(Arc::new(ContainerMeta {
                namespace: ns.into(),
                ..ContainerMeta::default()
            }));
            e.container = Some(c);
        }
        e
    }

    fn finding(rule: &'static str) -> Event {
        let mut e = ev(Kind::Finding, "n1", Some("default"), None);
        e.finding = Some(Box::new(FindingInfo {
            rule_id: rule.into(),
            severity: Severity::High,
            mitre: None,
            summary: "s".into(),
            subject: String::new(),
            action: Action::Alert,
            outcome: None,
            count: 1,
            resolved: false,
            restarts: None,
            first_seen: Timestamp(1),
            last_seen: Timestamp(1),
            evidence: Vec::new(),
        }));
        e
    }

    #[test]
    fn follow_is_required_and_names_and_kinds_are_checked() {
        assert_eq!(q(&[]).unwrap_err(), LiveError::NoFollow);
        assert_eq!(q(&[("follow", "0")]).unwrap_err(), LiveError::NoFollow);
        assert_eq!(q(&[("follow", "1")]).unwrap(), Filter::default());
        assert_eq!(
            q(&[("follow", "1"), ("nodes", "a")]).unwrap_err().to_string(),
            "unknown filter \"nodes\"; this endpoint takes: follow, node, namespace, pod, kind, rule"
        );
        let e = q(&[("follow", "1"), ("kind", "exec,conect")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("filter kind: \"conect\" is not one of exec, exit,"),
            "{e}"
        );
        assert_eq!(
            q(&[("follow", "yes")]).unwrap_err().to_string(),
            "filter follow: \"yes\" is not 1 or true"
        );
        assert_eq!(
            q(&[("follow", "1"), ("pod", "")]).unwrap_err().to_string(),
            "filter pod: give a value of 1 to 1024 bytes"
        );
        assert_eq!(
            q(&[("follow", "1"), ("pod", "a"), ("pod", "b")]).unwrap_err(),
            LiveError::Filter(FilterError::Twice { name: "pod" })
        );
        let f = q(&[("follow", "true"), ("kind", "exec,connect"), ("node", "n1")]).unwrap();
        assert_eq!(f.kinds, Some(vec![Kind::Exec, Kind::Connect]));
        assert_eq!(f.node.as_deref(), Some("n1"));
    }

    #[test]
    fn filters_match_typed_fields() {
        let f = |pairs: &[(&str, &str)]| {
            let mut p = vec![("follow", "1")];
            p.extend_from_slice(pairs);
            q(&p).unwrap()
        };
        let exec_x = ev(Kind::Exec, "n1", Some("x"), None);
        let exec_y = ev(Kind::Exec, "n1", Some("y"), None);
        let host = ev(Kind::Exec, "n1", None, None);
        let pod = ev(Kind::Connect, "n2", Some("k8s.io"), Some(("shop", "web-1")));
        let ns_x_exec = f(&[("namespace", "x"), ("kind", "exec")]);
        assert!(ns_x_exec.matches(&exec_x));
        assert!(!ns_x_exec.matches(&exec_y));
        assert!(!ns_x_exec.matches(&host));
        assert!(!ns_x_exec.matches(&ev(Kind::Exit, "n1", Some("x"), None)));
        // the namespace is the containerd one or the pod's
        assert!(f(&[("namespace", "shop")]).matches(&pod));
        assert!(f(&[("namespace", "k8s.io")]).matches(&pod));
        assert!(f(&[("pod", "web-1"), ("node", "n2")]).matches(&pod));
        assert!(!f(&[("pod", "web-1"), ("node", "n1")]).matches(&pod));
        assert!(!f(&[("pod", "web")]).matches(&pod));
        assert!(!f(&[("pod", "web-1")]).matches(&exec_x));
        assert!(f(&[("kind", "exec,connect")]).matches(&pod));
        assert!(f(&[]).matches(&host));
        let rule = f(&[("rule", "exec.shell")]);
        assert!(rule.matches(&finding("exec.shell")));
        assert!(!rule.matches(&finding("exec.shell2")));
        assert!(!rule.matches(&exec_x));
    }

    fn batch(events: Vec<Event>) -> Received {
        Received {
            node_id: "n1".into(),
            stream_id: "s".into(),
            sequence: 7,
            sent_unix_nano: 0,
            events,
        }
    }

    /// A stream read line by line (its chunks hold several).
    struct Reader {
        s: Follow,
        pending: std::collections::VecDeque<String>,
    }

    fn reader(s: Follow) -> Reader {
        Reader {
            s,
            pending: Default::default(),
        }
    }

    /// The next non-keepalive line of a stream, with its newline.
    async fn next_line(r: &mut Reader) -> String {
        loop {
            if let Some(l) = r.pending.pop_front() {
                return l;
            }
            let b = r.s.next().await.unwrap().unwrap();
            let text = String::from_utf8(b.to_vec()).unwrap();
            for l in text.split_inclusive('\n').filter(|l| *l != "\n") {
                r.pending.push_back(l.to_owned());
            }
        }
    }

    #[tokio::test]
    async fn a_client_gets_its_events_as_the_json_output_renders_them() {
        let hub = Arc::new(Hub::new(2));
        let mut s = reader(
            hub.subscribe(q(&[("follow", "1"), ("namespace", "x")]).unwrap())
                .unwrap(),
        );
        assert_eq!(hub.clients(), 1);
        let b = batch(vec![
            ev(Kind::Exec, "n1", Some("y"), None),
            ev(Kind::Exec, "n1", Some("x"), None),
            ev(Kind::Exit, "n1", Some("x"), None),
        ]);
        let line = |i: usize| {
            let mut l = Vec::new();
            render_line(Format::Json, &b.events[i], &b.delivery(i), &mut l);
            l.push(b'\n');
            String::from_utf8(l).unwrap()
        };
        // rendered here, or taken from the output's JSON lines: the same
        hub.publish(&b, None);
        let mut out = crate::output::Outputs::new(
            Format::Json,
            crate::output::LineSink::open("-", 0, 0).unwrap(),
            None,
        );
        out.render_batch(&b);
        assert_eq!(out.json_lines().unwrap().line(1), Some(line(1).as_bytes()));
        let lines = out.json_lines().unwrap();
        assert_eq!(lines.line(0), Some(line(0).as_bytes()));
        assert_eq!(lines.line(3), None);
        hub.publish(&b, out.json_lines());
        for _ in 0..2 {
            assert_eq!(next_line(&mut s).await, line(1));
            assert_eq!(next_line(&mut s).await, line(2));
        }
        drop(s);
        assert_eq!(
            hub.clients(),
            0,
            "a client's place is freed with its stream"
        );
    }

    #[tokio::test]
    async fn clients_beyond_the_cap_are_refused() {
        let hub = Arc::new(Hub::new(1));
        let _a = hub.subscribe(Filter::default()).unwrap();
        assert_eq!(
            hub.subscribe(Filter::default()).err(),
            Some(LiveError::Full(1))
        );
        assert_eq!(hub.refused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_slow_client_is_told_what_it_missed_and_goes_on() {
        let hub = Arc::new(Hub::new(4));
        let mut s = reader(hub.subscribe(Filter::default()).unwrap());
        let extra = 5;
        let events = (0..QUEUE_LINES + extra)
            .map(|_| ev(Kind::Exec, "n1", None, None))
            .collect();
        // ingest does not wait: the queue fills, the rest is counted
        hub.publish(&batch(events), None);
        assert_eq!(hub.dropped.load(Ordering::Relaxed), extra as u64);
        for _ in 0..QUEUE_LINES {
            let l = next_line(&mut s).await;
            assert!(l.starts_with("{\"kind\":\"exec\""), "{l}");
        }
        // said once the queue is drained, with no further event to carry it
        assert_eq!(next_line(&mut s).await, format!("{{\"missed\":{extra}}}\n"));
        // and once more after a second burst, before the line that follows it
        let events = (0..QUEUE_LINES + 1)
            .map(|_| ev(Kind::Exec, "n1", None, None))
            .collect();
        hub.publish(&batch(events), None);
        for _ in 0..QUEUE_LINES {
            let l = next_line(&mut s).await;
            assert!(l.starts_with("{\"kind\":\"exec\""), "{l}");
        }
        hub.publish(&batch(vec![ev(Kind::Exit, "n1", None, None)]), None);
        assert_eq!(next_line(&mut s).await, "{\"missed\":1}\n");
        assert!(next_line(&mut s).await.starts_with("{\"kind\":\"exit\""));
        let mut m = String::new();
        hub.metrics(&mut m);
        assert!(
            m.contains(&format!(
                "spyglass_collector_api_stream_dropped_total {}",
                extra + 1
            )),
            "{m}"
        );
    }
}
