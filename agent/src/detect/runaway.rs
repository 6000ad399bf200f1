//! `process.cpu_runaway`: a container process over
//! `settings.cpu_runaway_percent` of one core for
//! `settings.cpu_runaway_seconds`. Fed by the sampler's readings of busy
//! containers' processes; one finding per process while it stays over,
//! a resolved update when it drops below, and with `action: kill` a
//! SIGKILL from user space through a pidfd.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tracing::warn;

use super::hit::{Ctx, Hit, Over, State};
use crate::{
    event::{Event, Outcome, Usage},
    policy::{Action, RuleId},
};

/// What a reading of one process is.
pub struct Reading<'a> {
    pub ev: &'a Event,
    pub start_ticks: u64,
}

fn usage(ev: &Event) -> Usage {
    ev.resources.as_deref().copied().unwrap_or_default()
}

fn who(ev: &Event) -> (u32, String) {
    ev.process
        .as_ref()
        .map_or((0, String::new()), |p| (p.pid, p.exe.to_string()))
}

/// What a process over its threshold is kept under: (pid, start ticks).
pub fn key(ev: &Event, start_ticks: u64) -> (u32, u64) {
    (who(ev).0, start_ticks)
}

/// The subject: the process, as `pid N EXE`.
fn subject(ev: &Event) -> String {
    let (pid, exe) = who(ev);
    format!("pid {pid} {exe}")
}

/// One reading of one process; a hit when it has been over the threshold
/// long enough (first time), or is back under it after a finding.
pub fn check(c: &Ctx, r: &Reading, state: &mut State, now: Instant) -> Option<Hit> {
    let s = &c.policy.settings;
    let u = usage(r.ev);
    let key = key(r.ev, r.start_ticks);
    let pid = key.0;
    if u.cpu_percent < s.cpu_runaway_percent {
        let over = state.runaways.remove(&key)?;
        return over
            .reported
            .then(|| resolved(c, r.ev, s.cpu_runaway_percent));
    }
    let over = state.runaways.entry(key).or_insert_with(|| Over {
        since: now
            .checked_sub(Duration::from_millis(u.window_ms))
            .unwrap_or(now),
        start: u.cpu_total_ms.saturating_sub(u.cpu_ms),
        reported: false,
        last: None,
    });
    over.last = Some(r.ev.clone());
    let lasted = now.saturating_duration_since(over.since);
    if over.reported || lasted < Duration::from_secs(s.cpu_runaway_seconds) {
        return None;
    }
    over.reported = true;
    let start = over.start;
    let mut evidence = r.ev.clone();
    let window_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX).max(1);
    let cpu_ms = u.cpu_total_ms.saturating_sub(start);
    evidence.resources = Some(Box::new(Usage {
        window_ms,
        cpu_ms,
        cpu_percent: u32::try_from(cpu_ms.saturating_mul(100) / window_ms).unwrap_or(u32::MAX),
        ..u
    }));
    let mut h = found(c, &evidence, lasted);
    if let Some(done) = act(c, pid, r.start_ticks) {
        h.summary.push_str(&done.note);
        h.outcome = done.outcome;
        if done.outcome.is_some() {
            state.runaways.remove(&key);
        }
    }
    h.evidence = Some(evidence);
    Some(h)
}

/// The container is no longer busy enough to read its processes: every
/// process over before is under now (or gone).
pub fn settle(c: &Ctx, state: &mut State) -> Vec<Hit> {
    let threshold = c.policy.settings.cpu_runaway_percent;
    let mut out = Vec::new();
    for (_, over) in state.runaways.drain() {
        if let (true, Some(last)) = (over.reported, over.last) {
            let mut h = resolved(c, &last, threshold);
            h.evidence = Some(last);
            out.push(h);
        }
    }
    out
}

/// The container is still busy, and its processes were read: those over
/// before and absent from this reading (`present`: every process read)
/// have exited. A reported one gets its resolved update, an unreported
/// one is forgotten, so a busy container's short-lived busy processes
/// never pile up in `state`.
pub fn sweep(c: &Ctx, state: &mut State, present: &HashSet<(u32, u64)>) -> Vec<Hit> {
    let threshold = c.policy.settings.cpu_runaway_percent;
    let gone: Vec<(u32, u64)> = state
        .runaways
        .keys()
        .filter(|k| !present.contains(k))
        .copied()
        .collect();
    let mut out = Vec::new();
    for key in gone {
        let Some(over) = state.runaways.remove(&key) else {
            continue;
        };
        if let (true, Some(last)) = (over.reported, over.last) {
            let mut h = resolved(c, &last, threshold);
            h.evidence = Some(last);
            out.push(h);
        }
    }
    out
}

