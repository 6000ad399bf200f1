//! `cargo xtask bench --compare`: Spyglass against what users would pick
//! instead, on the same workloads, in one run.
//!
//! Configurations: no tracer; Spyglass (agent streaming to a collector
//! that writes every event to a file); auditd with execve and connect
//! rules (writing its log); a bpftrace script tracing the same exec and
//! connect events (writing its output). Each round runs every workload
//! under every configuration, in an order that rotates between rounds, so
//! slow drift of the machine spreads over all of them. Load generators are
//! separate processes (`xtask loadgen`).
//!
//! Per configuration and workload: median ns per operation and its spread
//! over rounds, the tracer's own CPU per event (its processes, and for
//! auditd the kauditd kernel thread), completeness (events the tracer
//! reported for marked operations, against operations performed), and
//! peak RSS. Then a zero-loss ramp for Spyglass. Nothing here asserts on
//! time: it is a measuring tool, and its results go to `bench-results/`.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{agent_bin, bench, root};

/// Loopback port the connect workloads use, so every tracer's connect
/// records can be picked out.
const CONNECT_PORT: u16 = 47_998;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Baseline,
    Spyglass,
    Auditd,
    Bpftrace,
}

impl Config {
    const ALL: [Config; 4] = [
        Config::Baseline,
        Config::Spyglass,
        Config::Auditd,
        Config::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "none",
            Config::Spyglass => "Spyglass + collector",
            Config::Auditd => "auditd (execve, connect rules)",
            Config::Bpftrace => "bpftrace (exec, connect script)",
        }
    }
}

