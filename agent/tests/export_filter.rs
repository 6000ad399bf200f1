//! End-to-end: volume control on a real agent. A marked workload (a
//! Python process that runs `/bin/true` five times and makes 20 loopback
//! connects, accepting them itself) runs under the `security` profile and
//! then under a reloaded filter file; what reaches stdout, what
//! `/metrics` says was kept back, and the aggregated connects' counts are
//! checked. A bad filter file stops the start with its name, and a bad
//! reload leaves the running filter in force.
mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const CONNECTS: u64 = 20;

/// The workload, `mark` in its argv and in each `/bin/true`'s.
const WORKLOAD: &str = r#"
import socket, subprocess, sys
mark = sys.argv[1]
for _ in range(5):
    subprocess.run(["/bin/true", mark], check=True)
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(64)
for _ in range(int(sys.argv[2])):
    c = socket.create_connection(l.getsockname())
    a, _ = l.accept()
    a.close()
    c.close()
"#;

fn workload(mark: &str) {
    let st = Command::new(python())
        .args(["-c", WORKLOAD, mark, &CONNECTS.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "the workload failed: {st}");
}

fn marked<'a>(events: &'a [Value], mark: &str, kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && argv_of(e).iter().any(|a| a == mark))
        .collect()
}

/// `spyglass_export_filtered_total{reason,kind}` now.
fn filtered(port: u16, reason: &str, kind: &str) -> u64 {
    metric(
        port,
        &format!("spyglass_export_filtered_total{{reason=\"{reason}\",kind=\"{kind}\"}}"),
    )
}