fn found(c: &Ctx, evidence: &Event, lasted: Duration) -> Hit {
    let u = usage(evidence);
    let (pid, exe) = who(evidence);
    Hit::new(
        RuleId::ProcessCpuRunaway,
        subject(evidence),
        format!(
            "process {exe} (pid {pid}) in container {} used {}% of a core for {} s \
             ({:.1} CPU seconds)",
            c.meta.name,
            u.cpu_percent,
            lasted.as_secs(),
            u.cpu_ms as f64 / 1000.0
        ),
    )
}

fn resolved(c: &Ctx, ev: &Event, threshold: u32) -> Hit {
    let (pid, exe) = who(ev);
    let mut h = Hit::new(
        RuleId::ProcessCpuRunaway,
        subject(ev),
        format!(
            "process {exe} (pid {pid}) in container {} is back under {threshold}% of a core \
             (or has exited)",
            c.meta.name
        ),
    );
    h.resolved = true;
    h
}

/// What `kill` did: the outcome, and a note for the summary.
struct Acted {
    outcome: Option<Outcome>,
    note: String,
}

/// Apply the entry's `kill`, if it says so: never to a container's pid 1
/// unless the entry allows it.
fn act(c: &Ctx, pid: u32, start_ticks: u64) -> Option<Acted> {
    let eff = c.policy.effective(RuleId::ProcessCpuRunaway, c.meta)?;
    if eff.action != Action::Kill {
        return None;
    }
    let init_ok = eff.entry.is_some_and(|e| e.kill_container_init);
    if !init_ok && is_namespace_init(pid) {
        return Some(Acted {
            outcome: None,
            note: "; not killed: it is the container's pid 1 (the entry does not set \
                   kill_container_init)"
                .into(),
        });
    }
    Some(match sigkill(pid, start_ticks, &c.meta.id) {
        Ok(()) => Acted {
            outcome: Some(Outcome::Killed),
            note: "; killed (SIGKILL)".into(),
        },
        Err(e) => {
            warn!(pid, error = %e, "cannot kill a runaway process");
            Acted {
                outcome: None,
                note: format!("; not killed: {e}"),
            }
        }
    })
}

/// Whether `pid` is pid 1 of its own pid namespace (`NSpid`'s last
/// field); unreadable counts as yes (no kill on a guess).
fn is_namespace_init(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .is_some_and(|last| last == "1")
}

/// Whether `pid`'s cgroup v2 path (`/proc/PID/cgroup`, line `0::`) names
/// container `id`; false when unreadable.
fn in_container(pid: u32, id: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(crate::container::cgroup::parse)
        .is_some_and(|c| c.id == id)
}

