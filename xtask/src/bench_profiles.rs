//! `cargo xtask bench --profiles`: the bytes each export profile sends to
//! the SIEM per exec and per connect, on one workload, in one run.
//!
//! For each profile an agent streams to a collector writing JSON lines
//! (what a SIEM ingests). Two workloads run, each in a cgroup of its own
//! so its lines can be told apart by `cgroup_id`: an exec storm (a
//! process running `/bin/true` N times: fork, exec, exit each) and a
//! connect storm (N loopback TCP connects to one listener, accepted by
//! the same process). The agent is stopped (it sends every aggregated
//! repeat at stop) and the collector's file is read: the workload's bytes
//! and lines per operation are reported, with the connects the lines
//! account for (an aggregated line stands for `aggregate.count`) and
//! every loss the run reports.
use std::{
    net::TcpListener,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::bench::{lost_in, start_collector, RunningAgent};

const PROFILES: [&str; 3] = ["full", "security", "findings"];

/// One workload's share of the collector's file.
#[derive(Default, Debug)]
struct Share {
    bytes: u64,
    lines: u64,
    /// Connect events, an aggregated one counting for its repeats.
    connects: u64,
}

/// One profile's figures.
struct Measured {
    profile: &'static str,
    exec: Share,
    connect: Share,
    lost: u64,
}

/// A cgroup the bench creates and removes.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Result<Self> {
        let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup"
        };
        let p = Path::new(root).join(name);
        if !p.exists() {
            std::fs::create_dir(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
        }
        Ok(Cgroup(p))
    }

    fn id(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.0)?.ino())
    }

    /// Run `xtask loadgen ARGS` inside it (the shell moves itself in,
    /// then execs the generator).
    fn run_loadgen(&self, args: &[&str]) -> Result<()> {
        let me = std::env::current_exe()?;
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} loadgen {}",
            self.0.display(),
            me.display(),
            args.join(" ")
        );
        // its figure (ns per operation) is not this bench's
        let st = Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !st.success() {
            bail!("loadgen {args:?} in {} failed: {st}", self.0.display());
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The lines of `text` from cgroup `id`.
fn share(text: &str, id: u64) -> Share {
    let needle = format!("\"cgroup_id\":{id},");
    let mut s = Share::default();
    for line in text.lines().filter(|l| l.contains(&needle)) {
        s.bytes += line.len() as u64 + 1;
        s.lines += 1;
        if line.starts_with("{\"kind\":\"connect\"") {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            s.connects += v["aggregate"]["count"].as_u64().unwrap_or(1);
        }
    }
    s
}

fn measure(profile: &'static str, n: u64, dir: &Path) -> Result<Measured> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = dir.join(format!("{profile}.jsonl"));
    let mut collector = start_collector(port, &out)?;
    let spool = dir.join(format!("spool-{profile}"));
    let url = format!("http://127.0.0.1:{port}");
    let agent = RunningAgent::start_with(
        "{\"kind\":\"exec\"",
        "spyglass-profile-bench",
        &[
            "--no-snapshot",
            "--collector",
            &url,
            "--spool-dir",
            spool.to_str().context("spool path")?,
            "--profile",
            profile,
        ],
    )?;
    let exec_cg = Cgroup::new("spyglass-bench-profile-exec")?;
    let connect_cg = Cgroup::new("spyglass-bench-profile-connect")?;
    let n_s = n.to_string();
    exec_cg.run_loadgen(&["exec", &n_s, "spyglass-profile-bench"])?;
    connect_cg.run_loadgen(&["connect", &n_s])?;
    // the last records reach the agent, then the stop drains everything
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    crate::child::wait_bounded(&mut collector, Duration::from_secs(60), "collector")?;
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("reading the collector's output {}", out.display()))?;
    Ok(Measured {
        profile,
        exec: share(&text, exec_cg.id()?),
        connect: share(&text, connect_cg.id()?),
        lost: text.lines().map(lost_in).sum(),
    })
}

fn report(n: u64, rows: &[Measured]) -> String {
    let full = &rows[0];
    let per = |b: u64| b as f64 / n as f64;
    let mut s = format!(
        "## Bytes to the SIEM per operation, by export profile\n\n\
         {n} execs of /bin/true (fork, exec, exit each) and {n} loopback TCP \
         connects to one listener (connect and accept each), each workload in a \
         cgroup of its own; the collector's JSON lines of each workload, counted \
         after the agent's stop (which sends the aggregated repeats). \
         Connects accounted: the workload's connect events, an aggregated one \
         counting for its repeats (`aggregate.count`). Lost: what the run's \
         `loss` events report lost.\n\n\
         | profile | bytes/exec | lines/exec | bytes/connect | lines/connect | connects accounted | vs full (exec, connect) | lost |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for r in rows {
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                "-".to_owned()
            } else {
                format!("{:.3}", a as f64 / b as f64)
            }
        };
        s += &format!(
            "| {} | {:.0} | {:.2} | {:.1} | {:.3} | {}/{n} | {}, {} | {} |\n",
            r.profile,
            per(r.exec.bytes),
            per(r.exec.lines),
            per(r.connect.bytes),
            per(r.connect.lines),
            r.connect.connects,
            ratio(r.exec.bytes, full.exec.bytes),
            ratio(r.connect.bytes, full.connect.bytes),
            r.lost,
        );
    }
    s
}

pub fn run(quick: bool) -> Result<String> {
    let n = if quick { 300 } else { 2000 };
    let dir = std::env::temp_dir().join(format!("spyglass-bench-profiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    for p in PROFILES {
        eprintln!("profile {p}: {n} execs, {n} connects");
        rows.push(measure(p, n, &dir)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report(n, &rows))
}
