//! Streaming to the collector: batches over one long-lived gRPC stream,
//! acknowledged by the collector; at-least-once delivery that survives
//! collector outages and agent restarts.
//!
//! Every batch gets the next sequence number and is written to the spool
//! before it is sent; an ack deletes it. Spool writes are group-committed
//! (one directory sync per `batch_linger_ms` or per few batches), and the
//! pipeline's queue room for the events is given back only then. After any disconnect the exporter
//! reconnects with jittered exponential backoff and resends every spooled
//! batch in order; the collector drops the ones it already wrote. When the
//! spool is full, the oldest batches are dropped and a `loss` event
//! (stage `agent`, `spool_dropped`) says how many events went with them.
//! A loss event can be dropped too: every one this exporter sends carries
//! the stream's running totals (`loss.totals`), so the latest accounts
//! for all earlier drops.
use std::time::{Duration, Instant};

use spyglass_proto::v1 as wire;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    codec::CompressionEncoding,
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Request, Status, Streaming,
};
use tracing::{info, warn};

use super::{
    publish::{self, BatchBuf, BatchCodec, Outgoing},
    spool::Spool,
};
use crate::{
    clock::Clock,
    config::{CollectorConfig, Compression},
    event::{Event, Kind, Loss, LossStage, LossTotals},
    pipeline::budget::{EventBatch, SINK_BYTES},
};
use spyglass_proto::model::wire::to_wire;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error(transparent)]
    Spool(#[from] super::spool::SpoolError),
    #[error(
        "collector url `{url}` is invalid: {message}. Use http://HOST:PORT or https://HOST:PORT"
    )]
    Url { url: String, message: String },
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("collector url is https but no collector.ca_file is set to verify the collector")]
    NoCa,
    #[error("TLS settings rejected: {0}")]
    Tls(String),
}

/// Batches stored before a group commit at the latest (also every
/// `batch_linger_ms`).
const COMMIT_BATCHES: usize = 4;

/// The backoff step an agent starts from after `RESOURCE_EXHAUSTED`
/// (800 ms, jittered): every agent retrying at once after 100 ms would
/// keep the collector at its limit.
const RESOURCE_EXHAUSTED_ATTEMPT: u32 = 3;

/// Jittered exponential backoff, 100 ms doubling to `max`.
struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    /// A stream ended with `code`: after `RESOURCE_EXHAUSTED` the
    /// collector is at a limit (streams, decode budget), so the agent is
    /// not back within 100 ms, whatever acks came before.
    fn stream_lost(&mut self, code: Option<tonic::Code>) {
        if code == Some(tonic::Code::ResourceExhausted) {
            self.attempt = self.attempt.max(RESOURCE_EXHAUSTED_ATTEMPT);
        }
    }

    fn next(&mut self) -> Duration {
        let base = Duration::from_millis(100) * 2u32.saturating_pow(self.attempt.min(16));
        self.attempt += 1;
        let base = base.min(self.max);
        // +-25% jitter from the clock's low bits: no rand dependency needed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
        base.mul_f64(factor)
    }
}

type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;

struct Conn {
    tx: mpsc::Sender<Outgoing>,
    acks: Streaming<wire::Ack>,
}

fn read_file(what: &'static str, path: &str) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|source| GrpcError::Read {
        what,
        path: path.into(),
        source,
    })
}

fn endpoint(cfg: &CollectorConfig) -> Result<Endpoint, GrpcError> {
    let url_err = |message: String| GrpcError::Url {
        url: cfg.url.clone(),
        message,
    };
    let mut ep = Endpoint::from_shared(cfg.url.clone())
        .map_err(|e| url_err(e.to_string()))?
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    if cfg.url.starts_with("https://") {
        let ca = cfg.ca_file.as_deref().ok_or(GrpcError::NoCa)?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_file("collector CA file", ca)?));
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_file("client certificate", cert)?,
                read_file("client key", key)?,
            ));
        }
        if let Some(d) = &cfg.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| GrpcError::Tls(e.to_string()))?;
    } else if !cfg.url.starts_with("http://") {
        return Err(url_err("scheme must be http or https".into()));
    }
    Ok(ep)
}

fn auth(cfg: &CollectorConfig) -> Result<Auth, GrpcError> {
    let token = match (&cfg.token_file, std::env::var("SPYGLASS_TOKEN").ok()) {
        (Some(path), _) => Some(
            String::from_utf8_lossy(&read_file("token file", path)?)
                .trim()
                .to_owned(),
        ),
        (None, env) => env,
    };
    let header: Option<MetadataValue<_>> = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| GrpcError::Tls("bearer token has invalid characters".into()))?,
        ),
        None => None,
    };
    Ok(Box::new(move |mut req: Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }))
}