/// SIGKILL to the process `pid` that started at `start_ticks`, through a
/// pidfd: the pid is checked after the pidfd holds the process, so a pid
/// reused in between is never signalled.
fn sigkill(pid: u32, start_ticks: u64, container: &str) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let now = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_err(|e| std::io::Error::other(format!("cannot read /proc/{pid}/stat: {e}")))?;
    if now.starttime != start_ticks {
        return Err(std::io::Error::other(
            "the process exited and its pid was reused",
        ));
    }
    if !in_container(pid, container) {
        return Err(std::io::Error::other(
            "the process is no longer in its container's cgroup",
        ));
    }
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal(fd, sig, info = NULL, flags = 0).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        container::meta::ContainerMeta,
        event::{Kind, Process},
        policy::Policy,
    };
    use spyglass_proto::model::Timestamp;

    fn reading(pid: u32, percent: u32, total_ms: u64) -> Event {
        let mut ev = Event::new(Kind::Resources, Timestamp(0), "n".into());
        ev.process = Some(Process {
            pid,
            exe: "/bin/spin".into(),
            ..Process::default()
        });
        ev.resources = Some(Box::new(Usage {
            window_ms: 2000,
            cpu_ms: u64::from(percent) * 20,
            cpu_percent: percent,
            cpu_total_ms: total_ms,
            ..Usage::default()
        }));
        ev
    }

    #[test]
    fn over_long_enough_once_then_resolved() {
        let mut policy = Policy::default();
        policy.settings.cpu_runaway_seconds = 6;
        let meta = ContainerMeta {
            name: "web".into(),
            ..ContainerMeta::default()
        };
        let mut state = State::default();
        let t0 = Instant::now();
        let mut hits = Vec::new();
        for i in 0..8u64 {
            let ev = reading(7, 99, 2000 * (i + 1));
            let c = Ctx::bare(&ev, &meta, &policy);
            let r = Reading {
                ev: &ev,
                start_ticks: 5,
            };
            hits.extend(check(&c, &r, &mut state, t0 + Duration::from_secs(2 * i)).map(|h| (i, h)));
        }
        // over since t0 - 2 s (the first window): 6 s reached at i = 2
        assert_eq!(hits.len(), 1, "{hits:?}");
        let (i, h) = &hits[0];
        assert_eq!(*i, 2);
        assert_eq!(h.subject, "pid 7 /bin/spin");
        assert!(!h.resolved && h.outcome.is_none());
        let u = h
            .evidence
            .as_ref()
            .unwrap()
            .resources
            .as_deref()
            .copied()
            .unwrap();
        assert_eq!((u.window_ms, u.cpu_ms), (6000, 5980));
        // a pid reused by another process is another process
        let ev = reading(7, 99, 100);
        let c = Ctx::bare(&ev, &meta, &policy);
        assert!(check(
            &c,
            &Reading {
                ev: &ev,
                start_ticks: 6
            },
            &mut state,
            t0
        )
        .is_none());
        // under again: one resolved update, then nothing
        let ev = reading(7, 3, 20_000);
        let c = Ctx::bare(&ev, &meta, &policy);
        let r = Reading {
            ev: &ev,
            start_ticks: 5,
        };
        let h = check(&c, &r, &mut state, t0 + Duration::from_secs(20)).unwrap();
        assert!(h.resolved);
        assert!(check(&c, &r, &mut state, t0 + Duration::from_secs(22)).is_none());
        // the other one was never reported: settling gives nothing
        assert!(settle(&c, &mut state).is_empty());
        assert!(state.runaways.is_empty());
    }

    #[test]
    fn a_busy_containers_exited_processes_are_closed_or_forgotten() {
        let mut policy = Policy::default();
        policy.settings.cpu_runaway_seconds = 4;
        let meta = ContainerMeta {
            name: "build".into(),
            ..ContainerMeta::default()
        };
        let mut state = State::default();
        let t0 = Instant::now();
        // pid 7 is over for two readings (reported), pid 8 for one
        let (a, b) = (reading(7, 99, 2000), reading(8, 99, 2000));
        let ctx = |ev| Ctx {
            ev,
            meta: &meta,
            policy: &policy,
            plan: None,
            digest: "",
        };
        let mut reported = Vec::new();
        for (ev, ticks, at) in [(&a, 5, 0), (&a, 5, 2), (&b, 6, 2)] {
            let r = Reading {
                ev,
                start_ticks: ticks,
            };
            let now = t0 + Duration::from_secs(at);
            reported.extend(check(&ctx(ev), &r, &mut state, now).map(|h| h.subject));
        }
        assert_eq!(reported, ["pid 7 /bin/spin"]);
        assert_eq!(state.runaways.len(), 2);
        // next reading: the container is still busy (pid 9 now), 7 and 8
        // have exited: 7's finding is closed, 8 is forgotten
        let c9 = reading(9, 99, 2000);
        let present = HashSet::from([key(&c9, 11)]);
        let hits = sweep(&ctx(&c9), &mut state, &present);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(hits[0].resolved);
        assert_eq!(hits[0].subject, "pid 7 /bin/spin");
        assert_eq!(
            hits[0]
                .evidence
                .as_ref()
                .and_then(|e| e.process.as_ref())
                .map(|p| p.pid),
            Some(7)
        );
        assert!(state.runaways.is_empty(), "{:?}", state.runaways.keys());
        // a process still read is kept
        let r = Reading {
            ev: &c9,
            start_ticks: 11,
        };
        assert!(
            check(&ctx(&c9), &r, &mut state, t0).is_none(),
            "over, not long enough"
        );
        assert!(sweep(&ctx(&c9), &mut state, &present).is_empty());
        assert_eq!(state.runaways.len(), 1);
    }
}