/// Replace the file whole, as docs/config.md asks (write, then rename).
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_security_profile_then_a_reloaded_filter_decide_what_leaves() {
    require_root();
    let _g = serial();
    let dir = scratch("export-filter");
    let file = dir.join("filter.yaml");
    write(&file, "profile: security\n");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = start_agent(&[
        "--no-snapshot",
        "--metrics-listen",
        &listen,
        "--export-filter",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        metric(port, "spyglass_export_profile{profile=\"security\"}"),
        1
    );

    // security: execs and the first connect at once; no fork, exit or
    // accept; the other connects held as repeats
    let mark1 = marker("filter-security");
    workload(&mark1);
    agent.wait_for("the first marked connect", WAIT, |e| {
        e["kind"] == "connect" && argv_of(e).contains(&mark1)
    });
    eventually(
        "forks, exits and accepts counted as kept back",
        WAIT,
        || {
            (filtered(port, "kind", "fork") >= 5
                && filtered(port, "kind", "exit") >= 6
                && filtered(port, "kind", "accept") >= CONNECTS
                && filtered(port, "aggregated", "connect") >= CONNECTS - 1)
                .then_some(())
        },
    );
    assert!(metric(port, "spyglass_export_aggregate_windows") >= 1);

    // a new file: every kind, but nothing of /bin/true
    write(
        &file,
        "profile: full\ndeny:\n  - executables: [/bin/true, /usr/bin/true]\n",
    );
    eventually("the filter reloaded", WAIT, || {
        (metric(port, "spyglass_export_filter_reloads_total") == 1).then_some(())
    });
    assert_eq!(metric(port, "spyglass_export_profile{profile=\"full\"}"), 1);
    let mark2 = marker("filter-deny");
    workload(&mark2);
    agent.wait_for("the second workload's exit", WAIT, |e| {
        e["kind"] == "exit"
            && e["process"]["exe"]
                .as_str()
                .is_some_and(|x| x.contains("python"))
            && argv_of(e).contains(&mark2)
    });
    // a bad file is refused; the running filter stays
    write(&file, "deny: [{kinds: [finding], host: true}]\n");
    eventually("the bad filter refused", WAIT, || {
        (metric(port, "spyglass_export_filter_reload_errors_total") == 1).then_some(())
    });
    let mark3 = marker("filter-kept");
    workload(&mark3);
    agent.wait_for("the third workload's accepts", WAIT, |e| {
        e["kind"] == "accept" && argv_of(e).contains(&mark3)
    });
    let events = agent.stop();

    // first workload, security
    assert_eq!(
        marked(&events, &mark1, "exec").len(),
        6,
        "python and 5 true"
    );
    for kind in ["fork", "exit", "accept"] {
        assert!(
            marked(&events, &mark1, kind).is_empty(),
            "{kind} under security"
        );
    }
    let connects = marked(&events, &mark1, "connect");
    assert_eq!(
        connects.len(),
        2,
        "the first, then the window's event at the reload: {connects:#?}"
    );
    assert!(connects[0].get("aggregate").is_none());
    let agg = &connects[1]["aggregate"];
    assert_eq!(agg["count"], CONNECTS - 1, "{agg}");
    assert_eq!(agg["interval_s"], 60);
    // second and third: full, but /bin/true denied
    for mark in [&mark2, &mark3] {
        let execs = marked(&events, mark, "exec");
        assert_eq!(execs.len(), 1, "only python's exec: {execs:#?}");
        assert!(marked(&events, mark, "fork").len() >= 5, "forks are back");
        assert_eq!(marked(&events, mark, "accept").len() as u64, CONNECTS);
        let connects = marked(&events, mark, "connect");
        assert_eq!(connects.len() as u64, CONNECTS);
        assert!(connects.iter().all(|c| c.get("aggregate").is_none()));
        assert!(marked(&events, mark, "exit")
            .iter()
            .all(|e| !e["process"]["exe"]
                .as_str()
                .unwrap_or("")
                .ends_with("/true")));
    }
    // findings, losses and the agent's own events are never filtered
    assert!(events.iter().any(|e| e["kind"] == "loss"));
}

#[test]
fn a_bad_filter_file_stops_the_start_and_names_itself() {
    let dir = scratch("export-filter-bad");
    let file = dir.join("bad.yaml");
    write(&file, "kinds: {loss: false}\n");
    let out = Command::new(agent_bin())
        .args(["run", "--export-filter", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("never filtered"),
        "{err}"
    );
    // check-filter says the same without running, and passes a good one
    let out = Command::new(agent_bin())
        .args(["check-filter", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never filtered"));
    write(
        &file,
        "profile: security\ndeny: [{scope: {namespaces: [kube-system]}}]\n",
    );
    let out = Command::new(agent_bin())
        .args(["check-filter", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok, profile security, 1 deny"),
        "{out:?}"
    );
    // a missing one too
    let out = Command::new(agent_bin())
        .args([
            "run",
            "--profile",
            "security",
            "--export-filter",
            "/nonexistent/f.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/f.yaml"), "{err}");
}

/// `fold_lifetime` on real processes: each exec's exit is sent (the two
/// carry the same pid and start time), forks are not, and an exit of a
/// process that never exec'd is folded.
#[test]
fn folded_lifetimes_keep_each_exec_and_its_exit() {
    require_root();
    let _g = serial();
    let dir = scratch("export-filter-fold");
    let file = dir.join("filter.yaml");
    write(&file, "fold_lifetime: true\n");
    let agent = start_agent(&["--no-snapshot", "--export-filter", file.to_str().unwrap()]);
    let mark = marker("filter-fold");
    // three execs of /bin/true, and a subshell that forks and exits
    // without exec'ing (`( : )`)
    let script = format!("for i in 1 2 3; do /bin/true {mark}; done; ( : ); exit 0");
    let st = Command::new("/bin/sh")
        .args(["-c", &script, &mark])
        .status()
        .unwrap();
    assert!(st.success());
    agent.wait_for("the shell's exit", WAIT, |e| {
        e["kind"] == "exit" && e["process"]["exe"] == "/bin/sh" && argv_of(e).contains(&mark)
    });
    let events = agent.stop();
    let trues = |kind: &str| -> Vec<u64> {
        let mut pids: Vec<u64> = events
            .iter()
            .filter(|e| {
                e["kind"] == kind
                    && e["process"]["exe"] == "/bin/true"
                    && argv_of(e).contains(&mark)
            })
            .map(pid_of)
            .collect();
        pids.sort_unstable();
        pids
    };
    let execs = trues("exec");
    assert_eq!(execs.len(), 3, "{execs:?}");
    assert_eq!(trues("exit"), execs, "each exec's exit, none other");
    // the shell's forks (the three children and the subshell) are folded,
    // and so is the subshell's exit (it never exec'd)
    let shell: Vec<&Value> = events
        .iter()
        .filter(|e| e["process"]["exe"] == "/bin/sh" && argv_of(e).contains(&mark))
        .collect();
    let kinds: Vec<&str> = shell.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["exec", "exit"], "{shell:#?}");
}
