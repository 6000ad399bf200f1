//! Vulnerability context end to end (docs/vulnerabilities.md): a real
//! agent under containerd reads each image's lineage from containerd's
//! content store, a real collector builds the image hierarchy in its
//! store, and the API and the `spyglass` CLI answer which images are
//! built on which; scanner reports dropped in `--vuln-reports` or sent to
//! the API join the running images on any of their digests.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use spyglass_e2e::{
    containers::{container_id, image, Ctr, TestImage},
    fleet::{api_get, api_send, spyglass, start_collector},
    postgres::Postgres,
};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "vulns-e2e-token-51c9";
/// The report uploads' token (`--api-report-token-file`).
const REPORT_TOKEN: &str = "vulns-e2e-reports-8d2e";

/// `app:1` is built on `busybox:1` (xtask/src/images.rs: busybox's layer
/// plus one, and manifest annotations naming busybox:1). Its container's
/// `created` event carries that lineage; the collector answers busybox
/// as app's base and app as built on busybox, by layers; nonroot, with
/// busybox's very layers under another config, is neither busybox's base
/// nor its descendant (and as much app's base as busybox).
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
    // all three images' layers stored (nonroot's included)
    let up = eventually("app's three relatives in the store", WAIT, || {
        let (st, body) = q(&format!("/api/v1/lineage?image={}", app.digest));
        (st == 200 && body["lineage"].as_array().is_some_and(|r| r.len() == 3)).then_some(body)
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
    // nonroot has busybox's one layer too: a base of app as well
    assert_eq!(
        relation(rows, &nonroot.config_digest).as_deref(),
        Some("ancestor"),
        "{up}"
    );

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
    // the same layers as busybox under another config: neither
    assert_eq!(relation(rows, &nonroot.config_digest), None, "{down}");
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
    assert!(
        body["error"].as_str().unwrap().contains("relation"),
        "{body}"
    );

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
    assert!(
        out.lines()
            .any(|l| l.starts_with("ancestor") && l.contains(&base.reference)),
        "{out}"
    );
    agent.stop();
}

/// A Trivy JSON report (the shape `trivy image -f json` writes: its
/// `Metadata.ImageID` is the config digest, `RepoDigests` name the
/// manifest) of `img`, with `vulns` (id, severity, fixed version) on the
/// image's busybox-static (the Debian package its one binary comes from).
fn trivy_report(img: &TestImage, vulns: &[(&str, &str, &str)]) -> String {
    let repo = img.reference.split(':').next().unwrap();
    let vulns: Vec<Value> = vulns
        .iter()
        .map(|(id, severity, fixed)| {
            serde_json::json!({
                "VulnerabilityID": id,
                "PkgName": "busybox-static",
                "PkgIdentifier": {
                    "PURL": "pkg:deb/debian/busybox-static@1.35.0-4%2Bdeb12u1%2Bb1?arch=amd64&distro=debian-12"
                },
                "InstalledVersion": "1:1.35.0-4+deb12u1+b1",
                "FixedVersion": fixed,
                "Severity": severity,
                "Title": format!("{id} in busybox"),
            })
        })
        .collect();
    serde_json::json!({
        "SchemaVersion": 2,
        "ArtifactName": img.reference,
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": {"Family": "debian", "Name": "12.12"},
            "ImageID": img.config_digest,
            "RepoTags": [img.reference],
            "RepoDigests": [format!("{repo}@{}", img.digest)],
        },
        "Results": [{
            "Target": format!("{} (debian 12.12)", img.reference),
            "Class": "os-pkgs",
            "Type": "debian",
            "Vulnerabilities": vulns,
        }],
    })
    .to_string()
}

