//! The collector's Kafka output with the real agent, the real collector
//! and a real broker speaking the Kafka protocol (Tansu, tests/src/kafka.rs),
//! read back with a read_committed consumer: every marked exec exactly
//! once and in order per node, through a collector killed mid-stream and
//! a broker cut off for 10 s.
mod common;

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use common::*;
use serde_json::Value;
use spyglass_e2e::kafka::{Broker, Proxy, Record};
use spyglass_proto::v1::{collector_client::CollectorClient, Batch};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};

const EVENTS: &str = "spyglass-events";
const FINDINGS: &str = "spyglass-findings";
const POSITIONS: &str = "spyglass-positions";

fn broker(dir: &Path) -> Broker {
    let b = Broker::start(dir);
    b.create_topic(EVENTS, 3);
    b.create_topic(FINDINGS, 1);
    b.create_topic(POSITIONS, 3);
    b
}

/// A collector publishing to `b` (no output file), with `metrics` for
/// /readyz and /metrics.
fn kafka_collector(b: &Broker, port: u16, metrics: u16) -> RemoteCollector {
    kafka_replica(b, port, metrics, "spyglass-test-0")
}

/// Replicas A and B on `b`, ready.
fn two_replicas(b: &Broker) -> (RemoteCollector, RemoteCollector) {
    let a = kafka_replica(b, free_port(), free_port(), "spyglass-test-a");
    let r = kafka_replica(b, free_port(), free_port(), "spyglass-test-b");
    for c in [&a, &r] {
        eventually("the replica ready", Duration::from_secs(20), || {
            (c.ready().0 == 200).then_some(())
        });
    }
    (a, r)
}

/// A replica with its own transactional.id.
fn kafka_replica(b: &Broker, port: u16, metrics: u16, id: &str) -> RemoteCollector {
    RemoteCollector::start(
        port,
        metrics,
        &[
            "--kafka-brokers",
            &b.bootstrap(),
            "--kafka-findings-topic",
            FINDINGS,
            "--kafka-transactional-id",
            id,
            // Tansu 0.6 shows aborted transactions' records
            "--kafka-recover-aborted",
            "--log-level",
            "warn",
        ],
    )
}

fn events(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("a record is one JSON event"))
        .collect()
}

/// Read the events topic until `n` marked execs are there.
fn wait_for_marks(b: &Broker, mark: &str, n: usize) -> Vec<Record> {
    eventually(
        &format!("{n} marked execs in topic {EVENTS}"),
        Duration::from_secs(90),
        || {
            let records = b.read_all(EVENTS);
            (marked_execs(&events(&records), mark).len() >= n).then_some(records)
        },
    )
}

fn assert_exactly_once(records: &[Record], mark: &str, n: usize) {
    spyglass_e2e::assert_exactly_once(&events(records), mark, n);
}

/// Each record is keyed by its node; within a partition, one node's
/// batches and lines come in order.
fn assert_keyed_and_ordered(records: &[Record]) {
    let mut last: BTreeMap<(i32, String, String), (u64, u64)> = BTreeMap::new();
    for (r, e) in records.iter().zip(events(records)) {
        let d = &e["delivery"];
        let node = d["node_id"].as_str().expect("delivery.node_id").to_owned();
        assert_eq!(
            r.key.as_deref(),
            Some(node.as_bytes()),
            "record key is the node id: {e}"
        );
        let stream = d["stream_id"].as_str().unwrap_or_default().to_owned();
        let at = (
            d["sequence"].as_u64().unwrap(),
            d["index"].as_u64().unwrap(),
        );
        if let Some(prev) = last.insert((r.partition, node, stream), at) {
            assert!(
                at > prev,
                "out of order in partition {}: {prev:?} then {at:?}",
                r.partition
            );
        }
    }
}

