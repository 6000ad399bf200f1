//! The collector's Kafka output when the brokers refuse its SASL login
//! (issue 17, wrong credentials), with the real agent: the log and
//! `/readyz` say why, the password is never shown, nothing is acked (no
//! batch committed). Then a collector the brokers accept gets the agent's
//! spool: every marked exec exactly once, in order, which shows the
//! refused collector acked none of them.
//!
//! The broker is Tansu with `--authentication` (tests/src/kafka.rs
//! `Broker::start_authenticated`): it refuses every SCRAM login, as Kafka
//! refuses a wrong password. Tansu 0.6 cannot accept one (its memory
//! storage keeps no users, and the crates.io build with PostgreSQL
//! storage has no EndTxn, so no transaction commits on it): the second
//! collector publishes to a broker without authentication instead of
//! logging in with the right password.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;
use spyglass_e2e::kafka::{Broker, Record, Scram};

const EVENTS: &str = "spyglass-events";
const POSITIONS: &str = "spyglass-positions";
const PASSWORD: &str = "a-password-never-shown";
/// What the collector says of a refused login, in its log and `/readyz`
/// (then librdkafka's words, and what to check).
const AUTH_FAILED: &str =
    "the brokers refused the SASL login of user spyglass-collector (SCRAM-SHA-512): ";

/// A collector publishing to `b`, with the librdkafka properties file
/// `config` if any, its log (stderr) in `log`.
fn collector(
    b: &Broker,
    port: u16,
    metrics: u16,
    config: Option<&Path>,
    log: &Path,
) -> RemoteCollector {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(bin("spyglass-collector"));
    if let Some(config) = config {
        cmd.arg("--kafka-config").arg(config);
    }
    let child = cmd
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--kafka-brokers", &b.bootstrap()])
        .args(["--kafka-transactional-id", "spyglass-test-sasl"])
        // Tansu 0.6 shows aborted transactions' records
        .arg("--kafka-recover-aborted")
        .args(["--log-level", "warn"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start collector");
    eventually("the collector to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    RemoteCollector {
        child,
        port,
        metrics,
    }
}

fn events(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("a record is one JSON event"))
        .collect()
}

/// The marked execs' argv[1] in the order the topic holds them
/// (partition, then offset).
fn marks_in_order(records: &[Record], mark: &str) -> Vec<String> {
    events(records)
        .iter()
        .filter(|e| e["kind"] == "exec")
        .filter_map(|e| argv(e).get(1).cloned())
        .filter(|a| a.starts_with(mark))
        .collect()
}

#[test]
fn a_refused_sasl_login_acks_nothing_and_the_spool_is_delivered_once_after() {
    require_root();
    let _g = serial();
    let dir = scratch("kafka-sasl");
    let guarded = Broker::start_authenticated(&dir);
    let config = dir.join("kafka.properties");
    std::fs::write(
        &config,
        Scram::new("spyglass-collector", PASSWORD).config_file(),
    )
    .unwrap();

    // the login refused: not ready, saying why
    let (port, metrics) = (free_port(), free_port());
    let log = dir.join("collector-refused.log");
    let mut col = collector(&guarded, port, metrics, Some(&config), &log);
    let (_, why) = eventually(
        "/readyz to say the SASL login failed",
        Duration::from_secs(30),
        || {
            let (code, why) = col.ready();
            (code == 503 && why.contains(AUTH_FAILED)).then_some((code, why))
        },
    );
    assert!(why.starts_with("kafka: "), "{why}");
    let logged = eventually(
        "the log to say the SASL login failed",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| l.contains("WARN") && l.contains(AUTH_FAILED))
                .map(str::to_owned)
        },
    );
    for said in [&why, &logged] {
        assert!(!said.contains(PASSWORD), "the password is shown: {said}");
    }

    // batches sent meanwhile are not acked: the agent keeps them
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let mark = marker("kafka-sasl");
    const N: usize = 30;
    exec_series(&mark, N, Duration::from_millis(10))
        .join()
        .unwrap();
    // time for the agent to send them (nothing may come of it)
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(col.metric("spyglass_collector_kafka_batches_total"), 0);
    assert_eq!(col.metric("spyglass_collector_kafka_commits_total"), 0);
    let (code, why) = col.ready();
    assert!(code == 503 && why.contains(AUTH_FAILED), "{code} {why}");
    col.kill();

    // brokers that take the collector, same address for the agent: its
    // spool is delivered, each exec once and in order
    let open = Broker::start(&dir);
    open.create_topic(EVENTS, 3);
    open.create_topic(POSITIONS, 3);
    let col = collector(&open, port, metrics, None, &dir.join("collector-open.log"));
    let records = eventually(
        &format!("{N} marked execs in topic {EVENTS}"),
        Duration::from_secs(60),
        || {
            let records = open.read_all(EVENTS);
            (marks_in_order(&records, &mark).len() >= N).then_some(records)
        },
    );
    assert_exactly_once(&events(&records), &mark, N);
    let got = marks_in_order(&records, &mark);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "marked execs out of order in the topic");
    assert_eq!(col.ready().0, 200, "{}", col.ready().1);
    agent.stop();
}
