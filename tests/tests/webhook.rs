//! The collector's webhook output with the real agent, the real collector
//! and a real HTTPS receiver on loopback (tests/src/webhook.rs): every
//! marked exec exactly once and in order per node, through a receiver
//! answering 503 for 10 s, one that takes at most 4 KiB a body (413s
//! split the POSTs; an event over it alone is dropped, its batch mates
//! delivered), one refusing with 403 the one event carrying a marker (a
//! web application firewall), one answering 403 to everything (nothing
//! dropped until it is fixed), and one that answers 401 until the
//! collector has the right token.
mod common;

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use common::*;
use serde_json::Value;
use spyglass_e2e::webhook::{Mode, Receiver};

/// A collector POSTing to `r` (no output file), with /readyz and
/// /metrics on `metrics`.
fn webhook_collector(r: &Receiver, port: u16, metrics: u16, extra: &[&str]) -> RemoteCollector {
    let url = r.url();
    let ca = r.ca.to_str().expect("utf-8 scratch path");
    let mut args = vec![
        "--webhook-url",
        &url,
        "--webhook-ca-file",
        ca,
        "--webhook-max-backoff-s",
        "2",
        "--log-level",
        "error",
    ];
    args.extend_from_slice(extra);
    RemoteCollector::start(port, metrics, &args)
}

/// Wait until the receiver took `n` marked execs: everything it took.
fn wait_for_marks(r: &Receiver, mark: &str, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} marked execs at the receiver"),
        Duration::from_secs(60),
        || {
            let taken = r.taken();
            (marked_execs(&taken, mark).len() >= n).then_some(taken)
        },
    )
}