/// The vulnerability ids the API answers for `q`.
fn vuln_ids(api: u16, q: &str) -> Vec<String> {
    let (st, body) = api_get(api, &format!("/api/v1/vulns{q}"), Some(TOKEN));
    assert_eq!(st, 200, "{body}");
    body["vulns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Reports in `--vuln-reports` and through the API, joined with the
/// images that run: one written before its image's container starts and
/// one after both join; a truncated rewrite of a report is refused by
/// name and its earlier version stays answered; a removed file's rows
/// go; a new scan sent to the API supersedes the file of the same image,
/// and that file written again (as at a restart) is not imported again.
/// On PostgreSQL (the SQLite store runs the same SQL in
/// collector/src/inventory/vuln_roundtrip.rs), which also answers the
/// image hierarchy here.
#[test]
fn reports_join_the_running_images_and_a_bad_one_changes_nothing() {
    require_root();
    let _g = serial();
    let dir = scratch("vulns-reports");
    let pg = Postgres::start(&dir);
    let reports = dir.join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let token_file = dir.join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let report_token_file = dir.join("reports.token");
    std::fs::write(&report_token_file, format!("{REPORT_TOKEN}\n")).unwrap();
    let (api, metrics) = (free_port(), free_port());
    let store = pg.url();
    let (base, app) = (
        image("spyglass.test/busybox:1"),
        image("spyglass.test/app:1"),
    );
    // app's report is there before anything runs
    std::fs::write(
        reports.join("app.json"),
        trivy_report(&app, &[("CVE-2023-42363", "MEDIUM", "1:1.36.1-1")]),
    )
    .unwrap();
    let col = start_collector(
        &dir,
        &[
            "--store",
            &store,
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--api-token-file",
            token_file.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--vuln-reports",
            reports.to_str().unwrap(),
            "--api-report-token-file",
            report_token_file.to_str().unwrap(),
        ],
    );
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let app_id = container_id("vulns-app");
    let base_id = container_id("vulns-base");
    let _a = Ctr::run(&app.reference, &app_id, &[], &["/bin/sleep", "300"]);
    let _b = Ctr::run(&base.reference, &base_id, &[], &["/bin/sleep", "300"]);
    let rows = eventually("app's vulnerability, running", WAIT, || {
        let (_, body) = api_get(api, "/api/v1/vulns?running=true", Some(TOKEN));
        let rows = body["vulns"].as_array()?.clone();
        rows.iter()
            .any(|r| r["image"]["digest"] == app.digest.as_str())
            .then_some(rows)
    });
    let row = rows
        .iter()
        .find(|r| r["image"]["digest"] == app.digest.as_str())
        .unwrap();
    assert_eq!(row["id"], "CVE-2023-42363", "{row}");
    assert_eq!(row["severity"], "medium", "{row}");
    assert_eq!(row["package"]["name"], "busybox-static", "{row}");
    assert_eq!(row["fixed_version"], "1:1.36.1-1", "{row}");
    assert_eq!(row["running"]["containers"], 1, "{row}");
    assert_eq!(row["image"]["ref"], app.reference.as_str(), "{row}");

    // busybox's report comes after its container started
    std::fs::write(
        reports.join("base.json"),
        trivy_report(&base, &[("CVE-2022-48174", "CRITICAL", "")]),
    )
    .unwrap();
    let q = format!("?image={}", base.digest);
    eventually("busybox's report joined", WAIT, || {
        (vuln_ids(api, &q) == ["CVE-2022-48174"]).then_some(())
    });
    assert_eq!(
        vuln_ids(api, "?severity=high&running=true"),
        ["CVE-2022-48174"]
    );
    assert_eq!(vuln_ids(api, "?fixable=true"), ["CVE-2023-42363"]);

    // a truncated rewrite of app.json: refused by name, the old one stays
    let good = std::fs::read(reports.join("app.json")).unwrap();
    std::fs::write(reports.join("app.json"), &good[..good.len() / 2]).unwrap();
    eventually("the truncated report refused", WAIT, || {
        (metric(metrics, "spyglass_collector_vuln_reports_rejected_total") >= 1).then_some(())
    });
    assert_eq!(
        metric(metrics, "spyglass_collector_vuln_reports_rejecting"),
        1
    );
    let q = format!("?image={}", app.digest);
    assert_eq!(vuln_ids(api, &q), ["CVE-2023-42363"]);

    // the CLI: what runs with a critical vulnerability
    let (code, out, err) = spyglass(api, &token_file, &["vulns", "--severity", "critical"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("CVE-2022-48174") && out.contains(&base.reference),
        "{out}"
    );
    assert!(!out.contains("CVE-2023-42363"), "{out}");

    // a rescan of busybox sent to the API supersedes base.json
    let rescan = trivy_report(&base, &[("CVE-2023-42366", "LOW", "1:1.36.1-1")]);
    let (st, body) = api_send(
        api,
        "PUT",
        "/api/v1/reports/busybox-rescan",
        Some(REPORT_TOKEN),
        rescan.as_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["superseded"][0], "base.json", "{body}");
    let q = format!("?image={}", base.digest);
    assert_eq!(vuln_ids(api, &q), ["CVE-2023-42366"]);
    // garbage and a bad name are refused by the API, naming why
    let (st, body) = api_send(
        api,
        "PUT",
        "/api/v1/reports/x",
        Some(REPORT_TOKEN),
        b"{\"a\":",
    );
    assert_eq!(st, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("api:x"), "{body}");
    let (st, _) = api_send(
        api,
        "PUT",
        "/api/v1/reports/..%2Fetc",
        Some(REPORT_TOKEN),
        b"{}",
    );
    assert_eq!(st, 400);
    // the read API's token does not write reports
    for token in ["wrong", TOKEN] {
        let (st, _) = api_send(api, "PUT", "/api/v1/reports/x", Some(token), b"{}");
        assert_eq!(st, 401, "{token}");
    }
    // base.json, which the rescan superseded, written again with the
    // same bytes (as at a restart): not imported again; a file after it
    // in name order shows the scan passed it
    let old = std::fs::read(reports.join("base.json")).unwrap();
    std::fs::write(reports.join("base.json"), &old).unwrap();
    let imported = metric(metrics, "spyglass_collector_vuln_reports_imported_total");
    std::fs::write(
        reports.join("zz-app-rescan.json"),
        trivy_report(&app, &[("CVE-2023-42363", "MEDIUM", "1:1.36.1-1")]),
    )
    .unwrap();
    eventually("the scan after base.json's rewrite", WAIT, || {
        (metric(metrics, "spyglass_collector_vuln_reports_imported_total") > imported).then_some(())
    });
    assert_eq!(vuln_ids(api, &q), ["CVE-2023-42366"]);

    // the hierarchy on PostgreSQL: busybox is app's base
    let (st, up) = api_get(
        api,
        &format!("/api/v1/lineage?image={}&relation=ancestors", app.digest),
        Some(TOKEN),
    );
    assert_eq!(st, 200, "{up}");
    assert!(
        up["lineage"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["relation"] == "ancestor"
                && r["config_digest"] == base.config_digest.as_str()),
        "{up}"
    );

    // app's files removed (the truncated app.json, and the rescan that
    // superseded it): its rows go
    std::fs::remove_file(reports.join("app.json")).unwrap();
    std::fs::remove_file(reports.join("zz-app-rescan.json")).unwrap();
    let q = format!("?image={}", app.digest);
    eventually("app.json's rows gone", WAIT, || {
        vuln_ids(api, &q).is_empty().then_some(())
    });
    assert_eq!(
        metric(metrics, "spyglass_collector_vuln_reports_rejecting"),
        0
    );
    agent.stop();
    pg.stop();
}

/// The exec event of `mark` (its last argument) in container `id`.
fn exec_of(agent: &Agent, id: &str, mark: &str) -> Option<Value> {
    agent.matching(|e| is_exec_of(e, id, mark)).pop()
}

fn is_exec_of(e: &Value, id: &str, mark: &str) -> bool {
    e["kind"] == "exec"
        && e["container"]["id"] == id
        && argv(e).last().map(String::as_str) == Some(mark)
}

/// Each exec in a container carries the OS package of its image that
/// owns its file, read from the image's own dpkg database
/// (busybox-deb:1: this host's busybox-static stanza and file list, see
/// xtask/src/images.rs): /bin/busybox is busybox-static's at this host's
/// version; /bin/sh, a link to it, is resolved in the container's root;
/// a copy of busybox under /tmp is unpackaged; a path through `..`, and
/// an exec in an image with no package database, carry neither.
#[test]
fn an_exec_carries_the_package_that_owns_its_file() {
    require_root();
    let _g = serial();
    let dir = scratch("vulns-packages");
    let col = start_collector(&dir, &["--store", "none"]);
    let agent = Agent::streaming_to(&col.url(), &dir.join("spool"), &["--no-snapshot"]);
    let img = image("spyglass.test/busybox-deb:1");
    let id = container_id("pkg-owner");
    let c = Ctr::run(&img.reference, &id, &[], &["/bin/sleep", "300"]);
    let version = String::from_utf8(
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "busybox-static"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // the image's first execs ask for its index: the ones after carry it
    let mut n = 0;
    let owned = eventually("an exec carrying its package", WAIT, || {
        n += 1;
        let mark = format!("owned-{n}");
        c.exec(&format!("e{n}"), &["/bin/busybox", "echo", &mark]);
        std::thread::sleep(Duration::from_millis(200));
        exec_of(&agent, &id, &mark).filter(|e| e["process"].get("package").is_some())
    });
    let pkg = &owned["process"]["package"];
    assert_eq!(pkg["kind"], "deb", "{owned}");
    assert_eq!(pkg["name"], "busybox-static", "{owned}");
    assert_eq!(pkg["version"], version.as_str(), "{owned}");
    assert_eq!(pkg["source"], "busybox", "{owned}");
    assert_eq!(pkg["arch"], "amd64", "{owned}");
    assert!(
        pkg["purl"]
            .as_str()
            .unwrap()
            .starts_with("pkg:deb/debian/busybox-static@"),
        "{owned}"
    );
    assert!(owned["process"].get("unpackaged").is_none(), "{owned}");

    // /bin/sh is a link to busybox: resolved inside the container's root,
    // off the pipeline (the exec that asks carries no answer; later ones do)
    let sh = eventually("an exec of /bin/sh carrying its package", WAIT, || {
        n += 1;
        let mark = format!("via-sh-{n}");
        c.exec(&format!("s{n}"), &["/bin/sh", "-c", "true", &mark]);
        std::thread::sleep(Duration::from_millis(200));
        exec_of(&agent, &id, &mark).filter(|e| e["process"].get("package").is_some())
    });
    assert_eq!(sh["process"]["exe"], "/bin/sh", "{sh}");
    assert_eq!(sh["process"]["package"]["name"], "busybox-static", "{sh}");

    // a copy of busybox is no package's
    c.exec("cp", &["/bin/cp", "/bin/busybox", "/tmp/busybox"]);
    let copied = eventually("an exec of the copy marked unpackaged", WAIT, || {
        n += 1;
        let mark = format!("copied-{n}");
        c.exec(&format!("b{n}"), &["/tmp/busybox", "echo", &mark]);
        std::thread::sleep(Duration::from_millis(200));
        exec_of(&agent, &id, &mark).filter(|e| e["process"].get("unpackaged").is_some())
    });
    assert_eq!(copied["process"]["unpackaged"], true, "{copied}");
    assert!(copied["process"].get("package").is_none(), "{copied}");

    // a path with `..` names what the kernel ran only after links are
    // followed: no answer (the text would look up another file)
    c.exec("dd", &["/tmp/../bin/busybox", "echo", "dotdot"]);
    let dotdot = agent.wait_for("the exec through ..", WAIT, |e| {
        is_exec_of(e, &id, "dotdot")
    });
    assert!(dotdot["process"].get("package").is_none(), "{dotdot}");
    assert!(dotdot["process"].get("unpackaged").is_none(), "{dotdot}");

    // busybox:1 has no package database: no answer, not "unpackaged"
    let plain = image("spyglass.test/busybox:1");
    let pid = container_id("pkg-none");
    let p = Ctr::run(&plain.reference, &pid, &[], &["/bin/sleep", "300"]);
    for i in 0..5 {
        p.exec(
            &format!("n{i}"),
            &["/bin/busybox", "echo", &format!("plain-{i}")],
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = agent.wait_for("the plain image's last exec", WAIT, |e| {
        is_exec_of(e, &pid, "plain-4")
    });
    assert!(last["process"].get("package").is_none(), "{last}");
    assert!(last["process"].get("unpackaged").is_none(), "{last}");
    agent.stop();
}
