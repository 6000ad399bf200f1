//! Vulnerability context end to end (docs/vulnerabilities.md): a real
//! agent under containerd reads each image's lineage from containerd's
//! content store, a real collector builds the image hierarchy in its
//! store, and the API and the `spyglass` CLI answer which images are
//! built on which.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use spyglass_e2e::{
    containers::{container_id, image, Ctr},
    fleet::{api_get, spyglass, start_collector},
};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "vulns-e2e-token-51c9";

/// `app:1` is built on `busybox:1` (xtask/src/images.rs: busybox's layer
/// plus one, and manifest annotations naming busybox:1). Its container's
/// `created` event carries that lineage; the collector answers busybox
/// as app's base and app as built on busybox, by layers, and the images
/// with busybox's very layers (nonroot, pause) as neither.
#[test]
fn an_image_descends_from_the_base_its_layers_start_with() {
    require_root();
    let _g = serial();
    let dir = scratch("vulns-lineage");
    let token_file = dir.join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let api = free_port();
    let store = format!("sqlite:{}", dir.join("inventory.db").display());
    let col = start_collector(
        &dir,
        &[
            "--store",
            &store,
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--api-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let (base, app, nonroot) = (
        image("spyglass.test/busybox:1"),
        image("spyglass.test/app:1"),
        image("spyglass.test/nonroot:1"),
    );
    let (base_id, app_id, twin_id) = (
        container_id("lineage-base"),
        container_id("lineage-app"),
        container_id("lineage-twin"),
    );
    let _b = Ctr::run(&base.reference, &base_id, &[], &["/bin/sleep", "300"]);
    let _a = Ctr::run(&app.reference, &app_id, &[], &["/bin/sleep", "300"]);
    let _t = Ctr::run(&nonroot.reference, &twin_id, &[], &["/bin/sleep", "300"]);

    // the agent's `created` step of app's container names its base
    let created = agent.wait_for("app's container created", WAIT, |e| {
        e["kind"] == "container"
            && e["container"]["id"] == app_id.as_str()
            && e["lifecycle"]["state"] == "created"
    });
    let lineage = &created["lifecycle"]["image"];
    assert_eq!(lineage["base_digest"], base.digest.as_str(), "{created}");
    assert_eq!(lineage["base_name"], base.reference.as_str(), "{created}");
    let diff_ids: Vec<&str> = lineage["diff_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no diff_ids: {created}"))
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(diff_ids.len(), 2, "{created}");
    let base_created = agent.wait_for("busybox's container created", WAIT, |e| {
        e["kind"] == "container"
            && e["container"]["id"] == base_id.as_str()
            && e["lifecycle"]["state"] == "created"
    });
    // busybox names no base; its one layer is app's first
    let base_lineage = &base_created["lifecycle"]["image"];
    assert!(base_lineage.get("base_digest").is_none(), "{base_created}");
    assert_eq!(base_lineage["diff_ids"][0], diff_ids[0], "{base_created}");

    let q = |path: &str| api_get(api, path, Some(TOKEN));
    let up = eventually("app's lineage in the store", WAIT, || {
        let (st, body) = q(&format!("/api/v1/lineage?image={}", app.digest));
        (st == 200 && body["lineage"].as_array().is_some_and(|r| r.len() > 1)).then_some(body)
    });
    let rows = up["lineage"].as_array().unwrap();
    let relation = |rows: &[Value], config: &str| -> Option<String> {
        rows.iter()
            .find(|r| r["config_digest"] == config)
            .map(|r| r["relation"].as_str().unwrap().to_owned())
    };
    assert_eq!(rows[0]["relation"], "self", "{up}");
    assert_eq!(rows[0]["config_digest"], app.config_digest.as_str());
    assert_eq!(rows[0]["base_digest"], base.digest.as_str(), "{up}");
    assert_eq!(rows[0]["running"]["containers"], 1, "{up}");
    assert_eq!(
        relation(rows, &base.config_digest).as_deref(),
        Some("ancestor"),
        "{up}"
    );
    // the same layer as busybox under another config: not a base
    assert_eq!(relation(rows, &nonroot.config_digest), None, "{up}");

    let (st, down) = q(&format!(
        "/api/v1/lineage?image={}&relation=descendants",
        base.digest
    ));
    assert_eq!(st, 200, "{down}");
    let rows = down["lineage"].as_array().unwrap();
    assert_eq!(
        relation(rows, &app.config_digest).as_deref(),
        Some("descendant"),
        "{down}"
    );
    let app_row = rows
        .iter()
        .find(|r| r["config_digest"] == app.config_digest.as_str())
        .unwrap();
    assert_eq!(app_row["by"], "layers", "{down}");
    assert_eq!(app_row["ref"], app.reference.as_str(), "{down}");
    assert!(
        rows.iter().all(|r| r["relation"] != "ancestor"),
        "relation=descendants lists no ancestor: {down}"
    );

    // unknown image, bad relation: refused by name
    let (st, body) = q(&format!("/api/v1/lineage?image=sha256:{}", "0".repeat(64)));
    assert_eq!(st, 404, "{body}");
    let (st, body) = q(&format!(
        "/api/v1/lineage?image={}&relation=cousins",
        base.digest
    ));
    assert_eq!(st, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("relation"), "{body}");

    // the CLI: images built on busybox, and app's bases
    let (code, out, err) = spyglass(
        api,
        &token_file,
        &["images", "--descends-from", &base.digest],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&app.reference), "{out}");
    let (code, out, err) = spyglass(api, &token_file, &["images", "--lineage", &app.digest]);
    assert_eq!(code, Some(0), "{out}{err}");
    let ancestor = out
        .lines()
        .find(|l| l.starts_with("ancestor"))
        .unwrap_or_else(|| panic!("no ancestor row: {out}"));
    assert!(ancestor.contains(&base.reference), "{out}");
    agent.stop();
}
