//! The agent's memory under processes with many or long arguments (issue
//! 13): a process that execs in a loop with thousands of empty arguments,
//! and a node with 65,536 live processes of 4 KiB of arguments each. Both
//! load generators are separate processes (`xtask loadgen argv-exec` and
//! `xtask loadgen argv-live`); RSS is read from the agent's
//! /proc/PID/status. The DaemonSet's memory limit is 256 MiB.
//!
//! `SPYGLASS_BENCH_AGENT=PATH` measures another agent binary (an older
//! build, for a before/after figure).
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::bench::RunningAgent;

/// Sizes of one run.
pub struct Sizes {
    /// execs of `empty_args` empty arguments
    pub execs: u64,
    pub empty_args: usize,
    /// live processes of about 4 KiB of arguments
    pub live: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                execs: 500,
                empty_args: 4000,
                live: 2048,
            }
        } else {
            Sizes {
                execs: 5000,
                empty_args: 4000,
                live: 65_536,
            }
        }
    }
}

/// Both measurements, as a Markdown section.
pub fn run(sizes: &Sizes) -> Result<String> {
    let flood = argv_flood(sizes)?;
    let live = live_processes(sizes.live)?;
    Ok(format!(
        "\nArgument memory (agent RSS, KiB; the DaemonSet's limit is 262144):\n\n\
         | load | RSS before | RSS after | peak (VmHWM) | growth | events seen |\n\
         |---|---:|---:|---:|---:|---:|\n{flood}{live}"
    ))
}

fn row(name: &str, before: u64, a: &RunningAgent, seen: u64) -> String {
    let (after, peak) = (a.rss_kib(), a.hwm_kib());
    format!(
        "| {name} | {before} | {after} | {peak} | {:+} | {seen} |\n",
        i128::from(after) - i128::from(before)
    )
}

/// `execs` execs of /bin/true with `empty_args` empty arguments each.
fn argv_flood(s: &Sizes) -> Result<String> {
    let agent = RunningAgent::start("{\"kind\":\"exec\"", "spyglass-argv-flood")?;
    std::thread::sleep(Duration::from_secs(2));
    let before = agent.rss_kib();
    crate::bench::run_loadgen(&[
        "argv-exec".into(),
        s.execs.to_string(),
        s.empty_args.to_string(),
    ])?;
    std::thread::sleep(Duration::from_secs(3));
    let seen = agent.marked();
    let out = row(
        &format!("{} execs of {} empty arguments", s.execs, s.empty_args),
        before,
        &agent,
        seen,
    );
    agent.stop();
    Ok(out)
}

/// `n` live processes of about 4 KiB of arguments, held while the agent's
/// RSS is read. pid_max is raised for the run when it is too low, and put
/// back after.
fn live_processes(n: usize) -> Result<String> {
    let _pids = PidMax::at_least(n as u64 * 2)?;
    let agent = RunningAgent::start("{\"kind\":\"exec\"", "spyglass-argv-live")?;
    std::thread::sleep(Duration::from_secs(2));
    let before = agent.rss_kib();
    let mut gen = Command::new(std::env::current_exe()?)
        .args(["loadgen", "argv-live", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the load generator")?;
    let mut ready = String::new();
    BufReader::new(gen.stdout.take().expect("piped")).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        let _ = gen.kill();
        bail!("loadgen argv-live: {ready:?} (fork or pid limits?)");
    }
    // let the agent catch up with the execs
    let mut last = 0;
    for _ in 0..120 {
        std::thread::sleep(Duration::from_secs(1));
        let seen = agent.marked();
        if seen >= n as u64 || (seen == last && seen > 0) {
            break;
        }
        last = seen;
    }
    let seen = agent.marked();
    let mut out = row(
        &format!("{n} live processes, 4 KiB of arguments each"),
        before,
        &agent,
        seen,
    );
    agent.stop();
    // an agent (re)started on such a node reads them all from /proc
    let agent = RunningAgent::start_with("{\"kind\":\"exec\"", "spyglass-argv-live", &[])?;
    std::thread::sleep(Duration::from_secs(1));
    let seen = agent.marked();
    out.push_str(&row(
        &format!("agent started with {n} such processes running (snapshot)"),
        0,
        &agent,
        seen,
    ));
    drop(gen.stdin.take());
    let _ = gen.wait();
    agent.stop();
    Ok(out)
}

/// kernel.pid_max raised for a run, restored on drop.
struct PidMax(Option<String>);

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl PidMax {
    fn at_least(n: u64) -> Result<PidMax> {
        let old = std::fs::read_to_string(PID_MAX).context("reading kernel.pid_max")?;
        if old.trim().parse::<u64>().unwrap_or(0) >= n {
            return Ok(PidMax(None));
        }
        std::fs::write(PID_MAX, n.max(32_768).to_string()).context("raising kernel.pid_max")?;
        Ok(PidMax(Some(old)))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(PID_MAX, old.trim());
        }
    }
}

/// loadgen `argv-exec N ARGS`: N execs of /bin/true with ARGS empty
/// arguments and a marker.
pub fn argv_exec(n: u64, empty: usize) -> Result<()> {
    let args = vec![""; empty];
    for _ in 0..n {
        Command::new("/bin/true")
            .arg("spyglass-argv-flood")
            .args(&args)
            .status()?;
    }
    Ok(())
}

/// loadgen `argv-live N`: N sleeping busybox processes whose argv[0] is
/// ~4 KiB long (busybox picks its applet from the last path segment);
/// prints `ready` once all run, and kills them when stdin closes.
pub fn argv_live(n: usize) -> Result<()> {
    let name = format!("{}/spyglass-argv-live/sleep", "x".repeat(4000));
    let mut children = Vec::with_capacity(n);
    let mut result = Ok(());
    for _ in 0..n {
        match Command::new("/bin/busybox")
            .arg0(&name)
            .arg("3600")
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => children.push(c),
            Err(e) => {
                result = Err(e).context(format!("spawning process {}", children.len() + 1));
                break;
            }
        }
    }
    if result.is_ok() {
        println!("ready");
        std::io::stdout().flush()?;
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    }
    for c in &mut children {
        let _ = c.kill();
    }
    for mut c in children {
        let _ = c.wait();
    }
    result
}
