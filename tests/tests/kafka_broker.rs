//! The Kafka test broker itself (tests/src/kafka.rs, Tansu 0.6.0): the
//! protocol features the collector's Kafka output rests on work against
//! it with rdkafka, and the harness's read-back and proxy cut do what the
//! output's tests need. Needs no privileges and starts no agent.
mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::{
    config::ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
};
use spyglass_e2e::kafka::{Broker, Record};
use tokio::runtime::Runtime;

const T: Duration = Duration::from_secs(30);

fn producer(broker: &Broker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("create an rdkafka producer")
}

/// Enqueue `key` -> `payload`, with the payload also in a header `echo`
/// (delivery is awaited by the caller, or by the transaction's commit).
fn send(p: &FutureProducer, topic: &str, key: &str, payload: &str) -> DeliveryFuture {
    let headers = OwnedHeaders::new().insert(Header {
        key: "echo",
        value: Some(payload),
    });
    p.send_result(
        FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers),
    )
    .map_err(|(e, _)| e)
    .expect("enqueue a record")
}

/// (key, payload) of records, as text; each must carry [`send`]'s header.
fn texts(records: &[Record]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            assert_eq!(
                r.headers,
                [("echo".to_owned(), r.payload.clone())],
                "headers of {r:?}"
            );
            (
                String::from_utf8(r.key.clone().expect("a key")).unwrap(),
                String::from_utf8(r.payload.clone()).unwrap(),
            )
        })
        .collect()
}

/// Wait for every delivery; panics naming `what` unless all succeeded.
fn delivered(rt: &Runtime, what: &str, futures: Vec<DeliveryFuture>) {
    for (i, f) in futures.into_iter().enumerate() {
        let r = rt.block_on(f);
        assert!(matches!(r, Ok(Ok(_))), "{what}: delivery {i}: {r:?}");
    }
}

#[test]
fn transactions_read_committed_and_a_cut_against_tansu() {
    let dir = scratch("kafka-broker");
    let broker = Broker::start(&dir);
    broker.create_topic("events", 3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    // 100 keyed records in one committed transaction
    let txn = producer(&broker, &[("transactional.id", "smoke-1")]);
    txn.init_transactions(T).expect("init_transactions");
    txn.begin_transaction().expect("begin");
    let sent = (0..100)
        .map(|i| {
            send(
                &txn,
                "events",
                &format!("node-{}", i % 7),
                &format!("c-{i:03}"),
            )
        })
        .collect();
    txn.commit_transaction(T).expect("commit");
    delivered(&rt, "committed transaction", sent);

    // a second transaction, its records delivered but left open while
    // reading: read_committed must not show them
    let open = producer(&broker, &[("transactional.id", "smoke-2")]);
    open.init_transactions(T).expect("init_transactions (2)");
    open.begin_transaction().expect("begin (2)");
    let sent = (0..5)
        .map(|i| send(&open, "events", &format!("node-{i}"), &format!("open-{i}")))
        .collect();
    delivered(&rt, "open transaction", sent);

    let mut committed = texts(&broker.read_all("events"));
    committed.sort_by(|a, b| a.1.cmp(&b.1));
    let want: Vec<(String, String)> = (0..100)
        .map(|i| (format!("node-{}", i % 7), format!("c-{i:03}")))
        .collect();
    assert_eq!(
        committed, want,
        "read_committed: the 100 committed records, each once, with its key"
    );

    open.commit_transaction(T).expect("commit (2)");
    let mut after = texts(&broker.read_all("events"));
    after.retain(|(_, v)| v.starts_with("open-"));
    after.sort();
    let want: Vec<(String, String)> = (0..5)
        .map(|i| (format!("node-{i}"), format!("open-{i}")))
        .collect();
    assert_eq!(
        after, want,
        "the second transaction, visible once committed"
    );

    cut_and_deliver_after(&rt, &broker);
}

/// A producer connected through the proxy: its delivery during a 2 s cut
/// fails or waits, and succeeds once the cut is over, once; the same
/// while the broker is stopped (SIGSTOP) for 1 s.
fn cut_and_deliver_after(rt: &Runtime, broker: &Broker) {
    let p = producer(
        broker,
        &[
            ("message.timeout.ms", "30000"),
            // reconnect soon after the cut (librdkafka backs off up to
            // 10 s by default)
            ("reconnect.backoff.max.ms", "200"),
        ],
    );
    let first = rt.block_on(send(&p, "events", "cut", "before"));
    assert!(
        matches!(first, Ok(Ok(_))),
        "delivery before the cut: {first:?}"
    );

    let cut = Duration::from_secs(2);
    let cut_at = Instant::now();
    broker.cut(cut);
    let mut late = rt.block_on(send(&p, "events", "cut", "during"));
    if let Ok(Err((e, _))) = &late {
        // failed rather than waited: it is sent again, and that waits
        eprintln!("delivery during the cut failed ({e}); sending it again");
        late = rt.block_on(send(&p, "events", "cut", "during"));
    }
    assert!(
        matches!(late, Ok(Ok(_))),
        "delivery after the cut: {late:?}"
    );
    // Nothing reaches the broker during the cut, so the broker's ack can
    // only come after it (not a timing assumption: a proxy that did not
    // cut fails here).
    assert!(
        cut_at.elapsed() >= cut,
        "delivered {:?} into a {cut:?} cut",
        cut_at.elapsed()
    );

    // a hung broker (SIGSTOP) for 1 s: the delivery waits for it
    broker.pause();
    let mut pending = send(&p, "events", "cut", "paused");
    std::thread::sleep(Duration::from_secs(1));
    let early = rt.block_on(async { tokio::time::timeout(Duration::ZERO, &mut pending).await });
    assert!(
        early.is_err(),
        "a delivery completed while the broker was stopped: {early:?}"
    );
    broker.resume();
    let r = rt.block_on(pending);
    assert!(matches!(r, Ok(Ok(_))), "delivery after the pause: {r:?}");

    let got: Vec<(String, String)> = texts(&broker.read_all("events"))
        .into_iter()
        .filter(|(k, _)| k == "cut")
        .collect();
    let want = [("cut", "before"), ("cut", "during"), ("cut", "paused")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(got, want, "each record once, in order");
}

/// What the collector's fencing of a replica rests on: under
/// read_committed, an open transaction's first record holds back every
/// record after it in its partition (the last stable offset), committed
/// ones included, until it ends.
#[test]
fn an_open_transaction_holds_back_later_commits_in_its_partition() {
    let dir = scratch("kafka-lso");
    let broker = Broker::start(&dir);
    broker.create_topic("pos", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let first = producer(&broker, &[("transactional.id", "lso-a")]);
    first.init_transactions(T).expect("init_transactions (a)");
    let later = producer(&broker, &[("transactional.id", "lso-b")]);
    later.init_transactions(T).expect("init_transactions (b)");

    first.begin_transaction().expect("begin (a)");
    delivered(&rt, "open", vec![send(&first, "pos", "k", "a-open")]);
    later.begin_transaction().expect("begin (b)");
    delivered(&rt, "later", vec![send(&later, "pos", "k", "b-later")]);
    later.commit_transaction(T).expect("commit (b)");

    let seen = texts(&broker.read_all("pos"));
    assert_eq!(
        seen,
        [],
        "a record committed after an open transaction's record is held back"
    );
    first.commit_transaction(T).expect("commit (a)");
    let seen: Vec<String> = texts(&broker.read_all("pos"))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        seen,
        ["a-open", "b-later"],
        "both, in order, once (a) ended"
    );
}
