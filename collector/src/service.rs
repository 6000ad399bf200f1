//! The gRPC `Collector` service: one stream per agent; each batch is
//! checked, deduplicated, written, then acknowledged, in order.
//!
//! A bad stream (malformed protobuf, oversized message, missing node id,
//! sequence 0) gets an error status and only that stream ends; other
//! agents are not disturbed. A stream that sends faster than its event
//! rate limit is slowed down (its next batch is read later), not
//! dropped.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use spyglass_proto::{
    codec::{take_reservation, Reservation},
    v1::{collector_server::Collector, Ack, Batch},
};
use tokio::sync::{mpsc, Mutex};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::{
    delivery::Received,
    durable::Failure,
    identity::Binding,
    inflight::{InFlight, Ready},
    inventory::Update,
    ledger::{Ledger, Verdict},
    output::Outputs,
    remote::Remote,
};

/// What the collector knows of one agent.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentState {
    pub connected: bool,
    pub peer: String,
    /// Unix ns of the last batch received.
    pub last_seen_unix_nano: i64,
    pub last_sequence: u64,
    /// How far behind the agent is: now minus the batch's send time, ms.
    pub lag_ms: i64,
    pub batches: u64,
    pub events: u64,
    pub duplicates: u64,
    /// Events the agent reported lost (sum of its loss events).
    pub drops: u64,
}

pub type Agents = Arc<std::sync::Mutex<HashMap<String, AgentState>>>;

/// Shared state behind the service.
pub struct Shared {
    pub outputs: Mutex<(Outputs, Ledger)>,
    pub agents: Agents,
    /// Per-stream ceiling, events per second.
    pub max_events_per_sec: u64,
    /// Most agents tracked ([`admit_node`]).
    pub max_agents: usize,
    /// Node ids bound to client certificates (mutual TLS), with the
    /// extra ids of `--node-identities`; `None`: not bound.
    pub identities: Option<crate::identity::NodeIdentities>,
    /// Group commit: acks wait for the output's fdatasync.
    pub durability: crate::durable::Durability,
    /// Streams open, per peer address and client certificate.
    pub streams: crate::streams::Streams,
    pub metrics: crate::metrics::Metrics,
    /// The inventory store task (`--store`), fed once a batch is on disk.
    pub inventory: Option<crate::inventory::Feed>,
    /// Clients of the live event stream, fed each batch written.
    pub live: Arc<crate::live::Hub>,
}

