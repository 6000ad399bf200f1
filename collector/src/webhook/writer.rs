//! The one thread that POSTs to the receiver: it takes the queued
//! batches in order, POSTs their lines (splitting a POST refused for its
//! content, `split.rs`) and retries until every line is taken or judged
//! refused, then decides the batches' generations. Blocking
//! HTTP (ureq) on a thread of its own; the queue is reached through the
//! runtime's handle.
use std::{io::Read, time::Duration};

use tracing::{debug, error, info, warn};
use ureq::{
    http::StatusCode,
    tls::{RootCerts, TlsConfig},
    Agent,
};

use super::{
    config::{shown_url, Settings},
    count_answer, count_taken,
    frame::{self, Answer, Backoff, LineRef},
    split::{self, Sent},
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
        let mut group = rt.block_on(sink.queue.take(s.batch_max_bytes));
        let mut lines: Vec<LineRef> = frame::all_lines(&group).collect();
        // lines refused alone with nothing taken after them
        let mut tail: Vec<LineRef> = Vec::new();
        loop {
            let mut post =
                |part: &[LineRef]| post(&agent, s, &sink.health, &group, part, &mut backoff);
            let suspects = retry_tail(&group, s, tail, &mut lines, &mut post);
            let parts = frame::parts(&group, lines, s.batch_max_bytes);
            let round = split::round(suspects, parts, post);
            for &((b, i), status) in &round.dropped {
                dropped(&sink.health, &group[b], i, status);
            }
            let Some(status) = round.status else { break };
            tail = round.tail;
            wait_all_refused(&sink.health, s, status, tail.len(), &mut backoff);
            // the batches queued since give the tail neighbours the
            // receiver may take (a lone line is never judged by itself)
            let first = group.len();
            group.extend(sink.queue.try_take(s.batch_max_bytes));
            lines = frame::all_lines(&group)
                .filter(|&(b, _)| b >= first)
                .collect();
        }
        sink.queue.decided(&group, Ok(()));
    }
}

/// Try a round's tail again: its first POST once. Taken, the receiver
/// takes lines again: the whole tail goes back in front of `lines`, to
/// be POSTed and split as usual. Refused again: the tail's lines are
/// suspects as they are (not split down to single lines again), to be
/// judged by what the receiver does with `lines`.
fn retry_tail(
    group: &[Pending],
    s: &Settings,
    tail: Vec<LineRef>,
    lines: &mut Vec<LineRef>,
    post: &mut impl FnMut(&[LineRef]) -> Sent,
) -> Vec<(LineRef, u16)> {
    let Some(first) = frame::parts(group, tail.iter().copied(), s.batch_max_bytes)
        .into_iter()
        .next()
    else {
        return Vec::new();
    };
    match post(&first) {
        Sent::Taken => {
            lines.splice(0..0, tail[first.len()..].iter().copied());
            Vec::new()
        }
        Sent::Refused(status) => tail.into_iter().map(|l| (l, status)).collect(),
    }
}

/// The receiver refused `line` of `p` alone and took other lines around
/// it: dropped from the webhook stream (its batch is acked once every
/// other line is taken). Counted and logged with its place, never its
/// content.
fn dropped(health: &Health, p: &Pending, index: usize, status: u16) {
    error!(node = %p.node, stream = %p.stream, sequence = p.sequence, index, status,
        bytes = p.line(index).len(),
        "webhook receiver refuses one event alone while it takes the others; \
         that event is dropped from the webhook output (the rest of its batch is delivered)");
    health.refused_line(status);
}

/// The receiver refused every line since the last it took, each alone:
/// it may refuse everything (a bad token, a wrong path), so nothing is
/// dropped; `/readyz` names it and the lines are tried again after a
/// wait.
fn wait_all_refused(
    health: &Health,
    s: &Settings,
    status: u16,
    lines: usize,
    backoff: &mut Backoff,
) {
    let url = shown_url(&s.url);
    let wait = backoff.delay();
    error!(%url, status, lines, wait_ms = wait.as_millis() as u64,
        "webhook receiver refuses every event, each alone, and takes none; nothing is dropped, \
         retrying (their batches are not acked meanwhile)");
    health.down.set(format!(
        "{url} answered {status} {}: {} (it refuses every event, each alone)",
        reason(status),
        frame::hint(status)
    ));
    health
        .retries
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(wait.max(Duration::from_millis(10)));
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("")
}

/// POST `part` until the receiver takes it or refuses it with a status
/// that may judge its content (`split.rs`); every other answer, and no
/// answer, is retried after a wait, with `/readyz` saying why meanwhile.
fn post(
    agent: &Agent,
    s: &Settings,
    health: &Health,
    group: &[Pending],
    part: &[LineRef],
    backoff: &mut Backoff,
) -> Sent {
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
                if answer == Answer::Taken {
                    // read to its end, so the connection is kept
                    let _ = resp.body_mut().with_config().limit(1 << 20).read_to_vec();
                    if tries > 0 {
                        info!(%url, tries, "webhook receiver takes the POSTs again");
                    }
                    count_taken(health, part.len(), body.len());
                    backoff.reset();
                    return Sent::Taken;
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
                if answer == Answer::Refused {
                    debug!(%url, status, body = %text, bytes = body.len(), lines = part.len(),
                        "webhook receiver refused a POST; splitting it");
                    return Sent::Refused(status);
                }
                let why = format!(
                    "{url} answered {status} {}: {}",
                    reason(status),
                    frame::hint(status)
                );
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
