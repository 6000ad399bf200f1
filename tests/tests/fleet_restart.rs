//! The agent's startup snapshot is the truth for its node: what ended
//! while no agent watched (a listener whose process died, a container
//! deleted) leaves the inventory when the node's agent starts again.
//!
//! `SPYGLASS_E2E_COLLECTOR=PATH` and `SPYGLASS_E2E_AGENT=PATH` run other
//! binaries (older builds, to see this test fail there).
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;
use spyglass_e2e::containers::{container_id, image, remove, Ctr};

const WAIT: Duration = Duration::from_secs(30);

fn override_or(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| bin(name), PathBuf::from)
}

fn start_collector(dir: &Path, api: u16) -> Collector {
    let port = free_port();
    let output = dir.join("out.jsonl");
    let store = format!("sqlite:{}", dir.join("inventory.db").display());
    let child = Command::new(override_or("SPYGLASS_E2E_COLLECTOR", "spyglass-collector"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--output")
        .arg(&output)
        .args([
            "--store",
            &store,
            "--api-listen",
            &format!("127.0.0.1:{api}"),
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start collector");
    let mut col = Collector {
        child,
        port,
        output,
    };
    eventually("the collector to listen", Duration::from_secs(20), || {
        if let Ok(Some(st)) = col.child.try_wait() {
            panic!("the collector exited at start ({st})");
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    col
}

/// An agent with its /proc snapshot on (the default), as node `node`.
fn start_agent(col: &Collector, dir: &Path, node: &str) -> Agent {
    let spool = dir.join("spool");
    let url = col.url();
    let args = [
        "--collector",
        url.as_str(),
        "--spool-dir",
        spool.to_str().unwrap(),
        "--node-name",
        node,
    ];
    Agent::start_bin(&override_or("SPYGLASS_E2E_AGENT", "spyglass-agent"), &args)
}

fn api(port: u16, path: &str) -> Value {
    let (status, body) = http_get_with(port, path, "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Ports of `node`'s containers `ours` in `/api/v1/ports`, sorted (the
/// host's own listeners are there too, and come and go).
fn ports(port: u16, node: &str, ours: &[&str]) -> Vec<(String, u64)> {
    let body = api(port, &format!("/api/v1/ports?node={node}"));
    let mut out: Vec<(String, u64)> = body["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("no ports in {body}"))
        .iter()
        .map(|r| {
            (
                r["container"]["id"].as_str().unwrap_or_default().to_owned(),
                r["port"].as_u64().unwrap_or_default(),
            )
        })
        .filter(|(c, _)| ours.contains(&c.as_str()))
        .collect();
    out.sort();
    out
}

/// `node`'s container `id` in `/api/v1/containers`.
fn container(port: u16, node: &str, id: &str) -> Option<Value> {
    let body = api(port, &format!("/api/v1/containers?node={node}"));
    body["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("no containers in {body}"))
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
}

/// Wait for `what` in the API, at most [`WAIT`]; the last answer when it
/// never came (the assertion after says what differs).
fn settle<T: PartialEq + Clone>(want: &T, mut get: impl FnMut() -> T) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = get();
        if got == *want || std::time::Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn what_ended_while_the_agent_was_down_leaves_the_inventory_at_its_restart() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-restart");
    let api_port = free_port();
    let col = start_collector(&dir, api_port);
    let node = format!("restart-{}", std::process::id());
    let agent = start_agent(&col, &dir, &node);
    let busybox = image("spyglass.test/busybox:1");
    let (stays, gone) = (container_id("fr-stays"), container_id("fr-gone"));
    let base = 20000 + free_port() % 1000;
    let (p_keep, p_die, p_gone) = (base, base + 1000, base + 2000);
    // `stays` listens twice; one of its listeners dies while the agent is
    // down. `gone` listens and is deleted while the agent is down.
    let script = format!("nc -l -p {p_keep} & nc -l -p {p_die} & wait");
    let _stays = Ctr::run(&busybox.reference, &stays, &[], &["/bin/sh", "-c", &script]);
    let _gone = Ctr::run(
        &busybox.reference,
        &gone,
        &[],
        &["/bin/nc", "-l", "-p", &p_gone.to_string()],
    );
    let ours = [stays.as_str(), gone.as_str()];
    let mut die_pid = 0;
    for (id, port) in [(&stays, p_keep), (&stays, p_die), (&gone, p_gone)] {
        let ev = agent.wait_for(&format!("the listen on {port} in {id}"), WAIT, |e| {
            e["kind"] == "listen"
                && e["container"]["id"] == id.as_str()
                && e["network"]["local"]["port"] == port
        });
        if port == p_die {
            die_pid = pid_of(&ev);
        }
    }
    assert_ne!(die_pid, 0, "the listen on {p_die} names no process");
    let before = vec![
        (gone.clone(), u64::from(p_gone)),
        (stays.clone(), u64::from(p_keep)),
        (stays.clone(), u64::from(p_die)),
    ];
    let mut before_sorted = before.clone();
    before_sorted.sort();
    let got = settle(&before_sorted, || ports(api_port, &node, &ours));
    assert_eq!(got, before_sorted, "the three listeners in the API");

    // The agent stops; meanwhile one listener's process dies and the
    // second container is deleted, unseen.
    agent.stop();
    // the host's pid of that `nc`, checked before it is killed
    let cmdline = std::fs::read(format!("/proc/{die_pid}/cmdline")).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&cmdline),
        format!("nc\0-l\0-p\0{p_die}\0"),
        "pid {die_pid} is not the listener on {p_die}"
    );
    // SAFETY: a plain kill of a process this test started (in its container).
    assert_eq!(unsafe { libc::kill(die_pid as i32, libc::SIGKILL) }, 0);
    remove(&gone);
    eventually("the killed listener's process to go", WAIT, || {
        (!Path::new(&format!("/proc/{die_pid}")).exists()).then_some(())
    });

    // The agent starts again: its snapshot re-announces what exists.
    let agent = start_agent(&col, &dir, &node);
    let marker = agent.wait_for("snapshot_complete", WAIT, |e| {
        e["kind"] == "agent" && e["agent"]["state"] == "snapshot_complete"
    });
    assert!(
        marker["agent"]["snapshot_containers"].as_u64().is_some(),
        "containerd listed the containers: {marker}"
    );
    let want = vec![(stays.clone(), u64::from(p_keep))];
    let got = settle(&want, || ports(api_port, &node, &ours));
    assert_eq!(
        got, want,
        "after the restart only the listener that still exists is open \
         (before the restart: {before:?})"
    );
    let gone_row = settle(&true, || {
        container(api_port, &node, &gone).is_some_and(|r| r["exited"].is_string())
    });
    let row = container(api_port, &node, &gone);
    assert!(gone_row, "the deleted container shows exited: {row:?}");
    let row = row.unwrap();
    assert_eq!(row["exit_code"], Value::Null, "nobody saw its exit: {row}");
    let stays_row = container(api_port, &node, &stays).expect("the running container");
    assert_eq!(stays_row["exited"], Value::Null, "{stays_row}");
    assert_eq!(stays_row["attributed"], true, "{stays_row}");
    agent.stop();
    drop(col);
}

/// A container whose task is started again under the same id after it
/// exited runs again: the API clears its exit and lists its listener.
#[test]
fn a_container_started_again_under_its_id_is_running_again() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-rerun");
    let api_port = free_port();
    let col = start_collector(&dir, api_port);
    let node = format!("rerun-{}", std::process::id());
    let url = col.url();
    let spool = dir.join("spool");
    let agent = Agent::start_bin(
        &override_or("SPYGLASS_E2E_AGENT", "spyglass-agent"),
        &[
            "--collector",
            &url,
            "--spool-dir",
            spool.to_str().unwrap(),
            "--node-name",
            &node,
            "--no-snapshot",
        ],
    );
    let busybox = image("spyglass.test/busybox:1");
    let id = container_id("fr-rerun");
    let port = 23000 + free_port() % 1000;
    // the first run exits 3; the next (same rootfs) listens
    let script = format!("test -e /ran && exec nc -l -p {port}; touch /ran; exit 3");
    let _c = Ctr::run(&busybox.reference, &id, &[], &["/bin/sh", "-c", &script]);
    let exited = settle(&Some(3), || {
        container(api_port, &node, &id).and_then(|r| r["exit_code"].as_i64())
    });
    assert_eq!(exited, Some(3), "the first run's exit in the API");
    spyglass_e2e::containers::ctr(&["task", "delete", &id]);
    spyglass_e2e::containers::ctr(&["task", "start", "-d", &id]);
    agent.wait_for("the listen of the second run", WAIT, |e| {
        e["kind"] == "listen"
            && e["container"]["id"] == id.as_str()
            && e["network"]["local"]["port"] == port
    });
    let want = vec![(id.clone(), u64::from(port))];
    let got = settle(&want, || ports(api_port, &node, &[id.as_str()]));
    assert_eq!(got, want, "the second run's listener");
    let running = settle(&true, || {
        container(api_port, &node, &id).is_some_and(|r| r["exited"].is_null())
    });
    let row = container(api_port, &node, &id);
    assert!(running, "started again, not exited: {row:?}");
    assert_eq!(row.unwrap()["exit_code"], Value::Null);
    agent.stop();
    drop(col);
}

/// A byte forwarder from `path` to containerd's socket: the agent's
/// connection to containerd can be cut while containerd stays up.
struct Forwarder {
    path: PathBuf,
    streams: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Forwarder {
    fn start(path: &Path) -> Forwarder {
        use std::os::unix::net::{UnixListener, UnixStream};
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the forwarder's socket");
        let fwd = Forwarder {
            path: path.to_owned(),
            streams: Default::default(),
            stop: Default::default(),
        };
        let (streams, stop) = (fwd.streams.clone(), fwd.stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { return };
                let Ok(server) = UnixStream::connect("/run/containerd/containerd.sock") else {
                    continue;
                };
                let mut held = streams.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        fwd
    }

    /// Cut every connection and stop accepting (the socket goes).
    fn cut(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.path);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // wake the accept loop so it sees `stop`
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
    }
}

/// A container deleted while the agent could not hear containerd is
/// reported `deleted` when the agent lists the containers again, and
/// leaves the running containers of the API.
#[test]
fn a_container_deleted_while_containerd_was_out_of_reach_is_reported_deleted() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-resync");
    let api_port = free_port();
    let col = start_collector(&dir, api_port);
    let node = format!("resync-{}", std::process::id());
    let sock = dir.join("containerd.sock");
    let fwd = Forwarder::start(&sock);
    let url = col.url();
    let spool = dir.join("spool");
    let agent = Agent::start_bin(
        &override_or("SPYGLASS_E2E_AGENT", "spyglass-agent"),
        &[
            "--collector",
            &url,
            "--spool-dir",
            spool.to_str().unwrap(),
            "--node-name",
            &node,
            "--no-snapshot",
            "--containerd-socket",
            sock.to_str().unwrap(),
        ],
    );
    let busybox = image("spyglass.test/busybox:1");
    let id = container_id("fr-resync");
    let _c = Ctr::run(&busybox.reference, &id, &[], &["/bin/sleep", "600"]);
    agent.wait_for("the container's created", WAIT, |e| {
        e["kind"] == "container"
            && e["container"]["id"] == id.as_str()
            && e["lifecycle"]["state"] == "created"
    });
    let running = settle(&true, || {
        container(api_port, &node, &id).is_some_and(|r| r["exited"].is_null())
    });
    assert!(running, "the container running in the API");
    // the agent's link to containerd is cut; the container is deleted
    fwd.cut();
    remove(&id);
    let _fwd = Forwarder::start(&sock);
    let ev = agent.wait_for("the deletion reported after the re-listing", WAIT, |e| {
        e["kind"] == "container"
            && e["container"]["id"] == id.as_str()
            && e["lifecycle"]["state"] == "deleted"
    });
    assert_eq!(
        ev["container"]["name"],
        id.as_str(),
        "with its metadata: {ev}"
    );
    let gone = settle(&true, || {
        container(api_port, &node, &id).is_some_and(|r| r["exited"].is_string())
    });
    let row = container(api_port, &node, &id);
    assert!(gone, "the deleted container shows exited: {row:?}");
    agent.stop();
    drop(col);
}
