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

/// The agent binary under test: target/release's, or the one named by
/// `SPYGLASS_E2E_AGENT` (to run these tests against an older build).
fn agent_bin() -> std::path::PathBuf {
    std::env::var_os("SPYGLASS_E2E_AGENT")
        .filter(|p| !p.is_empty())
        .map_or_else(|| bin("spyglass-agent"), Into::into)
}

/// A counter's value in the agent's `/metrics`.
fn metric(port: u16, name: &str) -> Option<u64> {
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The spool fills while the collector is away: its oldest batches go,
/// and with them loss events that reported earlier drops. Each loss event
/// carries the stream's running totals, so the last one still accounts
/// for every event that never arrived; `/metrics` counts the drops too.
#[test]
fn full_spool_drops_oldest_batches_and_the_last_loss_event_counts_them_all() {
    require_root();
    let _g = serial();
    let dir = scratch("spoolfull");
    let port = free_port();
    let mport = free_port();
    let cfg = dir.join("agent.toml");
    // Small spool, small batches, nothing listening yet.
    std::fs::write(
        &cfg,
        format!(
            "[collector]\nurl = \"http://127.0.0.1:{port}\"\nspool_dir = \"{}\"\nspool_max_bytes = 65536\nbatch_max_events = 20\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let agent = Agent::start_bin(
        &agent_bin(),
        &["--config", cfg.to_str().unwrap(), "--no-snapshot"],
    );
    let mark = marker("spoolfull");
    const N: usize = 600;
    exec_series(&mark, N, Duration::from_millis(2))
        .join()
        .unwrap();
    let col = Collector::start(port, &dir.join("out.jsonl"), &[]);
    // Delivered: every batch left in the spool acknowledged, including
    // the one holding the last loss event.
    eventually("the spool to drain", Duration::from_secs(60), || {
        (metric(mport, "spyglass_collector_connected") == Some(1)
            && metric(mport, "spyglass_spool_batches") == Some(0))
        .then_some(())
    });
    let dropped = metric(mport, "spyglass_spool_dropped_events_total");
    let out = lines(&col.output);
    let missing = N - marked_execs(&out, &mark).len();
    let losses: Vec<&Value> = out.iter().filter(|e| e["kind"] == "loss").collect();
    let received: u64 = losses
        .iter()
        .filter_map(|e| e["loss"]["spool_dropped"].as_u64())
        .sum();
    eprintln!(
        "spool full: {missing}/{N} marked execs missing; {dropped:?} events dropped by /metrics; \
         the {} loss events received add up to {received}",
        losses.len()
    );
    assert!(missing > 0, "the spool should have overflowed");
    let last = losses.last().expect("loss events at the collector");
    let totals = &last["loss"]["totals"];
    assert!(
        totals.is_object(),
        "the last loss event has no totals: {last}"
    );
    let dropped = dropped.expect("/metrics has spyglass_spool_dropped_events_total");
    assert_eq!(
        totals["spool_dropped"].as_u64(),
        Some(dropped),
        "the last loss event's totals are every drop /metrics counted: {last}"
    );
    assert!(
        dropped >= missing as u64,
        "{missing} execs never arrived but only {dropped} events are counted dropped"
    );
    for counter in [
        "exec",
        "exit",
        "fork",
        "network",
        "read_errors",
        "connect_untracked",
        "decode_errors",
    ] {
        assert!(totals[counter].is_u64(), "totals.{counter}: {last}");
    }
    // The collector's agent status counts the drops the loss events it
    // received reported.
    let status_path = dir.join("out.jsonl.agents.json");
    eventually("drops in the agent status", Duration::from_secs(10), || {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&status_path).ok()?).ok()?;
        let drops: u64 = v
            .as_object()?
            .values()
            .filter_map(|a| a["drops"].as_u64())
            .sum();
        (drops >= received).then_some(())
    });
    agent.stop();
}

/// The syscalls of the agent's spool as strace saw them: (call, the
/// paths it names), in order.
fn spool_calls(trace: &std::path::Path, spool: &std::path::Path) -> Vec<(String, String)> {
    let spool = spool.to_str().unwrap();
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains(spool) && l.contains(" = 0"))
        .filter_map(|l| {
            let call = l.split_whitespace().nth(1)?;
            let (name, args) = call.split_once('(')?;
            Some((name.to_owned(), l[l.find(args)?..].replace(spool, "SPOOL")))
        })
        .collect()
}

