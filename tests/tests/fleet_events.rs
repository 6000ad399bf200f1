//! The live event stream end to end: a real agent under containerd
//! streams to a real collector; `spyglass events --follow` (a child
//! process) shows the execs of one Kubernetes namespace and nothing else.
//!
//! `SPYGLASS_E2E_COLLECTOR=PATH` and `SPYGLASS_E2E_CLI=PATH` run other
//! binaries (older builds, to see these tests fail there).
mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use spyglass_e2e::containers::{ctr, image, Pod, PodSpec};

/// A generous bound: nothing here is timed, only kept from hanging.
const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "fleet-events-e2e-token-4b1c";

fn bin_or(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| bin(name), PathBuf::from)
}

/// The collector with its store and API (token, at most `clients`
/// stream clients); fails at once if it exits.
fn start_collector(dir: &Path, api: u16, clients: usize) -> Collector {
    let port = free_port();
    let output = dir.join("out.jsonl");
    let token_file = dir.join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut child = Command::new(bin_or("SPYGLASS_E2E_COLLECTOR", "spyglass-collector"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--output")
        .arg(&output)
        .arg("--store")
        .arg(format!("sqlite:{}", dir.join("inventory.db").display()))
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .arg("--api-token-file")
        .arg(&token_file)
        .args(["--api-max-stream-clients", &clients.to_string()])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start collector");
    eventually("the collector to listen", Duration::from_secs(20), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the collector exited at start ({st})");
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Collector {
        child,
        port,
        output,
    }
}

/// `spyglass events --follow ARGS` running, its stdout lines arriving on
/// a channel; killed on drop.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    /// Start it and wait until it says it follows (its subscription is
    /// open: events accepted from then on reach it).
    fn start(api: u16, token_file: &Path, args: &[&str]) -> Follower {
        let mut child = Command::new(bin_or("SPYGLASS_E2E_CLI", "spyglass"))
            .args(["--collector", &format!("http://127.0.0.1:{api}")])
            .arg("--token-file")
            .arg(token_file)
            .args(["events", "--follow"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run spyglass events");
        let pipe = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let lines = pipe(Box::new(child.stdout.take().unwrap()));
        let err = pipe(Box::new(child.stderr.take().unwrap()));
        let mut said = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            match err.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.starts_with("spyglass: following ") => break,
                Ok(l) => said.push(l),
                Err(_) => {}
            }
            if let Ok(Some(st)) = child.try_wait() {
                said.extend(err.try_iter());
                panic!(
                    "spyglass events {args:?} exited ({st}): {}",
                    said.join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "spyglass events {args:?} did not start following: {}",
                said.join("\n")
            );
        }
        Follower { child, lines }
    }

    /// Lines until one passes `last` (included); panics after [`WAIT`].
    fn until(&self, what: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let done = last(&l);
                    got.push(l);
                    if done {
                        return got;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}; the stream gave:\n{got:#?}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod in Kubernetes namespace `ns` whose container sleeps.
fn sleeper(ns: &str, image: &str) -> Pod {
    Pod::start(&PodSpec {
        name: "events-0",
        namespace: ns,
        container_name: "app",
        image,
        command: &["/bin/sleep", "600"],
        run_as_user: None,
        privileged: false,
    })
}

/// `/bin/echo TOKEN` in the pod's container (ctr exec: the same
/// containerd task the kubelet would exec into), as exec `exec_id`.
fn exec_echo(pod: &Pod, exec_id: &str, token: &str) {
    ctr(&[
        "task",
        "exec",
        "--exec-id",
        exec_id,
        &pod.container_id,
        "/bin/echo",
        token,
    ]);
}

fn argv_has(e: &Value, token: &str) -> bool {
    e["process"]["argv"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == token))
}

#[test]
fn events_follow_shows_the_execs_of_one_namespace_only() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-events");
    let api = free_port();
    let col = start_collector(&dir, api, 2);
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let busybox = image("spyglass.test/busybox:1");
    let mark = marker("events");
    let (ns_x, ns_y) = (
        format!("x-{}", std::process::id()),
        format!("y-{}", std::process::id()),
    );
    let (pod_x, pod_y) = (
        sleeper(&ns_x, &busybox.reference),
        sleeper(&ns_y, &busybox.reference),
    );
    for pod in [&pod_x, &pod_y] {
        agent.wait_for("the pod's sleep", WAIT, |e| {
            e["kind"] == "exec"
                && e["container"]["id"] == pod.container_id.as_str()
                && e["container"]["pod"]["namespace"] == pod.namespace.as_str()
        });
    }

    let token_file = dir.join("api.token");
    let filter = ["--kind", "exec", "--namespace", ns_x.as_str()];
    let json = Follower::start(api, &token_file, &[&filter[..], &["-o", "json"]].concat());
    let people = Follower::start(api, &token_file, &filter);

    // both places taken (--api-max-stream-clients 2): one more is 503
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (st, body) = http_get_with(api, "/api/v1/events?follow=1", &auth);
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("--api-max-stream-clients"), "{body}");

    // Y first, then X: the stream keeps the agent's order, so Y's would
    // come before X's if the filter let it through.
    let (y1, x1, y2, x2) = (
        format!("{mark}-y1"),
        format!("{mark}-x1"),
        format!("{mark}-y2"),
        format!("{mark}-x2"),
    );
    exec_echo(&pod_y, "y1", &y1);
    exec_echo(&pod_x, "x1", &x1);
    exec_echo(&pod_y, "y2", &y2);
    exec_echo(&pod_x, "x2", &x2);

    let lines = json.until("the last marked exec of X", |l| l.contains(&x2));
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert_eq!(e["kind"], "exec", "only execs: {e}");
        assert_eq!(e["container"]["pod"]["namespace"], ns_x.as_str(), "{e}");
        assert!(!argv_has(e, &y1) && !argv_has(e, &y2), "Y's exec came: {e}");
        // the collector's JSON lines shape, with its delivery
        assert_eq!(e["delivery"]["node_id"], e["node"], "{e}");
    }
    let x = events
        .iter()
        .find(|e| argv_has(e, &x1))
        .unwrap_or_else(|| panic!("no exec of {x1}: {lines:#?}"));
    assert_eq!(x["process"]["argv"], serde_json::json!(["/bin/echo", x1]));
    assert_eq!(x["container"]["id"], pod_x.container_id.as_str());
    assert_eq!(x["container"]["pod"]["name"], "events-0");

    // the same for people: one line, workload NS/POD, the command
    let lines = people.until("the last marked exec of X (lines)", |l| l.contains(&x2));
    let line = lines
        .iter()
        .find(|l| l.contains(&x1))
        .unwrap_or_else(|| panic!("no line for {x1}: {lines:#?}"));
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        &words[2..4],
        [format!("{ns_x}/events-0").as_str(), "exec"],
        "{line}"
    );
    assert!(words[4].starts_with("pid="), "{line}");
    assert_eq!(&words[5..], ["/bin/echo", x1.as_str()], "{line}");
    assert!(
        lines.iter().all(|l| !l.contains(&y1) && !l.contains(&y2)),
        "{lines:#?}"
    );
    drop((json, people));
    agent.stop();
}

#[test]
fn the_stream_refuses_a_wrong_token_and_unknown_filters() {
    let dir = scratch("fleet-events-refused");
    let api = free_port();
    let _col = start_collector(&dir, api, 4);
    let get = |path: &str, token: &str| {
        let (st, body) = http_get_with(api, path, &format!("Authorization: Bearer {token}\r\n"));
        (
            st,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body)),
        )
    };
    let (st, body) = get("/api/v1/events?follow=1", "wrong");
    assert_eq!(st, 401, "{body}");
    let (st, body) = get("/api/v1/events?follow=1&nodes=a", TOKEN);
    assert_eq!(st, 400, "{body}");
    assert_eq!(
        body["error"],
        "unknown filter \"nodes\"; this endpoint takes: follow, node, namespace, pod, kind, rule"
    );
    let (st, body) = get("/api/v1/events?follow=1&kind=exec,bogus", TOKEN);
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("filter kind: \"bogus\" is not one of exec,")),
        "{body}"
    );
    let (st, body) = get("/api/v1/events", TOKEN);
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("add follow=1")),
        "{body}"
    );

    // the CLI: exit 2 with the API's message
    let token_file = dir.join("api.token");
    let cli = |token_file: &Path, args: &[&str]| {
        let out = Command::new(bin_or("SPYGLASS_E2E_CLI", "spyglass"))
            .args(["--collector", &format!("http://127.0.0.1:{api}")])
            .arg("--token-file")
            .arg(token_file)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run spyglass");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let (code, err) = cli(&wrong, &["events", "--follow"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refused the token"), "{err}");
    let (code, err) = cli(&token_file, &["events", "--follow", "--kind", "exec,bogus"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("filter kind: \"bogus\""), "{err}");
    let (code, err) = cli(&token_file, &["events"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("events needs --follow"), "{err}");
}
