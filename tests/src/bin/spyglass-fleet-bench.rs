//! `spyglass-fleet-bench`: a synthetic fleet through the collector's real
//! gRPC ingest, then the fleet view's questions timed against it
//! (`cargo xtask bench --fleet` runs it and keeps its report).
//!
//! Every node publishes what a restarted agent sends: `started`, one
//! snapshot `created` per container (a third run as root, one in fifty
//! privileged, one in a hundred on the host's network, ten images, ten
//! namespaces), one listener per container
//! (one in five on the wildcard address) and `snapshot_complete`. Once
//! the store holds all of it, each question is asked over HTTP
//! (`/api/v1/...` as the CLI asks it) once to warm up and then `RUNS`
//! times; the report gives the median and the slowest, the rows
//! answered, and the store's size per container and per listener.
//!
//! The same fleet goes to SQLite and then to PostgreSQL (Debian's server
//! on loopback, started as the tests start it).
//!
//! Usage: spyglass-fleet-bench [--nodes N] [--containers M] [--store URL]
//!
//! `--store URL` benches only that store (`sqlite:PATH` or a
//! `postgres://` server of your own, which must be empty) and leaves
//! the fleet in it, to look at the queries' plans afterwards.
use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use spyglass_e2e::{http_get, postgres::Postgres, root, Collector};
use spyglass_proto::{
    model::{
        samples, wire, AgentInfo, AgentState, ContainerState, Endpoint, Event, Family, Kind,
        Lifecycle, NetOp, Network, Pod, Posture, Timestamp,
    },
    v1::{collector_client::CollectorClient, Batch},
};

const RUNS: usize = 5;
/// Events per published batch (an agent sends at most 32,768).
const BATCH: usize = 2_000;
/// Concurrent publishing streams (nodes publish one after another in each).
const STREAMS: usize = 8;

struct Args {
    nodes: usize,
    containers: usize,
    store: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 1_000,
        containers: 100,
        store: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--store" {
            a.store = Some(it.next().expect("--store takes a URL"));
            continue;
        }
        let mut value = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = value(),
            "--containers" => a.containers = value(),
            other => panic!("unknown argument {other}; see the file's header"),
        }
    }
    a
}

fn node_name(n: usize) -> String {
    format!("fleet-node-{n:04}")
}

/// Container `c` of node `n`: id, pod, image and posture vary with `c`.
fn container(n: usize, c: usize) -> spyglass_proto::model::Container {
    let mut base = samples::container();
    let mut meta = (**base.meta.as_ref().expect("the sample has metadata")).clone();
    let id = format!("{n:08x}{c:08x}{}", "0".repeat(48));
    let ns = format!("team-{}", c % 10);
    let pod = Pod {
        name: format!("app-{c}"),
        namespace: ns,
        uid: format!("{n:x}-{c:x}"),
        labels: [("app".to_string(), format!("app-{}", c % 10))].into(),
    };
    meta.id = id.clone();
    meta.name = format!("app-{c}");
    meta.pod = Some(pod);
    meta.image.reference = format!("registry.example/app-{}:1", c % 10);
    meta.image.digest = format!("sha256:{:064x}", c % 10 + 1);
    meta.image.index_digest = String::new();
    meta.image.config_digest = format!("sha256:{:064x}", c % 10 + 100);
    meta.posture = Some(Posture {
        uid: if c.is_multiple_of(3) { 0 } else { 1000 },
        privileged: c.is_multiple_of(50),
        host_network: c % 100 == 7,
        ..meta.posture.clone().expect("the sample has a posture")
    });
    base.id = id;
    base.fill(&Arc::new(meta));
    base
}

fn agent_event(node: &str, state: AgentState, t: i64, containers: usize) -> Event {
    let mut ev = Event::new(Kind::Agent, Timestamp(t), node.into());
    ev.agent = Some(Box::new(AgentInfo {
        state,
        version: "0.1.0".into(),
        kernel: "6.1.0-bench".into(),
        probes: vec![],
        snapshot_processes: None,
        snapshot_sockets: None,
        snapshot_containers: (state == AgentState::SnapshotComplete).then_some(containers as u64),
        tracked: None,
    }));
    ev
}

