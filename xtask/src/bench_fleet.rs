//! `cargo xtask bench --fleet`: a synthetic fleet (1,000 nodes x 100
//! containers; `--quick`: 50 x 100) published over the collector's real
//! gRPC ingest, then the fleet view's questions timed against its store
//! (tests/src/bin/spyglass-fleet-bench.rs does the work; this builds it,
//! runs it and keeps its report in bench-results/fleet.md).
use anyhow::{Context, Result};

use crate::{cargo, root, sh};

/// The report, also written to bench-results/fleet.md (fleet-quick.md).
pub fn run(quick: bool) -> Result<String> {
    sh(cargo().args([
        "build",
        "--release",
        "--package",
        "spyglass-e2e",
        "--bin",
        "spyglass-fleet-bench",
    ]))?;
    let bin = root().join("target/release/spyglass-fleet-bench");
    let mut cmd = std::process::Command::new(&bin);
    if quick {
        cmd.args(["--nodes", "50"]);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let (status, text) = crate::child::output_bounded(
        &mut child,
        std::time::Duration::from_secs(1200),
        "spyglass-fleet-bench",
    )?;
    anyhow::ensure!(
        status.success(),
        "spyglass-fleet-bench failed ({status}); its messages are above"
    );
    let report = format!("\nFleet view (`cargo xtask bench --fleet`):\n\n{}", text);
    let dir = root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(if quick { "fleet-quick.md" } else { "fleet.md" });
    std::fs::write(&file, report.trim_start())?;
    eprintln!("xtask bench --fleet: written to {}", file.display());
    Ok(report)
}