#[derive(Clone)]
pub struct CollectorService {
    pub shared: Arc<Shared>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// What a batch's ack needs once its write is on disk (no events: they
/// are written already).
#[derive(Debug)]
pub struct Accepted {
    node_id: String,
    stream_id: String,
    sequence: u64,
    sent_unix_nano: i64,
    duplicate: bool,
    events: u64,
    drops: u64,
    /// What the inventory needs of the batch, for once it is on disk
    /// (with a store).
    inventory: Option<Update>,
}

/// Batches one stream keeps between write and ack (`inflight.rs`); the
/// agent keeps 32 in flight by default (`collector.max_in_flight`).
pub const STREAM_IN_FLIGHT: usize = 64;

impl CollectorService {
    /// Check, deduplicate and write a batch: the generation its ack waits
    /// for, and what the ack needs.
    /// `first`: the stream's first batch; `claim`: the stream's claim of
    /// its node in Kafka (set by the first batch's refresh, carried by
    /// every batch of the stream: `kafka/gate.rs`).
    async fn accept(
        &self,
        batch: Batch,
        peer: &str,
        first: bool,
        claim: &mut Option<i64>,
    ) -> Result<(u64, Accepted), Status> {
        let received = Received::from_batch(batch).map_err(|e| {
            warn!(%peer, error = %e, "batch refused");
            self.shared
                .metrics
                .bad_streams
                .fetch_add(1, Ordering::Relaxed);
            Status::invalid_argument(e.to_string())
        })?;
        let batch = &received;
        let evicted = admit_node(
            &mut self.shared.agents.lock().expect("agents lock"),
            &batch.node_id,
            self.shared.max_agents,
        )?;
        let (node, stream) = (batch.node_id.as_str(), batch.stream_id.as_str());
        let remote = self.shared.durability.remote();
        let kafka = remote.and_then(Remote::kafka);
        let mut fresh = None;
        if let Some(r) = remote {
            // the remote output's queue has room (for Kafka: its
            // positions were read): else wait (the agent's batches stay in
            // its spool)
            if !r.admit().await {
                return Err(Status::unavailable("collector stopping"));
            }
        }
        if let Some(k) = kafka {
            if first {
                // another replica may have written this node since
                let (at, recovered) = k.refresh(node).await.map_err(|e| {
                    warn!(%peer, %node, error = %e, "batch refused: Kafka positions unknown");
                    Status::unavailable(e)
                })?;
                *claim = Some(at);
                fresh = Some(recovered);
            }
        }
        let mut guard = self.shared.outputs.lock().await;
        let (outputs, ledger) = &mut *guard;
        if let (Some(k), Some(fresh)) = (kafka, fresh) {
            // this stream's mark only: recording the node's other streams
            // could evict this one from the ledger's per-node places. What
            // Kafka holds past the claim is all it will hold of what was
            // sent before (a batch this replica wrote and did not commit
            // is fenced), so the mark is set to it, not raised.
            ledger.forget_stream(node, stream);
            for m in fresh.marks.iter().filter(|m| m.stream == stream) {
                ledger.record(&m.node, &m.stream, m.sequence);
            }
            k.torn(
                fresh
                    .partial
                    .into_iter()
                    .filter(|p| p.stream == stream)
                    .collect(),
            );
        }
        if let Some(gone) = &evicted {
            ledger.forget_node(gone);
        }
        let durable = &self.shared.durability;
        let mut accepted = Accepted {
            node_id: batch.node_id.clone(),
            stream_id: batch.stream_id.clone(),
            sequence: batch.sequence,
            sent_unix_nano: batch.sent_unix_nano,
            duplicate: true,
            events: 0,
            drops: 0,
            inventory: None,
        };
        if ledger.check(node, stream, batch.sequence) == Verdict::Duplicate {
            // its write may still be on its way to disk
            return Ok((durable.written(), accepted));
        }
        let lines = outputs.render_batch(batch);
        if let Some(k) = kafka {
            if let Some((index, len, limit)) = k.oversized(lines) {
                k.health.oversized_batches.fetch_add(1, Ordering::Relaxed);
                warn!(%peer, sequence = batch.sequence, index, len, limit = limit.line_bytes,
                    "batch refused: an event is over the Kafka record limit");
                return Err(Status::invalid_argument(format!(
                    "batch {}: event {index} renders into {len} bytes, over the Kafka record \
                     limit of {} bytes ({})",
                    batch.sequence,
                    limit.line_bytes,
                    limit.source()
                )));
            }
        }
        if outputs.would_rotate() {
            // the current file feeds crash recovery: save the ledger
            // before it becomes FILE.1
            ledger.save(outputs.file.at()).map_err(|e| {
                warn!(error = %e, "saving dedupe state before rotation");
                Status::unavailable(format!("collector state: {e}"))
            })?;
        }
        outputs.write(batch).map_err(|e| {
            warn!(error = %e, "output write failed");
            let m = &self.shared.metrics;
            m.output_errors.fetch_add(1, Ordering::Relaxed);
            m.output_failing.store(true, Ordering::Relaxed);
            Status::unavailable(format!("collector output failed: {e}"))
        })?;
        ledger.record(node, stream, batch.sequence);
        // written: to the live stream's clients (the JSON lines as they
        // are when the output renders them; never waits)
        self.shared.live.publish(batch, outputs.json_lines());
        self.shared
            .metrics
            .dedupe_streams
            .store(ledger.len() as u64, Ordering::Relaxed);
        let generation = durable.wrote(outputs.file.sync_handle());
        if let Some(k) = kafka {
            // lines a crash left in Kafka are not produced again
            let present = k.present(node, stream, batch.sequence);
            k.queue.submit(crate::kafka::Pending::new(
                generation,
                batch,
                outputs.lines(),
                present,
                *claim,
            ));
        }
        if let Some(w) = remote.and_then(Remote::webhook) {
            w.queue.submit(crate::webhook::Pending::new(
                generation,
                batch,
                outputs.lines(),
            ));
        }
        drop(guard);
        accepted.duplicate = false;
        accepted.events = batch.events.len() as u64;
        accepted.drops = batch.reported_drops();
        self.shared.metrics.written(batch, accepted.drops);
        if self.shared.inventory.is_some() {
            accepted.inventory = Some(Update::of_batch(received));
        }
        Ok((generation, accepted))
    }

    /// Hand an update to the inventory's store task (never waits).
    fn to_inventory(&self, update: Option<Update>) {
        if let (Some(feed), Some(u)) = (&self.shared.inventory, update) {
            feed.send(u);
        }
    }

