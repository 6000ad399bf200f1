//! End-to-end: runaway processes found by sampling, with real containers
//! under containerd: a CPU spinner (reported, killed where the policy
//! says, its container's pid 1 spared), memory held near a container's
//! limit, and the `resources` events of an idle twin. Thresholds are
//! lowered to seconds by the test policy.
mod common;

use std::{path::PathBuf, time::Duration};

use common::{containers::*, *};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

fn is_finding(e: &Value, rule: &str, id: &str) -> bool {
    e["kind"] == "finding" && e["finding"]["rule_id"] == rule && e["container"]["id"] == id
}

fn start(name: &str, policy: &str) -> (Agent, PathBuf) {
    let dir = scratch(name);
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "[containerd]\nretry_interval_ms = 300\n").unwrap();
    let agent = Agent::start(&[
        "--no-snapshot",
        "--config",
        cfg.to_str().unwrap(),
        "--policy",
        policy_path.to_str().unwrap(),
    ]);
    (agent, dir)
}

/// The host pid of the first process of container `id` other than its
/// pid 1 (the spinner its init started).
fn child_pid(init: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("pid {init} has no child yet"))
}

#[test]
fn cpu_spinners_are_found_killed_where_scoped_and_pid_1_is_spared() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let (alert, kill, init, idle) = (
        container_id("r-spin-alert"),
        container_id("r-spin-kill"),
        container_id("r-spin-init"),
        container_id("r-idle"),
    );
    // 30% of a core for 3 s: the spinners share 2 cores with the rest of
    // the machine
    let policy = format!(
        "version: 1\nsettings:\n  cpu_runaway_percent: 30\n  cpu_runaway_seconds: 3\n  \
         resource_sample_interval_ms: 500\n  resources_report_s: 2\n  baseline:\n    learn_s: 0\n\
         rules:\n  - rule: process.cpu_runaway\n    action: kill\n    scope:\n      \
         containers: [{kill}, {init}]\n"
    );
    let (agent, _dir) = start("r-cpu", &policy);
    let spin_child = ["/bin/sh", "-c", "sh -c 'while :; do :; done' & wait"];
    let a = Ctr::run(&img.reference, &alert, &[], &spin_child);
    let k = Ctr::run(&img.reference, &kill, &[], &spin_child);
    let i = Ctr::run(
        &img.reference,
        &init,
        &[],
        &["/bin/sh", "-c", "while :; do :; done"],
    );
    let q = Ctr::run(&img.reference, &idle, &[], &["/bin/sleep", "120"]);
    std::thread::sleep(Duration::from_millis(300));
    let (alert_pid, kill_pid, init_pid) = (child_pid(a.pid()), child_pid(k.pid()), i.pid());

    // alert only: the spinner, named, with its use over the time it was over
    let f = agent.wait_for("cpu_runaway (alert)", WAIT, |e| {
        is_finding(e, "process.cpu_runaway", &alert)
    });
    let fi = &f["finding"];
    assert_eq!(fi["severity"], "medium", "{f}");
    assert_eq!(fi["action"], "alert", "{f}");
    assert!(fi.get("outcome").is_none(), "{f}");
    assert_eq!(fi["mitre"]["technique"], "T1496");
    assert_eq!(f["process"]["pid"], alert_pid, "{f}");
    // busybox runs `sh -c` through /proc/self/exe: the exec path as given
    let exe = f["process"]["exe"].as_str().unwrap();
    assert!(!exe.is_empty(), "{f}");
    assert_eq!(fi["subject"], format!("pid {alert_pid} {exe}"));
    let ev = &fi["evidence"][0];
    assert_eq!(ev["kind"], "resources");
    assert_eq!(ev["container"]["image"]["digest"], img.digest.as_str());
    let window = ev["resources"]["window_ms"].as_u64().unwrap();
    let cpu = ev["resources"]["cpu_ms"].as_u64().unwrap();
    assert!(window >= 3000, "over for at least 3 s: {ev}");
    assert!(cpu * 100 >= window * 30, "at least 30% of a core: {ev}");

    // kill: the spinner dies of SIGKILL; its container's pid 1 lives on
    let f = agent.wait_for("cpu_runaway (kill)", WAIT, |e| {
        is_finding(e, "process.cpu_runaway", &kill)
    });
    assert_eq!(f["finding"]["action"], "kill", "{f}");
    assert_eq!(f["finding"]["outcome"], "killed", "{f}");
    assert_eq!(f["process"]["pid"], kill_pid, "{f}");
    let exit = agent.wait_for("the killed spinner's exit", WAIT, |e| {
        e["kind"] == "exit" && e["process"]["pid"] == kill_pid
    });
    assert_eq!(exit["exit"]["signal"], 9, "{exit}");

    // a container's pid 1 is not killed without kill_container_init
    let f = agent.wait_for("cpu_runaway (pid 1)", WAIT, |e| {
        is_finding(e, "process.cpu_runaway", &init)
    });
    assert_eq!(f["process"]["pid"], init_pid, "{f}");
    assert_eq!(f["finding"]["action"], "kill", "{f}");
    assert!(f["finding"].get("outcome").is_none(), "{f}");
    assert!(
        f["finding"]["summary"]
            .as_str()
            .unwrap()
            .contains("not killed: it is the container's pid 1"),
        "{f}"
    );
    assert!(std::path::Path::new(&format!("/proc/{init_pid}")).exists());

    // stopped (SIGSTOP): back under, one resolved update
    // SAFETY: kill(2) with a pid and a signal number.
    unsafe { libc::kill(alert_pid as i32, libc::SIGSTOP) };
    let r = agent.wait_for("cpu_runaway resolved", WAIT, |e| {
        is_finding(e, "process.cpu_runaway", &alert) && e["finding"]["resolved"] == true
    });
    assert_eq!(r["finding"]["subject"], format!("pid {alert_pid} {exe}"));
    // SAFETY: as above.
    unsafe { libc::kill(alert_pid as i32, libc::SIGCONT) };

    // the idle twin: its resources, and no finding
    let res = agent.wait_for("resources of the idle twin", WAIT, |e| {
        e["kind"] == "resources" && e["container"]["id"] == idle.as_str()
    });
    assert_eq!(
        res["container"]["image"]["digest"],
        img.digest.as_str(),
        "{res}"
    );
    assert!(res.get("process").is_none(), "{res}");
    assert!(res["resources"]["pids"].as_u64().unwrap() >= 1, "{res}");
    assert!(
        res["resources"]["memory_bytes"].as_u64().unwrap() > 0,
        "{res}"
    );
    assert!(
        res["resources"]["cpu_percent"].as_u64().unwrap() < 30,
        "{res}"
    );
    assert!(agent
        .matching(|e| is_finding(e, "process.cpu_runaway", &idle))
        .is_empty());
    drop((a, k, i, q));
}

