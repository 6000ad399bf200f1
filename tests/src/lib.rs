//! The end-to-end test harness, shared by agent/tests and tests/tests:
//! real agent and collector binaries, their JSON output, free loopback
//! ports, scratch directories. (The end-to-end tests themselves are in
//! tests/tests; this library has no product code.)

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod containers;
pub mod fleet;
pub mod kafka;
pub mod pki;
pub mod postgres;
pub mod webhook;

/// The test virtualenv's python (checkers from PyPI, see xtask setup).
pub fn python() -> std::path::PathBuf {
    let p = root().join("target/pyenv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup`",
        p.display()
    );
    p
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One scenario at a time (2 cores; agents and collectors are heavy).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = root().join("target/release").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask test` (it builds both binaries)",
        p.display()
    );
    p
}

/// End-to-end tests load eBPF programs and run containers: they need root.
/// Without it the test fails with the reason; it never passes unchecked.
pub fn require_root() {
    // SAFETY: trivial libc call.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this end-to-end test loads eBPF programs and needs root (euid is {euid}): \
         run it as root, as `cargo xtask test` does"
    );
}

/// The cgroup v2 mount, from /proc/self/mounts.
pub fn cgroup2_root() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spyglass-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("spyglass-e2e-{name}-{}-{nanos}", std::process::id())
}

/// Wait until `f` returns Some, or panic with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_port(port: u16) {
    eventually("the collector to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

pub struct Collector {
    pub child: Child,
    pub port: u16,
    pub output: PathBuf,
}

impl Collector {
    pub fn start(port: u16, output: &Path, extra: &[&str]) -> Collector {
        let child = Command::new(bin("spyglass-collector"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--output")
            .arg(output)
            .args(extra)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start collector");
        wait_port(port);
        Collector {
            child,
            port,
            output: output.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A collector without an output file (a remote output: Kafka, the
/// webhook), serving /readyz and /metrics on `metrics`. Killed on drop.
pub struct RemoteCollector {
    pub child: Child,
    pub port: u16,
    pub metrics: u16,
}

impl RemoteCollector {
    /// Start target/release/spyglass-collector listening on `port` with
    /// `args`, and wait until it listens.
    pub fn start(port: u16, metrics: u16, args: &[&str]) -> RemoteCollector {
        let child = Command::new(bin("spyglass-collector"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(args)
            .spawn()
            .expect("start collector");
        wait_port(port);
        RemoteCollector {
            child,
            port,
            metrics,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `/readyz`: (status, body).
    pub fn ready(&self) -> (u16, String) {
        http_get(self.metrics, "/readyz")
    }

    /// The value of an unlabelled metric; panics when it is missing.
    pub fn metric(&self, name: &str) -> u64 {
        metric(self.metrics, name)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send `sig` to the collector (SIGSTOP: it holds what it took).
    pub fn signal(&self, sig: i32) {
        assert!(
            signal_child(&self.child, sig),
            "signal {sig} to the collector"
        );
    }
}

/// Send `sig` to a child process of the test; whether it was sent.
pub fn signal_child(child: &Child, sig: i32) -> bool {
    // SAFETY: kill(2) on the pid of our own child, which has not been
    // waited for (so the pid is not reused).
    unsafe { libc::kill(child.id() as i32, sig) == 0 }
}

impl Drop for RemoteCollector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of unlabelled metric `name` at a loopback /metrics.
pub fn metric(port: u16, name: &str) -> u64 {
    let (_, text) = http_get(port, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Events the agent reported dropped from its spool (`loss` events of
/// stage `agent`), among `events`: what a refused batch costs.
pub fn spool_dropped(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|e| e["kind"] == "loss" && e["loss"]["stage"] == "agent")
        .filter_map(|e| e["loss"]["spool_dropped"].as_u64())
        .sum()
}

/// GET `path` on a loopback port: (status code, body); panics when
/// nothing listens.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_with(port, path, "")
}

/// [`http_get`] with extra request `headers` (each ending in `\r\n`).
pub fn http_get_with(port: u16, path: &str, headers: &str) -> (u16, String) {
    http_request(port, "GET", path, headers, &[], Duration::from_secs(10))
}

/// `method` `path` on loopback `port` with `headers` (each ending in
/// `\r\n`) and `body` (sent with its length when not empty), waiting
/// up to `timeout` for the answer: its status and body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    timeout: Duration,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    s.set_read_timeout(Some(timeout)).unwrap();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}{length}Connection: close\r\n\r\n"
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Every JSON line of a file (and its rotations are not read).
pub fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad output line ({e}): {l}")))
        .collect()
}

/// The agent's stdout so far, and whether it ended (the agent exited).
#[derive(Default)]
struct Stream {
    events: Vec<Value>,
    closed: bool,
    /// A line that was not JSON: reading stopped there.
    bad_line: Option<String>,
}

type Shared = Arc<(Mutex<Stream>, Condvar)>;

/// The stream, also after a failed assertion elsewhere poisoned the lock
/// (a check that failed must not take the reader, and so the agent's
/// stdout, down with it).
fn lock_stream(m: &Mutex<Stream>) -> MutexGuard<'_, Stream> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct Agent {
    pub child: Child,
    events: Shared,
}

impl Agent {
    /// Start target/release/spyglass-agent and wait for `agent started`.
    pub fn start(args: &[&str]) -> Agent {
        Self::start_bin(&bin("spyglass-agent"), args)
    }

    /// Start target/release/spyglass-agent streaming to a collector at
    /// `url` with its spool in `spool`, plus `extra` flags.
    pub fn streaming_to(url: &str, spool: &Path, extra: &[&str]) -> Agent {
        let spool = spool.to_str().expect("utf-8 scratch path");
        let mut args = vec!["--collector", url, "--spool-dir", spool];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Start an agent binary (`run`, JSON on stdout) and wait until ready.
    /// Callers hold [`serial`] for the whole scenario.
    pub fn start_bin(path: &Path, args: &[&str]) -> Agent {
        let mut cmd = Command::new(path);
        cmd.arg("run").args(args).env("RUST_LOG", "warn");
        Self::spawn(cmd)
    }

    /// Start `cmd`, an agent writing JSON events to its stdout however it
    /// is wrapped (a binary, or `ctr run` of the agent image), and wait
    /// for `agent started`.
    pub fn spawn(cmd: Command) -> Agent {
        Self::spawn_with_stderr(cmd, Stdio::inherit())
    }

    /// [`Agent::spawn`] with the agent's log (stderr) sent to `stderr`.
    pub fn spawn_with_stderr(mut cmd: Command, stderr: Stdio) -> Agent {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start spyglass-agent");
        let stdout = child.stdout.take().unwrap();
        let events: Shared = Arc::new((Mutex::new(Stream::default()), Condvar::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*sink;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => lock_stream(lock).events.push(v),
                    Err(e) => {
                        lock_stream(lock).bad_line = Some(format!("({e}) {line}"));
                        break;
                    }
                }
                cv.notify_all();
            }
            lock_stream(lock).closed = true;
            cv.notify_all();
        });
        let agent = Agent { child, events };
        agent.wait_for("agent started", Duration::from_secs(60), |e| {
            e["kind"] == "agent" && e["agent"]["state"] == "started"
        });
        agent
    }

    /// Wait until an event matches; panic with context after `timeout`, or
    /// at once when the agent's output ended (it exited; its error is on
    /// stderr).
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.events;
        let mut stream = lock_stream(lock);
        loop {
            if let Some(e) = stream.events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            let now = Instant::now();
            if now >= deadline || stream.closed {
                let n = stream.events.len();
                let tail: Vec<String> = stream
                    .events
                    .iter()
                    .rev()
                    .take(5)
                    .map(std::string::ToString::to_string)
                    .collect();
                let why = match (&stream.bad_line, stream.closed) {
                    (Some(line), _) => format!("the agent wrote a non-JSON line {line}"),
                    (None, true) => {
                        "the agent's output ended (it exited: see its error above)".into()
                    }
                    (None, false) => "timed out".to_owned(),
                };
                panic!("{why} waiting for {what}; {n} events seen, last: {tail:#?}");
            }
            stream = cv
                .wait_timeout(stream, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Events matching a predicate so far.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        lock_stream(&self.events.0)
            .events
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }

    /// Send a signal to the agent process.
    pub fn signal(&self, sig: i32) {
        signal_child(&self.child, sig);
    }

    /// SIGTERM, wait for a clean exit, return every event.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for agent") {
                break status;
            }
            // Drop kills it.
            assert!(
                Instant::now() < deadline,
                "the agent did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "agent exited with {status}");
        // The reader thread ends at EOF; wait for the final `stopping` event.
        self.wait_for("agent stopping", Duration::from_secs(10), |e| {
            e["kind"] == "agent" && e["agent"]["state"] == "stopping"
        });
        lock_stream(&self.events.0).events.clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Field access helpers.
pub fn pid_of(e: &Value) -> u64 {
    e["process"]["pid"].as_u64().unwrap_or(0)
}

pub fn argv_of(e: &Value) -> Vec<String> {
    argv(e)
}

pub fn argv(e: &Value) -> Vec<String> {
    e["process"]["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Exec events in `events` whose argv[1] is `mark`-prefixed, by argv[1].
pub fn marked_execs(events: &[Value], mark: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "exec") {
        if let Some(a) = argv(e).get(1) {
            if a.starts_with(mark) {
                *m.entry(a.clone()).or_insert(0) += 1;
            }
        }
    }
    m
}

/// Each of the `n` execs `MARK-00000`.. of [`exec_series`] in `events`
/// exactly once.
pub fn assert_exactly_once(out: &[Value], mark: &str, n: usize) {
    let seen = marked_execs(out, mark);
    let missing: Vec<usize> = (0..n)
        .filter(|i| !seen.contains_key(&format!("{mark}-{i:05}")))
        .collect();
    let dup: Vec<(&String, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} execs missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(dup.is_empty(), "duplicated: {dup:?}");
    assert_eq!(seen.len(), n);
}

/// Run `n` execs `/bin/true MARK-i`, `gap` apart, in a background thread.
/// An export filter file in `dir` that lets only execs of `/bin/true`
/// (and the events never filtered: losses, findings, the agent's own)
/// leave the agent: for tests whose batches must hold only their own
/// events (a size limit that other processes' long command lines on the
/// host would otherwise reach). Pass it as `--export-filter`.
pub fn only_true_execs(dir: &Path) -> String {
    let f = dir.join("only-true-execs.yaml");
    std::fs::write(
        &f,
        "allow:\n  - executables: [/bin/true, /usr/bin/true]\n    kinds: [exec]\n",
    )
    .unwrap();
    f.to_str().expect("utf-8 scratch path").to_owned()
}

pub fn exec_series(mark: &str, n: usize, gap: Duration) -> std::thread::JoinHandle<()> {
    let mark = mark.to_owned();
    std::thread::spawn(move || {
        for i in 0..n {
            let st = Command::new("/bin/true")
                .arg(format!("{mark}-{i:05}"))
                .status()
                .unwrap();
            assert!(st.success());
            std::thread::sleep(gap);
        }
    })
}

/// A hand-made exec event of `node` (`/bin/true ARG`), for tests that
/// speak the collector's gRPC as an agent would.
pub fn exec_event(node: &str, arg: &str) -> spyglass_proto::v1::Event {
    use spyglass_proto::v1::{Event, EventKind, Process};
    Event {
        kind: EventKind::Exec as i32,
        time_unix_nano: 1_795_549_718_856_200_274,
        node: node.into(),
        process: Some(Process {
            pid: 4242,
            tid: 4242,
            ppid: 1,
            comm: "true".into(),
            exe: "/bin/true".into(),
            argv: vec!["/bin/true".into(), arg.into()],
            cgroup_id: 1,
            ..Process::default()
        }),
        ..Event::default()
    }
}
