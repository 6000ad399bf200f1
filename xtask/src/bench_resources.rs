//! The resource sampler's cost (issue 15): 200 containers under
//! containerd holding 25 processes each (5,000), and the agent run side
//! by side in one run, alternating on the same load: with the default
//! `settings.resource_sample_interval_ms` (2000) and with 600000
//! (sampling practically off). Each run is measured for a window after
//! its start-up settles: the agent's CPU (utime + stime of every thread,
//! /proc/PID/stat). The difference is the sampler's cost, in % of one
//! core (the target: under 1% at the default interval).
//!
//! Every container is removed afterwards, also when the bench fails.
//! `SPYGLASS_BENCH_AGENT=PATH` measures another agent binary.
use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench::RunningAgent;

const IMAGE: &str = "spyglass.test/busybox:1";
const NS: &str = "k8s.io";
/// Every container of the bench is named with this prefix.
const PREFIX: &str = "sg-bench-res-";
/// The intervals compared: the default, and practically off.
const INTERVALS: [u64; 2] = [2000, 600_000];

/// Sizes of one run.
pub struct Sizes {
    pub containers: usize,
    /// processes per container (its shell and `per - 1` sleeps)
    pub per: usize,
    /// time after an agent's start before measuring
    pub settle: Duration,
    /// measured window of each agent run
    pub window: Duration,
    /// runs of each interval (alternating)
    pub rounds: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                containers: 20,
                per: 25,
                settle: Duration::from_secs(5),
                window: Duration::from_secs(10),
                rounds: 1,
            }
        } else {
            Sizes {
                containers: 200,
                per: 25,
                settle: Duration::from_secs(15),
                window: Duration::from_secs(60),
                rounds: 2,
            }
        }
    }
}

/// One measured agent run.
struct Measure {
    interval_ms: u64,
    cpu_s: f64,
    window_s: f64,
    resources_events: u64,
    rss_kib: u64,
}

impl Measure {
    fn percent(&self) -> f64 {
        100.0 * self.cpu_s / self.window_s
    }
}

/// Start the load, measure, remove the load; the report as Markdown.
pub fn run(s: &Sizes) -> Result<String> {
    ensure_image()?;
    let fleet = Fleet::start(s)?;
    let procs = fleet.processes();
    eprintln!(
        "bench resources: {} containers, {procs} processes in them",
        fleet.ids.len()
    );
    if procs < s.containers * s.per {
        bail!(
            "only {procs} of {} container processes run (pid or memory limits?)",
            s.containers * s.per
        );
    }
    let dir = crate::root().join("bench-results/tmp");
    std::fs::create_dir_all(&dir)?;
    let mut runs = Vec::new();
    for round in 0..s.rounds {
        // alternate which interval goes first
        let mut order = INTERVALS;
        if round % 2 == 1 {
            order.reverse();
        }
        for interval in order {
            runs.push(measure(s, interval, &dir)?);
        }
    }
    let procs_after = fleet.processes();
    drop(fleet);
    Ok(report(s, procs, procs_after, &runs))
}

/// One agent run with `interval` ms sampling: CPU over the window.
fn measure(s: &Sizes, interval: u64, dir: &std::path::Path) -> Result<Measure> {
    let policy = dir.join(format!("resources-{interval}.yaml"));
    std::fs::write(
        &policy,
        // The same thresholds in both runs; at least one sample long at
        // 600000 ms (the policy refuses shorter).
        format!(
            "version: 1\nsettings:\n  resource_sample_interval_ms: {interval}\n  \
             cpu_runaway_seconds: 600\n  memory_near_limit_seconds: 600\n"
        ),
    )
    .with_context(|| format!("writing {}", policy.display()))?;
    let policy = policy.to_str().context("utf-8 path")?;
    // With the start-up snapshot, as deployed: it reads the 5,000
    // processes once, before the window.
    let agent = RunningAgent::start_with("{\"kind\":\"resources\"", "", &["--policy", policy])?;
    std::thread::sleep(s.settle);
    let (t0, c0, e0) = (Instant::now(), agent.cpu_ticks(), agent.marked());
    std::thread::sleep(s.window);
    let (c1, e1) = (agent.cpu_ticks(), agent.marked());
    let m = Measure {
        interval_ms: interval,
        cpu_s: (c1 - c0) as f64 / clock_ticks_per_s(),
        window_s: t0.elapsed().as_secs_f64(),
        resources_events: e1 - e0,
        rss_kib: agent.rss_kib(),
    };
    agent.stop();
    eprintln!(
        "bench resources: interval {interval} ms: {:.2} s CPU in {:.1} s ({:.2}% of one core)",
        m.cpu_s,
        m.window_s,
        m.percent()
    );
    Ok(m)
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

fn mean_percent(runs: &[Measure], interval: u64) -> f64 {
    let v: Vec<f64> = runs
        .iter()
        .filter(|m| m.interval_ms == interval)
        .map(Measure::percent)
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn report(s: &Sizes, procs: usize, procs_after: usize, runs: &[Measure]) -> String {
    let mut out = format!(
        "\nResource sampling cost: {} containers, {procs} processes in them \
         ({procs_after} at the end); each agent run measured for {} s after {} s \
         of start-up, the intervals alternating:\n\n\
         | run | resource_sample_interval_ms | agent CPU (s) | % of one core | resources events | RSS (KiB) |\n\
         |---:|---:|---:|---:|---:|---:|\n",
        s.containers,
        s.window.as_secs(),
        s.settle.as_secs(),
    );
    for (i, m) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} | {} |",
            i + 1,
            m.interval_ms,
            m.cpu_s,
            m.percent(),
            m.resources_events,
            m.rss_kib
        );
    }
    let (on, off) = (
        mean_percent(runs, INTERVALS[0]),
        mean_percent(runs, INTERVALS[1]),
    );
    let _ = writeln!(
        out,
        "\nMean: {on:.2}% of one core at {} ms, {off:.2}% at {} ms: sampling costs \
         {:+.2}% of one core (target: under 1%).",
        INTERVALS[0],
        INTERVALS[1],
        on - off
    );
    out
}

