//! End-to-end: what a fleet inventory needs to know what is open and
//! running now (issue 16), with the real probes, real containerd and the
//! test images: listeners' `close`, the `container` lifecycle events, and
//! the startup snapshot's `snapshot_complete` marker.
//!
//! `SPYGLASS_AGENT_BIN` runs these against another agent binary (an older
//! build, to show what it lacked).
mod common;

use std::{path::Path, time::Duration};

use common::{containers::*, *};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// This build's agent, or the one `SPYGLASS_AGENT_BIN` names.
fn start(args: &[&str]) -> Agent {
    match std::env::var_os("SPYGLASS_AGENT_BIN") {
        Some(bin) => Agent::start_bin(Path::new(&bin), args),
        None => start_agent(args),
    }
}

fn in_container(e: &Value, id: &str) -> bool {
    e["container"]["id"] == id
}

fn net_is(e: &Value, kind: &str, protocol: &str, op: &str, port: u64) -> bool {
    let n = &e["network"];
    e["kind"] == kind && n["protocol"] == protocol && n["op"] == op && n["local"]["port"] == port
}

/// The container's metadata as the test image and `ctr run` made it.
fn assert_container(e: &Value, id: &str, img: &TestImage) {
    let c = &e["container"];
    assert_eq!(c["id"], id, "{e}");
    assert_eq!(c["runtime"], "containerd", "{e}");
    assert_eq!(c["name"], id, "{e}");
    assert_eq!(c["namespace"], NS, "{e}");
    assert_eq!(c["image"]["ref"], img.reference.as_str(), "{e}");
    assert_eq!(c["image"]["digest"], img.digest.as_str(), "{e}");
    assert_eq!(c["posture"]["uid"], 0, "{e}");
    assert_eq!(c["posture"]["privileged"], false, "{e}");
    assert!(c.get("unattributed").is_none(), "{e}");
}

/// The one event of `kind` (a `network` shape) on `port` in container `id`.
fn net_event(
    agent: &Agent,
    what: &str,
    id: &str,
    kind: &str,
    proto: &str,
    op: &str,
    port: u64,
) -> Value {
    agent.wait_for(what, WAIT, |e| {
        in_container(e, id) && net_is(e, kind, proto, op, port)
    })
}

#[test]
fn listeners_closed_in_a_container_report_close() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let agent = start(&["--no-snapshot"]);
    let id = container_id("close");
    // A TCP listener (`nc -l`) and a UDP service (busybox's nc has no
    // `-u`; its DHCP server binds 0.0.0.0:67 explicitly, as a UDP service
    // does).
    let _c = Ctr::run(
        &img.reference,
        &id,
        &[],
        &[
            "/bin/sh",
            "-c",
            "printf 'interface lo\\nstart 127.0.0.2\\nend 127.0.0.9\\nlease_file /tmp/leases\\n' \
             > /tmp/udhcpd.conf; nc -l -p 8090 & udhcpd -f /tmp/udhcpd.conf & exec sleep 60",
        ],
    );
    let tcp = net_event(
        &agent,
        "the TCP listen",
        &id,
        "listen",
        "tcp",
        "listen",
        8090,
    );
    let udp = net_event(&agent, "the UDP bind", &id, "listen", "udp", "bind", 67);
    assert_eq!(
        (
            tcp["process"]["comm"].as_str(),
            tcp["network"]["wildcard"].as_bool()
        ),
        (Some("nc"), Some(true))
    );
    assert_eq!(udp["process"]["comm"], "udhcpd", "{udp}");
    let (nc, udhcpd) = (pid_of(&tcp), pid_of(&udp));
    // SAFETY: signalling the container's processes, which this test made.
    unsafe {
        libc::kill(nc as i32, libc::SIGTERM);
        libc::kill(udhcpd as i32, libc::SIGTERM);
    }
    // Each close comes from the exiting process closing its files, and
    // carries the listen's own network.
    // (busybox nc listens on the IPv6 wildcard, dual stack)
    for (what, listen, proto, op, port, family, addr, pid, comm) in [
        (
            "the TCP close",
            &tcp,
            "tcp",
            "listen",
            8090,
            "ipv6",
            "::",
            nc,
            "nc",
        ),
        (
            "the UDP close",
            &udp,
            "udp",
            "bind",
            67,
            "ipv4",
            "0.0.0.0",
            udhcpd,
            "udhcpd",
        ),
    ] {
        let close = net_event(&agent, what, &id, "close", proto, op, port);
        assert_eq!(close["network"], listen["network"], "{close}");
        let n = &close["network"];
        assert_eq!(n["local"]["addr"], addr, "{close}");
        assert_eq!(n["family"], family, "{close}");
        assert_eq!(n["wildcard"], true, "{close}");
        assert!(n.get("remote").is_none(), "{close}");
        assert_eq!(
            (pid_of(&close), close["process"]["comm"].as_str()),
            (pid, Some(comm))
        );
        assert_container(&close, &id, &img);
        assert_eq!(close["snapshot"], false);
    }
    assert_eq!(
        agent
            .matching(|e| e["kind"] == "close" && in_container(e, &id))
            .len(),
        2,
        "one close per socket"
    );
}

