//! Agent -> collector over real gRPC, with the real probes: fields arrive
//! intact, a collector outage loses and duplicates nothing, an agent
//! restart resumes without duplicates, a corrupt spool file is dropped
//! and reported without stalling delivery.
mod common;

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn assert_exactly_once(out: &[Value], mark: &str, n: usize) {
    let seen = marked_execs(out, mark);
    let missing: Vec<usize> = (0..n)
        .filter(|i| !seen.contains_key(&format!("{mark}-{i:05}")))
        .collect();
    let dup: Vec<(&String, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} execs missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(dup.is_empty(), "duplicated: {dup:?}");
    assert_eq!(seen.len(), n);
}

fn wait_for_all(path: &std::path::Path, mark: &str, n: usize, timeout: Duration) -> Vec<Value> {
    eventually(
        &format!("{n} marked execs in {}", path.display()),
        timeout,
        || {
            let out = lines(path);
            (marked_execs(&out, mark).len() >= n).then_some(out)
        },
    )
}

#[test]
fn events_arrive_at_the_collector_with_all_fields() {
    require_root();
    let _g = serial();
    let dir = scratch("fields");
    let col = Collector::start(free_port(), &dir.join("out.jsonl"), &[]);
    let spool = dir.join("spool");
    let agent = Agent::streaming_to(
        &col.url(),
        &spool,
        &["--no-snapshot", "--node-name", "e2e-fields"],
    );
    let mark = marker("fields");
    let st = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 3", &mark, "two words"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(3));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let client = TcpStream::connect(server).unwrap();
    let local = client.local_addr().unwrap();

    let out = eventually(
        "exec, listen and connect at the collector",
        Duration::from_secs(30),
        || {
            let out = lines(&col.output);
            let has = |f: &dyn Fn(&Value) -> bool| out.iter().any(f);
            let ok = has(&|e| e["kind"] == "exec" && argv(e).get(3) == Some(&mark))
                && has(&|e| {
                    e["kind"] == "listen" && e["network"]["local"]["port"] == server.port()
                })
                && has(&|e| {
                    e["kind"] == "connect" && e["network"]["local"]["port"] == local.port()
                });
            ok.then_some(out)
        },
    );
    let exec = out
        .iter()
        .find(|e| e["kind"] == "exec" && argv(e).get(3) == Some(&mark))
        .unwrap();
    assert_eq!(
        argv(exec),
        ["/bin/sh", "-c", "exit 3", mark.as_str(), "two words"]
    );
    assert_eq!(exec["process"]["exe"], "/bin/sh");
    assert_eq!(exec["process"]["ppid"], std::process::id());
    assert_eq!(exec["parent"]["pid"], std::process::id());
    assert_eq!(exec["node"], "e2e-fields");
    assert_eq!(exec["delivery"]["node_id"], "e2e-fields");
    assert!(exec["time"].as_str().unwrap().ends_with('Z'));
    let pid = exec["process"]["pid"].clone();
    let exit = eventually("exit at the collector", Duration::from_secs(20), || {
        lines(&col.output)
            .into_iter()
            .find(|e| e["kind"] == "exit" && e["process"]["pid"] == pid)
    });
    assert_eq!(exit["exit"]["code"], 3);
    let listen = out
        .iter()
        .find(|e| e["kind"] == "listen" && e["network"]["local"]["port"] == server.port())
        .unwrap();
    assert_eq!(listen["network"]["protocol"], "tcp");
    assert_eq!(listen["network"]["local"]["addr"], "127.0.0.1");
    assert_eq!(listen["process"]["pid"], std::process::id());
    let conn = out
        .iter()
        .find(|e| e["kind"] == "connect" && e["network"]["local"]["port"] == local.port())
        .unwrap();
    assert_eq!(conn["network"]["remote"]["port"], server.port());
    assert_eq!(conn["network"]["outcome"], "established");
    agent.stop();
}

