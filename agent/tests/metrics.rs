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
