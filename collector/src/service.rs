//! The gRPC `Collector` service: one stream per agent; each batch is
//! checked, deduplicated, written, then acknowledged, in order.
//!
//! A bad stream (malformed protobuf, oversized message, missing node id,
//! sequence 0) gets an error status and only that stream ends; other
//! agents are not disturbed. A stream that sends faster than its event
//! rate limit is slowed down (its acks are delayed), not dropped.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use spyglass_proto::v1::{collector_server::Collector, Ack, Batch};
use tokio::sync::{mpsc, Mutex};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::{
    delivery::Received,
    identity::Binding,
    ledger::{Ledger, Verdict},
    output::Outputs,
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

impl CollectorService {
    async fn handle(&self, batch: Batch, peer: &str) -> Result<Ack, Status> {
        let batch = Received::from_batch(batch).map_err(|e| {
            warn!(%peer, error = %e, "batch refused");
            self.shared
                .metrics
                .bad_streams
                .fetch_add(1, Ordering::Relaxed);
            Status::invalid_argument(e.to_string())
        })?;
        let batch = &batch;
        let evicted = admit_node(
            &mut self.shared.agents.lock().expect("agents lock"),
            &batch.node_id,
            self.shared.max_agents,
        )?;
        let (node, stream) = (batch.node_id.as_str(), batch.stream_id.as_str());
        let (verdict, generation) = {
            let mut guard = self.shared.outputs.lock().await;
            let (outputs, ledger) = &mut *guard;
            if let Some(gone) = &evicted {
                ledger.forget_node(gone);
            }
            let durable = &self.shared.durability;
            match ledger.check(node, stream, batch.sequence) {
                // its write may still be on its way to disk
                Verdict::Duplicate => (Verdict::Duplicate, durable.written()),
                Verdict::Write => {
                    outputs.render_batch(batch);
                    if outputs.would_rotate() {
                        // the current file feeds crash recovery: save the
                        // ledger before it becomes FILE.1
                        ledger.save().map_err(|e| {
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
                    self.shared
                        .metrics
                        .dedupe_streams
                        .store(ledger.len() as u64, Ordering::Relaxed);
                    (Verdict::Write, durable.wrote(outputs.file.sync_handle()))
                }
            }
        };
        // An ack means on disk: wait for the fdatasync that covers this
        // write (one for all streams' writes meanwhile).
        if let Err(e) = self.shared.durability.wait(generation).await {
            warn!(error = %e, "fdatasync of the output failed");
            let m = &self.shared.metrics;
            m.output_errors.fetch_add(1, Ordering::Relaxed);
            m.output_failing.store(true, Ordering::Relaxed);
            // written, perhaps not on disk: the resend is written again
            self.shared
                .outputs
                .lock()
                .await
                .1
                .forget_stream(node, stream);
            return Err(Status::unavailable(format!(
                "collector output failed: fdatasync: {e}"
            )));
        }
        let drops = if verdict == Verdict::Write {
            let drops = batch.reported_drops();
            self.shared.metrics.written(batch, drops);
            drops
        } else {
            self.shared
                .metrics
                .duplicate_batches
                .fetch_add(1, Ordering::Relaxed);
            0
        };
        let mut agents = self.shared.agents.lock().expect("agents lock");
        let a = agents.entry(batch.node_id.clone()).or_default();
        a.connected = true;
        a.peer = peer.to_owned();
        a.last_seen_unix_nano = now_ns();
        a.last_sequence = a.last_sequence.max(batch.sequence);
        if batch.sent_unix_nano > 0 {
            a.lag_ms = (a.last_seen_unix_nano - batch.sent_unix_nano) / 1_000_000;
        }
        a.batches += 1;
        if verdict == Verdict::Duplicate {
            a.duplicates += 1;
        } else {
            a.events += batch.events.len() as u64;
            a.drops = a.drops.saturating_add(drops);
        }
        Ok(Ack {
            sequence: batch.sequence,
            duplicate: verdict == Verdict::Duplicate,
        })
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
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let svc = self.clone();
        tokio::spawn(async move {
            // the stream's place, freed when it ends
            let _permit = permit;
            let mut node: Option<String> = None;
            let mut window_start = Instant::now();
            let mut window_events = 0u64;
            loop {
                // undecodable, or naming another node than the stream's
                let next = match inbound.message().await {
                    Ok(Some(b)) => same_node(node.as_deref(), &b)
                        .and_then(|()| binding.as_ref().map_or(Ok(()), |c| c.check(&b.node_id)))
                        .map(|()| b),
                    Ok(None) => break,
                    Err(status) => Err(status),
                };
                let batch = match next {
                    Ok(b) => b,
                    Err(status) => {
                        warn!(%peer, code = ?status.code(), message = status.message(), "bad stream closed");
                        svc.shared
                            .metrics
                            .bad_streams
                            .fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                // Rate limit: slow the stream down to its ceiling.
                window_events += batch.events.len() as u64;
                let max = svc.shared.max_events_per_sec.max(1);
                let allowed = Duration::from_secs_f64(window_events as f64 / max as f64);
                let elapsed = window_start.elapsed();
                if allowed > elapsed {
                    tokio::time::sleep(allowed - elapsed).await;
                }
                if window_start.elapsed() > Duration::from_secs(1) {
                    window_start = Instant::now();
                    window_events = 0;
                }
                let first = node.is_none().then(|| batch.node_id.clone());
                let result = svc.handle(batch, &peer).await;
                let failed = result.is_err();
                if let (Some(n), false) = (first, failed) {
                    // logged once the batch passed validation
                    info!(node = %n, %peer, "agent connected");
                    node = Some(n);
                }
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
            if let Some(node) = node {
                info!(%node, %peer, "agent disconnected");
                if let Some(a) = svc
                    .shared
                    .agents
                    .lock()
                    .expect("agents lock")
                    .get_mut(&node)
                {
                    a.connected = false;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