/// What node `n` publishes after its agent starts.
fn node_events(n: usize, containers: usize, t: i64) -> Vec<Event> {
    let node = node_name(n);
    let mut out = vec![agent_event(&node, AgentState::Started, t, 0)];
    for c in 0..containers {
        let ctr = container(n, c);
        let mut created = Event::new(Kind::Container, Timestamp(t + 1), node.clone());
        created.snapshot = true;
        created.container = Some(ctr.clone());
        created.lifecycle = Some(Lifecycle {
            state: ContainerState::Created,
            exit_code: None,
            image: None,
        });
        out.push(created);
        let mut listen = samples::listen();
        listen.node = node.clone();
        listen.time = Timestamp(t + 2);
        listen.snapshot = true;
        listen.container = Some(ctr);
        let wildcard = c.is_multiple_of(5);
        listen.network = Some(Network {
            protocol: spyglass_proto::model::Protocol::Tcp,
            family: Family::Ipv4,
            op: NetOp::Listen,
            local: Endpoint {
                addr: if wildcard {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                },
                port: 8000 + (c % 1000) as u16,
            },
            remote: None,
            outcome: None,
            wildcard: Some(wildcard),
        });
        out.push(listen);
    }
    out.push(agent_event(
        &node,
        AgentState::SnapshotComplete,
        t + 3,
        containers,
    ));
    out
}

/// Publish every node of `nodes` on one stream each, one after another;
/// returns the events acknowledged.
async fn publish_nodes(url: String, nodes: Vec<usize>, containers: usize, t: i64) -> usize {
    let mut client = CollectorClient::connect(url)
        .await
        .expect("connect to the collector")
        .max_encoding_message_size(64 << 20);
    let mut acked = 0;
    for n in nodes {
        let events: Vec<_> = node_events(n, containers, t)
            .iter()
            .map(wire::to_wire)
            .collect();
        let batches: Vec<Batch> = events
            .chunks(BATCH)
            .enumerate()
            .map(|(i, chunk)| Batch {
                node_id: node_name(n),
                sequence: i as u64 + 1,
                events: chunk.to_vec(),
                sent_unix_nano: 0,
                stream_id: "fleet-bench".into(),
            })
            .collect();
        let sizes: Vec<usize> = batches.iter().map(|b| b.events.len()).collect();
        let mut acks = client
            .publish(tokio_stream::iter(batches))
            .await
            .expect("publish")
            .into_inner();
        let mut got = 0;
        while let Some(ack) = acks.message().await.expect("an ack") {
            acked += sizes[ack.sequence as usize - 1];
            got += 1;
            if got == sizes.len() {
                break;
            }
        }
    }
    acked
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// GET `path`, parsed; panics on a non-200 answer.
fn get(api: u16, path: &str) -> Value {
    let (code, body) = http_get(api, path);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn rows(v: &Value, key: &str) -> usize {
    v[key].as_array().map_or(0, Vec::len)
}

/// Wait until the store holds the last node's containers and listeners.
fn wait_stored(api: u16, a: &Args) {
    let last = node_name(a.nodes - 1);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = rows(
            &get(api, &format!("/api/v1/containers?node={last}")),
            "containers",
        );
        let p = rows(&get(api, &format!("/api/v1/ports?node={last}")), "ports");
        let n = rows(&get(api, "/api/v1/nodes?limit=10000"), "nodes");
        if c == a.containers && p == a.containers && n == a.nodes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not catch up: {n} nodes, last node {c} containers {p} ports"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// (median ms, slowest ms, rows, truncated) of `RUNS` GETs of `path`.
fn time_get(api: u16, path: &str, key: Option<&str>) -> (f64, f64, String) {
    let (code, body) = http_get(api, path);
    assert_eq!(code, 200, "GET {path}: {}", &body[..body.len().min(300)]);
    let mut ms = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let (code, _) = http_get(api, path);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(code, 200);
    }
    ms.sort_by(f64::total_cmp);
    let answered = match key {
        Some(k) => {
            let v: Value = serde_json::from_str(&body).expect("JSON");
            let more = if v["truncated"] == true {
                " (truncated)"
            } else {
                ""
            };
            format!("{} rows{more}", rows(&v, k))
        }
        None => format!("{} KiB of HTML", body.len() / 1024),
    };
    (ms[RUNS / 2], ms[RUNS - 1], answered)
}

fn file_size(p: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let mut f = p.as_os_str().to_owned();
            f.push(s);
            std::fs::metadata(PathBuf::from(f)).map_or(0, |m| m.len())
        })
        .sum()
}