async fn connect(ep: &Endpoint, cfg: &CollectorConfig) -> Result<Conn, String> {
    let channel: Channel = ep.connect().await.map_err(|e| format!("{e:?}"))?;
    let auth = auth(cfg).map_err(|e| e.to_string())?;
    let mut client = tonic::client::Grpc::new(InterceptedService::new(channel, auth))
        .max_decoding_message_size(16 * 1024 * 1024);
    match cfg.compression {
        Compression::Zstd => client = client.send_compressed(CompressionEncoding::Zstd),
        Compression::Gzip => client = client.send_compressed(CompressionEncoding::Gzip),
        Compression::None => {}
    }
    let status = |s: Status| format!("{}: {}", s.code(), s.message());
    client
        .ready()
        .await
        .map_err(|e| format!("collector channel not ready: {e}"))?;
    let (tx, rx) = mpsc::channel(cfg.max_in_flight.max(1) * 2);
    let acks = client
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            publish::path(),
            BatchCodec,
        )
        .await
        .map_err(status)?
        .into_inner();
    Ok(Conn { tx, acks })
}

async fn next_ack(conn: &mut Option<Conn>) -> Result<Option<wire::Ack>, Status> {
    match conn {
        Some(c) => c.acks.message().await,
        None => std::future::pending().await,
    }
}

fn now_ns() -> i64 {
    Clock::now().0
}

/// Exporter state between events.
struct Exporter {
    node: String,
    spool: Spool,
    pending: BatchBuf,
    /// Every loss counter of this stream so far (both stages), carried by
    /// each loss event it sends and saved in the spool.
    totals: LossTotals,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The pipeline's batches encoded here but not yet durable in the
    /// spool: their room in the pipeline's queue is given back only at
    /// the group commit, so a slow disk holds the pipeline back (and
    /// the kernel counts what it then drops) instead of events being
    /// taken as safe before they are on disk.
    held: Vec<EventBatch>,
    held_bytes: usize,
    /// Spool drops not yet logged (the log is rate-limited; the loss
    /// events are not).
    unlogged_drops: u64,
    last_drop_log: Option<Instant>,
}

impl Exporter {
    fn push(&mut self, ev: &Event) {
        match &ev.loss {
            Some(l) => {
                let mut ev = ev.clone();
                ev.loss = Some(Box::new(self.account(l)));
                self.pending.push(&to_wire(&ev));
            }
            None => self.pending.push(&to_wire(ev)),
        }
    }

    /// Add a loss to the stream's totals, and the loss as sent: its own
    /// counts and the totals so far. The totals are saved with the spool,
    /// so they continue where they were after a restart.
    fn account(&mut self, l: &Loss) -> Loss {
        self.totals.add(l);
        if let Err(e) = self.spool.save_loss_totals(&self.totals) {
            warn!(error = %e, "cannot save the loss totals; a restart would count from the last saved ones");
        }
        Loss {
            totals: Some(self.totals),
            ..l.clone()
        }
    }

    /// Report events lost by this stage as a `loss` event in the next batch.
    fn report_loss(&mut self, events: u64) {
        self.metrics.spool_dropped(events);
        let mut ev = Event::new(Kind::Loss, Clock::now(), self.node.clone());
        ev.loss = Some(Box::new(Loss {
            spool_dropped: events,
            ..Loss::new(LossStage::Agent)
        }));
        self.push(&ev);
    }