#[test]
fn a_container_created_exited_and_deleted_gives_container_events() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let agent = start(&["--no-snapshot"]);
    let id = container_id("life");
    // It exits 3 when told to (a file appears), so the agent has seen it
    // created before it ends.
    let c = Ctr::run(
        &img.reference,
        &id,
        &[],
        &[
            "/bin/sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 3",
        ],
    );
    let is = |state: &'static str| {
        let id = id.clone();
        move |e: &Value| {
            e["kind"] == "container" && in_container(e, &id) && e["lifecycle"]["state"] == state
        }
    };
    let created = agent.wait_for("the container created", WAIT, is("created"));
    assert_container(&created, &id, &img);
    assert_eq!(created["snapshot"], false, "{created}");
    assert!(created["lifecycle"].get("exit_code").is_none(), "{created}");
    assert!(created.get("process").is_none(), "{created}");
    c.exec("go", &["/bin/touch", "/tmp/go"]);
    let exited = agent.wait_for("the container exited", WAIT, is("exited"));
    assert_eq!(exited["lifecycle"]["exit_code"], 3, "{exited}");
    assert_container(&exited, &id, &img);
    remove(&id);
    let deleted = agent.wait_for("the container deleted", WAIT, is("deleted"));
    assert_eq!(deleted["lifecycle"]["exit_code"], 3, "{deleted}");
    assert_container(&deleted, &id, &img);
    // one of each, in order
    let all = agent.matching(|e| e["kind"] == "container" && in_container(e, &id));
    let states: Vec<&str> = all
        .iter()
        .map(|e| e["lifecycle"]["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["created", "exited", "deleted"]);
}

#[test]
fn an_agent_started_while_a_container_runs_reports_it_in_the_snapshot() {
    require_root();
    let _g = serial();
    let img = image("spyglass.test/busybox:1");
    let id = container_id("snap");
    let _c = Ctr::run(
        &img.reference,
        &id,
        &[],
        &["/bin/sh", "-c", "exec sleep 60"],
    );
    // and one whose init has exited 3, not deleted: listed, not running
    let done = container_id("snap-done");
    let _d = Ctr::run(&img.reference, &done, &[], &["/bin/sh", "-c", "exit 3"]);
    eventually("its task stopped", WAIT, || {
        ctr(&["task", "ls"])
            .lines()
            .any(|l| l.starts_with(&format!("{done} ")) && l.contains("STOPPED"))
            .then_some(())
    });
    let agent = start(&[]);
    let marker = agent.wait_for("the snapshot complete marker", WAIT, |e| {
        e["kind"] == "agent" && e["agent"]["state"] == "snapshot_complete"
    });
    let snap = agent.wait_for("the running container in the snapshot", WAIT, |e| {
        e["kind"] == "container" && in_container(e, &id)
    });
    assert_eq!(snap["snapshot"], true, "{snap}");
    assert_eq!(snap["lifecycle"]["state"], "created", "{snap}");
    assert_container(&snap, &id, &img);
    let of_done = agent.matching(|e| e["kind"] == "container" && in_container(e, &done));
    let states: Vec<(&str, bool, Option<i64>)> = of_done
        .iter()
        .map(|e| {
            let l = &e["lifecycle"];
            (
                l["state"].as_str().unwrap_or(""),
                e["snapshot"] == true,
                l["exit_code"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("created", true, None), ("exited", true, Some(3))],
        "the stopped container: listed, then its exit"
    );
    assert_container(&of_done[1], &done, &img);
    let a = &marker["agent"];
    let listed = a["snapshot_containers"]
        .as_u64()
        .expect("containerd listed");
    let all = agent.matching(|_| true);
    let at = |pred: &dyn Fn(&Value) -> bool| all.iter().position(pred).unwrap();
    let started = at(&|e| e["kind"] == "agent" && e["agent"]["state"] == "started");
    let marker_at = at(&|e| e["agent"]["state"] == "snapshot_complete");
    let snapshot_containers: Vec<usize> = (0..all.len())
        .filter(|i| all[*i]["kind"] == "container" && all[*i]["snapshot"] == true)
        .collect();
    let created = |i: &&usize| all[**i]["lifecycle"]["state"] == "created";
    assert_eq!(
        snapshot_containers.iter().filter(created).count() as u64,
        listed,
        "the marker counts the containers"
    );
    assert!(
        snapshot_containers
            .iter()
            .all(|i| started < *i && *i < marker_at),
        "snapshot containers between `started` and the marker"
    );
    let procs = a["snapshot_processes"].as_u64().expect("processes counted");
    assert!(
        procs > 0 && a["snapshot_sockets"].as_u64().is_some(),
        "{marker}"
    );
    assert_eq!(
        agent
            .matching(|e| e["agent"]["state"] == "snapshot_complete")
            .len(),
        1
    );
}