#[test]
fn collector_down_ten_seconds_loses_and_duplicates_nothing() {
    require_root();
    let _g = serial();
    let dir = scratch("outage");
    let out = dir.join("out.jsonl");
    let port = free_port();
    let mut col = Collector::start(port, &out, &[]);
    let spool = dir.join("spool");
    let agent = Agent::streaming_to(&col.url(), &spool, &["--no-snapshot"]);
    let mark = marker("outage");
    const N: usize = 300;
    let series = exec_series(&mark, N, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(3));
    col.kill(); // SIGKILL mid-stream
    std::thread::sleep(Duration::from_secs(10));
    let col = Collector::start(port, &out, &[]);
    series.join().unwrap();
    let all = wait_for_all(&col.output, &mark, N, Duration::from_secs(60));
    assert_exactly_once(&all, &mark, N);
    agent.stop();
}

/// A spool file an earlier run left corrupt (a crash mid-write, a bad
/// disk) is the first batch to replay: it must be dropped and reported as
/// a loss of its events, and what the agent sees afterwards must still be
/// delivered. Sent as it is, the collector would refuse it as an internal
/// error and the agent would resend it forever.
#[test]
fn a_corrupt_spool_file_is_dropped_and_delivery_goes_on() {
    require_root();
    let _g = serial();
    let dir = scratch("corruptspool");
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // sequence 1, holding 5 events by its name; not a protobuf batch
    std::fs::write(
        spool.join("00000000000000000001-5.batch"),
        b"\xff\xff\xff\xff garbage",
    )
    .unwrap();
    let col = Collector::start(free_port(), &dir.join("out.jsonl"), &[]);
    let agent = Agent::streaming_to(&col.url(), &spool, &["--no-snapshot"]);
    let mark = marker("corruptspool");
    const N: usize = 20;
    exec_series(&mark, N, Duration::from_millis(20))
        .join()
        .unwrap();
    let all = wait_for_all(&col.output, &mark, N, Duration::from_secs(30));
    assert_exactly_once(&all, &mark, N);
    let dropped: u64 = all
        .iter()
        .filter(|e| e["kind"] == "loss" && e["loss"]["stage"] == "agent")
        .map(|e| e["loss"]["spool_dropped"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(dropped, 5, "the corrupt batch's 5 events are reported lost");
    assert!(
        !spool.join("00000000000000000001-5.batch").exists(),
        "the corrupt file is gone from the spool"
    );
    agent.stop();
}

#[test]
fn agent_restart_resumes_without_duplicates() {
    require_root();
    let _g = serial();
    let dir = scratch("restart");
    let out = dir.join("out.jsonl");
    let port = free_port();
    let spool = dir.join("spool");
    let mut col = Collector::start(port, &out, &[]);
    let url = col.url();
    let agent = Agent::streaming_to(&url, &spool, &["--no-snapshot"]);
    let mark = marker("restart");
    // A: delivered live. B: spooled while the collector is down, and the
    // agent restarts with them still undelivered. C: after the restart.
    exec_series(&format!("{mark}-a"), 50, Duration::from_millis(10))
        .join()
        .unwrap();
    wait_for_all(&out, &format!("{mark}-a"), 50, Duration::from_secs(30));
    col.stop();
    exec_series(&format!("{mark}-b"), 50, Duration::from_millis(10))
        .join()
        .unwrap();
    agent.stop();
    let spooled = std::fs::read_dir(&spool)
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".batch")
        })
        .count();
    assert!(
        spooled > 0,
        "batches B should wait in the spool across the restart"
    );
    let agent = Agent::streaming_to(&url, &spool, &["--no-snapshot"]);
    let col = Collector::start(port, &out, &[]);
    exec_series(&format!("{mark}-c"), 50, Duration::from_millis(10))
        .join()
        .unwrap();
    for part in ["a", "b", "c"] {
        let m = format!("{mark}-{part}");
        let all = wait_for_all(&col.output, &m, 50, Duration::from_secs(60));
        assert_exactly_once(&all, &m, 50);
    }
    // Sequences keep increasing across the restart: no batch number reused.
    let all = lines(&col.output);
    let seqs: Vec<u64> = all
        .iter()
        .filter_map(|e| e["delivery"]["sequence"].as_u64())
        .collect();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        distinct.len(),
        "a batch sequence appears in two places"
    );
    agent.stop();
}