/// The test image in containerd, imported when missing.
fn ensure_image() -> Result<()> {
    let out = Command::new("ctr")
        .args(["-n", NS, "images", "ls", "-q"])
        .output()
        .context("running ctr (is containerd installed? `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "ctr images ls: {} (is containerd running? `cargo xtask setup`)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == IMAGE)
    {
        crate::images::import()?;
    }
    Ok(())
}

/// The bench's containers; every one is removed on drop.
struct Fleet {
    ids: Vec<String>,
}

impl Fleet {
    fn start(s: &Sizes) -> Result<Fleet> {
        // leftovers of an interrupted run
        remove_all(&listed()?);
        let mut fleet = Fleet { ids: Vec::new() };
        let script = format!(
            "for i in $(seq {}); do sleep 100000 & done; wait",
            s.per - 1
        );
        for i in 0..s.containers {
            let id = format!("{PREFIX}{i}");
            let out = Command::new("ctr")
                .args(["-n", NS, "run", "-d", IMAGE, &id, "/bin/sh", "-c", &script])
                .stdin(Stdio::null())
                .output()
                .context("running ctr")?;
            if !out.status.success() {
                bail!(
                    "ctr run {id}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            fleet.ids.push(id);
        }
        // every container's sleeps started
        let want = s.containers * s.per;
        for _ in 0..120 {
            if fleet.processes() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(fleet)
    }

    /// Processes in the bench's containers (from their cgroups).
    fn processes(&self) -> usize {
        let root = cgroup_root();
        self.ids
            .iter()
            .map(|id| {
                std::fs::read_to_string(format!("{root}/{NS}/{id}/cgroup.procs"))
                    .map_or(0, |t| t.lines().count())
            })
            .sum()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        remove_all(&self.ids);
        match listed() {
            Ok(left) if !left.is_empty() => {
                eprintln!("bench resources: containers left behind: {left:?}");
            }
            _ => eprintln!("bench resources: {} containers removed", self.ids.len()),
        }
    }
}

/// The cgroup v2 mount (hybrid hosts mount it at /sys/fs/cgroup/unified).
fn cgroup_root() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    }
}

/// The bench's containers containerd knows of.
fn listed() -> Result<Vec<String>> {
    let out = Command::new("ctr")
        .args(["-n", NS, "containers", "ls", "-q"])
        .output()
        .context("running ctr containers ls")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Kill every task, then delete tasks and containers (quietly: some may
/// be gone already).
fn remove_all(ids: &[String]) {
    let q = |args: &[&str]| {
        let _ = Command::new("ctr")
            .args(["-n", NS])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    for id in ids {
        q(&["task", "kill", "-s", "SIGKILL", id]);
    }
    for id in ids {
        q(&["task", "delete", "-f", id]);
        q(&["containers", "delete", id]);
    }
}

/// `cargo xtask bench --resources [--quick]`: print the report; the full
/// run also writes it to bench-results/resources.md.
pub fn main(quick: bool) -> Result<()> {
    let report = run(&Sizes::new(quick))?;
    print!("{report}");
    if quick {
        return Ok(());
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(crate::root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let path = crate::root().join("bench-results/resources.md");
    let text = format!(
        "# Resource sampling cost\n\n`cargo xtask bench --resources` at {} ({}), \
         kernel {}, {cpus} CPUs.\n{report}",
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["log", "-1", "--format=%cs"]),
        kernel.trim(),
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench resources: written to {}", path.display());
    Ok(())
}
