//! The one thread that POSTs to the receiver: it takes the queued
//! batches in order, POSTs their lines and retries each POST until the
//! receiver takes it, then decides the batches' generations. Blocking
//! HTTP (ureq) on a thread of its own; the queue is reached through the
//! runtime's handle.
use std::{collections::BTreeMap, io::Read, time::Duration};

use tracing::{error, info, warn};
use ureq::{
    http::StatusCode,
    tls::{RootCerts, TlsConfig},
    Agent,
};

use super::{
    config::{shown_url, Settings},
    count_answer, count_taken,
    frame::{self, Answer, Backoff, LineRef},
    Health, Pending, Sink,
};

/// The HTTP client: no redirects followed (a POST redirected as a GET
/// would be taken for delivered), statuses as answers, not errors.
fn agent(s: &Settings) -> Agent {
    let roots = match &s.roots {
        Some(certs) => RootCerts::new_with_certs(certs),
        None => RootCerts::WebPki,
    };
    Agent::config_builder()
        .timeout_global(Some(s.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        // A proxy from the environment (HTTPS_PROXY, ...) only for
        // https://, which tunnels through it (the proxy sees neither the
        // token nor the body, and cannot answer for the receiver); plain
        // http:// is loopback only and never leaves the host.
        .proxy(if s.url.starts_with("https://") {
            ureq::Proxy::try_from_env()
        } else {
            None
        })
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .user_agent(concat!("spyglass-collector/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) ^ (u64::from(std::process::id()) << 32)
}

/// Take, deliver and decide groups of batches, forever.
pub fn run(sink: &Sink, s: &Settings, rt: &tokio::runtime::Handle) {
    let agent = agent(s);
    let mut backoff = Backoff::new(s.max_backoff, seed());
    info!(url = %shown_url(&s.url), "webhook output started");
    loop {
        let group = rt.block_on(sink.queue.take(s.batch_max_bytes));
        let refused = deliver(&agent, s, &sink.health, &group, &mut backoff);
        // refusals first: a generation's outcome reads them once decided
        for (b, why) in refused {
            sink.refuse(&group[b], why);
        }
        sink.queue.decided(&group, Ok(()));
    }
}

/// POST every line of `group`, in order: the batches whose line the
/// receiver refused alone (413), with why (their other lines are not
/// sent once that is known).
fn deliver(
    agent: &Agent,
    s: &Settings,
    health: &Health,
    group: &[Pending],
    backoff: &mut Backoff,
) -> BTreeMap<usize, String> {
    let mut refused = BTreeMap::new();
    let mut todo: std::collections::VecDeque<Vec<LineRef>> =
        frame::parts(group, s.batch_max_bytes).into();
    while let Some(part) = todo.pop_front() {
        let part: Vec<LineRef> = part
            .into_iter()
            .filter(|(b, _)| !refused.contains_key(b))
            .collect();
        if part.is_empty() {
            continue;
        }
        if post(agent, s, health, group, &part, backoff) {
            continue;
        }
        // 413: halves, in order; one line alone refuses its batch
        if part.len() > 1 {
            let (a, b) = part.split_at(part.len() / 2);
            todo.push_front(b.to_vec());
            todo.push_front(a.to_vec());
            continue;
        }
        let (b, i) = part[0];
        let p = &group[b];
        let why = format!(
            "event {i} renders into {} bytes and the webhook receiver refuses it alone \
             (413 Payload Too Large: raise its body limit)",
            p.line(i).len()
        );
        error!(node = %p.node, sequence = p.sequence, index = i, bytes = p.line(i).len(),
            "webhook receiver refuses one event alone (413); its batch is refused to the agent");
        health
            .oversized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        refused.insert(b, why);
    }
    refused
}

/// POST `part` until the receiver takes it (`true`) or answers 413
/// (`false`); every other answer, and no answer, is retried after a
/// wait, with `/readyz` saying why meanwhile.
fn post(
    agent: &Agent,
    s: &Settings,
    health: &Health,
    group: &[Pending],
    part: &[LineRef],
    backoff: &mut Backoff,
) -> bool {
    let body = frame::body(group, part, s.body);
    let key = frame::idempotency_key(group, part, &body);
    let batches = frame::batches(part).to_string();
    let url = shown_url(&s.url);
    let mut tries = 0u32;
    loop {
        let mut req = agent
            .post(&s.url)
            .header("Content-Type", s.body.content_type())
            .header("Idempotency-Key", &key)
            .header("X-Spyglass-Batches", &batches)
            .header("X-Spyglass-Lines", &part.len().to_string());
        if let Some(a) = &s.authorization {
            req = req.header("Authorization", a);
        }
        for (n, v) in &s.headers {
            req = req.header(n, v);
        }
        let (wait, why) = match req.send(&body[..]) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                count_answer(health, Some(status));
                let answer = frame::answer(status);
                if matches!(answer, Answer::Taken | Answer::TooLarge) {
                    // read to its end, so the connection is kept
                    let _ = resp.body_mut().with_config().limit(1 << 20).read_to_vec();
                    if answer == Answer::TooLarge {
                        info!(%url, bytes = body.len(), lines = part.len(), "webhook receiver answered 413; splitting the POST");
                        return false;
                    }
                    if tries > 0 {
                        info!(%url, tries, "webhook receiver takes the POSTs again");
                    }
                    count_taken(health, part.len(), body.len());
                    backoff.reset();
                    return true;
                }
                let retry_after = frame::retry_after(
                    resp.headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()),
                    s.max_backoff,
                );
                let mut head = Vec::new();
                let _ = resp.body_mut().as_reader().take(200).read_to_end(&mut head);
                let text = frame::excerpt(&head);
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("");
                let why = format!("{url} answered {status} {reason}: {}", frame::hint(status));
                // Retry-After only where HTTP gives it meaning (429, 503),
                // and never sooner than the backoff (a receiver answering
                // `Retry-After: 0` must not make a busy loop)
                let wait = match (retry_after, status) {
                    (Some(r), 429 | 503) => r.max(backoff.delay()),
                    _ => backoff.delay(),
                };
                if answer == Answer::Misconfigured {
                    error!(%url, status, body = %text, idempotency_key = %key, wait_ms = wait.as_millis() as u64,
                        "webhook POST refused; retrying (its batches are not acked meanwhile)");
                } else {
                    warn!(%url, status, body = %text, idempotency_key = %key, wait_ms = wait.as_millis() as u64,
                        "webhook POST failed; retrying (its batches are not acked meanwhile)");
                }
                (wait, why)
            }
            Err(e) => {
                count_answer(health, None);
                let wait = backoff.delay();
                warn!(%url, error = %e, idempotency_key = %key, wait_ms = wait.as_millis() as u64,
                    "webhook POST failed; retrying (its batches are not acked meanwhile)");
                (
                    wait,
                    format!(
                        "cannot POST to {url}: {e}{}",
                        frame::transport_hint(&e.to_string())
                    ),
                )
            }
        };
        health.down.set(why);
        health
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tries += 1;
        std::thread::sleep(wait.max(Duration::from_millis(10)));
    }
}
