//! Waiting for a child process with a bound, and saying where it hung.
//!
//! A bench or suite step that waits for a process without a bound turns
//! one stuck process into a CI run that ends only at its time limit, with
//! nothing in the log about which process or where. Every wait here ends:
//! on time with the exit status, or with an error naming the process and
//! what each of its threads was doing (state, kernel wait channel, kernel
//! stack, and a user-space backtrace when gdb is installed) before it is
//! killed.
use std::{
    io::Read,
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Wait for `child` at most `limit`; past it, describe its threads, kill
/// it and fail, naming `what`.
pub fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> Result<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if t.elapsed() >= limit {
            let pid = child.id();
            let threads = describe(pid);
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} (pid {pid}) did not exit within {} s and was killed; its threads:\n{threads}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_bounded`], then the child's standard output (piped by the
/// caller) as text.
pub fn output_bounded(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> Result<(ExitStatus, String)> {
    // read as it comes: a full pipe would otherwise stall the child
    let mut stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_string(&mut s);
        }
        let _ = tx.send(s);
    });
    let status = wait_bounded(child, limit, what)?;
    // a grandchild that kept the pipe open must not hold us either
    let text = rx.recv_timeout(Duration::from_secs(10)).with_context(|| {
        format!("{what} exited but its output stayed open (a process it started holds it)")
    })?;
    Ok((status, text))
}

/// Each thread of `pid`: name, state, wait channel, the top of its
/// kernel stack; then gdb's backtraces when gdb is there.
fn describe(pid: u32) -> String {
    let mut out = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_or_else(
        |_| Vec::new(),
        |rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>(),
    );
    for task in tasks {
        let read = |f: &str| std::fs::read_to_string(task.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("?");
        let stack: Vec<String> = read("stack").lines().take(4).map(str::to_owned).collect();
        out.push_str(&format!(
            "  {} {:?} state {state} wchan {} kernel stack [{}]\n",
            task.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            read("comm").trim(),
            read("wchan").trim(),
            stack.join(" < ")
        ));
    }
    if let Some(bt) = gdb_backtraces(pid) {
        out.push_str(&bt);
    }
    out
}

/// `gdb -batch` backtraces of every thread (at most 30 s, 200 lines).
fn gdb_backtraces(pid: u32) -> Option<String> {
    let out = std::process::Command::new("timeout")
        .args(["30", "gdb", "-batch", "-nx", "-p", &pid.to_string()])
        .args(["-ex", "thread apply all bt 15"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
        .take(200)
        .collect();
    (!lines.is_empty()).then(|| format!("gdb backtraces:\n{}\n", lines.join("\n")))
}