    /// The batch is on disk: count it and make its ack.
    fn acked(&self, a: &Accepted, peer: &str) -> Ack {
        let m = &self.shared.metrics;
        if a.duplicate {
            m.duplicate_batches.fetch_add(1, Ordering::Relaxed);
        } else {
            m.output_failing.store(false, Ordering::Relaxed);
        }
        let mut agents = self.shared.agents.lock().expect("agents lock");
        let s = agents.entry(a.node_id.clone()).or_default();
        s.connected = true;
        peer.clone_into(&mut s.peer);
        s.last_seen_unix_nano = now_ns();
        s.last_sequence = s.last_sequence.max(a.sequence);
        if a.sent_unix_nano > 0 {
            s.lag_ms = (s.last_seen_unix_nano - a.sent_unix_nano) / 1_000_000;
        }
        s.batches += 1;
        if a.duplicate {
            s.duplicates += 1;
        } else {
            s.events += a.events;
            s.drops = s.drops.saturating_add(a.drops);
        }
        Ack {
            sequence: a.sequence,
            duplicate: a.duplicate,
        }
    }

    /// Whether batch `a`, written at (or, a duplicate, waiting for)
    /// generation `gen`, may be acked: `None` until decided. A duplicate
    /// waits for the last generation written, which may be another
    /// batch's: a failed sync of it may have lost the first copy too, but
    /// Kafka fencing that other batch says nothing of this one (a
    /// duplicate after a new stream's refresh is one Kafka holds).
    fn outcome(&self, gen: u64, a: &Accepted) -> Option<Result<(), Failure>> {
        match self.shared.durability.outcome(gen)? {
            Err(Failure::Fenced(_)) if a.duplicate => Some(Ok(())),
            o => Some(o),
        }
    }

    /// Kafka left the batch out: its node's agent reached a newer stream
    /// since it arrived. This stream's dedupe mark is forgotten (its
    /// resends are judged again by the next stream's refresh) and the
    /// stream ends; the agent resends where it is now.
    async fn fenced(&self, a: &Accepted, error: &str) -> Status {
        info!(node = %a.node_id, sequence = a.sequence, error, "batch fenced; the agent resends it");
        self.shared
            .outputs
            .lock()
            .await
            .1
            .forget_stream(&a.node_id, &a.stream_id);
        Status::unavailable(error.to_owned())
    }

