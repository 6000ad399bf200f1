//! End-to-end: OOM kills. A container with a 32 MiB memory limit whose
//! process allocates past it is OOM-killed by the kernel: the victim's
//! exit carries `exit.oom` (its resident memory, the container's limit)
//! and a `container.oom_kill` finding names it; a twin under its limit
//! gets neither.
//!
//! `SPYGLASS_AGENT_BIN` runs another agent binary (a baseline build, to
//! see the test fail there).
mod common;

use std::{path::PathBuf, time::Duration};

use common::{containers::*, *};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const LIMIT: u64 = 32 * 1024 * 1024;

fn agent_path() -> PathBuf {
    std::env::var_os("SPYGLASS_AGENT_BIN").map_or_else(|| bin("spyglass-agent"), PathBuf::from)
}

fn in_container(e: &Value, id: &str) -> bool {
    e["container"]["id"] == id
}

/// The exit event of the `tail` process of container `id`.
fn is_tail_exit(e: &Value, id: &str) -> bool {
    e["kind"] == "exit"
        && in_container(e, id)
        && (e["process"]["exe"]
            .as_str()
            .is_some_and(|x| x.ends_with("tail"))
            || e["process"]["comm"] == "tail")
}

#[test]
fn a_container_past_its_memory_limit_is_oom_killed_and_named() {
    require_root();
    let _g = serial();
    let dir = scratch("oom");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nsettings:\n  baseline:\n    learn_s: 0\n",
    )
    .unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "[containerd]\nretry_interval_ms = 300\n").unwrap();
    let agent = Agent::start_bin(
        &agent_path(),
        &[
            "--no-snapshot",
            "--config",
            cfg.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let started = agent.wait_for("agent started", WAIT, |e| e["agent"]["state"] == "started");
    let probe = started["agent"]["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["program"] == "mark_victim").cloned())
        .unwrap_or_else(|| panic!("no mark_victim probe in the started event: {started}"));
    assert_eq!(
        probe["attached"], true,
        "the OOM probe on this kernel: {probe}"
    );

    let busybox = image("spyglass.test/busybox:1");
    let (hog_id, twin_id) = (container_id("oom-hog"), container_id("oom-twin"));
    let limit = LIMIT.to_string();
    let flags = ["--memory-limit", limit.as_str()];
    // busybox tail keeps the endless "line" of /dev/zero in memory; the
    // shell stays (the OOM killer picks the biggest process).
    let _hog = Ctr::run(
        &busybox.reference,
        &hog_id,
        &flags,
        &["/bin/sh", "-c", "tail /dev/zero; sleep 60"],
    );
    let _twin = Ctr::run(
        &busybox.reference,
        &twin_id,
        &flags,
        &[
            "/bin/sh",
            "-c",
            "head -c 4000000 /dev/zero | tail -c 1 >/dev/null; sleep 60",
        ],
    );

    let exit = agent.wait_for("the hog's tail exit", WAIT, |e| is_tail_exit(e, &hog_id));
    assert_eq!(exit["exit"]["signal"], 9, "{exit}");
    let oom = &exit["exit"]["oom"];
    assert_eq!(oom["memory_limit_bytes"], LIMIT, "exit.oom: {exit}");
    // This kernel's tracepoint (6.8 and later) carries the resident set:
    // about the limit (anonymous memory within it, plus mapped files).
    let rss = oom["rss_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("rss: {exit}"));
    assert!(rss > LIMIT / 4 && rss < 2 * LIMIT, "rss {rss}: {exit}");
    let pid = pid_of(&exit);

    let f = agent.wait_for("container.oom_kill", WAIT, |e| {
        e["kind"] == "finding"
            && e["finding"]["rule_id"] == "container.oom_kill"
            && in_container(e, &hog_id)
    });
    let info = &f["finding"];
    assert_eq!(info["severity"], "high", "{f}");
    assert_eq!(info["action"], "alert");
    // the subject is the executable as exec named it (busybox runs
    // applets as /proc/self/exe); the summary adds the command name
    assert_eq!(info["subject"], exit["process"]["exe"], "{f}");
    let summary = info["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("killed process {pid} (tail, ")),
        "{summary}"
    );
    assert!(
        summary.contains("container memory limit 32.0 MiB"),
        "{summary}"
    );
    assert!(summary.contains("resident memory "), "{summary}");
    assert_eq!(pid_of(&f), pid);
    assert_eq!(f["container"]["image"]["digest"], busybox.digest.as_str());
    let evidence = &info["evidence"][0];
    assert_eq!(evidence["kind"], "exit", "{f}");
    assert_eq!(evidence["exit"]["oom"]["memory_limit_bytes"], LIMIT);
    assert_eq!(pid_of(evidence), pid);

    // the twin's tail ends normally, under its limit
    let twin_exit = agent.wait_for("the twin's tail exit", WAIT, |e| is_tail_exit(e, &twin_id));
    assert_eq!(twin_exit["exit"]["code"], 0, "{twin_exit}");
    let events = agent.stop();
    let twin_marked: Vec<&Value> = events
        .iter()
        .filter(|e| in_container(e, &twin_id) && !e["exit"]["oom"].is_null())
        .collect();
    assert!(
        twin_marked.is_empty(),
        "the twin was not OOM-killed: {twin_marked:?}"
    );
    let twin_findings: Vec<&Value> = events
        .iter()
        .filter(|e| in_container(e, &twin_id) && e["finding"]["rule_id"] == "container.oom_kill")
        .collect();
    assert!(twin_findings.is_empty(), "{twin_findings:?}");
    // one OOM kill, one marked exit
    let marked = events
        .iter()
        .filter(|e| e["kind"] == "exit" && in_container(e, &hog_id) && !e["exit"]["oom"].is_null())
        .count();
    assert_eq!(marked, 1, "the hog's exits marked as OOM kills");
}
