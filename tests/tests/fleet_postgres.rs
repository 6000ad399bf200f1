//! The fleet inventory on PostgreSQL (docs/fleet.md, "Several
//! collectors"): two real collectors share one real PostgreSQL (Debian's
//! server, started by the harness); a real agent under containerd fails
//! over from one to the other mid-run, the way a Kubernetes Service moves
//! it, and both collectors' APIs give the same answer with no duplicate
//! and no missing row. And a PostgreSQL that is away: the collector still
//! receives and writes its output, the API and /readyz say why, and the
//! changes are written once the server is back.
//!
//! `SPYGLASS_E2E_COLLECTOR=PATH` runs another collector binary (an older
//! build, to see these tests fail there).
mod common;

use std::{
    io::Read,
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use common::*;
use serde_json::Value;
use spyglass_e2e::{
    containers::{container_id, image, Ctr},
    postgres::Postgres,
};

const WAIT: Duration = Duration::from_secs(30);

fn collector_bin() -> PathBuf {
    std::env::var_os("SPYGLASS_E2E_COLLECTOR")
        .map_or_else(|| bin("spyglass-collector"), PathBuf::from)
}

/// A collector on `store`, its API on `api`, metrics on `metrics`;
/// fails at once if it exits at start.
fn start_collector(dir: &Path, store: &str, api: u16, metrics: u16) -> Collector {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let output = dir.join("out.jsonl");
    let mut child = Command::new(collector_bin())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--output")
        .arg(&output)
        .args(["--store", store])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start collector");
    eventually("the collector to listen", WAIT, || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the collector exited at start ({st}) with --store {store}");
        }
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Collector {
        child,
        port,
        output,
    }
}

fn api_get(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http_get(port, path);
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// A TCP forwarder standing for a Kubernetes Service in front of the
/// collectors: new connections go to the current target; [`Proxy::switch`]
/// moves the target and cuts the open connections, as when the pod
/// behind the Service goes away.
struct Proxy {
    port: u16,
    target: Arc<AtomicU16>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (t, o) = (target.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", t.load(Ordering::SeqCst))) else {
                    continue;
                };
                let mut o = o.lock().unwrap();
                o.push(client.try_clone().unwrap());
                o.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, target, open }
    }

    fn switch(&self, to: u16) {
        self.target.store(to, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A ports answer's rows of containers (the host's own listeners of
/// the machine, opened by whatever else runs, are left out).
fn in_containers(body: &Value) -> Vec<Value> {
    body["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("no ports array: {body}"))
        .iter()
        .filter(|r| r["container"]["id"] != "")
        .cloned()
        .collect()
}

/// (container id, port) of a ports answer's rows.
fn listeners(rows: &[Value]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["container"]["id"].as_str().unwrap().to_owned(),
                r["port"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn container_ids(body: &Value) -> Vec<String> {
    body["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("no containers array: {body}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn two_collectors_on_one_postgres_answer_alike_across_a_failover() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-pg");
    let pg = Postgres::start(&dir);
    let (api_a, api_b) = (free_port(), free_port());
    let a = start_collector(&dir.join("a"), &pg.url(), api_a, free_port());
    // the second replica, started at the same time on the same database
    let b = start_collector(&dir.join("b"), &pg.url(), api_b, free_port());
    let service = Proxy::start(a.port);
    let node = format!("fleet-pg-{}", std::process::id());
    let agent = Agent::streaming_to(
        &format!("http://127.0.0.1:{}", service.port),
        &dir.join("spool"),
        &["--no-snapshot", "--node-name", &node],
    );
    let busybox = image("spyglass.test/busybox:1");
    let (before_id, after_id) = (container_id("fleet-pg-1"), container_id("fleet-pg-2"));
    let (before_port, after_port) = (18000 + free_port() % 1000, 19000 + free_port() % 1000);
    let listen = |id: &str, port: u16| {
        let c = Ctr::run(
            &busybox.reference,
            id,
            &[],
            &["/bin/nc", "-l", "-p", &port.to_string()],
        );
        agent.wait_for(&format!("the listen in {id}"), WAIT, |e| {
            e["kind"] == "listen"
                && e["container"]["id"] == id
                && e["network"]["local"]["port"] == port
        });
        c
    };
    let ports_path = format!("/api/v1/ports?node={node}");
    let _before = listen(&before_id, before_port);
    eventually("the first listener through collector A", WAIT, || {
        let (st, body) = api_get(api_a, &ports_path);
        (st == 200 && listeners(&in_containers(&body)).len() == 1).then_some(())
    });

    // Failover: the Service now sends the agent to B; A stays up and
    // keeps answering queries from the shared database.
    service.switch(b.port);
    let _after = listen(&after_id, after_port);
    let want = {
        let mut w = vec![
            (before_id.clone(), u64::from(before_port)),
            (after_id.clone(), u64::from(after_port)),
        ];
        w.sort();
        w
    };
    let ports = eventually("both listeners in B's answer", WAIT, || {
        let (st, body) = api_get(api_b, &ports_path);
        (st == 200 && listeners(&in_containers(&body)) == want).then_some(in_containers(&body))
    });
    // B received the agent after the failover: its own output holds the
    // second listen
    let b_lines = lines(&b.output);
    assert!(
        b_lines.iter().any(|e| e["kind"] == "listen"
            && e["container"]["id"] == after_id.as_str()
            && e["network"]["local"]["port"] == after_port),
        "collector B's output has no listen of {after_id}"
    );

    for (name, api) in [("A", api_a), ("B", api_b)] {
        let (st, body) = api_get(api, &ports_path);
        assert_eq!(st, 200, "{name}: {body}");
        assert_eq!(in_containers(&body), ports, "{name} answers like B");
        let (st, body) = api_get(api, &format!("/api/v1/containers?node={node}"));
        assert_eq!(st, 200, "{name}: {body}");
        let mut ids = container_ids(&body);
        ids.sort();
        let mut expect = vec![before_id.clone(), after_id.clone()];
        expect.sort();
        assert_eq!(ids, expect, "{name}: one row per container: {body}");
        for row in body["containers"].as_array().unwrap() {
            assert_eq!(row["image"]["digest"], busybox.digest.as_str(), "{row}");
            assert_eq!(row["posture"]["uid"], 0, "{row}");
            assert_eq!(row["exited"], Value::Null, "{row}");
        }
        let (st, body) = api_get(api, &format!("/api/v1/nodes?node={node}"));
        assert_eq!(st, 200, "{name}: {body}");
        assert_eq!(body["nodes"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(body["nodes"][0]["containers"], 2, "{body}");
    }
    // and in the database itself: the two containers once each, under
    // this node and no other, and their two listeners open once each
    let ids = format!("'{before_id}', '{after_id}'");
    let rows = pg.psql(&format!(
        "SELECT node || ' ' || id FROM containers WHERE id IN ({ids}) ORDER BY 1"
    ));
    let mut expect = vec![format!("{node} {before_id}"), format!("{node} {after_id}")];
    expect.sort();
    assert_eq!(rows.lines().collect::<Vec<_>>(), expect, "{rows}");
    let open = pg.psql(&format!(
        "SELECT container_id || ' ' || port FROM listeners \
         WHERE container_id IN ({ids}) AND closed IS NULL ORDER BY 1"
    ));
    let mut expect = vec![
        format!("{before_id} {before_port}"),
        format!("{after_id} {after_port}"),
    ];
    expect.sort();
    assert_eq!(open.lines().collect::<Vec<_>>(), expect, "{open}");
    agent.stop();
}

/// /readyz or /metrics of a collector: status and body.
fn health(port: u16, path: &str) -> (u16, String) {
    http_get(port, path)
}

#[test]
fn an_unreachable_postgres_leaves_ingest_running_and_the_api_says_why() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-pg-down");
    let pg = Postgres::start(&dir);
    pg.stop();
    // the server is away when the collector starts
    let (api, metrics) = (free_port(), free_port());
    let col = start_collector(&dir.join("c"), &pg.url(), api, metrics);
    let node = format!("fleet-pg-down-{}", std::process::id());
    let agent = Agent::streaming_to(
        &col.url(),
        &dir.join("spool"),
        &["--no-snapshot", "--node-name", &node],
    );
    // a host listener opened while the store is away
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    agent.wait_for("the test's listen", WAIT, |e| {
        e["kind"] == "listen" && e["network"]["local"]["port"] == port
    });
    // ingest goes on: the collector writes it to its output
    eventually("the listen in the collector's output", WAIT, || {
        lines(&col.output)
            .iter()
            .any(|e| e["kind"] == "listen" && e["network"]["local"]["port"] == port)
            .then_some(())
    });
    let ports_path = format!("/api/v1/ports?node={node}");
    let (st, body) = api_get(api, &ports_path);
    assert_eq!(st, 503, "{body}");
    let why = body["error"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("store unreachable: ") && why.contains("Connection refused"),
        "{body}"
    );
    let (st, text) = health(metrics, "/readyz");
    assert_eq!(st, 200, "ingest stays ready: {text}");
    assert!(
        text.contains("not ready for queries: store unreachable: "),
        "{text}"
    );
    let (st, text) = health(metrics, "/readyz/queries");
    assert_eq!(st, 503, "{text}");
    let (_, text) = health(metrics, "/metrics");
    assert!(
        text.lines().any(|l| l == "spyglass_collector_store_up 0"),
        "{text}"
    );

    // The server comes back: the store is migrated, what was kept is
    // written, queries are answered.
    pg.start_again();
    // (the host's listeners: PostgreSQL's own, opened again, shows too)
    let mine = |body: &Value| -> Vec<Value> {
        body["ports"].as_array().map_or(Vec::new(), |rows| {
            rows.iter().filter(|r| r["port"] == port).cloned().collect()
        })
    };
    let body = eventually("the API to answer again", WAIT, || {
        let (st, body) = api_get(api, &ports_path);
        (st == 200 && !mine(&body).is_empty()).then_some(body)
    });
    assert_eq!(
        listeners(&mine(&body)),
        [(String::new(), u64::from(port))],
        "{body}"
    );
    assert_eq!(body["stale"], false, "nothing was dropped: {body}");
    let (st, text) = health(metrics, "/readyz/queries");
    assert_eq!((st, text.as_str()), (200, "ready for queries\n"));
    let (_, text) = health(metrics, "/metrics");
    for want in [
        "spyglass_collector_store_up 1",
        "spyglass_collector_store_outages_total 1",
    ] {
        assert!(text.lines().any(|l| l == want), "{want}: {text}");
    }

    // Away again mid-run: a listener opened meanwhile is written once
    // the server is back, through the same pool.
    pg.stop();
    let later = TcpListener::bind("127.0.0.1:0").unwrap();
    let later_port = later.local_addr().unwrap().port();
    agent.wait_for("the second listen", WAIT, |e| {
        e["kind"] == "listen" && e["network"]["local"]["port"] == later_port
    });
    let (st, body) = api_get(api, &ports_path);
    assert_eq!(st, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("store unreachable: ")),
        "{body}"
    );
    pg.start_again();
    eventually("the listener opened while away", WAIT, || {
        let (st, body) = api_get(api, &ports_path);
        (st == 200
            && body["ports"]
                .as_array()?
                .iter()
                .any(|r| r["port"] == later_port))
        .then_some(())
    });
    let (_, text) = health(metrics, "/metrics");
    assert!(
        text.lines()
            .any(|l| l == "spyglass_collector_store_outages_total 2"),
        "{text}"
    );
    drop((held, later));
    agent.stop();
}

#[test]
fn a_malformed_postgres_url_stops_the_start_naming_the_flag() {
    let dir = scratch("fleet-pg-url");
    for (url, why) in [
        ("postgres:/db", "starts with postgres:// or postgresql://"),
        ("postgresql://u:hunter2@/db", "no host"),
        ("postgres://db.example:port/x", "invalid port"),
        // a password holding '/' (the likeliest cause of a bad URL)
        ("postgres://u:s3cr/et@db.example:port/x", "invalid port"),
    ] {
        let mut child = Command::new(collector_bin())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--output")
            .arg(dir.join("out.jsonl"))
            .args(["--store", url])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start collector");
        let st = eventually("the collector to exit", WAIT, || child.try_wait().unwrap());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_ne!(st.code(), Some(0), "{url}: {err}");
        assert!(
            err.contains("--store")
                && err.contains(why)
                && err.contains("postgres://USER[:PASSWORD]@HOST[:PORT]/DB")
                && err.contains("sqlite:PATH"),
            "{url}: {err}"
        );
        // the password is not printed (clap's own message printed it)
        assert!(!err.contains("hunter2") && !err.contains("s3cr"), "{err}");
    }
}

/// Node `n`'s container `c` (its image one of ten both collectors see).
fn synthetic_container(n: usize, c: usize) -> spyglass_proto::model::Container {
    use spyglass_proto::model::samples;
    let mut base = samples::container();
    let mut meta = (**base.meta.as_ref().expect("the sample has metadata")).clone();
    let id = format!("{n:08x}{c:08x}{}", "0".repeat(48));
    meta.id = id.clone();
    meta.name = format!("app-{c}");
    meta.image.reference = format!("registry.example/app-{}:1", c % 10);
    meta.image.digest = format!("sha256:{:064x}", c % 10 + 1);
    meta.image.index_digest = String::new();
    base.id = id;
    base.fill(&Arc::new(meta));
    base
}

/// What `nodes` nodes of `containers` containers each publish: a
/// container start and a wildcard listen per container, at time `t`.
fn synthetic_batches(
    node: &dyn Fn(usize) -> String,
    nodes: usize,
    containers: usize,
    (t, sequence): (i64, u64),
) -> Vec<spyglass_proto::v1::Batch> {
    use spyglass_proto::model::{
        samples, wire, ContainerState, Endpoint, Event, Family, Kind, Lifecycle, NetOp, Network,
        Protocol, Timestamp,
    };
    (0..nodes)
        .map(|n| {
            let mut events = Vec::new();
            for c in 0..containers {
                let ctr = synthetic_container(n, c);
                let mut created = Event::new(Kind::Container, Timestamp(t), node(n));
                created.container = Some(ctr.clone());
                created.lifecycle = Some(Lifecycle {
                    state: ContainerState::Created,
                    exit_code: None,
                    image: None,
                });
                events.push(wire::to_wire(&created));
                let mut listen = samples::listen();
                listen.node = node(n);
                listen.time = Timestamp(t + 1);
                listen.container = Some(ctr);
                listen.network = Some(Network {
                    protocol: Protocol::Tcp,
                    family: Family::Ipv4,
                    op: NetOp::Listen,
                    local: Endpoint {
                        addr: std::net::Ipv4Addr::UNSPECIFIED.into(),
                        port: 8000 + c as u16,
                    },
                    remote: None,
                    outcome: None,
                    wildcard: Some(true),
                });
                events.push(wire::to_wire(&listen));
            }
            spyglass_proto::v1::Batch {
                node_id: node(n),
                sequence: 1,
                events,
                sent_unix_nano: 0,
                stream_id: format!("fleet-pg-race-{sequence}"),
            }
        })
        .collect()
}

/// Publish each of `batches` (one per node) on a connection of its own to
/// the collector on `port`, all at once; waits for every ack.
async fn publish(port: u16, batches: Vec<spyglass_proto::v1::Batch>) {
    let streams: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            // a connection each, as agents have (the collector allows a
            // few streams per connection)
            tokio::spawn(async move {
                let mut client = spyglass_proto::v1::collector_client::CollectorClient::connect(
                    format!("http://127.0.0.1:{port}"),
                )
                .await
                .expect("connect to the collector");
                let mut acks = client
                    .publish(tokio_stream::iter([batch]))
                    .await
                    .expect("publish")
                    .into_inner();
                acks.message().await.expect("an ack").expect("an ack");
            })
        })
        .collect();
    for s in streams {
        s.await.unwrap();
    }
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, text) = http_get(port, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Rounds of the same rows sent to both collectors at once.
const ROUNDS: u64 = 8;

#[test]
fn two_collectors_writing_the_same_rows_at_once_agree_without_errors() {
    let _g = serial();
    let dir = scratch("fleet-pg-race");
    let pg = Postgres::start(&dir);
    let (api_a, api_b, m_a, m_b) = (free_port(), free_port(), free_port(), free_port());
    let a = start_collector(&dir.join("a"), &pg.url(), api_a, m_a);
    let b = start_collector(&dir.join("b"), &pg.url(), api_b, m_b);
    let prefix = format!("race-{}-", std::process::id());
    let node = |n: usize| format!("{prefix}{n:03}");
    let (nodes, containers) = (20, 25);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Both collectors receive the same nodes at the same time (as after a
    // failover, when an agent resends to the second what the first
    // wrote), twice: every row is written by both, at once.
    for round in 1..=ROUNDS {
        let at = (
            1_795_000_000_000_000_000 + round as i64 * 1_000_000_000,
            round,
        );
        let (x, y) = (
            synthetic_batches(&node, nodes, containers, at),
            synthetic_batches(&node, nodes, containers, at),
        );
        rt.block_on(async {
            tokio::join!(publish(a.port, x), publish(b.port, y));
        });
    }
    let total = nodes * containers;
    for (name, api) in [("A", api_a), ("B", api_b)] {
        let body = eventually(&format!("{name}: every container"), WAIT, || {
            let (st, body) = api_get(api, "/api/v1/nodes");
            let ours: Vec<&Value> = body["nodes"]
                .as_array()?
                .iter()
                .filter(|r| r["node"].as_str().is_some_and(|n| n.starts_with(&prefix)))
                .collect();
            let stored: u64 = ours.iter().filter_map(|r| r["containers"].as_u64()).sum();
            (st == 200 && ours.len() == nodes && stored == total as u64).then_some(body)
        });
        assert_eq!(body["stale"], false, "{name}");
        let (st, body) = api_get(api, "/api/v1/ports?exposed=true");
        assert_eq!(st, 200);
        let ours = body["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["node"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .count();
        assert_eq!(ours, total, "{name}: one listener row per container");
    }
    // the store task of each wrote without a failed transaction, and the
    // database holds one row per key
    let (m_a, m_b) = (m_a, m_b);
    eventually("both collectors' flushes", WAIT, || {
        (metric(m_a, "spyglass_collector_store_flushes_total") > 0
            && metric(m_b, "spyglass_collector_store_flushes_total") > 0)
            .then_some(())
    });
    for m in [m_a, m_b] {
        assert_eq!(metric(m, "spyglass_collector_store_errors_total"), 0);
        assert_eq!(metric(m, "spyglass_collector_store_stale"), 0);
    }
    let like = format!("{prefix}%");
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*), count(DISTINCT (node, id)) FROM containers WHERE node LIKE '{like}'"
        )),
        format!("{total}|{total}")
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM images WHERE digest LIKE 'sha256:0000%'"),
        "10"
    );
}