    /// The fdatasync covering a batch failed: written, perhaps not on
    /// disk, so the stream's resends are written again (a duplicate line
    /// beats a loss), and the stream ends.
    async fn sync_failed(&self, a: &Accepted, error: &str) -> Status {
        warn!(
            error,
            sequence = a.sequence,
            "fdatasync of the output failed"
        );
        let m = &self.shared.metrics;
        m.output_errors.fetch_add(1, Ordering::Relaxed);
        m.output_failing.store(true, Ordering::Relaxed);
        self.shared
            .outputs
            .lock()
            .await
            .1
            .forget_stream(&a.node_id, &a.stream_id);
        Status::unavailable(format!("collector output failed: {error}"))
    }
}

/// Make room for `node` in the agent table: a known node, or a free place,
/// or the place of the disconnected node seen longest ago (returned, so
/// its dedupe state goes too). Refused when all `max` are connected: a
/// client making up node ids cannot grow the table without bound.
fn admit_node(
    agents: &mut HashMap<String, AgentState>,
    node: &str,
    max: usize,
) -> Result<Option<String>, Status> {
    if agents.contains_key(node) {
        return Ok(None);
    }
    let mut evicted = None;
    if agents.len() >= max.max(1) {
        let oldest = agents
            .iter()
            .filter(|(_, a)| !a.connected)
            .min_by_key(|(_, a)| a.last_seen_unix_nano)
            .map(|(n, _)| n.clone());
        let Some(oldest) = oldest else {
            return Err(Status::resource_exhausted(format!(
                "the collector tracks {max} agents, all connected (--max-agents); \
                 node {node:?} is refused until one disconnects"
            )));
        };
        agents.remove(&oldest);
        evicted = Some(oldest);
    }
    agents.insert(node.to_owned(), AgentState::default());
    Ok(evicted)
}

/// A stream speaks for one node: the node of its first batch. A later
/// batch naming another is refused, and the stream ends.
fn same_node(first: Option<&str>, batch: &Batch) -> Result<(), Status> {
    match first {
        Some(n) if n != batch.node_id => Err(Status::invalid_argument(format!(
            "this stream publishes for node {n:?}; batch {} names another node ({:?}): \
             one stream, one node",
            batch.sequence,
            batch.node_id.chars().take(64).collect::<String>()
        ))),
        _ => Ok(()),
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Collector for CollectorService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".into(), |a: SocketAddr| a.to_string());
        let binding = match &self.shared.identities {
            Some(ids) => {
                let certs = request.peer_certs();
                Some(
                    Binding::for_peer(certs.as_deref().map(Vec::as_slice), ids)
                        .inspect_err(|s| warn!(%peer, message = s.message(), "stream refused"))?,
                )
            }
            None => None,
        };
        let permit = self
            .shared
            .streams
            .admit(
                request.remote_addr().map(|a| a.ip()),
                binding.as_ref().map(|b| b.cert.as_str()),
            )
            .inspect_err(|s| {
                warn!(%peer, message = s.message(), "stream refused");
                self.shared
                    .metrics
                    .refused_streams
                    .fetch_add(1, Ordering::Relaxed);
            })?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_IN_FLIGHT);
        tokio::spawn(self.clone().serve(inbound, tx, binding, peer, permit));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A stream's reading side: the node it speaks for and its rate window.
struct Reader {
    binding: Option<Binding>,
    node: Option<String>,
    window_start: Instant,
    window_events: u64,
}

impl Reader {
    /// The next batch, if it may be taken: undecodable, naming another
    /// node than the stream's, or another than its certificate's is an
    /// error.
    fn check(&self, next: Result<Option<Batch>, Status>) -> Result<Option<Batch>, Status> {
        let Some(b) = next? else {
            return Ok(None);
        };
        same_node(self.node.as_deref(), &b)?;
        if let Some(c) = &self.binding {
            c.check(&b.node_id)?;
        }
        Ok(Some(b))
    }

    /// Rate limit: how long to hold the stream back to its ceiling.
    fn delay(&mut self, events: usize, max_per_sec: u64) -> Option<Duration> {
        self.window_events += events as u64;
        let allowed =
            Duration::from_secs_f64(self.window_events as f64 / max_per_sec.max(1) as f64);
        let elapsed = self.window_start.elapsed();
        let wait = (allowed > elapsed).then(|| allowed - elapsed);
        if elapsed + wait.unwrap_or_default() > Duration::from_secs(1) {
            self.window_start = Instant::now() + wait.unwrap_or_default();
            self.window_events = 0;
        }
        wait
    }
}

impl CollectorService {
    /// Serve one stream: read, check and write each batch, and ack it
    /// once the fdatasync covering it has returned, in order. Reading
    /// goes on while earlier batches wait for their sync (at most
    /// [`STREAM_IN_FLIGHT`] per stream). There is no cap over all streams:
    /// an entry holds no events, and a cap shared by every stream would let
    /// a few clients that stop reading their acks hold every place and
    /// stall all other agents.
    async fn serve(
        self,
        mut inbound: Streaming<Batch>,
        tx: mpsc::Sender<Result<Ack, Status>>,
        binding: Option<Binding>,
        peer: String,
        permit: crate::streams::Permit,
    ) {
        // the stream's place, freed when it ends
        let mut permit = permit;
        let mut reader = Reader {
            binding,
            node: None,
            window_start: Instant::now(),
            window_events: 0,
        };
        let mut inflight: InFlight<Accepted, Status> = InFlight::new(STREAM_IN_FLIGHT);
        // a batch read, to be checked and written, with the decode
        // budget it holds until written
        let mut held: Option<(Batch, Option<Reservation>)> = None;
        // this stream's claim of its node in Kafka (its first batch's)
        let mut claim = None;
        // when the rate limit lets the next batch be read
        let mut read_after: Option<tokio::time::Instant> = None;
        let durable = &self.shared.durability;
        // The client stopped reading acks: nothing more is read, but the
        // batches written still wait for their sync (or Kafka commit), so
        // a failed fdatasync still forgets the stream's dedupe mark before
        // the agent's resend on its next stream can be taken for a
        // duplicate.
        let mut client_gone = false;
        'stream: loop {
            for ready in inflight.take_ready(|gen, a| self.outcome(gen, a)) {
                let (send, last) = match ready {
                    Ready::Ack(mut a) => {
                        self.to_inventory(a.inventory.take());
                        (Ok(self.acked(&a, &peer)), false)
                    }
                    Ready::Refused(status) => (Err(status), true),
                    Ready::SyncFailed { item: a, error } => {
                        (Err(self.sync_failed(&a, &error).await), true)
                    }
                    Ready::Fenced { item: a, error } => (Err(self.fenced(&a, &error).await), true),
                };
                if !client_gone && tx.send(send).await.is_err() {
                    client_gone = true;
                    inflight.close();
                    held = None;
                }
                if last {
                    break 'stream;
                }
            }
            if inflight.done() {
                break;
            }
            let wait = inflight.waiting_on();
            // Read only with room in the ack channel for every ack owed
            // and this batch's: a client that stops reading acks is not
            // read from, so no batch (and none of the decode budget)
            // waits on it. And not before the rate limit allows.
            let readable = held.is_none()
                && inflight.has_room()
                && tx.capacity() > inflight.len()
                && read_after.is_none();
            tokio::select! {
                _ = async { durable.wait(wait.unwrap_or_default()).await }, if wait.is_some() => {}
                () = async { tokio::time::sleep_until(read_after.unwrap_or_else(tokio::time::Instant::now)).await },
                    if read_after.is_some() => read_after = None,
                // Nothing owed and no room: the client has not read its
                // acks. Wait for one slot (then there is room to read);
                // with something owed, its sync is waited on above and
                // its ack then sent, which frees no slot but ends the
                // debt.
                room = tx.reserve(), if !client_gone && held.is_none() && inflight.len() == 0 && tx.capacity() == 0 => {
                    if room.is_err() {
                        client_gone = true;
                        inflight.close();
                    }
                }
                next = inbound.message(), if readable => match reader.check(next) {
                    // the decoder left the batch's reservation on this
                    // thread, in this poll
                    Ok(Some(b)) => held = Some((b, take_reservation())),
                    Ok(None) => inflight.close(),
                    Err(status) => {
                        // a batch decoded but refused gives its budget back
                        drop(take_reservation());
                        if status.code() == tonic::Code::ResourceExhausted {
                            // the decode budget was spent: counted there
                            info!(%peer, message = status.message(), "stream ended: decode budget spent");
                        } else {
                            warn!(%peer, code = ?status.code(), message = status.message(), "bad stream closed");
                            self.shared.metrics.bad_streams.fetch_add(1, Ordering::Relaxed);
                        }
                        inflight.refuse(status);
                    }
                },
                () = std::future::ready(()), if held.is_some() => {
                    let (batch, _decoded) = held.take().expect("guarded");
                    // over the rate: the next batch is read later (this
                    // one is not held back with its memory)
                    read_after = reader
                        .delay(batch.events.len(), self.shared.max_events_per_sec)
                        .map(|d| tokio::time::Instant::now() + d);
                    let first = reader.node.is_none().then(|| batch.node_id.clone());
                    match self.accept(batch, &peer, first.is_some(), &mut claim).await {
                        Ok((gen, accepted)) => {
                            if let Some(n) = first {
                                // logged once the batch passed validation
                                info!(node = %n, %peer, "agent connected");
                                permit.bind_node(&n);
                                self.to_inventory(Some(Update::Connected {
                                    node: n.clone(),
                                    connected: true,
                                    at: now_ns(),
                                }));
                                reader.node = Some(n);
                            }
                            inflight.written(gen, accepted);
                        }
                        Err(status) => inflight.refuse(status),
                    }
                }
            }
        }
        if let Some(node) = reader.node.filter(|_| permit.release_node()) {
            info!(%node, %peer, "agent disconnected");
            self.to_inventory(Some(Update::Connected {
                node: node.clone(),
                connected: false,
                at: now_ns(),
            }));
            if let Some(a) = self
                .shared
                .agents
                .lock()
                .expect("agents lock")
                .get_mut(&node)
            {
                a.connected = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_table_is_bounded() {
        let mut agents = HashMap::new();
        for (i, n) in ["a", "b"].iter().enumerate() {
            assert_eq!(admit_node(&mut agents, n, 2).unwrap(), None);
            let a = agents.get_mut(*n).unwrap();
            a.connected = true;
            a.last_seen_unix_nano = i as i64;
        }
        admit_node(&mut agents, "a", 2).unwrap();
        let e = admit_node(&mut agents, "c", 2).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("\"c\" is refused"), "{}", e.message());
        agents.get_mut("b").unwrap().connected = false;
        agents.get_mut("a").unwrap().connected = false;
        assert_eq!(
            admit_node(&mut agents, "c", 2).unwrap().as_deref(),
            Some("a")
        );
        assert!(!agents.contains_key("a"), "the one seen longest ago goes");
        assert_eq!(agents.len(), 2);
    }
}