#[test]
fn memory_held_near_the_limit_vs_a_twin_far_under_it() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let (near, far) = (container_id("r-mem-near"), container_id("r-mem-far"));
    let (agent, _dir) = start(
        "r-mem",
        "version: 1\nsettings:\n  memory_near_limit_percent: 80\n  memory_near_limit_seconds: 2\n  \
         resource_sample_interval_ms: 500\n  baseline:\n    learn_s: 0\n",
    );
    // tmpfs pages are charged to the container and cannot be reclaimed
    let limit = ["--memory-limit", "33554432"];
    let fill =
        |mib: u32| format!("dd if=/dev/zero of=/dev/shm/fill bs=1048576 count={mib} && sleep 120");
    let n = Ctr::run(&img.reference, &near, &limit, &["/bin/sh", "-c", &fill(28)]);
    let f2 = Ctr::run(&img.reference, &far, &limit, &["/bin/sh", "-c", &fill(4)]);
    let f = agent.wait_for("memory_near_limit", WAIT, |e| {
        is_finding(e, "container.memory_near_limit", &near)
    });
    let u = &f["finding"]["evidence"][0]["resources"];
    assert_eq!(u["memory_limit_bytes"], 33_554_432u64, "{f}");
    assert!(u["memory_percent"].as_u64().unwrap() >= 80, "{f}");
    assert!(u["window_ms"].as_u64().unwrap() >= 2000, "{f}");
    assert!(u.get("memory_growth_bytes_per_s").is_some(), "{f}");
    assert_eq!(f["container"]["image"]["digest"], img.digest.as_str());
    // freed: back under, resolved
    n.exec("free", &["/bin/rm", "/dev/shm/fill"]);
    agent.wait_for("memory_near_limit resolved", WAIT, |e| {
        is_finding(e, "container.memory_near_limit", &near) && e["finding"]["resolved"] == true
    });
    assert!(agent
        .matching(|e| is_finding(e, "container.memory_near_limit", &far))
        .is_empty());
    drop((n, f2));
}