    /// Seal the pending events into a spooled batch. Spool failures (disk
    /// full, I/O errors) lose the batch but never stop the agent: they are
    /// logged and reported as a loss.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.events();
        let result = match self.spool.next_sequence() {
            Ok(seq) => {
                let bytes = self.pending.seal(&self.node, seq, self.spool.stream_id());
                self.spool.push(seq, n, bytes)
            }
            Err(e) => {
                self.pending = BatchBuf::default();
                Err(e)
            }
        };
        match result {
            Ok(0) => {}
            Ok(dropped) => {
                self.unlogged_drops += dropped;
                if self
                    .last_drop_log
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                {
                    warn!(
                        dropped_events = self.unlogged_drops,
                        spool_bytes = self.spool.bytes(),
                        "collector spool full: oldest batches dropped (reported as loss events)"
                    );
                    self.unlogged_drops = 0;
                    self.last_drop_log = Some(Instant::now());
                }
                self.report_loss(dropped);
            }
            Err(e) => {
                warn!(error = %e, lost_events = n, "cannot spool a batch; its events are lost");
                self.report_loss(n);
            }
        }
    }

    /// Take the pipeline's batch: encoded into the pending batch, held
    /// until committed. Sealed when full; committed after a few batches
    /// or when the held bytes near the queue's bound.
    fn take(&mut self, mut evs: EventBatch, cfg: &CollectorConfig) {
        for ev in evs.iter() {
            self.push(ev);
        }
        // the events themselves are no longer needed, only their room
        evs.clear();
        evs.shrink_to_fit();
        self.held_bytes += evs.bytes();
        self.held.push(evs);
        if self.pending.counted() >= cfg.batch_max_events as u64
            || self.pending.len() >= cfg.batch_max_bytes
        {
            self.flush();
        }
        if self.spool.uncommitted() >= COMMIT_BATCHES || self.held_bytes >= SINK_BYTES / 2 {
            self.flush();
            self.commit();
        }
    }

    /// Group commit: one sync makes every batch stored since the last one
    /// durable; the pipeline's room for them is then given back.
    fn commit(&mut self) {
        if let Err(e) = self.spool.commit() {
            warn!(error = %e, "cannot sync the spool directory; the batches since the last sync may not survive a power cut");
        }
        self.held.clear();
        self.held_bytes = 0;
    }

    /// Drop a stored batch the collector refuses for good, as a loss.
    fn drop_poisoned(&mut self, seq: u64, why: &str) {
        let n = self.spool.events_in(seq);
        warn!(
            seq,
            events = n,
            reason = why,
            "collector refused a batch; dropped"
        );
        self.spool.ack(seq);
        self.report_loss(n);
    }
}

/// Errors after which resending the same batch can never succeed.
fn permanent(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::OutOfRange | tonic::Code::InvalidArgument)
}

/// What the exporter needs before it can run: the opened spool and the
/// endpoint with its TLS settings. Made at start-up, so a bad CA file,
/// certificate or spool directory stops the agent with the reason instead
/// of leaving it running with nowhere to send events.
pub struct Prepared {
    spool: Spool,
    ep: Endpoint,
}

/// Open the spool and check the endpoint and TLS files.
pub fn prepare(cfg: &CollectorConfig) -> Result<Prepared, GrpcError> {
    let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)?;
    let ep = endpoint(cfg)?;
    Ok(Prepared { spool, ep })
}

