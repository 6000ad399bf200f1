//! `cargo xtask bench`: the agent's overhead and completeness, measured
//! side by side in one run.
//!
//! Workloads run in a separate load-generator process (`xtask loadgen`,
//! this binary), never inside the agent or this driver. Each round runs a
//! workload once with the agent off and once with it on, alternating the
//! order between rounds; the table reports medians over rounds and the
//! ratio on/off. Nothing here asserts on time: it is a measuring tool.
use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{agent_bin, root};

/// Events counted by the drain thread of a running agent.
#[derive(Default)]
struct Counts {
    lines: AtomicU64,
    lost: AtomicU64,
    marked: AtomicU64,
}

pub struct RunningAgent {
    child: Child,
    counts: Arc<Counts>,
}

/// Loss fields that count records still delivered (read with errors, or
/// a connect not tracked to its end), not events lost.
const DELIVERED: [&str; 2] = ["read_errors", "connect_untracked"];

/// Events a `loss` line reports lost: every counter of its `loss` object
/// but [`DELIVERED`] (a counter added later counts as lost until it is
/// listed there), 0 for any other line.
pub fn lost_in(line: &str) -> u64 {
    if !line.contains("\"loss\":{") {
        return 0;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return 0;
    };
    v.get("loss")
        .and_then(serde_json::Value::as_object)
        .map_or(0, |loss| {
            loss.iter()
                .filter(|(k, _)| !DELIVERED.contains(&k.as_str()))
                .filter_map(|(_, n)| n.as_u64())
                .fold(0, u64::saturating_add)
        })
}

impl RunningAgent {
    /// `marker` counts lines that start with `prefix` and contain it.
    pub fn start(prefix: &str, marker: &str) -> Result<Self> {
        Self::start_with(prefix, marker, &["--no-snapshot"])
    }

