//! End-to-end: container attribution with real containers under the real
//! containerd (ctr and the CRI API), the real probes and the images
//! `cargo xtask images` built. Each test asserts the exact container id,
//! image reference and digests, pod labels, uid and privilege.
mod common;

use std::{path::PathBuf, time::Duration};

use common::{containers::*, *};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn has_arg(e: &Value, mark: &str) -> bool {
    argv_of(e).iter().any(|a| a == mark)
}

/// An exec in some container with `mark` in its argv (not the `ctr`
/// command on the host that started it, which carries the mark too).
fn container_exec(e: &Value, mark: &str) -> bool {
    e["kind"] == "exec" && e.get("container").is_some() && has_arg(e, mark)
}

fn in_container(e: &Value, id: &str) -> bool {
    e["container"]["id"] == id
}

/// Config for a test agent: fast retries, short grace, frequent heartbeat.
fn config(name: &str, extra: &str) -> PathBuf {
    let dir = scratch(name);
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[containerd]\nretry_interval_ms = 300\ndelete_grace_ms = 500\n\
             [process]\nexited_ttl_ms = 500\n\
             [output]\nheartbeat_interval_ms = 500\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// The full metadata of `img` in event `e`, for container `id`.
fn assert_attributed(e: &Value, id: &str, img: &TestImage) {
    let c = &e["container"];
    assert_eq!(c["id"], id, "{e}");
    assert!(c.get("unattributed").is_none(), "attributed: {e}");
    assert_eq!(c["runtime"], "containerd");
    assert_eq!(c["namespace"], NS);
    assert_eq!(c["oci_runtime"], "io.containerd.runc.v2");
    assert_eq!(c["image"]["ref"], img.reference.as_str());
    assert_eq!(c["image"]["digest"], img.digest.as_str());
    assert_eq!(c["image"]["config_digest"], img.config_digest.as_str());
    if img.index_digest.is_empty() {
        assert!(c["image"].get("index_digest").is_none(), "{e}");
    } else {
        assert_eq!(c["image"]["index_digest"], img.index_digest.as_str());
    }
    assert!(
        c["created"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{e}"
    );
    assert!(e.get("host").is_none(), "not a host event: {e}");
}

#[test]
fn entrypoint_exec_listener_and_connect_are_attributed() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("entry");
    let id = container_id("entry");
    let c = Ctr::run(
        &img.reference,
        &id,
        &[],
        &["/bin/sh", "-c", "exec sleep 60", &mark],
    );

    // The entrypoint: the first exec of the container.
    let entry = agent.wait_for("the entrypoint's exec", WAIT, |e| container_exec(e, &mark));
    assert_eq!(
        argv_of(&entry),
        ["/bin/sh", "-c", "exec sleep 60", mark.as_str()]
    );
    assert_attributed(&entry, &id, &img);
    assert_eq!(entry["container"]["name"], id.as_str());
    let p = &entry["container"]["posture"];
    assert_eq!(
        (p["uid"].as_u64(), p["privileged"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(p["host_network"], false);
    assert_eq!(p["host_pid"], false);
    assert_eq!(entry["process"]["uid"], 0);
    // It is the container's init process.
    assert_eq!(entry["process"]["pid"], c.pid());

    // An exec into the running container, with a listener and a connection
    // on the container's own loopback.
    let mark2 = marker("exec-into");
    c.exec(
        "probe",
        &[
            "/bin/sh",
            "-c",
            "nc -l -p 8080 >/dev/null & sleep 0.5; echo hi | nc 127.0.0.1 8080; wait",
            &mark2,
        ],
    );
    let exec = agent.wait_for("the ctr task exec", WAIT, |e| container_exec(e, &mark2));
    assert_attributed(&exec, &id, &img);
    let listen = agent.wait_for("the listener in the container", WAIT, |e| {
        e["kind"] == "listen" && in_container(e, &id) && e["network"]["local"]["port"] == 8080
    });
    assert_attributed(&listen, &id, &img);
    assert_eq!(listen["network"]["wildcard"], true);
    assert_eq!(listen["process"]["comm"], "nc");
    let connect = agent.wait_for("the connection from the container", WAIT, |e| {
        e["kind"] == "connect" && in_container(e, &id) && e["network"]["remote"]["port"] == 8080
    });
    assert_attributed(&connect, &id, &img);
    assert_eq!(connect["network"]["remote"]["addr"], "127.0.0.1");
    assert_eq!(connect["network"]["outcome"], "established");
    // The host's own processes are marked as host.
    let ctr_exec = agent.wait_for("ctr itself", WAIT, |e| {
        e["kind"] == "exec" && e["process"]["exe"] == "/usr/bin/ctr"
    });
    assert_eq!(ctr_exec["host"], true);
    assert!(ctr_exec.get("container").is_none());
}

#[test]
fn short_lived_multi_platform_container_is_attributed() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox-multi:1");
    assert!(!img.index_digest.is_empty() && img.index_digest != img.digest);
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("short");
    let id = container_id("short");
    // `--rm`: the container is deleted as soon as it exits (a few ms).
    let t = std::time::Instant::now();
    ctr(&["run", "--rm", &img.reference, &id, "/bin/true", &mark]);
    eprintln!(
        "short-lived container ran for {:?} (ctr run to exit)",
        t.elapsed()
    );
    let exec = agent.wait_for("exec of the short-lived container", WAIT, |e| {
        container_exec(e, &mark)
    });
    assert_attributed(&exec, &id, &img);
    let exit = agent.wait_for("its exit", WAIT, |e| {
        e["kind"] == "exit" && in_container(e, &id) && e["process"]["exe"] == "/bin/true"
    });
    assert_attributed(&exit, &id, &img);
    assert_eq!(exit["exit"]["code"], 0);
}

#[test]
fn container_started_before_the_agent_is_in_the_snapshot() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let id = container_id("early");
    let mark = marker("early");
    let c = Ctr::run(
        &img.reference,
        &id,
        &[],
        &["/bin/sh", "-c", "nc -l -p 8081 & exec sleep 60", &mark],
    );
    let pid = c.pid();
    std::thread::sleep(Duration::from_millis(500)); // the listener is up
    let agent = start_agent(&[]);
    let snap = agent.wait_for("the container's process in the snapshot", WAIT, |e| {
        e["snapshot"] == true && e["kind"] == "exec" && e["process"]["pid"] == pid
    });
    assert_attributed(&snap, &id, &img);
    let listen = agent.wait_for("the container's listener in the snapshot", WAIT, |e| {
        e["snapshot"] == true && e["kind"] == "listen" && e["network"]["local"]["port"] == 8081
    });
    assert_attributed(&listen, &id, &img);
    assert_eq!(listen["network"]["wildcard"], true);
}

#[test]
fn non_root_and_privileged_containers() {
    require_root();
    let _g = serial();
    let nonroot = image("spyglass.test/nonroot:1");
    let root_img = image("spyglass.test/busybox:1");
    let agent = start_agent(&["--no-snapshot"]);
    let (m1, m2) = (marker("nonroot"), marker("priv"));
    let (id1, id2) = (container_id("nonroot"), container_id("priv"));
    ctr(&[
        "run",
        "--rm",
        &nonroot.reference,
        &id1,
        "/bin/sh",
        "-c",
        "id",
        &m1,
    ]);
    ctr(&[
        "run",
        "--rm",
        "--privileged",
        &root_img.reference,
        &id2,
        "/bin/sh",
        "-c",
        "id",
        &m2,
    ]);
    let e1 = agent.wait_for("the non-root container", WAIT, |e| container_exec(e, &m1));
    assert_attributed(&e1, &id1, &nonroot);
    assert_eq!(e1["process"]["uid"], 1000, "the image's USER 1000:1000");
    let p = &e1["container"]["posture"];
    assert_eq!(
        (p["uid"].as_u64(), p["gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(p["privileged"], false);
    let caps = p["capabilities"].as_array().unwrap();
    assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{p}");

    let e2 = agent.wait_for("the privileged container", WAIT, |e| container_exec(e, &m2));
    assert_attributed(&e2, &id2, &root_img);
    assert_eq!(e2["process"]["uid"], 0);
    let p = &e2["container"]["posture"];
    assert_eq!(
        (p["uid"].as_u64(), p["privileged"].as_bool()),
        (Some(0), Some(true))
    );
    assert!(p["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "CAP_SYS_ADMIN"));
}

#[test]
fn pod_through_cri_carries_pod_labels() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("pod");
    let pod = Pod::start(&PodSpec {
        name: "web-0",
        namespace: "shop",
        container_name: "app",
        image: &img.reference,
        command: &["/bin/sh", "-c", "exec sleep 60", &mark],
        run_as_user: Some(1000),
        privileged: false,
    });
    let e = agent.wait_for("the pod container's entrypoint", WAIT, |e| {
        container_exec(e, &mark)
    });
    let c = &e["container"];
    assert_eq!(c["id"], pod.container_id.as_str(), "{e}");
    assert!(c.get("unattributed").is_none(), "{e}");
    assert_eq!(c["runtime"], "containerd");
    assert_eq!(c["name"], "app");
    assert_eq!(c["pod"]["name"], "web-0");
    assert_eq!(c["pod"]["namespace"], "shop");
    assert_eq!(c["pod"]["uid"], pod.uid.as_str());
    // The pod's own labels, from its sandbox (the container has none).
    assert_eq!(c["pod"]["labels"]["app"], "web-0", "{e}");
    assert_eq!(c["image"]["digest"], img.digest.as_str());
    assert_eq!(c["image"]["config_digest"], img.config_digest.as_str());
    assert_eq!(c["labels"]["io.kubernetes.container.name"], "app");
    assert_eq!(e["process"]["uid"], 1000);
    assert_eq!(c["posture"]["uid"], 1000);
    assert_eq!(c["posture"]["privileged"], false);
    assert_eq!(c["posture"]["host_network"], true, "hostNetwork pod");
    // the process's cgroup is the kubelet-style pod cgroup
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", pid_of(&e))).unwrap_or_default();
    assert!(
        cg.is_empty() || cg.contains(&format!("/kubepods/besteffort/pod{}/", pod.uid)),
        "{cg}"
    );
}

/// Restarts containerd when the test ends, however it ends.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        containerd_start();
    }
}

#[test]
fn containerd_away_then_back() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let id = container_id("away");
    // A container that keeps exec'ing, started before containerd goes.
    let _c = Ctr::run(
        &img.reference,
        &id,
        &[],
        &["/bin/sh", "-c", "while true; do sleep 0.2; done"],
    );
    let _restart = Restart;
    containerd_stop();
    // The agent starts without containerd: it runs, marks, retries.
    let cfg = config("away", "");
    let agent = start_agent(&["--no-snapshot", "--config", cfg.to_str().unwrap()]);
    let marked = agent.wait_for("an unattributed exec while containerd is away", WAIT, |e| {
        e["kind"] == "exec" && in_container(e, &id)
    });
    let why = marked["container"]["unattributed"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why == "containerd_socket_missing" || why == "containerd_unreachable",
        "reason: {marked}"
    );
    assert!(marked["container"].get("image").is_none());
    containerd_start();
    let back = agent.wait_for("an attributed exec after containerd is back", WAIT, |e| {
        e["kind"] == "exec" && in_container(e, &id) && e["container"].get("unattributed").is_none()
    });
    assert_attributed(&back, &id, &img);

    // containerd goes away while the agent runs: the agent keeps running,
    // and what it learned stays valid (the container's execs stay
    // attributed from the cache).
    containerd_stop();
    let seen = agent.matching(|_| true).len();
    std::thread::sleep(Duration::from_millis(1000));
    let all = agent.matching(|_| true);
    let during: Vec<&Value> = all[seen..]
        .iter()
        .filter(|e| e["kind"] == "exec" && in_container(e, &id))
        .collect();
    assert!(!during.is_empty(), "the container's execs keep coming");
    for e in during {
        assert_attributed(e, &id, &img);
    }
    containerd_start();
    // A container created after the restart is attributed from its first
    // exec: the event subscription is live again.
    let mark = marker("after");
    let id2 = container_id("after");
    ctr(&["run", "--rm", &img.reference, &id2, "/bin/true", &mark]);
    let e = agent.wait_for("exec in a new container", WAIT, |e| {
        container_exec(e, &mark)
    });
    assert_attributed(&e, &id2, &img);
}

#[test]
fn churn_of_short_lived_containers_leaves_no_growth() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let cfg = config("churn", "");
    let agent = start_agent(&["--no-snapshot", "--config", cfg.to_str().unwrap()]);
    let heartbeats =
        || agent.matching(|e| e["kind"] == "agent" && e["agent"]["state"] == "running");
    agent.wait_for("a heartbeat", WAIT, |e| {
        e["kind"] == "agent" && e["agent"]["state"] == "running"
    });
    let before = heartbeats().pop().unwrap();
    let base = before["agent"]["tracked"]["containers"].as_u64().unwrap();
    const N: usize = 200;
    let mark = marker("churn");
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (img, mark) = (img.reference.clone(), mark.clone());
            std::thread::spawn(move || {
                for i in (w..N).step_by(2) {
                    let id = format!("sg-churn-{}-{i}", std::process::id());
                    ctr(&["run", "--rm", &img, &id, "/bin/true", &mark, &i.to_string()]);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // every container's exec is attributed
    let execs = eventually("every churn exec", WAIT, || {
        let v = agent.matching(|e| container_exec(e, &mark));
        (v.len() >= N).then_some(v)
    });
    let unattributed: Vec<&Value> = execs
        .iter()
        .filter(|e| e["container"]["image"]["digest"] != img.digest.as_str())
        .collect();
    assert!(
        unattributed.is_empty(),
        "{} of {N} not attributed: {:?}",
        unattributed.len(),
        unattributed.first()
    );
    // after the delete grace, the cache is back where it was
    let n = heartbeats().len();
    std::thread::sleep(Duration::from_millis(1500));
    let mut beats = heartbeats();
    assert!(beats.len() > n + 1, "heartbeats every 500 ms");
    let after = beats.pop().unwrap();
    let t = &after["agent"]["tracked"];
    eprintln!(
        "tracked before churn: {}, after: {t}",
        before["agent"]["tracked"]
    );
    assert!(
        t["containers"].as_u64().unwrap() <= base,
        "containers cached: {t}, before {base}"
    );
    assert_eq!(t["pending_events"], 0);
    // exited processes and cgroups learned from the churn are forgotten
    // too: what is left does not depend on how many containers came and
    // went (the cgroup count is the live cgroup tree's size)
    let v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.join("cgroup.controllers").exists())
        .expect("a cgroup v2 mount");
    let live_cgroups = count_dirs(v2) + 1;
    let processes = t["processes"].as_u64().unwrap();
    assert!(
        processes < 50,
        "processes tracked after {N} containers: {t}"
    );
    assert!(
        t["cgroups"].as_u64().unwrap() <= live_cgroups as u64 + 10,
        "cgroups cached after {N} containers: {t}, {live_cgroups} cgroup directories now"
    );
}

/// Directories under `dir`, recursively (the cgroup tree's size).
fn count_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| 1 + count_dirs(&e.path()))
            .sum()
    })
}

/// A "containerd" that accepts connections and never answers (hung, or a
/// socket planted in its place) must not keep the agent from stopping:
/// every call to it has a limit, and so does every stage of the stop.
#[test]
fn a_containerd_that_never_answers_does_not_hold_the_stop() {
    require_root();
    let _serial = serial();
    let dir = scratch("silent-containerd");
    let socket = dir.join("containerd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // accept and hold every connection, reading nothing, answering nothing
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let agent = start_agent(&["--containerd-socket", socket.to_str().unwrap()]);
    // the agent connected and asked (its first call now waits on a peer
    // that never answers)
    std::thread::sleep(Duration::from_secs(2));
    // stop() fails the test if the agent has not exited 60 s after SIGTERM
    let events = agent.stop();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "agent" && e["agent"]["state"] == "stopping"),
        "the agent stopped cleanly"
    );
}