/// What each workload does per operation, and how a tracer's record of
/// one shows up in its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Exec,
    Connect,
    Syscall,
    Mixed,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Exec,
        Workload::Connect,
        Workload::Syscall,
        Workload::Mixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Exec => "exec storm (fork+exec /bin/true)",
            Workload::Connect => "loopback TCP connect storm",
            Workload::Syscall => "unrelated syscalls (getppid)",
            Workload::Mixed => "mixed (1 exec + 4 connects + 2000 getppid)",
        }
    }

    /// Operations per run.
    fn ops(self, size: Size) -> u64 {
        let base = match self {
            Workload::Exec => 1_000,
            Workload::Connect => 2_000,
            Workload::Syscall => 2_000_000,
            Workload::Mixed => 300,
        };
        match size {
            Size::Full => base,
            Size::Tiny => (base / 50).max(5),
        }
    }

    /// Loopback port of this workload's connects (one per workload, so
    /// records are counted per workload even when a tracer reports late).
    fn port(self) -> u16 {
        CONNECT_PORT + self as u16
    }

    fn loadgen_args(self, n: u64, marker: &str) -> Vec<String> {
        let n = n.to_string();
        let port = self.port().to_string();
        match self {
            Workload::Exec => vec!["exec".into(), n, marker.into()],
            Workload::Connect => vec!["connect".into(), n, port],
            Workload::Syscall => vec!["syscall".into(), n],
            Workload::Mixed => vec!["mixed".into(), n, marker.into(), port],
        }
    }

    /// Traced events the workload causes per operation (exec and connect
    /// records), for completeness.
    fn traced_per_op(self) -> (u64, u64) {
        match self {
            Workload::Exec => (1, 0),
            Workload::Connect => (0, 1),
            Workload::Syscall => (0, 0),
            Workload::Mixed => (1, 4),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Full,
    Tiny,
}

/// A running tracer: its processes and where it writes what it saw.
struct Tracer {
    config: Config,
    children: Vec<Child>,
    /// Extra pids whose CPU counts (kauditd).
    extra_pids: Vec<u32>,
    output: PathBuf,
    /// Byte offset of `output` when the tracer started (auditd appends).
    start_offset: u64,
    stopped: bool,
}

/// CPU time of every thread of `pid`, ns (`schedstat`: ns resolution,
/// where `stat`'s clock ticks are 10 ms).
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |rd| {
        rd.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    })
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pids_named(name: &str) -> Vec<u32> {
    Command::new("pgrep")
        .args(["-x", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for_line(path: &Path, needle: &str, what: &str) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{what} did not become ready within 60 s ({})",
        path.display()
    )
}

fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// bpftrace: exec with its arguments (`sys_enter_execve`, the usual
/// bpftrace way to see argv) and TCP connects (`inet_sock_set_state` into
/// SYN_SENT, with the destination port).
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_execve { printf("exec %d %s ", pid, comm); join(args->argv); }
tracepoint:sock:inet_sock_set_state /args->newstate == 2/ { printf("connect %d %s %d\n", pid, comm, args->dport); }
"#;

impl Tracer {
    fn start(config: Config, dir: &Path) -> Result<Option<Tracer>> {
        std::fs::create_dir_all(dir)?;
        match config {
            Config::Baseline => Ok(None),
            Config::Spyglass => {
                let out = dir.join("collector.jsonl");
                let _ = std::fs::remove_file(&out);
                let spool = dir.join("spool");
                let _ = std::fs::remove_dir_all(&spool);
                let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let collector = bench::start_collector(port, &out)?;
                let agent = Command::new(agent_bin())
                    .args(["run", "--no-snapshot", "--format", "none", "--collector"])
                    .arg(format!("http://127.0.0.1:{port}"))
                    .arg("--spool-dir")
                    .arg(&spool)
                    .env("RUST_LOG", "error")
                    .spawn()
                    .context("starting the agent")?;
                let t = Tracer {
                    config,
                    children: vec![agent, collector],
                    extra_pids: Vec::new(),
                    output: out.clone(),
                    start_offset: 0,
                    stopped: false,
                };
                wait_for_line(&out, "\"state\":\"started\"", "the agent")?;
                Ok(Some(t))
            }
            Config::Auditd => {
                let log = dir.join("audit.log");
                let _ = std::fs::remove_file(&log);
                std::fs::write(
                    dir.join("auditd.conf"),
                    format!(
                        "log_file = {}\nlog_format = ENRICHED\nflush = INCREMENTAL_ASYNC\nfreq = 50\n\
                         max_log_file = 4096\nmax_log_file_action = IGNORE\nspace_left = 2\n\
                         space_left_action = IGNORE\nadmin_space_left = 1\nadmin_space_left_action = IGNORE\n\
                         disk_full_action = IGNORE\ndisk_error_action = IGNORE\n",
                        log.display()
                    ),
                )?;
                let _ = Command::new("auditctl").arg("-D").output();
                let auditd = Command::new("auditd")
                    .args(["-n", "-c"])
                    .arg(dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting auditd (Debian package auditd)")?;
                let mut t = Tracer {
                    config,
                    children: vec![auditd],
                    extra_pids: pids_named("kauditd"),
                    output: log.clone(),
                    start_offset: 0,
                    stopped: false,
                };
                std::thread::sleep(Duration::from_millis(500));
                quiet(Command::new("auditctl").args(["-b", "65536"]))?;
                for sc in ["execve", "connect"] {
                    quiet(Command::new("auditctl").args([
                        "-a",
                        "always,exit",
                        "-F",
                        "arch=b64",
                        "-S",
                        sc,
                        "-k",
                        "spyglass-bench",
                    ]))?;
                }
                quiet(Command::new("auditctl").args(["-e", "1"]))?;
                t.start_offset = std::fs::metadata(&log).map_or(0, |m| m.len());
                Ok(Some(t))
            }
            Config::Bpftrace => {
                let out = dir.join("bpftrace.txt");
                let _ = std::fs::remove_file(&out);
                let child = Command::new("bpftrace")
                    .args(["-B", "line", "-o"])
                    .arg(&out)
                    .args(["-e", BPFTRACE_SCRIPT])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace (Debian package bpftrace)")?;
                let t = Tracer {
                    config,
                    children: vec![child],
                    extra_pids: Vec::new(),
                    output: out.clone(),
                    start_offset: 0,
                    stopped: false,
                };
                wait_for_line(&out, "Attaching", "bpftrace")?;
                std::thread::sleep(Duration::from_millis(300));
                Ok(Some(t))
            }
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .map(std::process::Child::id)
            .chain(self.extra_pids.iter().copied())
            .collect()
    }

    /// The first process's CPU and peak RSS (Spyglass: the agent alone).
    fn main_cpu_ns(&self) -> u64 {
        self.children.first().map_or(0, |c| cpu_ns(c.id()))
    }

    fn main_peak_rss_kib(&self) -> u64 {
        self.children
            .first()
            .map_or(0, |c| proc_status_kib(c.id(), "VmHWM:"))
    }

    fn cpu_ns(&self) -> u64 {
        self.pids().into_iter().map(cpu_ns).sum()
    }

    /// Peak RSS of the tracer's own processes (not kernel threads).
    fn peak_rss_kib(&self) -> u64 {
        self.children
            .iter()
            .map(|c| proc_status_kib(c.id(), "VmHWM:"))
            .sum()
    }

    fn text(&self) -> String {
        let bytes = std::fs::read(&self.output).unwrap_or_default();
        let from = (self.start_offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// Wait until the output stops growing (the tracer drained).
    fn settle(&self) {
        let size = || std::fs::metadata(&self.output).map_or(0, |m| m.len());
        let t = Instant::now();
        let mut last = size();
        let mut still = 0;
        while t.elapsed() < Duration::from_secs(30) && still < 6 {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
    }

    /// (exec records with `marker` in argv, connect records to
    /// CONNECT_PORT, records lost as the tracer itself reports).
    fn count(&self, marker: &str, port: u16) -> (u64, u64, u64) {
        let text = self.text();
        let connect_port = port.to_string();
        let mut exec = 0;
        let mut connect = 0;
        let mut lost = 0;
        match self.config {
            Config::Baseline => {}
            Config::Spyglass => {
                let remote = format!("\"remote\":{{\"addr\":\"127.0.0.1\",\"port\":{port}}}");
                // the workload's own execs, not the load generator's
                let argv = format!("\"argv\":[\"/bin/true\",\"{marker}\"]");
                for l in text.lines() {
                    if l.contains("\"kind\":\"exec\"") && l.contains(&argv) {
                        exec += 1;
                    } else if l.contains("\"kind\":\"connect\"") && l.contains(&remote) {
                        connect += 1;
                    } else if l.contains("\"kind\":\"loss\"") {
                        lost += bench::lost_in(l);
                    }
                }
            }
            Config::Auditd => {
                // EXECVE records carry the arguments; SOCKADDR records the
                // destination: family 2, port, 127.0.0.1, in hex.
                let saddr = format!("saddr=0200{port:04X}7F000001");
                for l in text.lines() {
                    if l.starts_with("type=EXECVE")
                        && l.contains("a0=\"/bin/true\"")
                        && l.contains(&format!("a1=\"{marker}\""))
                    {
                        exec += 1;
                    } else if l.starts_with("type=SOCKADDR") && l.contains(&saddr) {
                        connect += 1;
                    }
                }
                lost = auditd_lost();
            }
            Config::Bpftrace => {
                for l in text.lines() {
                    if l.starts_with("exec ") && l.ends_with(&format!(" /bin/true {marker}")) {
                        exec += 1;
                    } else if l.starts_with("connect ") && l.ends_with(&format!(" {connect_port}"))
                    {
                        connect += 1;
                    } else if let Some(n) = l.strip_prefix("Lost ") {
                        lost += n
                            .split_whitespace()
                            .next()
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
            }
        }
        (exec, connect, lost)
    }

    /// Stop, in order (the agent drains into the collector before the
    /// collector stops); the output stays readable.
    /// SIGTERM to each process, in order (the agent before its
    /// collector), and a bounded wait: a tracer that does not stop within
    /// [`STOP_LIMIT`] is described, killed, and fails the run.
    fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self.config == Config::Auditd {
            let _ = Command::new("auditctl").arg("-D").output();
            let _ = Command::new("auditctl").args(["-e", "0"]).output();
        }
        let mut first_error = None;
        for c in &mut self.children {
            // SAFETY: signalling our own children.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let what = format!("{:?} tracer process", self.config);
            if let Err(e) = crate::child::wait_bounded(c, STOP_LIMIT, &what) {
                eprintln!("xtask bench --compare: {e:#}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// How long a tracer may take to stop after SIGTERM (the agent's own
/// delivery grace is 3 s).
const STOP_LIMIT: Duration = Duration::from_secs(60);

impl Drop for Tracer {
    /// An error mid-run must not leave audit rules or tracers behind.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Records the kernel's audit queue dropped so far (`auditctl -s`: lost).
fn auditd_lost() -> u64 {
    Command::new("auditctl").arg("-s").output().map_or(0, |o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("lost "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// One cell of the table.
#[derive(Default, Clone)]
struct Cell {
    ns_per_op: Vec<f64>,
    cpu_ns: u64,
    events: u64,
    expected: u64,
    lost: u64,
    peak_rss_kib: u64,
    /// Spyglass: the agent alone (the rest is the collector).
    agent_cpu_ns: u64,
    agent_peak_rss_kib: u64,
}

fn median(v: &[f64]) -> f64 {
    bench::median(&mut v.to_vec())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Highest sustained event rate with zero loss at every stage (kernel,
/// agent, collector), stepping up: UDP sends from fresh sockets, two
/// events each (bind, send).
struct RampRow {
    target: u64,
    secs: u64,
    achieved: f64,
    sent: u64,
    seen: u64,
    lost: u64,
    cpu_us_per_event: f64,
    agent_cpu_us_per_event: f64,
    rss_mib: f64,
    agent_rss_mib: f64,
}

/// Sends per second one load generator process is asked for at most;
/// faster rates are split over several processes (up to the CPU count).
const SENDS_PER_SENDER: u64 = 40_000;

fn senders_for(sends_per_sec: u64) -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    sends_per_sec.div_ceil(SENDS_PER_SENDER).clamp(1, cpus)
}

/// `sends_per_sec` UDP sends from fresh sockets for `secs` to `port`,
/// split over several load generator processes run side by side.
fn udp_load(sends_per_sec: u64, secs: u64, port: u16) -> Result<()> {
    let n = senders_for(sends_per_sec);
    let mut children = Vec::new();
    for k in 0..n {
        // the remainder goes to the first sender
        let share = sends_per_sec / n + if k == 0 { sends_per_sec % n } else { 0 };
        children.push(
            Command::new(std::env::current_exe()?)
                .args(["loadgen", "udp"])
                .args([share.to_string(), secs.to_string(), port.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .context("starting a load generator")?,
        );
    }
    for mut c in children {
        let limit = Duration::from_secs(secs + 120);
        let status = crate::child::wait_bounded(&mut c, limit, "a UDP load generator")?;
        if !status.success() {
            bail!("a UDP load generator failed ({status})");
        }
    }
    Ok(())
}

/// The load generators' own ceiling, no tracer running: events/s (two
/// per send) they reach when asked for more than they can do.
fn generator_ceiling(secs: u64) -> Result<(f64, u64)> {
    let ask = 400_000;
    let t = Instant::now();
    udp_load(ask, secs, 47_090)?;
    Ok((
        (ask * secs * 2) as f64 / t.elapsed().as_secs_f64(),
        senders_for(ask),
    ))
}

fn ramp(size: Size, dir: &Path) -> Result<(Vec<RampRow>, Option<u64>)> {
    let (steps, secs, sustain): (&[u64], u64, u64) = match size {
        Size::Full => (
            &[20_000, 50_000, 100_000, 150_000, 200_000, 260_000],
            10,
            60,
        ),
        Size::Tiny => (&[2_000], 1, 0),
    };
    let mut rows = Vec::new();
    let mut best = None;
    for (i, &events_per_sec) in steps.iter().enumerate() {
        let row = ramp_step(dir, i, events_per_sec, secs)?;
        let clean = row.seen >= row.sent && row.lost == 0;
        rows.push(row);
        if !clean {
            break;
        }
        // the rate actually sustained (the load generator may fall short)
        best = Some(events_per_sec.min(rows.last().map_or(0, |r| r.achieved as u64)));
    }
    // then the highest clean rate up to 100k events/s, held for a minute
    if let Some(rate) = best.map(|b| b.min(100_000)).filter(|_| sustain > 0) {
        rows.push(ramp_step(dir, steps.len(), rate, sustain)?);
    }
    Ok((rows, best))
}

fn ramp_step(dir: &Path, i: usize, events_per_sec: u64, secs: u64) -> Result<RampRow> {
    let mut tracer =
        Tracer::start(Config::Spyglass, &dir.join(format!("ramp-{i}")))?.expect("spyglass runs");
    let dport = 47_100 + i as u16;
    let ops = events_per_sec / 2;
    let c0 = tracer.cpu_ns();
    let a0 = tracer.main_cpu_ns();
    let t = Instant::now();
    udp_load(ops, secs, dport)?;
    let achieved = (ops * secs * 2) as f64 / t.elapsed().as_secs_f64();
    tracer.settle();
    let cpu = tracer.cpu_ns().saturating_sub(c0);
    let agent_cpu = tracer.main_cpu_ns().saturating_sub(a0);
    let rss_mib = tracer.peak_rss_kib() as f64 / 1024.0;
    let agent_rss_mib = tracer.main_peak_rss_kib() as f64 / 1024.0;
    // what the agent delivers on its way out counts too
    tracer.stop()?;
    let text = tracer.text();
    let marker = format!("\"remote\":{{\"addr\":\"127.0.0.1\",\"port\":{dport}}}");
    let seen = text.lines().filter(|l| l.contains(&marker)).count() as u64;
    let lost: u64 = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"loss\""))
        .map(bench::lost_in)
        .sum();
    Ok(RampRow {
        target: events_per_sec,
        secs,
        achieved,
        sent: ops * secs,
        seen,
        lost,
        cpu_us_per_event: cpu as f64 / 1e3 / (2 * seen.max(1)) as f64,
        agent_cpu_us_per_event: agent_cpu as f64 / 1e3 / (2 * seen.max(1)) as f64,
        rss_mib,
        agent_rss_mib,
    })
}

/// `cargo xtask bench --compare [--tiny]`.
pub fn run(size: Size) -> Result<()> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the comparison loads eBPF programs and audit rules: run it as root");
    }
    for tool in ["auditd", "auditctl", "bpftrace"] {
        if !have(tool) {
            bail!("{tool} is missing: run `cargo xtask setup` (Debian packages auditd, bpftrace)");
        }
    }
    let dir = root().join("target/bench-compare");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rounds = match size {
        Size::Full => 3,
        Size::Tiny => 1,
    };
    let mut cells: Vec<Vec<Cell>> =
        vec![vec![Cell::default(); Config::ALL.len()]; Workload::ALL.len()];
    let t0 = Instant::now();
    for round in 0..rounds {
        for (ci, _) in Config::ALL.iter().enumerate() {
            // rotate the configuration order between rounds
            let ci = (ci + round) % Config::ALL.len();
            let config = Config::ALL[ci];
            eprintln!(
                "xtask bench --compare: round {}/{rounds}, {config:?} ({:.0} s)",
                round + 1,
                t0.elapsed().as_secs_f64()
            );
            let mut tracer = Tracer::start(config, &dir.join(format!("r{round}-{ci}")))?;
            let mut done = Vec::new();
            for (wi, w) in Workload::ALL.iter().enumerate() {
                let marker = format!("sgcmp{round}{ci}{wi}x{}", std::process::id());
                let n = w.ops(size);
                let c0 = tracer.as_ref().map_or(0, Tracer::cpu_ns);
                let a0 = tracer.as_ref().map_or(0, Tracer::main_cpu_ns);
                let (_, _, l0) = tracer
                    .as_ref()
                    .map(|t| t.count(&marker, w.port()))
                    .unwrap_or_default();
                let ns = bench::run_loadgen(&w.loadgen_args(n, &marker))?;
                let cell = &mut cells[wi][ci];
                cell.ns_per_op.push(ns);
                if let Some(t) = &tracer {
                    t.settle();
                    let (_, _, l) = t.count(&marker, w.port());
                    let (pe, pk) = w.traced_per_op();
                    cell.expected += n * (pe + pk);
                    cell.lost += l.saturating_sub(l0);
                    cell.cpu_ns += t.cpu_ns().saturating_sub(c0);
                    cell.peak_rss_kib = cell.peak_rss_kib.max(t.peak_rss_kib());
                    cell.agent_cpu_ns += t.main_cpu_ns().saturating_sub(a0);
                    cell.agent_peak_rss_kib = cell.agent_peak_rss_kib.max(t.main_peak_rss_kib());
                }
                done.push((wi, *w, marker));
            }
            // Completeness once the tracer has stopped and flushed (bpftrace
            // holds some records until more arrive or it exits).
            if let Some(t) = &mut tracer {
                t.stop()?;
                for (wi, w, marker) in done {
                    let (e, k, _) = t.count(&marker, w.port());
                    cells[wi][ci].events += e + k;
                }
            }
        }
        eprintln!(
            "xtask bench --compare: round {}/{rounds} done ({:.0} s)",
            round + 1,
            t0.elapsed().as_secs_f64()
        );
    }
    let (ramp_rows, best) = ramp(size, &dir)?;
    let ceiling = generator_ceiling(if size == Size::Full { 5 } else { 1 })?;
    let report = report(&cells, rounds, &ramp_rows, best, ceiling);
    let svg = chart(&cells);
    print!("{report}");
    let out = root().join("bench-results");
    std::fs::create_dir_all(&out)?;
    let (md, img) = match size {
        Size::Full => ("compare.md", "compare.svg"),
        Size::Tiny => ("compare-tiny.md", "compare-tiny.svg"),
    };
    std::fs::write(out.join(md), &report)?;
    std::fs::write(out.join(img), svg)?;
    eprintln!(
        "xtask bench --compare: written to {} and {}",
        out.join(md).display(),
        out.join(img).display()
    );
    Ok(())
}

fn added(cells: &[Cell], ci: usize) -> f64 {
    let base = median(&cells[0].ns_per_op);
    100.0 * (median(&cells[ci].ns_per_op) - base) / base
}

fn report(
    cells: &[Vec<Cell>],
    rounds: usize,
    ramp_rows: &[RampRow],
    best: Option<u64>,
    (ceiling, senders): (f64, u64),
) -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut s = format!(
        "# Spyglass vs auditd vs bpftrace\n\n{date}, {cpus} vCPU, kernel {}; {rounds} round(s), configurations rotated between rounds; medians over rounds.\n\n",
        machine.trim()
    );
    s.push_str("| workload | tracer | ns/op | added | spread ns | tracer CPU us per traced op | events reported / expected | lost (tracer's own count) | peak RSS MiB |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (wi, w) in Workload::ALL.iter().enumerate() {
        for (ci, c) in Config::ALL.iter().enumerate() {
            let cell = &cells[wi][ci];
            let lo = cell.ns_per_op.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = cell.ns_per_op.iter().copied().fold(0.0, f64::max);
            let traced = *c != Config::Baseline;
            let cpu = if traced && cell.events > 0 {
                let all = cell.cpu_ns as f64 / 1e3 / cell.events as f64;
                if *c == Config::Spyglass {
                    let agent = cell.agent_cpu_ns as f64 / 1e3 / cell.events as f64;
                    format!("{all:.1} (agent {agent:.1})")
                } else {
                    format!("{all:.1}")
                }
            } else {
                "-".into()
            };
            let complete = if traced && cell.expected > 0 {
                format!(
                    "{}/{} ({:.1}%)",
                    cell.events,
                    cell.expected,
                    100.0 * cell.events as f64 / cell.expected as f64
                )
            } else {
                "-".into()
            };
            s.push_str(&format!(
                "| {} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} |\n",
                w.name(),
                c.name(),
                median(&cell.ns_per_op),
                if ci == 0 {
                    "-".into()
                } else {
                    format!("{:+.1}%", added(&cells[wi], ci))
                },
                hi - lo,
                cpu,
                complete,
                if traced {
                    cell.lost.to_string()
                } else {
                    "-".into()
                },
                if traced {
                    if *c == Config::Spyglass {
                        format!(
                            "{:.1} (agent {:.1})",
                            cell.peak_rss_kib as f64 / 1024.0,
                            cell.agent_peak_rss_kib as f64 / 1024.0
                        )
                    } else {
                        format!("{:.1}", cell.peak_rss_kib as f64 / 1024.0)
                    }
                } else {
                    "-".into()
                },
            ));
        }
    }
    s.push_str("\nTracer CPU per traced operation (an exec or a connect the workload made): CPU time (schedstat) of the tracer's processes (Spyglass: agent and collector; auditd: auditd and the kauditd kernel thread; bpftrace: bpftrace) during the workload, over the traced operations it reported. Spyglass reports more than one event per exec (fork, exec, exit), so this is its cost per exec, all events included. The syscall workload traces nothing, so its per-event CPU is not defined; its `added` column is what each tracer costs code that does none of the traced operations.\n");
    s.push_str("\n## Zero-loss ramp (Spyglass, collector attached)\n\nUDP sends from fresh sockets (a bind and a send: two events each) to a loopback port, paced by the load generator; loss at every stage: kernel and agent loss records, and events missing at the collector.\n\n| target events/s | seconds | achieved events/s | sends | sends at the collector | loss records | CPU us/event: agent + collector (agent) | peak RSS MiB: agent + collector (agent) |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in ramp_rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.2} ({:.2}) | {:.1} ({:.1}) |\n",
            r.target,
            r.secs,
            r.achieved,
            r.sent,
            r.seen,
            r.lost,
            r.cpu_us_per_event,
            r.agent_cpu_us_per_event,
            r.rss_mib,
            r.agent_rss_mib
        ));
    }
    s.push_str(&format!(
        "\nHighest rate with zero loss at every stage: {}\n",
        best.map_or_else(|| "none of the steps".into(), |b| format!("{b} events/s"))
    ));
    s.push_str(&format!(
        "\nLoad generator ceiling (no tracer, {senders} sender process(es) side by side, each send a bind and a send event): {ceiling:.0} events/s. A step whose achieved rate is below its target was limited by the generator (or by the CPU it shares with the tracer), not a loss.\n"
    ));
    s
}

/// A bar chart (SVG) of the added time per operation, per workload and
/// tracer.
fn chart(cells: &[Vec<Cell>]) -> String {
    let colors = ["#999999", "#1f77b4", "#d62728", "#2ca02c"];
    let (w, row_h, left) = (900.0, 26.0, 330.0);
    let bars = Workload::ALL.len() * (Config::ALL.len() - 1);
    let h = 60.0 + bars as f64 * row_h + Workload::ALL.len() as f64 * 14.0;
    let max = cells
        .iter()
        .flat_map(|row| (1..Config::ALL.len()).map(move |ci| added(row, ci)))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    let scale = (w - left - 80.0) / max;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<text x="10" y="20" font-size="15">Added time per operation vs no tracer (lower is better)</text>
"#
    );
    let mut y = 40.0;
    for (wi, wl) in Workload::ALL.iter().enumerate() {
        s.push_str(&format!(
            r#"<text x="10" y="{}" font-weight="bold">{}</text>
"#,
            y + 10.0,
            wl.name()
        ));
        y += 14.0;
        for (ci, color) in colors.iter().enumerate().skip(1) {
            let v = added(&cells[wi], ci);
            let bw = (v.max(0.0) * scale).max(1.0);
            s.push_str(&format!(
                r#"<text x="20" y="{}">{}</text><rect x="{left}" y="{}" width="{bw:.1}" height="{}" fill="{}"/><text x="{}" y="{}">{v:+.1}%</text>
"#,
                y + 16.0,
                Config::ALL[ci].name(),
                y + 4.0,
                row_h - 8.0,
                color,
                left + bw + 6.0,
                y + 16.0,
            ));
            y += row_h;
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_and_report_from_cells() {
        let cell = |ns: f64| Cell {
            ns_per_op: vec![ns],
            cpu_ns: 1_000_000,
            events: 100,
            expected: 100,
            lost: 0,
            peak_rss_kib: 2048,
            agent_cpu_ns: 500_000,
            agent_peak_rss_kib: 1024,
        };
        let row = vec![cell(100.0), cell(102.0), cell(150.0), cell(120.0)];
        let cells = vec![row.clone(), row.clone(), row.clone(), row];
        assert!((added(&cells[0], 2) - 50.0).abs() < 1e-9);
        let svg = chart(&cells);
        assert!(svg.starts_with("<svg") && svg.contains("+50.0%") && svg.ends_with("</svg>\n"));
        let ramp = [RampRow {
            target: 2000,
            secs: 1,
            achieved: 1990.0,
            sent: 1000,
            seen: 1000,
            lost: 0,
            cpu_us_per_event: 3.0,
            agent_cpu_us_per_event: 2.0,
            rss_mib: 40.0,
            agent_rss_mib: 30.0,
        }];
        let md = report(&cells, 1, &ramp, Some(2000), (123_456.0, 2));
        assert!(md.contains("| +2.0% |"), "{md}");
        assert!(md.contains("100/100 (100.0%)"));
        assert!(md.contains("Highest rate with zero loss at every stage: 2000 events/s"));
        assert!(md.contains("2 sender process(es) side by side"), "{md}");
        assert!(md.contains(": 123456 events/s."), "{md}");
    }

    #[test]
    fn fast_rates_are_split_over_senders_up_to_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        assert_eq!(senders_for(1), 1);
        assert_eq!(senders_for(SENDS_PER_SENDER), 1);
        assert_eq!(senders_for(SENDS_PER_SENDER + 1), 2.min(cpus));
        assert_eq!(senders_for(u64::MAX / 2), cpus);
    }
}