    /// [`RunningAgent::start`] with other `run` flags than `--no-snapshot`.
    pub fn start_with(prefix: &str, marker: &str, flags: &[&str]) -> Result<Self> {
        let mut child = Command::new(bench_agent())
            .arg("run")
            .args(flags)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the agent")?;
        let out = child.stdout.take().expect("piped");
        let counts = Arc::new(Counts::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let c = counts.clone();
        let marker = marker.to_owned();
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("{\"kind\":\"agent\"") && line.contains("\"started\"") {
                    let _ = ready_tx.send(());
                }
                c.lines.fetch_add(1, Ordering::Relaxed);
                if line.starts_with("{\"kind\":\"loss\"") {
                    c.lost.fetch_add(lost_in(&line), Ordering::Relaxed);
                }
                if line.starts_with(&prefix) && line.contains(&marker) {
                    c.marked.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the agent did not start within 60 s")?;
        Ok(RunningAgent { child, counts })
    }

    /// (utime + stime) of the agent in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.child.id())
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Peak RSS.
    pub fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Marked lines seen so far.
    pub fn marked(&self) -> u64 {
        self.counts.marked.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run the load generator; returns ns per operation. Its errors go to
/// the log as they come; a generator still running after 15 minutes is
/// described and killed (no workload of any bench takes that long).
pub fn run_loadgen(args: &[String]) -> Result<f64> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("loadgen")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("running the load generator")?;
    let what = format!("loadgen {args:?}");
    let (status, text) = crate::child::output_bounded(&mut child, Duration::from_secs(900), &what)?;
    if !status.success() {
        bail!("{what} failed ({status}); its errors are above");
    }
    text.trim()
        .parse::<f64>()
        .with_context(|| format!("loadgen printed `{text}`"))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    off_ns: f64,
    on_ns: f64,
    spread: f64,
    cpu_us_per_event: f64,
    events_per_op: f64,
    lost: u64,
    complete: String,
}

/// One workload, interleaved off/on over `rounds`.
fn workload(
    name: &'static str,
    args: &dyn Fn(&str) -> Vec<String>,
    ops: u64,
    rounds: usize,
    events_expected_per_op: Option<u64>,
) -> Result<Row> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut cpu, mut events, mut lost, mut marked) = (0u64, 0u64, 0u64, 0u64);
    for r in 0..rounds {
        let marker = format!("spyglass-bench-{name}-{r}-{}", std::process::id());
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for agent_on in order {
            if agent_on {
                let agent = RunningAgent::start(
                    "{\"kind\":\"exec\"",
                    &format!("\"argv\":[\"/bin/true\",\"{marker}\"]"),
                )?;
                let (c0, l0) = (
                    agent.cpu_ticks(),
                    agent.counts.lines.load(Ordering::Relaxed),
                );
                on.push(run_loadgen(&args(&marker))?);
                // let the agent drain before reading its counters
                std::thread::sleep(Duration::from_millis(300));
                cpu += agent.cpu_ticks() - c0;
                events += agent.counts.lines.load(Ordering::Relaxed) - l0;
                lost += agent.counts.lost.load(Ordering::Relaxed);
                marked += agent.counts.marked.load(Ordering::Relaxed);
                agent.stop();
            } else {
                off.push(run_loadgen(&args(&marker))?);
            }
        }
    }
    let spread = {
        let lo = on.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = on.iter().copied().fold(0.0, f64::max);
        hi - lo
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total_ops = ops * rounds as u64;
    let complete = match events_expected_per_op {
        Some(k) => format!(
            "{}/{} ({:.2}%)",
            marked,
            total_ops * k,
            100.0 * marked as f64 / (total_ops * k) as f64
        ),
        None => "n/a".into(),
    };
    Ok(Row {
        name,
        off_ns: median(&mut off),
        on_ns: median(&mut on),
        spread,
        cpu_us_per_event: if events > ops * rounds as u64 / 100 {
            cpu as f64 / hz * 1e6 / events as f64
        } else {
            f64::NAN
        },
        events_per_op: events as f64 / total_ops as f64,
        lost,
        complete,
    })
}

/// `cargo xtask bench [--quick]`.
pub fn run(quick: bool) -> Result<()> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads the agent's eBPF programs: run it as root");
    }
    let (rounds, exec_n, conn_n, sys_n, udp_rate, udp_secs) = if quick {
        (1, 200u64, 200u64, 200_000u64, 2_000u64, 1u64)
    } else {
        (5, 2_000, 3_000, 5_000_000, 20_000, 5)
    };
    let mut rows = vec![workload(
        "exec (fork+exec /bin/true)",
        &|m| vec!["exec".into(), exec_n.to_string(), m.into()],
        exec_n,
        rounds,
        Some(1),
    )?];
    rows.push(workload(
        "loopback TCP connect",
        &|_| vec!["connect".into(), conn_n.to_string()],
        conn_n,
        rounds,
        None,
    )?);
    rows.push(workload(
        "unrelated syscall (getppid)",
        &|_| vec!["syscall".into(), sys_n.to_string()],
        sys_n,
        rounds,
        None,
    )?);

    // Zero-loss check at a fixed event rate: UDP sends to fresh sockets,
    // one event each, to a port nothing listens on (loopback only).
    let agent = RunningAgent::start("{\"kind\":\"connect\"", "\"port\":47999}")?;
    let sent = udp_rate * udp_secs;
    let c0 = agent.cpu_ticks();
    run_loadgen(&[
        "udp".into(),
        udp_rate.to_string(),
        udp_secs.to_string(),
        "47999".into(),
    ])?;
    std::thread::sleep(Duration::from_millis(1500));
    let seen = agent.counts.marked.load(Ordering::Relaxed);
    let lost = agent.counts.lost.load(Ordering::Relaxed);
    let cpu = agent.cpu_ticks() - c0;
    let rss = agent.rss_kib();
    agent.stop();

