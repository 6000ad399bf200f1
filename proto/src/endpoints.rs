//! The HTTP side of the API: Prometheus `/metrics` and the `/healthz` and
//! `/readyz` probes, served the same way by the agent and the collector
//! (feature `endpoints`). Each binary supplies what the paths answer.
use std::{fmt::Write as _, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, info, warn};

/// What a path answers: HTTP status code and a text body.
pub type Answer = (u16, String);

/// Most connections served at once; one more is closed when accepted
/// (a Prometheus server and the kubelet's probes need a few).
pub const MAX_CONNECTIONS: usize = 256;

/// Most connections one client address may hold at once: one pod sending
/// half-requests cannot take every slot and fail the kubelet's probes
/// (the agent runs on the host network, where NetworkPolicy does not
/// reach).
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;

/// Connections open per client address; a [`PeerSlot`] gives its place
/// back when dropped. Used by these endpoints and the collector's gRPC
/// accept loop.
#[derive(Clone, Default)]
pub struct PeerCounts(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place among its address's ([`PeerCounts::take`]).
pub struct PeerSlot {
    counts: PeerCounts,
    ip: std::net::IpAddr,
}

impl PeerCounts {
    /// A place for `ip`, or None when it already holds `max`.
    pub fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Time a client has to send its request's head (request line and
/// headers); a client that sends half a request line is cut off then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a connection may stay open in all, reading the request and
/// writing the answer (a client that reads the answer slowly is cut off).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `answer(path)` on `listener` until the process ends: one
/// request per connection, at most [`MAX_CONNECTIONS`] at once and
/// [`MAX_CONNECTIONS_PER_PEER`] from one address, each
/// closed after [`HEADER_READ_TIMEOUT`] without a whole request head and
/// after [`CONNECTION_TIMEOUT`] in all.
pub async fn serve<F>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(&str) -> Answer + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let peers = PeerCounts::default();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics and health endpoints listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                // EMFILE and the like: do not spin
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(peer_slot) = peers.take(peer.ip(), MAX_CONNECTIONS_PER_PEER) else {
            debug!(%peer, "metrics connection closed: {MAX_CONNECTIONS_PER_PEER} already open from this address");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connection closed: {MAX_CONNECTIONS} already open");
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _slots = (slot, peer_slot);
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (code, body) = answer(req.uri().path());
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection"),
                Err(_) => debug!(%peer, "metrics connection closed: open too long"),
            }
        });
    }
}

/// Append one metric family header (`# HELP`, `# TYPE`) in the Prometheus
/// text format.
pub fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Append a family with a single unlabelled sample.
pub fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    family(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// When a service's main loop last turned, for `/healthz`.
#[derive(Default)]
pub struct Heartbeat(std::sync::atomic::AtomicU64);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Heartbeat {
    /// The loop turned now.
    pub fn beat(&self) {
        self.0.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// No turn for longer than `limit`.
    pub fn stalled(&self, limit: std::time::Duration) -> bool {
        now_ms().saturating_sub(self.0.load(std::sync::atomic::Ordering::Relaxed))
            > limit.as_millis() as u64
    }
}

/// The three paths: `/metrics` renders, `/healthz` fails with `stalled`
/// (the reason) when set, `/readyz` fails with `not_ready` when set.
pub fn answer(
    path: &str,
    render: impl FnOnce() -> String,
    stalled: Option<&str>,
    not_ready: Option<&str>,
) -> Answer {
    match (path, stalled, not_ready) {
        ("/metrics", _, _) => (200, render()),
        ("/healthz", Some(why), _) => (503, format!("{why}\n")),
        ("/healthz", None, _) => (200, "ok\n".into()),
        ("/readyz", _, Some(why)) => (503, format!("{why}\n")),
        ("/readyz", _, None) => (200, "ready\n".into()),
        _ => not_found(),
    }
}

/// The answer for an unknown path.
pub fn not_found() -> Answer {
    (404, "try /metrics, /healthz or /readyz\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format() {
        let mut s = String::new();
        single(&mut s, "x_total", "Things.", "counter", 3);
        assert_eq!(
            s,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n"
        );
    }
}