#[test]
fn marked_execs_reach_kafka_once_keyed_and_in_order() {
    require_root();
    let _g = serial();
    let dir = scratch("kafka-once");
    let b = broker(&dir);
    let col = kafka_collector(&b, free_port(), free_port());
    eventually("the collector ready", Duration::from_secs(20), || {
        (col.ready().0 == 200).then_some(())
    });
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let mark = marker("kafka-once");
    const N: usize = 100;
    exec_series(&mark, N, Duration::from_millis(10))
        .join()
        .unwrap();
    let records = wait_for_marks(&b, &mark, N);
    assert_exactly_once(&records, &mark, N);
    assert_keyed_and_ordered(&records);
    // the positions say where each stream is, in the same transactions
    let positions = b.read_all(POSITIONS);
    let marks: Vec<Value> = positions
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let top = events(&records)
        .iter()
        .filter_map(|e| e["delivery"]["sequence"].as_u64())
        .max()
        .unwrap();
    assert!(
        marks.iter().any(|m| m["sequence"].as_u64() == Some(top)),
        "no position record for the last batch {top}: {marks:?}"
    );
    let (_, metrics) = http_get(col.metrics, "/metrics");
    assert!(
        metrics.contains("spyglass_collector_kafka_up 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spyglass_collector_kafka_aborts_total 0"),
        "{metrics}"
    );
    agent.stop();
}

#[test]
fn collector_killed_and_broker_cut_lose_and_duplicate_nothing() {
    require_root();
    let _g = serial();
    let dir = scratch("kafka-outage");
    let b = broker(&dir);
    let (port, metrics) = (free_port(), free_port());
    let mut col = kafka_collector(&b, port, metrics);
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let mark = marker("kafka-outage");
    const N: usize = 400;
    let series = exec_series(&mark, N, Duration::from_millis(40));
    std::thread::sleep(Duration::from_secs(3));
    col.kill(); // SIGKILL mid-stream: a transaction may be open
    std::thread::sleep(Duration::from_secs(1));
    let col = kafka_collector(&b, port, metrics);
    std::thread::sleep(Duration::from_secs(3));
    // the broker unreachable for 10 s: not ready while it is
    b.cut(Duration::from_secs(10));
    let (code, why) = eventually(
        "/readyz to say Kafka is down",
        Duration::from_secs(9),
        || {
            let (code, why) = col.ready();
            (code == 503).then_some((code, why))
        },
    );
    assert!(why.starts_with("kafka: "), "{code} {why}");
    series.join().unwrap();
    // the cut is over once the collector commits again
    eventually("/readyz ready again", Duration::from_secs(60), || {
        (col.ready().0 == 200).then_some(())
    });
    let records = wait_for_marks(&b, &mark, N);
    assert_exactly_once(&records, &mark, N);
    assert_keyed_and_ordered(&records);
    agent.stop();
}

/// Two replicas behind one address; the agent is moved from A to B and
/// back, twice, while both run: each replica reads where the node's streams stand
/// in Kafka before its first batch, so the batches the agent resends
/// after each move, which the other replica had committed, are not
/// written twice.
#[test]
fn an_agent_moved_between_two_replicas_duplicates_nothing() {
    require_root();
    let _g = serial();
    let dir = scratch("kafka-replicas");
    let b = broker(&dir);
    let (a, r) = two_replicas(&b);
    let front = Proxy::start(a.port);
    let agent = Agent::streaming_to(
        &format!("http://127.0.0.1:{}", front.port),
        &dir.join("spool"),
        &["--no-snapshot"],
    );
    let mark = marker("kafka-replicas");
    const N: usize = 300;
    let series = exec_series(&mark, N, Duration::from_millis(30));
    // four moves, each with batches in flight
    for to in [r.port, a.port, r.port, a.port] {
        std::thread::sleep(Duration::from_millis(1500));
        front.retarget(to);
    }
    series.join().unwrap();
    let records = wait_for_marks(&b, &mark, N);
    assert_exactly_once(&records, &mark, N);
    assert_keyed_and_ordered(&records);
    // both carried the node's batches
    for c in [&a, &r] {
        let n = metric(c.metrics, "spyglass_collector_kafka_batches_total");
        assert!(n > 0, "replica on port {} committed no batch", c.port);
    }
    agent.stop();
}