    let mut table = String::new();
    table.push_str(&format!(
        "Spyglass bench ({} round(s), agent off vs on, interleaved; medians)\n\n",
        rounds
    ));
    table.push_str("| workload | off ns/op | on ns/op | added | on spread ns | agent CPU us/event | events/op | kernel+agent loss | marked events seen |\n");
    table.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:+.2}% | {:.0} | {:.2} | {:.2} | {} | {} |\n",
            r.name,
            r.off_ns,
            r.on_ns,
            100.0 * (r.on_ns - r.off_ns) / r.off_ns,
            r.spread,
            r.cpu_us_per_event,
            r.events_per_op,
            r.lost,
            r.complete
        ));
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    table.push_str(&format!(
        "\nSustained rate: {udp_rate} UDP sends/s on fresh sockets (bind + send: {} events/s) for {udp_secs} s: {seen}/{sent} send events seen, {lost} reported lost, agent CPU {:.2} us/event, RSS {} KiB\n",
        2 * udp_rate,
        if seen > 0 { cpu as f64 / hz * 1e6 / (2 * seen) as f64 } else { 0.0 },
        rss
    ));
    table.push_str(&collector_bench(quick)?);
    table.push_str(&crate::bench_fleet::run(quick)?);
    table.push_str(&crate::bench_memory::run(
        &crate::bench_memory::Sizes::new(quick),
    )?);
    print!("{table}");
    let dir = root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(if quick { "quick.md" } else { "latest.md" });
    std::fs::write(&file, &table)?;
    eprintln!("xtask bench: written to {}", file.display());
    Ok(())
}

/// One loopback connect to `l`, accepted in the same thread (the accept
/// queue never holds more than one connection, so no SYN is dropped), and
/// closed with RST (no TIME_WAIT pile-up across thousands of connects).
fn connect_once(l: &TcpListener) -> Result<()> {
    let s = TcpStream::connect(l.local_addr()?)?;
    let (server, _) = l.accept()?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(s);
    drop(server);
    Ok(())
}