/// Within each agent stream, lines arrive in (sequence, index) order.
fn assert_in_order(events: &[Value]) {
    let mut last: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for e in events {
        let d = &e["delivery"];
        let key = (
            d["node_id"].as_str().expect("delivery.node_id").to_owned(),
            d["stream_id"].as_str().unwrap_or_default().to_owned(),
        );
        let at = (
            d["sequence"].as_u64().unwrap(),
            d["index"].as_u64().unwrap(),
        );
        if let Some(prev) = last.insert(key, at) {
            assert!(at > prev, "out of order: {prev:?} then {at:?}");
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// 300 marked execs while the receiver answers 503 for 10 s: not ready
/// meanwhile (naming the 503), ready after, every exec once and in order;
/// each POST carried the token, its framing and its key, and the POSTs
/// refused were sent again with the same key.
#[test]
fn marked_execs_reach_the_receiver_once_and_in_order_through_a_503_outage() {
    require_root();
    let _g = serial();
    let dir = scratch("webhook-once");
    let r = Receiver::start(&dir.join("receiver"));
    r.set(Mode::Token("s3cret".into()));
    let token = write(&dir, "token", "s3cret\n");
    let col = webhook_collector(
        &r,
        free_port(),
        free_port(),
        &["--webhook-token-file", &token],
    );
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let mark = marker("webhook-once");
    const N: usize = 300;
    let series = exec_series(&mark, N, Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(2));
    r.set(Mode::Status(503));
    let (_, why) = eventually(
        "/readyz to say the receiver fails",
        Duration::from_secs(8),
        || {
            let (code, why) = col.ready();
            (code == 503).then_some((code, why))
        },
    );
    assert!(
        why.starts_with("webhook: ") && why.contains("answered 503"),
        "{why}"
    );
    std::thread::sleep(Duration::from_secs(10));
    r.set(Mode::Token("s3cret".into()));
    series.join().unwrap();
    let taken = wait_for_marks(&r, &mark, N);
    eventually("/readyz ready again", Duration::from_secs(10), || {
        (col.ready().0 == 200).then_some(())
    });
    assert_exactly_once(&taken, &mark, N);
    assert_in_order(&taken);
    let posts = r.posts();
    for p in &posts {
        assert_eq!(p.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(p.header("content-type"), Some("application/x-ndjson"));
        let lines = p.events().len();
        assert_eq!(
            p.header("x-spyglass-lines"),
            Some(lines.to_string().as_str())
        );
        let key = p.header("idempotency-key").expect("an Idempotency-Key");
        let first = &p.events()[0]["delivery"];
        let place = format!(
            "{}/{}/{}/{}+{lines}-",
            first["node_id"].as_str().unwrap(),
            first["stream_id"].as_str().unwrap(),
            first["sequence"],
            first["index"]
        );
        assert!(
            key.starts_with(&place) && key.len() == place.len() + 16,
            "{key}: its first line's place, its line count, a 64-bit hash"
        );
    }
    let refused: Vec<&str> = posts
        .iter()
        .filter(|p| p.status == 503)
        .filter_map(|p| p.header("idempotency-key"))
        .collect();
    assert!(!refused.is_empty(), "no POST met the outage");
    for key in refused {
        assert!(
            posts
                .iter()
                .any(|p| p.status == 200 && p.header("idempotency-key") == Some(key)),
            "the POST {key} refused with 503 was not taken later with the same key"
        );
    }
    assert!(col.metric("spyglass_collector_webhook_retries_total") >= 1);
    assert_eq!(col.metric("spyglass_collector_webhook_up"), 1);
    agent.stop();
}

/// A receiver that takes at most 4 KiB a body (JSON arrays): the
/// collector splits its POSTs until they pass; an exec rendering over
/// 4 KiB is refused alone while the execs around it are taken, so it
/// alone is dropped (counted by status) and the execs after it arrive
/// once each.
#[test]
fn a_receiver_limiting_its_bodies_gets_split_posts_and_an_oversize_event_dropped() {
    require_root();
    let _g = serial();
    let dir = scratch("webhook-413");
    let r = Receiver::start(&dir.join("receiver"));
    r.set(Mode::MaxBody(4096));
    let col = webhook_collector(
        &r,
        free_port(),
        free_port(),
        &[
            "--webhook-body",
            "array",
            "--webhook-batch-max-bytes",
            "65536",
        ],
    );
    // only the test's own execs: another process's long command line
    // would be refused too
    let filter = only_true_execs(&dir);
    let agent = Agent::streaming_to(
        &col.url(),
        &dir.join("spool"),
        &["--no-snapshot", "--export-filter", &filter],
    );
    let mark = marker("webhook-413");
    // fast, so agent batches carry many execs and bodies exceed 4 KiB
    exec_series(&format!("{mark}-a"), 100, Duration::ZERO)
        .join()
        .unwrap();
    let taken = wait_for_marks(&r, &format!("{mark}-a"), 100);
    assert_exactly_once(&taken, &format!("{mark}-a"), 100);
    let posts = r.posts();
    assert!(
        posts.iter().any(|p| p.status == 413),
        "no POST was over 4 KiB: nothing was split"
    );
    for p in posts.iter().filter(|p| p.status == 200) {
        assert!(
            p.body.len() <= 4096,
            "a body of {} bytes was taken",
            p.body.len()
        );
        assert_eq!(p.header("content-type"), Some("application/json"));
    }
    let long = "x".repeat(6000);
    assert!(Command::new("/bin/true")
        .arg(format!("{mark}-long-{long}"))
        .status()
        .unwrap()
        .success());
    exec_series(&format!("{mark}-b"), 20, Duration::from_millis(10))
        .join()
        .unwrap();
    let taken = wait_for_marks(&r, &format!("{mark}-b"), 20);
    assert_exactly_once(&taken, &format!("{mark}-b"), 20);
    assert_exactly_once(&taken, &format!("{mark}-a"), 100);
    assert_in_order(&taken);
    assert!(
        !taken
            .iter()
            .any(|e| argv(e).iter().any(|a| a.contains("-long-"))),
        "the oversize exec was taken"
    );
    assert_eq!(wait_refused(&col, 413), 1);
    assert_no_agent_loss(agent, &r);
}

/// Lines the collector dropped because the receiver refused them alone
/// with `status`, once it counted any (the count follows the POST that
/// confirms the refusal, which may come after the marks the test waited
/// for); 0 while none.
fn refused_lines(col: &RemoteCollector, status: u16) -> u64 {
    let (_, text) = http_get(col.metrics, "/metrics");
    let name = format!("spyglass_collector_webhook_refused_lines_total{{status=\"{status}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .map_or(0, |v| v.trim().parse().expect("a counter"))
}

/// Wait until a refused line is counted under `status`: the count.
fn wait_refused(col: &RemoteCollector, status: u16) -> u64 {
    eventually("a refused line counted", Duration::from_secs(20), || {
        let n = refused_lines(col, status);
        (n > 0).then_some(n)
    })
}

/// Stop the agent; its last loss event (sent before `stopping`) reports
/// nothing dropped from its spool: no batch was refused to it.
fn assert_no_agent_loss(agent: Agent, r: &Receiver) {
    agent.stop();
    let taken = eventually(
        "the agent's stopping event at the receiver",
        Duration::from_secs(30),
        || {
            let t = r.taken();
            t.iter()
                .any(|e| e["kind"] == "agent" && e["agent"]["state"] == "stopping")
                .then_some(t)
        },
    );
    let last_loss = taken
        .iter()
        .rev()
        .find(|e| e["kind"] == "loss")
        .expect("a final loss event");
    assert_eq!(
        last_loss["loss"]["totals"]["spool_dropped"].as_u64(),
        Some(0),
        "the agent lost batches: {last_loss}"
    );
}

/// A receiver (a web application firewall) answering 403 to any body
/// that holds one exec's command line: that exec alone is dropped
/// (counted under 403); every other exec, its batch mates included,
/// arrives once and in order, and the agent loses nothing.
#[test]
fn an_event_the_receiver_refuses_alone_is_dropped_and_its_batch_delivered() {
    require_root();
    let _g = serial();
    let dir = scratch("webhook-poison");
    let r = Receiver::start(&dir.join("receiver"));
    let mark = marker("webhook-poison");
    let poison = format!("POISON-{mark}");
    r.set(Mode::RefuseMarked(poison.clone()));
    let col = webhook_collector(&r, free_port(), free_port(), &[]);
    let filter = only_true_execs(&dir);
    let agent = Agent::streaming_to(
        &col.url(),
        &dir.join("spool"),
        &["--no-snapshot", "--export-filter", &filter],
    );
    // back to back, so the poisoned exec shares its batch with others
    const N: usize = 40;
    for i in 0..N {
        let mut cmd = Command::new("/bin/true");
        cmd.arg(format!("{mark}-{i:05}"));
        if i == N / 2 {
            cmd.arg(&poison);
        }
        assert!(cmd.status().unwrap().success());
    }
    let taken = wait_for_marks(&r, &mark, N - 1);
    let seen = marked_execs(&taken, &mark);
    let want: Vec<String> = (0..N)
        .filter(|i| *i != N / 2)
        .map(|i| format!("{mark}-{i:05}"))
        .collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), want);
    assert!(seen.values().all(|n| *n == 1), "duplicated: {seen:?}");
    assert_in_order(&taken);
    // the poisoned exec's batch, from a POST the receiver refused
    let batch_of = |e: &Value| {
        let d = &e["delivery"];
        (d["stream_id"].to_string(), d["sequence"].as_u64())
    };
    let poisoned = r
        .posts()
        .iter()
        .filter(|p| p.status == 403)
        .flat_map(spyglass_e2e::webhook::Post::events)
        .find(|e| argv(e).contains(&poison))
        .expect("a refused POST carrying the poisoned exec");
    assert!(
        batch_of(&poisoned).1.is_some(),
        "the poisoned exec carries no delivery place: {poisoned}"
    );
    assert!(
        taken
            .iter()
            .any(|e| marked_execs(std::slice::from_ref(e), &mark).len() == 1
                && batch_of(e) == batch_of(&poisoned)),
        "no batch mate of the poisoned exec was delivered"
    );
    assert_eq!(wait_refused(&col, 403), 1);
    assert!(col.ready().0 == 200, "not ready after a dropped line");
    assert_no_agent_loss(agent, &r);
}

/// A receiver answering 403 to everything (a bad token): nothing is
/// dropped, nothing acked, /readyz names it; once fixed, every exec
/// arrives once.
#[test]
fn a_receiver_refusing_everything_gets_nothing_dropped_until_fixed() {
    require_root();
    let _g = serial();
    let dir = scratch("webhook-403");
    let r = Receiver::start(&dir.join("receiver"));
    r.set(Mode::Status(403));
    let status = dir.join("agents.json");
    let col = webhook_collector(
        &r,
        free_port(),
        free_port(),
        &["--status-file", status.to_str().unwrap()],
    );
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let mark = marker("webhook-403");
    exec_series(&mark, 30, Duration::from_millis(10))
        .join()
        .unwrap();
    assert_named_and_nothing_acked(&col, &status, "403");
    let posts = r.posts();
    assert!(posts.len() > 1 && posts.iter().all(|p| p.status == 403));
    let (_, metrics) = http_get(col.metrics, "/metrics");
    assert!(
        !metrics.contains("spyglass_collector_webhook_refused_lines_total{"),
        "lines dropped while the receiver refused everything"
    );
    r.set(Mode::Take);
    let taken = wait_for_marks(&r, &mark, 30);
    assert_exactly_once(&taken, &mark, 30);
    // order is not asserted: the fix can land in the middle of a split,
    // and the lines refused alone before it then arrive after those taken
    // (docs/collector.md)
    assert_eq!(refused_lines(&col, 403), 0, "a line was dropped");
    eventually("/readyz ready", Duration::from_secs(10), || {
        (col.ready().0 == 200).then_some(())
    });
    assert_no_agent_loss(agent, &r);
}

/// /readyz names the receiver's `status` and the token flags, and no
/// batch is acked (the collector writes the agents' status every second).
fn assert_named_and_nothing_acked(col: &RemoteCollector, status_file: &Path, status: &str) {
    let why = eventually(
        "/readyz to name the refusal",
        Duration::from_secs(20),
        || {
            let (code, why) = col.ready();
            (code == 503 && why.contains(&format!("answered {status} "))).then_some(why)
        },
    );
    assert!(
        why.starts_with("webhook: ") && why.contains("--webhook-token-file"),
        "{why}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let agents: Value = serde_json::from_slice(&std::fs::read(status_file).unwrap()).unwrap();
    let acked: u64 = agents
        .as_object()
        .expect("agent status is an object")
        .values()
        .filter_map(|a| a["batches"].as_u64())
        .sum();
    assert_eq!(
        acked, 0,
        "batches acked while the receiver refused them: {agents}"
    );
}

/// A receiver answering 401 to the collector's token: /readyz names it,
/// no batch is acked (the agent status says none, and a collector killed
/// and restarted with the right token gets every exec from the agent's
/// spool), then everything arrives once.
#[test]
fn a_401_receiver_is_named_and_nothing_is_acked_until_the_token_is_fixed() {
    require_root();
    let _g = serial();
    let dir = scratch("webhook-401");
    let r = Receiver::start(&dir.join("receiver"));
    r.set(Mode::Token("right".into()));
    let wrong = write(&dir, "wrong-token", "wrong\n");
    let right = write(&dir, "right-token", "right\n");
    let status = dir.join("agents.json");
    let status_arg = status.to_str().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let mut col = webhook_collector(
        &r,
        port,
        metrics,
        &["--webhook-token-file", &wrong, "--status-file", status_arg],
    );
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let mark = marker("webhook-401");
    exec_series(&mark, 30, Duration::from_millis(10))
        .join()
        .unwrap();
    assert_named_and_nothing_acked(&col, &status, "401");
    assert!(
        r.posts().iter().all(|p| p.status == 401),
        "the receiver took a POST with the wrong token"
    );
    col.kill();
    let col = webhook_collector(&r, port, metrics, &["--webhook-token-file", &right]);
    let taken = wait_for_marks(&r, &mark, 30);
    assert_exactly_once(&taken, &mark, 30);
    assert_in_order(&taken);
    eventually("/readyz ready", Duration::from_secs(10), || {
        (col.ready().0 == 200).then_some(())
    });
    agent.stop();
}

/// Bad receivers, one collector after the other on the same agent: a
/// certificate the collector does not trust (no --webhook-ca-file), then
/// an address where nothing listens. Each is named in /readyz, nothing
/// is taken or acked, and a collector with the right settings then
/// delivers every exec once from the agent's spool.
#[test]
fn an_untrusted_certificate_and_an_unreachable_receiver_are_named_and_lose_nothing() {
    require_root();
    let _g = serial();
    let dir = scratch("webhook-unreachable");
    let r = Receiver::start(&dir.join("receiver"));
    let (port, metrics) = (free_port(), free_port());
    let url = r.url();
    let quiet = ["--log-level", "error", "--webhook-max-backoff-s", "1"];
    let mut col = RemoteCollector::start(
        port,
        metrics,
        &[&["--webhook-url", url.as_str()][..], &quiet].concat(),
    );
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let mark = marker("webhook-unreachable");
    exec_series(&mark, 20, Duration::from_millis(10))
        .join()
        .unwrap();
    let (_, why) = eventually(
        "/readyz to name the TLS failure",
        Duration::from_secs(20),
        || {
            let (code, why) = col.ready();
            (code == 503 && why.starts_with("webhook: cannot POST")).then_some((code, why))
        },
    );
    // named by scheme, host and port only (a path can hold a token)
    let shown = url.split('/').take(3).collect::<Vec<_>>().join("/");
    assert!(why.contains(&shown) && !why.contains("/ingest"), "{why}");
    assert!(
        why.contains("invalid peer certificate") && why.contains("--webhook-ca-file"),
        "{why}"
    );
    assert!(
        r.posts().is_empty(),
        "a POST went through an untrusted TLS session"
    );
    col.kill();
    // nothing listens at this address
    let dead = format!("https://127.0.0.1:{}/ingest", free_port());
    let ca = r.ca.to_str().unwrap();
    col = RemoteCollector::start(
        port,
        metrics,
        &[
            &["--webhook-url", dead.as_str(), "--webhook-ca-file", ca][..],
            &quiet,
        ]
        .concat(),
    );
    let (_, why) = eventually(
        "/readyz to name the unreachable receiver",
        Duration::from_secs(30),
        || {
            let (code, why) = col.ready();
            let host = dead.trim_end_matches("/ingest");
            (code == 503 && why.contains(host)).then_some((code, why))
        },
    );
    assert!(why.starts_with("webhook: cannot POST to "), "{why}");
    assert_eq!(col.metric("spyglass_collector_webhook_up"), 0);
    col.kill();
    let col = webhook_collector(&r, port, metrics, &[]);
    let taken = wait_for_marks(&r, &mark, 20);
    assert_exactly_once(&taken, &mark, 20);
    assert_in_order(&taken);
    eventually("/readyz ready", Duration::from_secs(10), || {
        (col.ready().0 == 200).then_some(())
    });
    agent.stop();
}
