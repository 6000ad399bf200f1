//! End-to-end: bursts of execs are reported completely, and when the ring
//! buffer overflows, loss events account for every missing exec.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// Run `n` execs of `/bin/true MARK` from one shell loop.
fn exec_burst(n: u32, mark: &str) {
    let script = format!("i=0; while [ $i -lt {n} ]; do /bin/true {mark}; i=$((i+1)); done");
    let status = Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
}

fn count_marked(agent: &Agent, mark: &str) -> usize {
    agent
        .matching(|e| e["kind"] == "exec" && argv_of(e).get(1).map(String::as_str) == Some(mark))
        .len()
}

/// Wait until the count stops moving (or reaches `n`).
fn settle(agent: &Agent, mark: &str, n: usize) -> usize {
    let mut last = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = count_marked(agent, mark);
        if c >= n || (c == last) || Instant::now() > deadline {
            return c;
        }
        last = c;
        std::thread::sleep(Duration::from_millis(1500));
    }
}

fn lost_execs(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|e| e["kind"] == "loss")
        .map(|e| e["loss"]["exec"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn ten_thousand_execs_are_all_reported_or_accounted_for() {
    require_root();
    let _g = serial();
    const N: usize = 10_000;
    let agent = start_agent(&["--no-snapshot"]);
    let mark = marker("burst");
    exec_burst(N as u32, &mark);
    let seen = settle(&agent, &mark, N);
    let events = agent.stop();
    let seen_final = events
        .iter()
        .filter(|e| e["kind"] == "exec" && argv_of(e).get(1) == Some(&mark))
        .count();
    assert!(seen_final >= seen);
    assert!(
        seen_final <= N,
        "{seen_final} exec events for {N} execs: duplicates"
    );
    let lost = lost_execs(&events) as usize;
    eprintln!("burst: {seen_final}/{N} exec events, {lost} reported lost");
    assert!(
        seen_final + lost >= N,
        "{} execs missing but only {lost} reported lost",
        N - seen_final
    );
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    require_root();
    let _g = serial();
    const N: usize = 2_000;
    // Smallest ring (64 KiB, ~100 exec records) and a stopped reader:
    // the burst must overflow, and every drop must be reported.
    let agent = start_agent(&["--no-snapshot", "--ring-buffer-bytes", "65536"]);
    let mark = marker("overflow");
    agent.signal(libc::SIGSTOP);
    exec_burst(N as u32, &mark);
    agent.signal(libc::SIGCONT);
    let seen = settle(&agent, &mark, N);
    // Let the next loss report (1 s interval) come out.
    agent.wait_for("a loss event", Duration::from_secs(20), |e| {
        e["kind"] == "loss" && e["loss"]["exec"].as_u64().unwrap_or(0) > 0
    });
    let events = agent.stop();
    let lost = lost_execs(&events) as usize;
    eprintln!("overflow: {seen}/{N} exec events, {lost} reported lost");
    assert!(
        seen < N,
        "the ring buffer did not overflow; the test proves nothing"
    );
    assert!(
        seen + lost >= N,
        "{} execs missing but only {lost} reported lost",
        N - seen
    );
}