/// Batch `seq` of one hand-made agent stream of `node`, one exec.
fn exec_batch(node: &str, seq: u64, arg: &str) -> Batch {
    Batch {
        node_id: node.into(),
        sequence: seq,
        events: vec![exec_event(node, arg)],
        sent_unix_nano: 0,
        stream_id: "fence-stream".into(),
    }
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Fencing (collector/src/kafka/gate.rs). A node's batch 2 reaches
/// replica A while A is stopped (SIGSTOP), so A holds it unwritten; the
/// node moves to replica B with the same batch, and B claims the node
/// and commits it. When A goes on it must not commit batch 2 too: its
/// gate reads B's claim before its commit and leaves the batch out, and
/// A's stream gets UNAVAILABLE. Without the gate A commits it, and the
/// mark is in Kafka twice. A hand-made agent stream (no real agent), so
/// A is idle when it stops and the order is the same on every run.
#[test]
fn a_replica_does_not_commit_a_batch_its_node_moved_away_with() {
    let _g = serial();
    let dir = scratch("kafka-fence");
    let b = broker(&dir);
    let (a, r) = two_replicas(&b);
    let mark = marker("kafka-fence");
    let node = "fence-node";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut at_a = CollectorClient::new(channel(a.port).await);
        let mut acks = at_a
            .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("a stream to A")
            .into_inner();
        tx.send(exec_batch(node, 1, &format!("{mark}-00000")))
            .await
            .unwrap();
        let ack = acks.next().await.expect("an ack").expect("batch 1 acked");
        assert_eq!(ack.sequence, 1);
        // A stops; batch 2 waits in its socket
        a.signal(libc::SIGSTOP);
        tx.send(exec_batch(node, 2, &format!("{mark}-00001")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // the node moves to B with batch 2: B claims it and commits
        let mut at_b = CollectorClient::new(channel(r.port).await);
        let mut b_acks = at_b
            .publish(tokio_stream::iter(vec![exec_batch(
                node,
                2,
                &format!("{mark}-00001"),
            )]))
            .await
            .expect("a stream to B")
            .into_inner();
        let ack = b_acks
            .next()
            .await
            .expect("an ack from B")
            .expect("batch 2 acked by B");
        assert_eq!(ack.sequence, 2);
        // A goes on with batch 2 from its stream: fenced
        a.signal(libc::SIGCONT);
        let refused = tokio::time::timeout(Duration::from_secs(60), acks.next())
            .await
            .expect("A answered batch 2 within 60 s");
        match refused {
            Some(Err(status)) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().contains("fenced"), "{status:?}");
            }
            other => panic!("A acked or ended instead of refusing batch 2: {other:?}"),
        }
        drop(tx);
    });
    assert_eq!(
        metric(a.metrics, "spyglass_collector_kafka_fenced_batches_total"),
        1
    );
    let all = b.read_all(EVENTS);
    assert_exactly_once(&all, &mark, 2);
    assert_keyed_and_ordered(&all);
}

/// The events topic's max.message.bytes in the bad-input test.
const TOPIC_MAX: u64 = 5_200;

/// Create `name` with a `max.message.bytes` of `max` (Tansu's CLI: the
/// broker keeps the setting and describes it; it does not enforce it).
fn create_limited_topic(b: &Broker, name: &str, partitions: i32, max: u64) {
    let out = Command::new(spyglass_e2e::kafka::tansu())
        .args(["topic", "create", name, "--partitions"])
        .arg(partitions.to_string())
        .arg("--config")
        .arg(format!("max.message.bytes={max}"))
        .arg("--broker")
        .arg(format!("tcp://{}", b.bootstrap()))
        .output()
        .expect("run tansu topic create");
    assert!(out.status.success(), "tansu topic create {name}: {out:?}");
}