#[test]
fn an_emptied_sequence_counter_starts_a_new_stream_and_loses_nothing() {
    require_root();
    let _g = serial();
    let dir = scratch("counter");
    let col = Collector::start(free_port(), &dir.join("out.jsonl"), &[]);
    let spool = dir.join("spool");
    let agent = Agent::streaming_to(&col.url(), &spool, &["--no-snapshot"]);
    let mark = marker("counter");
    // A: spread over many batches, so the collector has seen many numbers.
    exec_series(&format!("{mark}-a"), 40, Duration::from_millis(25))
        .join()
        .unwrap();
    wait_for_all(
        &col.output,
        &format!("{mark}-a"),
        40,
        Duration::from_secs(30),
    );
    agent.stop();
    // A torn or emptied counter (a power cut, a full disk).
    std::fs::write(spool.join("next-seq"), "").unwrap();
    let agent = Agent::streaming_to(&col.url(), &spool, &["--no-snapshot"]);
    // B: right after the restart, in the first batches of the agent.
    exec_series(&format!("{mark}-b"), 10, Duration::from_millis(5))
        .join()
        .unwrap();
    let all = wait_for_all(
        &col.output,
        &format!("{mark}-b"),
        10,
        Duration::from_secs(30),
    );
    assert_exactly_once(&all, &format!("{mark}-b"), 10);
    let streams: BTreeSet<&str> = all
        .iter()
        .filter_map(|e| e["delivery"]["stream_id"].as_str())
        .collect();
    assert_eq!(
        streams.len(),
        2,
        "a new stream id after the restart: {streams:?}"
    );
    agent.stop();
}

#[test]
fn full_spool_drops_oldest_batches_and_reports_the_loss() {
    require_root();
    let _g = serial();
    let dir = scratch("spoolfull");
    let port = free_port();
    let cfg = dir.join("agent.toml");
    // Small spool, small batches, nothing listening yet.
    std::fs::write(
        &cfg,
        format!(
            "[collector]\nurl = \"http://127.0.0.1:{port}\"\nspool_dir = \"{}\"\nspool_max_bytes = 65536\nbatch_max_events = 20\n",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", cfg.to_str().unwrap(), "--no-snapshot"]);
    let mark = marker("spoolfull");
    exec_series(&mark, 400, Duration::from_millis(2))
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let col = Collector::start(port, &dir.join("out.jsonl"), &[]);
    let loss = eventually("an agent-stage loss event", Duration::from_secs(30), || {
        lines(&col.output).into_iter().find(|e| {
            e["kind"] == "loss"
                && e["loss"]["stage"] == "agent"
                && e["loss"]["spool_dropped"].as_u64().unwrap_or(0) > 0
        })
    });
    let dropped = loss["loss"]["spool_dropped"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let out = lines(&col.output);
    let seen = marked_execs(&out, &mark).len();
    let reported: u64 = out
        .iter()
        .filter(|e| e["kind"] == "loss" && e["loss"]["stage"] == "agent")
        .map(|e| e["loss"]["spool_dropped"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("spool full: {seen}/400 marked execs delivered, {reported} events reported dropped (first report {dropped})");
    assert!(seen < 400, "the spool should have overflowed");
    // The collector's agent status counts the drops the agent reported.
    let status_path = dir.join("out.jsonl.agents.json");
    eventually("drops in the agent status", Duration::from_secs(10), || {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&status_path).ok()?).ok()?;
        let drops: u64 = v
            .as_object()?
            .values()
            .filter_map(|a| a["drops"].as_u64())
            .sum();
        (drops >= reported).then_some(())
    });
    // each exec also brings a fork and an exit event: 3 events per exec
    assert!(
        reported as usize >= (400 - seen),
        "{} execs missing but only {reported} events reported dropped",
        400 - seen
    );
    agent.stop();
}