/// The load generator, run as a separate process: prints ns per op.
pub fn loadgen(args: &[String]) -> Result<()> {
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .context("loadgen: missing argument")
    };
    let ns_per_op = match arg(0)? {
        "exec" => {
            let n: u64 = arg(1)?.parse()?;
            let mark = arg(2)?;
            let t = Instant::now();
            for _ in 0..n {
                Command::new("/bin/true").arg(mark).status()?;
            }
            t.elapsed().as_nanos() as f64 / n as f64
        }
        "connect" => {
            // connect, then accept in the same thread: the accept queue never
            // holds more than one connection, so no SYN is ever dropped.
            let n: u64 = arg(1)?.parse()?;
            let port: u16 = args.get(2).map(|p| p.parse()).transpose()?.unwrap_or(0);
            let l = TcpListener::bind(("127.0.0.1", port))?;
            let t = Instant::now();
            for _ in 0..n {
                connect_once(&l)?;
            }
            t.elapsed().as_nanos() as f64 / n as f64
        }
        "mixed" => {
            // per op: one exec, four loopback connects, 2000 getppid
            let n: u64 = arg(1)?.parse()?;
            let mark = arg(2)?;
            let port: u16 = arg(3)?.parse()?;
            let l = TcpListener::bind(("127.0.0.1", port))?;
            let t = Instant::now();
            for _ in 0..n {
                Command::new("/bin/true").arg(mark).status()?;
                for _ in 0..4 {
                    connect_once(&l)?;
                }
                for _ in 0..2000 {
                    // SAFETY: getppid has no preconditions.
                    std::hint::black_box(unsafe { libc::getppid() });
                }
            }
            t.elapsed().as_nanos() as f64 / n as f64
        }
        "syscall" => {
            let n: u64 = arg(1)?.parse()?;
            let t = Instant::now();
            for _ in 0..n {
                // SAFETY: getppid has no preconditions.
                std::hint::black_box(unsafe { libc::getppid() });
            }
            t.elapsed().as_nanos() as f64 / n as f64
        }
        "udp" => {
            let rate: u64 = arg(1)?.parse()?;
            let secs: u64 = arg(2)?.parse()?;
            let port: u16 = arg(3)?.parse()?;
            let total = rate * secs;
            let t = Instant::now();
            for i in 0..total {
                // pace: op i is due at i/rate seconds
                let due = Duration::from_nanos(i * 1_000_000_000 / rate);
                let now = t.elapsed();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let s = UdpSocket::bind("127.0.0.1:0")?;
                let _ = s.send_to(b"x", ("127.0.0.1", port));
            }
            t.elapsed().as_nanos() as f64 / total as f64
        }
        "argv-exec" => {
            crate::bench_memory::argv_exec(arg(1)?.parse()?, arg(2)?.parse()?)?;
            0.0
        }
        "argv-live" => {
            // prints `ready` itself, then waits: no figure
            return crate::bench_memory::argv_live(arg(1)?.parse()?);
        }
        other => bail!("loadgen: unknown workload {other}"),
    };
    println!("{ns_per_op}");
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` -> Unix ns (the inverse of the agent's
/// formatter; days_from_civil by Howard Hinnant).
fn parse_rfc3339(t: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = t.get(20..t.len() - 1)?;
    let nanos: i64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000) + nanos)
}

fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Follow a growing file; for each new line containing `marker`, record
/// (arrival - event time) in ms. Stops when `stop` is set.
fn tail_latencies(
    path: std::path::PathBuf,
    marker: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        use std::io::Seek;
        let mut lat = Vec::new();
        let mut pos = std::fs::metadata(&path).map_or(0, |m| m.len());
        let mut carry = String::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut f) = std::fs::File::open(&path) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            let _ = f.seek(std::io::SeekFrom::Start(pos));
            let mut buf = String::new();
            let n = std::io::Read::read_to_string(&mut f, &mut buf).unwrap_or(0);
            pos += n as u64;
            let now = unix_now_ns();
            carry.push_str(&buf);
            while let Some(i) = carry.find('\n') {
                let line: String = carry.drain(..=i).collect();
                if !line.contains(&marker) {
                    continue;
                }
                if let Some(t) = line
                    .split("\"time\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(parse_rfc3339)
                {
                    lat.push((now - t) as f64 / 1e6);
                }
            }
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        lat
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The agent binary a bench runs: `SPYGLASS_BENCH_AGENT`, or this build's.
pub fn bench_agent() -> std::path::PathBuf {
    std::env::var_os("SPYGLASS_BENCH_AGENT").map_or_else(agent_bin, Into::into)
}

/// The collector binary a bench runs: `SPYGLASS_BENCH_COLLECTOR`, or this
/// build's (an older build gives a before figure in the same run).
fn bench_collector() -> std::path::PathBuf {
    std::env::var_os("SPYGLASS_BENCH_COLLECTOR").map_or_else(
        || root().join("target/release/spyglass-collector"),
        Into::into,
    )
}

pub fn start_collector(port: u16, out: &std::path::Path) -> Result<Child> {
    start_collector_with(port, out, &[])
}

/// [`start_collector`] with more arguments.
fn start_collector_with(port: u16, out: &std::path::Path, extra: &[&str]) -> Result<Child> {
    let c = Command::new(bench_collector())
        .args(extra)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "warn",
        ])
        // one file for the whole run: the bench counts lines in it
        .args(["--rotate-bytes", "100000000000"])
        .arg("--output")
        .arg(out)
        .spawn()
        .context("starting the collector")?;
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(c);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("the collector did not listen on {port}")
}

fn count_in(path: &std::path::Path, marker: &str) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().filter(|l| l.contains(marker)).count())
}

/// utime + stime of a process in clock ticks: all its threads, live and
/// exited (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after the comm: state is [0]; utime is field 14 -> [11]
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// [`cpu_ticks`] in seconds.
fn process_cpu_secs(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    cpu_ticks(pid) as f64 / hz
}

/// End-to-end latency (kernel event -> collector output line) at fixed
/// rates, and the collector's ingest rate replaying a spool backlog.
pub fn collector_bench(quick: bool) -> Result<String> {
    let dir = root().join("bench-results/tmp");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("collector.jsonl");
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut collector = start_collector(port, &out)?;
    let url = format!("http://127.0.0.1:{port}");
    let spool = dir.join("spool");
    let mut text = String::from("\nEnd to end, kernel event -> collector output line (UDP sends, fresh sockets):\n\n| events/s | events | p50 ms | p99 ms | max ms | lost |\n|---:|---:|---:|---:|---:|---:|\n");
    let secs: u64 = if quick { 1 } else { 5 };
    let mut agent = Command::new(bench_agent())
        .args([
            "run",
            "--no-snapshot",
            "--format",
            "none",
            "--collector",
            &url,
            "--spool-dir",
        ])
        .arg(&spool)
        .env("RUST_LOG", "error")
        .spawn()?;
    for _ in 0..400 {
        if count_in(&out, "\"state\":\"started\"") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, events_per_sec) in [1_000u64, 20_000].into_iter().enumerate() {
        let dport = 47_000 + i as u16;
        let marker = format!("\"port\":{dport}}}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tail = tail_latencies(out.clone(), marker.clone(), stop.clone());
        // each op is a bind + a send: two events
        let ops = events_per_sec / 2;
        run_loadgen(&[
            "udp".into(),
            ops.to_string(),
            secs.to_string(),
            dport.to_string(),
        ])?;
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let mut lat = tail.join().unwrap_or_default();
        let sent = ops * secs;
        text.push_str(&format!(
            "| {events_per_sec} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
            lat.len(),
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            percentile(&mut lat, 1.0),
            sent.saturating_sub(lat.len() as u64)
        ));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    let _ = collector.wait();
    text.push_str("\nCollector ingest: the agent replays a spool backlog (UDP sends; the batches also carry the bind events) after a collector restart; events/s of wall time, and per collector core (its whole life's CPU, start-up included):\n\n| collector | events | events/s | collector CPU s | events/s per collector core |\n|---|---:|---:|---:|---:|\n");
    let backlog = Backlog {
        port,
        out: &out,
        spool: &spool,
        ops: if quick { 2_000 } else { 50_000 },
    };
    // the JSON lines file alone, then with the default inventory store
    // (SQLite next to the output), whose writes cost CPU of their own
    for (i, (label, extra)) in [
        (
            "JSON lines file only (`--store none`)",
            &["--store", "none"][..],
        ),
        ("file + inventory store (default: SQLite)", &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let (line, c) = backlog.ingest(47_010 + i as u16, label, extra)?;
        text.push_str(&line);
        collector = c;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
        let _ = collector.wait();
    }
    // the same backlog into Kafka (a Tansu broker on loopback)
    let (line, c) = backlog.ingest_kafka(47_012, &dir)?;
    text.push_str(&line);
    collector = c;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    let _ = collector.wait();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    text.push_str(
        "\nThe Kafka row's broker is Tansu 0.6.0 with memory storage on loopback (the test broker), \
         not Apache Kafka: its speed is not a Kafka cluster's. Its events are counted as in the rows above \
         (the backlog's binds and sends); the records it committed (spyglass_collector_kafka_records_total) \
         also hold the batches' other events.\n",
    );
    Ok(text)
}

/// A Tansu broker (memory storage) on a loopback port, with the
/// collector's topics; killed on drop.
struct Tansu(Child, u16);

impl Tansu {
    fn start(dir: &std::path::Path) -> Result<Tansu> {
        crate::setup::kafka_broker()?;
        let bin = crate::setup::tansu();
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "spyglass-bench",
            ])
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the Tansu broker")?;
        let t = Tansu(child, port);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        for topic in ["spyglass-events", "spyglass-positions"] {
            let st = Command::new(&bin)
                .args([
                    "topic",
                    "create",
                    topic,
                    "--broker",
                    &url,
                    "--partitions",
                    "3",
                ])
                .stdout(std::process::Stdio::null())
                .status()?;
            if !st.success() {
                bail!("tansu topic create {topic} failed ({st})");
            }
        }
        Ok(t)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A counter or gauge from a collector's /metrics.
fn scrape(port: u16, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// A spool backlog the running agent builds while the collector is down.
struct Backlog<'a> {
    port: u16,
    out: &'a std::path::Path,
    spool: &'a std::path::Path,
    ops: u64,
}

impl Backlog<'_> {
    /// The spooled batches the agent has not had acked.
    fn spooled(&self) -> usize {
        std::fs::read_dir(self.spool).map_or(0, |d| {
            d.flatten()
                .filter(|f| f.file_name().to_string_lossy().ends_with(".batch"))
                .count()
        })
    }

    /// UDP sends to `dport` while no collector runs (10,000 a second):
    /// how many, once the agent has spooled them.
    fn build(&self, dport: u16) -> Result<u64> {
        let backlog_secs = (self.ops / 10_000).max(1);
        run_loadgen(&[
            "udp".into(),
            "10000".into(),
            backlog_secs.to_string(),
            dport.to_string(),
        ])?;
        std::thread::sleep(Duration::from_millis(1500));
        Ok(10_000 * backlog_secs)
    }

    /// Build a backlog, then drain it into a collector publishing to a
    /// Tansu broker: one table row, and the collector (still running).
    fn ingest_kafka(&self, dport: u16, dir: &std::path::Path) -> Result<(String, Child)> {
        let broker = Tansu::start(dir)?;
        let expected = 2 * self.build(dport)?;
        let before = self.spooled();
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let collector = Command::new(bench_collector())
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--log-level",
                "warn",
            ])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--kafka-brokers", &format!("127.0.0.1:{}", broker.1)])
            .args(["--kafka-transactional-id", "spyglass-bench"])
            .spawn()
            .context("starting the collector")?;
        // the clock starts when the first batch is acked
        let wait = Instant::now();
        while self.spooled() >= before && wait.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let t = Instant::now();
        while self.spooled() > 0 && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs_taken = t.elapsed().as_secs_f64();
        let cpu_secs = process_cpu_secs(collector.id());
        let records = scrape(metrics, "spyglass_collector_kafka_records_total").unwrap_or(0);
        // counted as the file rows count: the backlog's binds and sends
        // (the batches also carry other events, closes among them)
        let (events, short) = if self.spooled() > 0 || records < expected {
            let left = self.spooled();
            (
                records,
                format!(" ({records} records for {expected} backlog events; {left} batches still spooled)"),
            )
        } else {
            (expected, format!(" ({records} records committed)"))
        };
        drop(broker);
        Ok((
            format!(
                "| Kafka (`--kafka-brokers`, Tansu on loopback){short} | {events} | {:.0} | {cpu_secs:.2} | {:.0} |\n",
                events as f64 / secs_taken,
                events as f64 / cpu_secs.max(1e-9)
            ),
            collector,
        ))
    }

    /// Build a backlog (the collector is down), start the collector with
    /// `extra` and time it draining the backlog: one table row, and the
    /// collector (still running).
    fn ingest(&self, dport: u16, label: &str, extra: &[&str]) -> Result<(String, Child)> {
        let marker = format!("\"port\":{dport}}}");
        let expected = self.build(dport)? as usize;
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let before = size(self.out);
        let collector = start_collector_with(self.port, self.out, extra)?;
        // Start the clock when the replay starts (the agent may be waiting
        // out its reconnect backoff, which is not ingest time).
        let wait = Instant::now();
        while size(self.out) == before && wait.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let t = Instant::now();
        // Drained when the agent's spool holds no batch (all
        // acknowledged); polling a directory keeps the measurement from
        // loading the machine.
        while self.spooled() > 0 && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs_taken = t.elapsed().as_secs_f64();
        // The collector's whole life (start-up included, exited threads
        // included: utime + stime of the process), read once it is idle:
        // the store may still be writing what the drain queued.
        let mut cpu_secs = process_cpu_secs(collector.id());
        let idle = Instant::now();
        while idle.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(500));
            let now = process_cpu_secs(collector.id());
            let busy = now - cpu_secs > 0.02;
            cpu_secs = now;
            if !busy {
                break;
            }
        }
        let got = count_in(self.out, &marker);
        let short = if got < expected {
            format!(" (only {got} of {expected} backlog sends arrived)")
        } else {
            String::new()
        };
        let events = got * 2;
        Ok((
            format!(
                "| {label}{short} | {events} | {:.0} | {cpu_secs:.2} | {:.0} |\n",
                events as f64 / secs_taken,
                events as f64 / cpu_secs.max(1e-9)
            ),
            collector,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loss_counter_counts_but_the_delivered_ones() {
        let line = r#"{"kind":"loss","node":"n","loss":{"stage":"agent","exec":1,"exit":2,"fork":3,"network":4,"read_errors":50,"connect_untracked":60,"decode_errors":5,"spool_dropped":681683}}"#;
        assert_eq!(lost_in(line), 1 + 2 + 3 + 4 + 5 + 681_683);
        assert_eq!(lost_in(r#"{"kind":"exec","process":{"pid":1}}"#), 0);
        assert_eq!(lost_in(r#"{"kind":"loss","loss":{"#), 0, "a torn line");
    }
}