/// Bad input, in order on one broker: brokers unreachable at start (not
/// ready, nothing acked, then delivered once they answer), a topic that
/// does not exist (not ready naming it, until it is created), and an
/// event over the events topic's max.message.bytes, read from the broker
/// (its batch refused, counted, reported by the agent as a loss, and
/// delivery going on).
#[test]
fn unreachable_brokers_a_missing_topic_and_an_oversize_event() {
    require_root();
    let _g = serial();
    let dir = scratch("kafka-bad");
    let b = Broker::start(&dir);
    // the events topic takes smaller records than the flag's default:
    // the collector reads that and holds lines to it
    create_limited_topic(&b, EVENTS, 3, TOPIC_MAX);
    b.create_topic(POSITIONS, 3);
    // the brokers' address answers nothing yet
    let dead = free_port();
    let front = Proxy::start(dead);
    let (port, metrics) = (free_port(), free_port());
    let col = RemoteCollector::start(
        port,
        metrics,
        &[
            "--kafka-brokers",
            &format!("127.0.0.1:{}", front.port),
            "--kafka-findings-topic",
            FINDINGS,
            "--kafka-transactional-id",
            "spyglass-test-bad",
            "--kafka-recover-aborted",
            "--log-level",
            "error",
        ],
    );
    let (code, why) = eventually(
        "/readyz to say Kafka is unreachable",
        Duration::from_secs(30),
        || {
            let (code, why) = col.ready();
            (code == 503 && why.starts_with("kafka: ")).then_some((code, why))
        },
    );
    assert_eq!(code, 503, "{why}");
    let spool = dir.join("spool");
    // only the test's own execs: another process's long command line
    // would be refused too, and take marked execs of its batch with it
    let filter = only_true_execs(spool.parent().unwrap());
    let agent = Agent::streaming_to(
        &col.url(),
        &spool,
        &["--no-snapshot", "--export-filter", &filter],
    );
    let mark = marker("kafka-bad");
    exec_series(&format!("{mark}-a"), 20, Duration::from_millis(10))
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(metric(metrics, "spyglass_collector_kafka_batches_total"), 0);
    // reachable now, but the findings topic is missing
    let broker_port = b.bootstrap().rsplit(':').next().unwrap().parse().unwrap();
    front.retarget(broker_port);
    let (_, why) = eventually(
        "/readyz to name the missing topic",
        Duration::from_secs(30),
        || {
            let (code, why) = col.ready();
            (code == 503 && why.contains(FINDINGS)).then_some((code, why))
        },
    );
    assert!(why.contains("does not exist"), "{why}");
    b.create_topic(FINDINGS, 1);
    eventually("/readyz ready", Duration::from_secs(30), || {
        (col.ready().0 == 200).then_some(())
    });
    let records = wait_for_marks(&b, &format!("{mark}-a"), 20);
    assert_exactly_once(&records, &format!("{mark}-a"), 20);
    // the topic's max.message.bytes less the record framing
    // (collector/src/kafka/limits.rs), not the flag's 1,000,000
    assert_eq!(
        metric(metrics, "spyglass_collector_kafka_record_limit_bytes"),
        TOPIC_MAX - 803
    );
    // one exec whose argv renders over that: its batch is refused
    let long = "x".repeat(6000);
    assert!(Command::new("/bin/true")
        .arg(format!("{mark}-long-{long}"))
        .status()
        .unwrap()
        .success());
    eventually(
        "the oversize batch refused",
        Duration::from_secs(30),
        || (metric(metrics, "spyglass_collector_kafka_oversized_batches_total") >= 1).then_some(()),
    );
    exec_series(&format!("{mark}-b"), 20, Duration::from_millis(10))
        .join()
        .unwrap();
    let records = wait_for_marks(&b, &format!("{mark}-b"), 20);
    assert_exactly_once(&records, &format!("{mark}-b"), 20);
    let all = events(&records);
    assert!(
        !all.iter()
            .any(|e| argv(e).iter().any(|a| a.contains("-long-"))),
        "the oversize exec reached Kafka"
    );
    assert!(
        spool_dropped(&all) >= 1,
        "the agent did not report the refused batch as lost"
    );
    agent.stop();
}