/// Power cut: a batch the agent counts as spooled is on disk. Each batch
/// file is fdatasync'ed under its temporary name before the rename gives
/// it its name (a name never holds half a batch), the directory is
/// fsynced after the renames (group commit: at most one sync per batch,
/// never per event), and the sequence counter is synced and its rename
/// made durable before any batch uses a number from it.
#[test]
fn spool_writes_are_synced_before_their_rename_and_group_committed() {
    require_root();
    let _g = serial();
    assert!(
        std::path::Path::new("/usr/bin/strace").exists(),
        "/usr/bin/strace is missing: run `cargo xtask setup` (it installs strace)"
    );
    let dir = scratch("durable");
    let spool = dir.join("spool");
    let trace = dir.join("strace.txt");
    // nothing listens: every batch stays in the spool
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new("/usr/bin/strace");
    cmd.args(["-f", "-y", "-qq", "-e"])
        .arg("trace=fdatasync,fsync,rename,renameat,renameat2")
        .arg("-o")
        .arg(&trace)
        .arg(agent_bin())
        .args(["run", "--no-snapshot", "--collector", &url, "--spool-dir"])
        .arg(&spool)
        .env("RUST_LOG", "warn");
    let mut agent = Agent::spawn(cmd);
    let mark = marker("durable");
    const N: usize = 40;
    exec_series(&mark, N, Duration::from_millis(20))
        .join()
        .unwrap();
    // SIGTERM to the agent (strace's child), then strace ends with it
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.child.id())).unwrap();
    let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: signalling the agent this test started (under strace).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "agent under strace exited with {status}");

    let calls = spool_calls(&trace, &spool);
    let renames: Vec<&String> = calls
        .iter()
        .filter(|(c, a)| c.starts_with("rename") && a.contains(".batch\""))
        .map(|(_, a)| a)
        .collect();
    assert!(renames.len() >= 2, "batches should be spooled: {calls:#?}");
    let (mut synced_tmp, mut dir_synced) = (false, false);
    let (mut seq_renamed, mut seq_durable) = (false, false);
    let (mut dir_syncs, mut batch_syncs) = (0, 0);
    for (call, args) in &calls {
        let sync = call == "fdatasync" || call == "fsync";
        let rename = call.starts_with("rename");
        if sync && args.contains("<SPOOL/batch.tmp>") {
            synced_tmp = true;
            batch_syncs += 1;
        } else if sync && args.contains("<SPOOL>") {
            dir_synced = true;
            dir_syncs += 1;
            seq_durable |= seq_renamed;
        } else if rename && args.contains("SPOOL/next-seq.tmp\"") {
            seq_renamed = true;
        } else if rename && args.contains("SPOOL/batch.tmp\"") {
            assert!(
                synced_tmp,
                "a batch renamed into place before its data was synced: {args}"
            );
            assert!(
                seq_durable,
                "a batch stored before the sequence counter was durable: {args}"
            );
            synced_tmp = false;
            dir_synced = false;
        }
    }
    assert!(
        dir_synced,
        "the spool directory was not synced after the last rename: {calls:#?}"
    );
    eprintln!(
        "{} batches spooled: {batch_syncs} data syncs, {dir_syncs} directory syncs",
        renames.len()
    );
    assert!(
        batch_syncs == renames.len() && dir_syncs <= renames.len() + 2,
        "one data sync per batch and at most one directory sync per batch \
         (plus the counter and stream id): {batch_syncs} and {dir_syncs} for {} batches",
        renames.len()
    );
}

/// At a clean stop nothing the kernel recorded goes unreported: the
/// probes are detached, the ring buffer drained to its end, and a final
/// loss event (always sent, before `stopping`) counts what the kernel
/// dropped. Every exec of a burst made right before SIGTERM, after the
/// agent was ready, is delivered or counted in that event. The reader
/// polls the ring once a second, so the burst is still in the ring when
/// the stop comes.
#[test]
fn execs_right_before_sigterm_are_delivered_or_counted_in_the_final_loss_event() {
    require_root();
    let _g = serial();
    let dir = scratch("stopdrain");
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "[kernel]\npoll_interval_ms = 1000\n").unwrap();
    let agent = Agent::start_bin(
        &agent_bin(),
        &["--config", cfg.to_str().unwrap(), "--no-snapshot"],
    );
    let mark = marker("stopdrain");
    const N: usize = 150;
    // each one has exec'ed (and exited) when the series ends
    exec_series(&mark, N, Duration::ZERO).join().unwrap();
    let events = agent.stop();
    let delivered = marked_execs(&events, &mark);
    let dup: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "duplicated: {dup:?}");
    let stopping = events
        .iter()
        .position(|e| e["kind"] == "agent" && e["agent"]["state"] == "stopping")
        .unwrap();
    let last_loss = events[..stopping]
        .iter()
        .rev()
        .find(|e| e["kind"] == "loss");
    let lost_exec = last_loss.map_or(0, |e| e["loss"]["totals"]["exec"].as_u64().unwrap_or(0));
    eprintln!(
        "{} of {N} execs delivered, {lost_exec} execs counted lost by the final loss event",
        delivered.len()
    );
    assert!(
        delivered.len() as u64 + lost_exec >= N as u64,
        "{} of {N} execs made before the stop were neither delivered nor counted lost",
        N as u64 - delivered.len() as u64 - lost_exec
    );
    let last_loss = last_loss.expect("a final loss event before `stopping`");
    assert!(
        last_loss["loss"]["totals"].is_object(),
        "the final loss event carries the totals: {last_loss}"
    );
    // the final loss event comes after every delivered exec
    let last_exec = events.iter().rposition(|e| e["kind"] == "exec").unwrap();
    let final_at = events[..stopping]
        .iter()
        .rposition(|e| e["kind"] == "loss")
        .unwrap();
    assert!(
        final_at > last_exec,
        "the final loss event comes after the drained records"
    );
}
