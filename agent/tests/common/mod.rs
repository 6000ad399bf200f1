//! Harness for privileged end-to-end tests: run the real agent binary
//! (real eBPF programs in this kernel), collect its JSON lines, and wait
//! for events matching a predicate.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

/// One agent at a time: tests share 2 cores, and a starved agent would
/// make loss (accounted, but noisy) more likely.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when the test can load eBPF; prints why it skips otherwise.
pub fn privileged() -> bool {
    // SAFETY: trivial libc call.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: end-to-end tests load eBPF programs and need root");
    }
    root
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_spyglass-agent")
}

/// A unique marker for this test run.
pub fn marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("spyglass-e2e-{name}-{}-{nanos}", std::process::id())
}

type Shared = Arc<(Mutex<Vec<Value>>, Condvar)>;

pub struct Agent {
    child: Child,
    events: Shared,
    _guard: MutexGuard<'static, ()>,
}

impl Agent {
    /// Start the agent and wait for its `agent started` event.
    pub fn start(args: &[&str]) -> Agent {
        let guard = serial();
        let mut child = Command::new(agent_bin())
            .arg("run")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start spyglass-agent");
        let stdout = child.stdout.take().unwrap();
        let events: Shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("agent wrote a non-JSON line ({e}): {line}"));
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push(v);
                cv.notify_all();
            }
        });
        let agent = Agent {
            child,
            events,
            _guard: guard,
        };
        agent.wait_for("agent started", Duration::from_secs(60), |e| {
            e["kind"] == "agent" && e["agent"]["state"] == "started"
        });
        agent
    }

    /// Wait until an event matches; panic with context after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.events;
        let mut events = lock.lock().unwrap();
        loop {
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let n = events.len();
                let tail: Vec<String> =
                    events.iter().rev().take(5).map(|e| e.to_string()).collect();
                panic!("timed out waiting for {what}; {n} events seen, last: {tail:#?}");
            }
            events = cv.wait_timeout(events, deadline - now).unwrap().0;
        }
    }

    /// Events matching a predicate so far.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }

    /// Send a signal to the agent process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, wait for a clean exit, return every event.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for agent");
        assert!(status.success(), "agent exited with {status}");
        // The reader thread ends at EOF; wait for the final `stopping` event.
        self.wait_for("agent stopping", Duration::from_secs(10), |e| {
            e["kind"] == "agent" && e["agent"]["state"] == "stopping"
        });
        self.events.0.lock().unwrap().clone()
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
    e["process"]["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}
