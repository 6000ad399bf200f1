//! End-to-end: the Prometheus endpoint and the health endpoints of a real
//! agent, scraped over HTTP; counters move when events happen, readiness
//! follows containerd and the collector.
mod common;

use std::{process::Command, time::Duration};

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// The value of one sample line (`name{labels} value`).
fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_count_events_and_health_follows_containerd_and_collector() {
    require_root();
    let _g = serial();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = start_agent(&["--no-snapshot", "--metrics-listen", &listen]);
    assert_eq!(http_get(port, "/healthz").0, 200);
    eventually("ready (containerd synced)", WAIT, || {
        (http_get(port, "/readyz").0 == 200).then_some(())
    });
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE spyglass_events_total counter"),
        "{body}"
    );
    let before = sample(&body, "spyglass_events_total{kind=\"exec\"}").expect("exec counter");
    assert!(
        sample(&body, "spyglass_probes_attached").unwrap() >= 10,
        "{body}"
    );
    assert_eq!(sample(&body, "spyglass_containerd_up"), Some(1));
    let mark = marker("metrics");
    for _ in 0..5 {
        assert!(Command::new("/bin/true")
            .arg(&mark)
            .status()
            .unwrap()
            .success());
    }
    agent.wait_for("the marked execs", WAIT, |e| {
        e["kind"] == "exec" && argv_of(e).get(1) == Some(&mark)
    });
    let after = eventually("the exec counter to move", WAIT, || {
        let n = sample(
            &http_get(port, "/metrics").1,
            "spyglass_events_total{kind=\"exec\"}",
        )?;
        (n >= before + 5).then_some(n)
    });
    assert!(after >= before + 5);
    // gauges follow within the agent's 100 ms housekeeping tick
    eventually("processes tracked", WAIT, || {
        (sample(&http_get(port, "/metrics").1, "spyglass_processes_tracked")? > 0).then_some(())
    });
    assert_eq!(http_get(port, "/nope").0, 404);
    agent.stop();

    // containerd's socket missing: alive, not ready, and says why
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = start_agent(&[
        "--no-snapshot",
        "--metrics-listen",
        &listen,
        "--containerd-socket",
        "/nonexistent/containerd.sock",
    ]);
    assert_eq!(http_get(port, "/healthz").0, 200);
    let (status, body) = eventually("not ready", WAIT, || {
        let r = http_get(port, "/readyz");
        (r.0 == 503).then_some(r)
    });
    assert_eq!(status, 503);
    assert!(body.contains("containerd"), "{body}");
    assert_eq!(
        sample(&http_get(port, "/metrics").1, "spyglass_containerd_up"),
        Some(0)
    );
    agent.stop();

    // a collector that does not answer: not ready, and the spool grows
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let spool = scratch("metrics-spool");
    let agent = start_agent(&[
        "--no-snapshot",
        "--metrics-listen",
        &listen,
        "--collector",
        &nobody,
        "--spool-dir",
        spool.to_str().unwrap(),
    ]);
    // The node is observed: ready, although the collector is away (a
    // collector restart must not turn every agent NotReady).
    let (status, body) = eventually("ready without the collector", WAIT, || {
        let r = http_get(port, "/readyz");
        (r.0 == 200).then_some(r)
    });
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let mark = marker("metrics-spool");
    assert!(Command::new("/bin/true")
        .arg(&mark)
        .status()
        .unwrap()
        .success());
    eventually("batches spooled", WAIT, || {
        let m = http_get(port, "/metrics").1;
        (sample(&m, "spyglass_spool_batches")? > 0 && sample(&m, "spyglass_spool_bytes")? > 0)
            .then_some(())
    });
    assert_eq!(
        sample(
            &http_get(port, "/metrics").1,
            "spyglass_collector_connected"
        ),
        Some(0)
    );
    agent.stop();
}

/// Processes that exec with thousands of empty arguments: each exec event
/// carries them all, but the process table keeps under `[process]
/// max_bytes` by cutting what it keeps (the previous agent kept one String
/// per argument for every live and retained process, without bound).
#[test]
fn the_process_table_stays_under_its_bytes_under_an_argument_flood() {
    require_root();
    let _g = serial();
    let dir = scratch("table-bytes");
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "[process]\nmax_bytes = 1048576\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = start_agent(&[
        "--no-snapshot",
        "--metrics-listen",
        &listen,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let mark = marker("argv-flood");
    let empty = vec![""; 4000];
    // sleeping children: live entries, which the table may not drop
    let mut children: Vec<_> = (0..400)
        .map(|_| {
            // sh stays alive (two commands: no exec of the last one)
            // with the marker and the empty arguments as its $0 and $@
            Command::new("/bin/sh")
                .args(["-c", "sleep 30; :"])
                .arg(&mark)
                .args(&empty)
                .spawn()
                .unwrap()
        })
        .collect();
    let seen = eventually("400 marked execs", WAIT, || {
        let v = agent.matching(|e| e["kind"] == "exec" && argv_of(e).get(3) == Some(&mark));
        (v.len() == 400).then_some(v)
    });
    for e in &seen {
        assert_eq!(
            argv_of(e).len(),
            4004,
            "the exec event carries every argument"
        );
        assert!(e["process"].get("argv_truncated").is_none());
    }
    let body = eventually("the table's metrics", WAIT, || {
        let body = http_get(port, "/metrics").1;
        (sample(&body, "spyglass_process_argv_trimmed_total")? > 0).then_some(body)
    });
    let bytes = sample(&body, "spyglass_process_table_bytes").unwrap();
    assert!(
        bytes <= 1 << 20,
        "table bytes {bytes} over max_bytes\n{body}"
    );
    assert_eq!(
        sample(&body, "spyglass_process_table_evicted_total"),
        Some(0),
        "no live process was dropped: cutting arguments sufficed"
    );
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    agent.stop();
}
