//! End-to-end: `container.restart_loop` with real containers under
//! containerd. A container run again and again under one name (`ctr run
//! --rm`, the same id each time, a new cgroup each run) whose init exits
//! with code 3 is a loop; a container run twice under another name is not.
//!
//! `SPYGLASS_TEST_AGENT=PATH` runs another agent binary (a baseline) in
//! place of this build's.
mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::{containers::*, *};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Lowered thresholds: more than 3 exits in 1 minute.
const POLICY: &str = "version: 1\nsettings:\n  baseline:\n    learn_s: 0\n  \
                      restart_loop_count: 3\n  restart_loop_minutes: 1\n";

fn agent(policy: &str) -> Agent {
    let dir = scratch("restart-loop");
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "[containerd]\nretry_interval_ms = 300\n").unwrap();
    let args = [
        "--no-snapshot",
        "--config",
        cfg.to_str().unwrap(),
        "--policy",
        policy_path.to_str().unwrap(),
    ];
    match std::env::var_os("SPYGLASS_TEST_AGENT") {
        Some(bin) => Agent::start_bin(&PathBuf::from(bin), &args),
        None => start_agent(&args),
    }
}

/// `ctr run --rm IMAGE ID sh -c '/bin/true; sleep 0.3; exit 3'`: the init
/// runs a child (which exits 0) and exits 3. It lives 0.3 s so that the
/// agent's containerd lookup finds the container before `--rm` deletes it
/// (a container gone from containerd before its lookup goes out
/// unattributed, and the detector does not count it: a known limit for
/// containers that live milliseconds, not what this test is about).
fn run_once(image: &str, id: &str) {
    let st = Command::new("ctr")
        .args(["-n", NS, "run", "--rm", image, id])
        .args(["/bin/sh", "-c", "/bin/true; sleep 0.3; exit 3"])
        .stdin(Stdio::null())
        .status()
        .expect("run ctr");
    assert_eq!(st.code(), Some(3), "ctr run {id}");
}

/// Removes the test's containers however it ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.0 {
            remove(id);
        }
    }
}

fn init_exits(agent: &Agent, id: &str) -> Vec<Value> {
    agent.matching(|e| {
        e["kind"] == "exit" && e["container"]["id"] == id && e["process"]["exe"] == "/bin/sh"
    })
}

/// The loop's finding; on a timeout, what the agent saw of the container
/// (each event's kind, process and attribution) in the panic.
fn wait_for_loop(agent: &Agent, id: &str) -> Value {
    let is_loop = |e: &Value| {
        e["kind"] == "finding"
            && e["finding"]["rule_id"] == "container.restart_loop"
            && e["container"]["id"] == id
    };
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Some(f) = agent.matching(is_loop).pop() {
            return f;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen: Vec<String> = agent
        .matching(|e| e["container"]["id"] == id)
        .iter()
        .map(|e| {
            format!(
                "{} pid {} {} cgroup {} exit {} meta {} unattributed {}",
                e["kind"],
                e["process"]["pid"],
                e["process"]["comm"],
                e["process"]["cgroup_id"],
                e["exit"]["code"],
                e["container"]["name"].is_string(),
                e["container"]["unattributed"]
            )
        })
        .collect();
    panic!(
        "no container.restart_loop for {id} within {WAIT:?}; its events:\n{}",
        seen.join("\n")
    );
}

#[test]
fn a_container_exiting_again_and_again_is_a_restart_loop_and_a_twice_run_one_is_not() {
    require_root();
    let _g = serial();
    let agent = agent(POLICY);
    let img = image("spyglass.test/busybox:1");
    let (looping, twice) = (container_id("rl-loop"), container_id("rl-twice"));
    let _c = Cleanup(vec![looping.clone(), twice.clone()]);
    // First the one run twice: its exits come before the loop's in the
    // stream, so a finding for it would come before the loop's.
    for _ in 0..2 {
        run_once(&img.reference, &twice);
    }
    for _ in 0..4 {
        run_once(&img.reference, &looping);
    }
    let f = wait_for_loop(&agent, &looping);
    let info = &f["finding"];
    assert_eq!(info["severity"], "high", "{f}");
    assert_eq!(info["action"], "alert");
    assert_eq!(info["subject"], format!("k8s.io/{looping}"));
    assert_eq!(
        info["restarts"],
        json!({"count": 4, "window_s": 60, "exit_codes": [3, 3, 3, 3]}),
        "{f}"
    );
    assert_eq!(f["container"]["name"], looping.as_str());
    assert_eq!(f["container"]["image"]["digest"], img.digest.as_str());
    // The evidence is the last exit: the init's, code 3.
    let ev = &info["evidence"][0];
    assert_eq!(ev["kind"], "exit", "{f}");
    assert_eq!(ev["exit"]["code"], 3);
    assert_eq!(ev["process"]["exe"], "/bin/sh");
    assert_eq!(ev["container"]["id"], looping.as_str());
    let exits = init_exits(&agent, &looping);
    assert_eq!(exits.len(), 4, "four runs of the init seen: {exits:?}");
    assert_eq!(ev["process"]["pid"], exits[3]["process"]["pid"]);
    // The container run twice: both its init exits seen, no finding.
    assert_eq!(init_exits(&agent, &twice).len(), 2);
    let others = agent.matching(|e| {
        e["kind"] == "finding"
            && e["finding"]["rule_id"] == "container.restart_loop"
            && e["container"]["id"] != looping.as_str()
    });
    assert!(others.is_empty(), "{others:?}");
    // Once per loop: a fifth exit in the window adds no second finding.
    run_once(&img.reference, &looping);
    let pids: Vec<&Value> = exits.iter().map(|e| &e["process"]["pid"]).collect();
    agent.wait_for("the fifth exit", WAIT, |e| {
        e["kind"] == "exit"
            && e["container"]["id"] == looping.as_str()
            && e["process"]["exe"] == "/bin/sh"
            && !pids.contains(&&e["process"]["pid"])
    });
    let events = agent.stop();
    let loops: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "finding" && e["finding"]["rule_id"] == "container.restart_loop")
        .collect();
    assert_eq!(loops.len(), 1, "{loops:?}");
}