/// Run until the event channel closes, then try to deliver what is spooled
/// for `shutdown_grace_ms`; the rest stays in the spool for the next start.
pub async fn run(
    mut rx: mpsc::Receiver<EventBatch>,
    prepared: Prepared,
    cfg: CollectorConfig,
    node: String,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> Result<(), GrpcError> {
    let Prepared { spool, ep } = prepared;
    if !spool.is_empty() {
        info!(
            batches = spool.len(),
            bytes = spool.bytes(),
            "replaying spooled batches"
        );
    }
    let mut ex = Exporter {
        node,
        totals: spool.loss_totals(),
        spool,
        pending: BatchBuf::default(),
        metrics: metrics.clone(),
        held: Vec::new(),
        held_bytes: 0,
        unlogged_drops: 0,
        last_drop_log: None,
    };
    let unusable = ex.spool.take_dropped_at_open();
    if unusable > 0 {
        ex.report_loss(unusable);
    }
    let mut conn: Option<Conn> = None;
    // A connect in progress runs on its own task so events keep flowing
    // into the spool meanwhile.
    let mut connecting: Option<tokio::task::JoinHandle<Result<Conn, String>>> = None;
    let mut next_send = 0u64;
    let mut in_flight = 0usize;
    let mut backoff = Backoff {
        attempt: 0,
        max: Duration::from_millis(cfg.max_backoff_ms),
    };
    let mut reconnect_at = tokio::time::Instant::now();
    let mut down_since: Option<Instant> = None;
    let mut warned = false;
    let mut linger = tokio::time::interval(Duration::from_millis(cfg.batch_linger_ms));
    let mut closing: Option<tokio::time::Instant> = None;

    loop {
        metrics.set_collector(conn.is_some(), ex.spool.len(), ex.spool.bytes());
        // Keep the window full from the spool, in sequence order.
        if let Some(c) = &conn {
            while in_flight < cfg.max_in_flight {
                let Some(seq) = ex.spool.next_after(next_send) else {
                    break;
                };
                let batch = match ex.spool.read(seq).map_err(|e| e.to_string()) {
                    Ok(Some(stored)) => match publish::sendable(stored) {
                        Ok(b) => b,
                        Err(why) => {
                            ex.drop_poisoned(seq, &why);
                            continue;
                        }
                    },
                    Ok(None) => break,
                    Err(why) => {
                        ex.drop_poisoned(seq, &why);
                        continue;
                    }
                };
                let out = Outgoing {
                    batch,
                    sent_unix_nano: now_ns(),
                };
                if c.tx.try_send(out).is_err() {
                    break;
                }
                next_send = seq + 1;
                in_flight += 1;
            }
        }
        if conn.is_none() && connecting.is_none() && tokio::time::Instant::now() >= reconnect_at {
            let (ep, cfg) = (ep.clone(), cfg.clone());
            let limit = Duration::from_millis(cfg.connect_timeout_ms.saturating_mul(2));
            connecting = Some(tokio::spawn(async move {
                tokio::time::timeout(limit, connect(&ep, &cfg))
                    .await
                    .unwrap_or_else(|_| Err("connect timed out".into()))
            }));
        }
        if let Some(deadline) = closing {
            ex.flush();
            ex.commit();
            if ex.spool.is_empty() || tokio::time::Instant::now() >= deadline {
                if !ex.spool.is_empty() {
                    info!(
                        batches = ex.spool.len(),
                        "undelivered batches kept in the spool for the next start"
                    );
                }
                if let Some(c) = connecting.take() {
                    c.abort();
                }
                return Ok(());
            }
        }
        tokio::select! {
            evs = rx.recv(), if closing.is_none() => match evs {
                Some(evs) => ex.take(evs, &cfg),
                None => {
                    ex.flush();
                    ex.commit();
                    closing = Some(tokio::time::Instant::now()
                        + Duration::from_millis(cfg.shutdown_grace_ms));
                }
            },
            _ = linger.tick() => {
                ex.flush();
                ex.commit();
            }
            ack = next_ack(&mut conn) => match ack {
                Ok(Some(a)) => {
                    ex.spool.ack(a.sequence);
                    in_flight = in_flight.saturating_sub(1);
                    backoff.attempt = 0; // healthy only once acks flow
                    if let Some(t) = down_since.take() {
                        info!(url = %cfg.url, outage_ms = t.elapsed().as_millis() as u64, "delivery resumed");
                    }
                    warned = false;
                }
                other => {
                    let why = match &other {
                        Err(s) if permanent(s.code()) => {
                            // the first unacknowledged batch can never be accepted
                            if let Some(seq) = ex.spool.next_after(0) {
                                ex.drop_poisoned(seq, s.message());
                            }
                            format!("{}: {}", s.code(), s.message())
                        }
                        Err(s) => format!("{}: {}", s.code(), s.message()),
                        Ok(_) => "stream closed by the collector".into(),
                    };
                    backoff.stream_lost(other.as_ref().err().map(Status::code));
                    warn!(url = %cfg.url, error = %why, spooled = ex.spool.len(), "collector stream lost; spooling");
                    conn = None;
                    in_flight = 0;
                    down_since.get_or_insert_with(Instant::now);
                    reconnect_at = tokio::time::Instant::now() + backoff.next();
                }
            },
            res = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match res.unwrap_or_else(|e| Err(format!("connect task: {e}"))) {
                    Ok(c) => {
                        info!(url = %cfg.url, spooled = ex.spool.len(), "connected to collector");
                        conn = Some(c);
                        next_send = 0; // resend everything unacknowledged
                        in_flight = 0;
                    }
                    Err(e) => {
                        if !warned {
                            warn!(url = %cfg.url, error = %e, spooled = ex.spool.len(),
                                  "collector unreachable; events are spooled and will be replayed");
                            warned = true;
                        }
                        down_since.get_or_insert_with(Instant::now);
                        reconnect_at = tokio::time::Instant::now() + backoff.next();
                    }
                }
            }
            _ = tokio::time::sleep_until(reconnect_at), if conn.is_none() && connecting.is_none() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_at_its_limit_is_not_retried_at_once() {
        let mut b = Backoff {
            attempt: 0,
            max: Duration::from_secs(30),
        };
        b.stream_lost(Some(tonic::Code::Unavailable));
        assert!(b.next() <= Duration::from_millis(125));
        b.attempt = 0; // acks flowed again
        b.stream_lost(Some(tonic::Code::ResourceExhausted));
        assert!(b.next() >= Duration::from_millis(600));
        b.stream_lost(None);
        assert!(b.next() >= Duration::from_millis(1200));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff {
            attempt: 0,
            max: Duration::from_secs(5),
        };
        let first = b.next();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..20 {
            assert!(b.next() <= Duration::from_millis(6250));
        }
    }
}
