//! The fleet inventory end to end: a real agent under containerd streams
//! to a real collector with its store; the collector's read API answers
//! which containers run as root and which ports are exposed.
//!
//! `SPYGLASS_E2E_COLLECTOR=PATH` runs another collector binary (an older
//! build, to see these tests fail there: tests/src/fleet.rs).
mod common;

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;
use spyglass_e2e::{
    containers::{container_id, image, Ctr},
    fleet::{api_get, collector_bin, spyglass, start_collector},
};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "fleet-e2e-token-7f3a";

fn ids(rows: &Value, key: &str) -> Vec<String> {
    rows[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} array in {rows}"))
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .or(r["container"]["id"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn root_containers_and_exposed_ports_from_the_api() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet");
    let token_file = dir.join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let api = free_port();
    let api_addr = format!("127.0.0.1:{api}");
    let store = format!("sqlite:{}", dir.join("inventory.db").display());
    let col = start_collector(
        &dir,
        &[
            "--store",
            &store,
            "--api-listen",
            &api_addr,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let node = format!("fleet-{}", std::process::id());
    // every container's `resources` event each second (default a minute)
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, "version: 1\nsettings:\n  resources_report_s: 1\n").unwrap();
    let agent = Agent::streaming_to(
        &col.url(),
        &dir.join("spool"),
        &[
            "--no-snapshot",
            "--node-name",
            &node,
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let (busybox, nonroot) = (
        image("spyglass.test/busybox:1"),
        image("spyglass.test/nonroot:1"),
    );
    let (root_id, user_id) = (container_id("fleet-root"), container_id("fleet-user"));
    let (root_port, user_port) = (18000 + free_port() % 1000, 19000 + free_port() % 1000);
    // uid 0, listening on every address of its network namespace
    let _root = Ctr::run(
        &busybox.reference,
        &root_id,
        &[],
        &["/bin/nc", "-l", "-p", &root_port.to_string()],
    );
    // the image's USER 1000, listening on loopback only
    let _user = Ctr::run(
        &nonroot.reference,
        &user_id,
        &[],
        &[
            "/bin/busybox",
            "httpd",
            "-f",
            "-h",
            "/",
            "-p",
            &format!("127.0.0.1:{user_port}"),
        ],
    );
    for (id, port) in [(&root_id, root_port), (&user_id, user_port)] {
        agent.wait_for(&format!("the listen in {id}"), WAIT, |e| {
            e["kind"] == "listen"
                && e["container"]["id"] == id.as_str()
                && e["network"]["local"]["port"] == port
        });
    }

    // Ours are the only containers this test starts; others running on
    // the host may show up too, so compare within ours and show the rest.
    let ours = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|i| **i == root_id || **i == user_id)
            .cloned()
            .collect()
    };
    let q = |path: &str| api_get(api, path, Some(TOKEN));
    let ports = eventually("both listeners in /api/v1/ports", WAIT, || {
        let (st, body) = q("/api/v1/ports");
        (st == 200 && ours(&ids(&body, "ports")).len() == 2).then_some(body)
    });
    let (st, all) = q("/api/v1/containers");
    assert_eq!(st, 200, "{all}");
    assert_eq!(ours(&ids(&all, "containers")).len(), 2, "{all}");

    let (st, root) = q(&format!("/api/v1/containers?root=true&node={node}"));
    assert_eq!(st, 200, "{root}");
    assert_eq!(
        ours(&ids(&root, "containers")),
        std::slice::from_ref(&root_id),
        "{root}"
    );
    let row = root["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == root_id.as_str())
        .unwrap();
    assert_eq!(row["node"], node.as_str());
    assert_eq!(row["namespace"], "k8s.io");
    assert_eq!(row["posture"]["uid"], 0);
    assert_eq!(row["posture"]["privileged"], false);
    assert_eq!(row["image"]["ref"], busybox.reference.as_str());
    assert_eq!(row["image"]["digest"], busybox.digest.as_str());
    assert_eq!(root["stale"], false);
    // its latest resource sample, from the agent's `resources` events
    let usage = eventually("the root container's resource sample", WAIT, || {
        let (_, body) = q(&format!("/api/v1/containers?id={root_id}"));
        let u = body["containers"][0]["usage"].clone();
        u["memory_bytes"].as_u64().filter(|m| *m > 0).map(|_| u)
    });
    assert!(usage["pids"].as_u64() >= Some(1), "{usage}");
    assert!(usage["cpu_percent"].is_u64(), "{usage}");
    assert!(usage["at"].is_string(), "{usage}");
    let (_, notroot) = q("/api/v1/containers?root=false");
    assert_eq!(
        ours(&ids(&notroot, "containers")),
        std::slice::from_ref(&user_id)
    );
    let user_row = &notroot["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == user_id.as_str())
        .unwrap()["posture"];
    assert_eq!(user_row["uid"], 1000);

    let (st, exposed) = q("/api/v1/ports?exposed=true");
    assert_eq!(st, 200, "{exposed}");
    let mine: Vec<(String, u64, bool)> = exposed["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["container"]["id"] == root_id.as_str() || r["container"]["id"] == user_id.as_str()
        })
        .map(|r| {
            // nc binds `::` (both families) or 0.0.0.0
            let addr = r["address"].as_str().unwrap();
            assert!(addr == "::" || addr == "0.0.0.0", "{r}");
            (
                r["container"]["id"].as_str().unwrap().to_owned(),
                r["port"].as_u64().unwrap(),
                r["wildcard"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mine,
        [(root_id.clone(), u64::from(root_port), true)],
        "exposed: {exposed}\nall ports: {ports}"
    );

    // The node's health: its agent lost nothing; its lag is measured.
    let (st, nodes) = q(&format!("/api/v1/nodes?node={node}"));
    assert_eq!(st, 200, "{nodes}");
    let n = &nodes["nodes"][0];
    assert_eq!(
        (n["node"].as_str(), n["lost"].as_i64()),
        (Some(node.as_str()), Some(0)),
        "{nodes}"
    );
    assert!(n["lag_ms"].as_i64().is_some_and(|l| l >= 0), "{nodes}");
    assert_eq!(n["connected"], true, "{nodes}");
    let (st, body) = q("/api/v1/nodes?limit=0");
    assert_eq!(st, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");

    // Filters: unknown names and bad values are refused by name; an
    // SQL-like value is a value.
    let (st, body) = q("/api/v1/containers?rooot=true");
    assert_eq!(st, 400);
    assert!(
        body["error"].as_str().unwrap().contains("\"rooot\""),
        "{body}"
    );
    let (st, body) = q("/api/v1/ports?exposed=yes");
    assert_eq!(st, 400);
    assert!(
        body["error"].as_str().unwrap().contains("filter exposed"),
        "{body}"
    );
    let (st, body) = q("/api/v1/containers?node=x%27%20OR%20%271%27%3D%271");
    assert_eq!(
        (st, body["containers"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );

    // A wrong token, or none, gets 401.
    let (st, body) = api_get(api, "/api/v1/containers", Some("wrong"));
    assert_eq!(st, 401, "{body}");
    assert!(body.get("containers").is_none());
    let (st, _) = api_get(api, "/api/v1/containers", None);
    assert_eq!(st, 401);

    the_cli_answers_the_same(
        api,
        &token_file,
        &node,
        (&root_id, root_port),
        (&user_id, user_port),
    );
    agent.stop();
}

/// The CLI over the same API: root containers and exposed ports of this
/// node exactly, exit 1 when nothing matches, 2 with the reason on a
/// refused token or filter.
fn the_cli_answers_the_same(
    api: u16,
    token_file: &Path,
    node: &str,
    (root_id, root_port): (&str, u16),
    (user_id, user_port): (&str, u16),
) {
    let (code, out, err) = spyglass(
        api,
        token_file,
        &["containers", "--root", "--node", node, "-o", "json"],
    );
    assert_eq!(code, Some(0), "{err}");
    let rows: Value = serde_json::from_str(&out).expect("--output json is JSON");
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, [root_id], "{out}");

    let (code, out, err) = spyglass(api, token_file, &["ports", "--exposed", "--node", node]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NODE") && lines[0].contains("PORT"),
        "{out}"
    );
    assert_eq!(
        lines.len(),
        2,
        "a header and the root container's listener: {out}"
    );
    assert!(
        lines[1]
            .split_whitespace()
            .any(|w| w == root_port.to_string()),
        "{out}"
    );
    assert!(
        !out.contains(&user_port.to_string()) && !out.contains(user_id),
        "{out}"
    );

    // nothing matches: exit 1, no table
    let (code, out, _) = spyglass(api, token_file, &["containers", "--node", "x' OR '1'='1"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    // a wrong token: exit 2, saying so
    let wrong = token_file.with_extension("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let (code, _, err) = spyglass(api, &wrong, &["nodes"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refused the token"), "{err}");
    // a value the API refuses: exit 2 with the API's message
    let (code, _, err) = spyglass(api, token_file, &["findings", "--severity", "urgent"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("severity"), "{err}");
}

/// A collector started with `args`: its exit status and stderr (it must
/// exit at start).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let dir = scratch("fleet-args");
    let mut child = Command::new(collector_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--output")
        .arg(dir.join("out.jsonl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start collector");
    let st = eventually("the collector to exit", WAIT, || child.try_wait().unwrap());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st.code(), err)
}

#[test]
fn a_bad_store_url_or_an_open_api_without_a_token_stops_the_start() {
    let (code, err) = refused(&["--store", "mysql://db.example/x"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--store \"mysql://db.example/x\": expected sqlite:PATH"),
        "{err}"
    );
    let (code, err) = refused(&["--api-listen", "0.0.0.0:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--api-listen 0.0.0.0:1 is not a loopback address")
            && err.contains("--api-token-file"),
        "{err}"
    );
}

#[test]
fn an_exited_container_shows_exited_and_leaves_ports() {
    require_root();
    let _g = serial();
    let dir = scratch("fleet-exit");
    let api = free_port();
    let api_addr = format!("127.0.0.1:{api}");
    let store = format!("sqlite:{}", dir.join("inventory.db").display());
    let col = start_collector(&dir, &["--store", &store, "--api-listen", &api_addr]);
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let busybox = image("spyglass.test/busybox:1");
    let id = container_id("fleet-exit");
    let port = 18000 + free_port() % 1000;
    let _c = Ctr::run(
        &busybox.reference,
        &id,
        &[],
        &["/bin/nc", "-l", "-p", &port.to_string()],
    );
    agent.wait_for("the listen", WAIT, |e| {
        e["kind"] == "listen" && e["container"]["id"] == id.as_str()
    });
    let path = format!("/api/v1/ports?exposed=true&container={id}");
    eventually("the port in /api/v1/ports", WAIT, || {
        let (st, body) = api_get(api, &path, None);
        (st == 200 && body["ports"].as_array().is_some_and(|p| p.len() == 1)).then_some(())
    });
    // a root container: its container.root finding is open while it runs
    let open = format!("/api/v1/findings?container={id}&open=true");
    eventually("its open container.root finding", WAIT, || {
        let (st, body) = api_get(api, &open, None);
        (st == 200
            && body["findings"]
                .as_array()
                .is_some_and(|f| f.iter().any(|r| r["rule"] == "container.root")))
        .then_some(())
    });
    spyglass_e2e::containers::ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    agent.wait_for("the container's exit", WAIT, |e| {
        e["kind"] == "container"
            && e["container"]["id"] == id.as_str()
            && e["lifecycle"]["state"] == "exited"
    });
    let row = eventually("the exit in /api/v1/containers", WAIT, || {
        let (_, body) = api_get(api, "/api/v1/containers?exited=true", None);
        body["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|r| r["id"] == id.as_str()).cloned())
    });
    assert_eq!(row["exit_code"], 137, "{row}");
    assert!(
        row["exited"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{row}"
    );
    let (st, body) = api_get(api, &format!("/api/v1/ports?container={id}"), None);
    assert_eq!(st, 200);
    assert_eq!(body["ports"], serde_json::json!([]), "{body}");
    // nothing of it runs: its findings are closed
    let (st, body) = api_get(api, &open, None);
    assert_eq!(
        (st, &body["findings"]),
        (200, &serde_json::json!([])),
        "{body}"
    );
    agent.stop();
}