/// The positions partition of `node` among `parts` (the collector's
/// choice, collector/src/kafka/positions.rs `partition_of`: FNV-1a).
fn positions_partition(node: &str, parts: u32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h % parts) as i32
}

/// A new stream's refresh reads the node's positions partition up to
/// where it was written when its claim was read past, not only to its
/// committed end (positions.rs `read_node`). On Kafka a transaction's
/// commit marker can reach the claims partition (0) before the node's
/// partition; a refresh that stopped at the committed end there would
/// miss what the transaction committed of the node and write it again.
/// Tansu writes every marker at once, so the test holds that window open
/// itself: its own transaction writes the node's position (batch 2 of
/// the stream) to the node's partition, not partition 0, and stays open
/// while the stream starts. The refresh must wait for it and, once it
/// commits, ack batches 1 and 2 as delivered without writing them.
/// Without the wait the refresh reads past the open record, and both
/// batches are in Kafka.
#[test]
fn a_refresh_waits_for_a_position_written_but_not_yet_committed() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let _g = serial();
    let dir = scratch("kafka-marker");
    let b = broker(&dir);
    let col = kafka_collector(&b, free_port(), free_port());
    eventually("the collector ready", Duration::from_secs(20), || {
        (col.ready().0 == 200).then_some(())
    });
    // a node whose positions are not in the claims partition
    let node = (0..)
        .map(|i| format!("marker-node-{i}"))
        .find(|n| positions_partition(n, 3) != 0)
        .unwrap();
    let held: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("transactional.id", "test-held-position")
        .create()
        .expect("a transactional producer");
    let t = Duration::from_secs(30);
    held.init_transactions(t).expect("init_transactions");
    held.begin_transaction().expect("begin_transaction");
    let position = serde_json::json!({
        "node": node, "stream": "fence-stream", "sequence": 2, "tails": []
    })
    .to_string();
    let key = format!("{node}/fence-stream");
    held.send(
        BaseRecord::to(POSITIONS)
            .partition(positions_partition(&node, 3))
            .key(&key)
            .payload(&position),
    )
    .map_err(|(e, _)| e)
    .expect("enqueue the position");
    held.flush(t).expect("the position written (uncommitted)");
    let mark = marker("kafka-marker");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = CollectorClient::new(channel(col.port).await);
        let batches = (1..=2).map(|s| exec_batch(&node, s, &format!("{mark}-{s:05}")));
        let mut acks = client
            .publish(tokio_stream::iter(batches.collect::<Vec<_>>()))
            .await
            .expect("a stream")
            .into_inner();
        // the refresh is waiting on the open transaction now
        tokio::time::sleep(Duration::from_secs(2)).await;
        held.commit_transaction(t).expect("commit the position");
        for want in 1..=2 {
            let ack = tokio::time::timeout(Duration::from_secs(60), acks.next())
                .await
                .expect("an ack within 60 s")
                .expect("an ack")
                .expect("the batch acked");
            assert_eq!(ack.sequence, want);
        }
    });
    // something the collector writes after them: the marked execs would
    // be in Kafka before it
    let after = marker("kafka-marker-after");
    rt.block_on(async {
        let mut client = CollectorClient::new(channel(col.port).await);
        let mut acks = client
            .publish(tokio_stream::iter(vec![exec_batch(&node, 3, &after)]))
            .await
            .expect("a stream")
            .into_inner();
        acks.next().await.expect("an ack").expect("batch 3 acked");
    });
    let records = wait_for_marks(&b, &after, 1);
    let written: Vec<Value> = events(&records)
        .into_iter()
        .filter(|e| argv(e).iter().any(|a| a.starts_with(&mark)))
        .collect();
    assert!(
        written.is_empty(),
        "batches Kafka already held were written again: {written:?}"
    );
}
