//! The HTTP side of the API: Prometheus `/metrics` and the `/healthz` and
//! `/readyz` probes, served the same way by the agent and the collector
//! (feature `endpoints`). Each binary supplies what the paths answer.
use std::{fmt::Write as _, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

/// What a path answers: HTTP status code and a text body.
pub type Answer = (u16, String);

/// Serve `answer(path)` on `listener` until the process ends.
pub async fn serve<F>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(&str) -> Answer + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics and health endpoints listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (code, body) = answer(req.uri().path());
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "metrics connection");
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