/// The report uploads' token (`--api-report-token-file`).
const REPORT_TOKEN: &str = "fleet-bench-reports";

/// Vulnerabilities in the bench's scanner report.
const REPORT_VULNS: usize = 5_000;

/// A Trivy JSON report of the image of every tenth container (app-0: its
/// config digest) with `n` vulnerabilities over `n / 10` packages, a
/// fifth of them critical, half fixable.
fn trivy_report(n: usize) -> String {
    let severities = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"];
    let vulns: Vec<Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "VulnerabilityID": format!("CVE-2026-{i:05}"),
                "PkgName": format!("lib{}", i % (n / 10).max(1)),
                "InstalledVersion": "1.0-1",
                "FixedVersion": if i % 2 == 0 { "1.0-2" } else { "" },
                "Severity": severities[i % severities.len()],
                "Title": "bench",
            })
        })
        .collect();
    serde_json::json!({
        "SchemaVersion": 2,
        "ArtifactName": "registry.example/app-0:1",
        "ArtifactType": "container_image",
        "Metadata": {"ImageID": format!("sha256:{:064x}", 100)},
        "Results": [{"Target": "app-0", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": vulns}],
    })
    .to_string()
}

/// Import the bench's report through the API: its time, ms.
fn import_report(api: u16) -> f64 {
    let body = trivy_report(REPORT_VULNS);
    let t = Instant::now();
    let (code, answer) = spyglass_e2e::fleet::api_send(
        api,
        "PUT",
        "/api/v1/reports/bench-app-0",
        Some(REPORT_TOKEN),
        body.as_bytes(),
    );
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(code, 200, "PUT the report: {answer}");
    ms
}

/// The fleet view's questions: what the CLI and the page ask.
const QUESTIONS: [(&str, &str, Option<&str>); 8] = [
    (
        "spyglass containers --root",
        "/api/v1/containers?root=true",
        Some("containers"),
    ),
    (
        "spyglass ports --exposed",
        "/api/v1/ports?exposed=true",
        Some("ports"),
    ),
    (
        "spyglass containers --root --limit 10000",
        "/api/v1/containers?root=true&limit=10000",
        Some("containers"),
    ),
    (
        "spyglass ports --exposed --limit 10000",
        "/api/v1/ports?exposed=true&limit=10000",
        Some("ports"),
    ),
    ("spyglass nodes", "/api/v1/nodes", Some("nodes")),
    ("web overview", "/", None),
    (
        "spyglass vulns --severity critical --running",
        "/api/v1/vulns?severity=critical&running=true",
        Some("vulns"),
    ),
    (
        "spyglass vulns --running --namespace team-0 --limit 10000",
        "/api/v1/vulns?running=true&namespace=team-0&limit=10000",
        Some("vulns"),
    ),
];

/// Publish the fleet to a collector on `store`, wait until it is
/// stored, time the questions; `size` tells the store's size once the
/// collector stopped. One section of the report.
fn bench_store(a: &Args, dir: &Path, label: &str, store: &str, size: &dyn Fn() -> u64) -> String {
    let (port, api) = (free_port(), free_port());
    let api_addr = format!("127.0.0.1:{api}");
    let token_file = dir.join("reports.token");
    std::fs::write(&token_file, REPORT_TOKEN).expect("write the report token");
    let mut collector = Collector::start(
        port,
        &dir.join(format!("out-{label}.jsonl")),
        &[
            "--store",
            store,
            "--api-listen",
            &api_addr,
            "--api-report-token-file",
            token_file.to_str().expect("utf-8 path"),
        ],
    );
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64;
    let total = a.nodes * (a.containers * 2 + 2);
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let start = Instant::now();
    let acked: usize = rt.block_on(async {
        let mut tasks = Vec::new();
        for s in 0..STREAMS {
            let nodes: Vec<usize> = (s..a.nodes).step_by(STREAMS).collect();
            tasks.push(tokio::spawn(publish_nodes(
                collector.url(),
                nodes,
                a.containers,
                t,
            )));
        }
        let mut sum = 0;
        for task in tasks {
            sum += task.await.expect("publisher");
        }
        sum
    });
    let ingest = start.elapsed().as_secs_f64();
    assert_eq!(acked, total, "every event acknowledged");
    wait_stored(api, a);
    let stored = start.elapsed().as_secs_f64();
    // updates the store task dropped (its queue full) mark every answer
    let stale = get(api, "/api/v1/nodes?limit=1")["stale"] == Value::Bool(true);
    let import_ms = import_report(api);
    let mut report = format!(
        "\n**{label}**: published on {STREAMS} gRPC streams in {ingest:.1} s ({:.0} events/s); \
         all of it answered by the API {stored:.1} s after the first send; {}.\n\n\
         | question | API path | median ms | slowest ms | answer |\n|---|---|---:|---:|---|\n",
        total as f64 / ingest,
        if stale {
            "**the store dropped updates (stale)**"
        } else {
            "nothing dropped (not stale)"
        }
    );
    report.push_str(&format!(
        "| `spyglass reports` import: PUT a Trivy report of {REPORT_VULNS} vulnerabilities | \
         `/api/v1/reports/bench-app-0` | {import_ms:.1} | (once) | parsed and stored |\n"
    ));
    for (what, path, key) in QUESTIONS {
        let (median, slowest, answer) = time_get(api, path, key);
        report.push_str(&format!(
            "| `{what}` | `{path}` | {median:.1} | {slowest:.1} | {answer} |\n"
        ));
    }
    collector.stop();
    let size = size();
    let items = (a.nodes * a.containers * 2) as u64;
    report.push_str(&format!(
        "\nStore size: {:.1} MiB: {} bytes per container with its listener ({} bytes per row of either).\n",
        size as f64 / f64::from(1 << 20),
        size / (a.nodes * a.containers) as u64,
        size / items
    ));
    report
}

fn main() {
    let a = args();
    let dir = root().join("bench-results/tmp/fleet");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut report = format!(
        "Synthetic fleet: {} nodes x {} containers ({} containers, {} listeners, {} events): \
         every node publishes an agent's start, its snapshot and snapshot_complete.\n",
        a.nodes,
        a.containers,
        a.nodes * a.containers,
        a.nodes * a.containers,
        a.nodes * (a.containers * 2 + 2)
    );
    if let Some(store) = &a.store {
        report.push_str(&bench_store(&a, &dir, "given store", store, &|| 0));
        #[allow(clippy::print_stdout)]
        {
            print!("{report}");
        }
        return;
    }
    let db = dir.join("inventory.db");
    let sqlite = format!("sqlite:{}", db.display());
    report.push_str(&bench_store(&a, &dir, "SQLite", &sqlite, &|| {
        file_size(&db)
    }));
    // Debian's PostgreSQL on loopback, as the tests start it (fsync off:
    // a test server; a production one writes more per commit).
    let pg = Postgres::start(&dir);
    let size = || {
        pg.psql("SELECT pg_database_size(current_database())")
            .trim()
            .parse()
            .unwrap_or(0)
    };
    report.push_str(&bench_store(&a, &dir, "PostgreSQL", &pg.url(), &size));
    pg.stop();
    // The report is this program's output.
    #[allow(clippy::print_stdout)]
    {
        print!("{report}");
    }
}
