//! The sampler: which container cgroups exist (a walk of the cgroup v2
//! tree every 30 s, or soon after containerd reports a new container),
//! their figures every interval, and the CPU of the processes of the
//! containers busy enough to hold a runaway (a process cannot use more
//! CPU than its container: an idle container costs no /proc read).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::debug;

use super::cgroupfs::{Dirs, Figures, Reader};
use crate::{container::cgroup::ContainerRef, event::Usage};

/// A full walk of the cgroup tree at least this often.
const WALK_EVERY: Duration = Duration::from_secs(30);
/// A walk asked for (a new container) at most this often.
const WALK_SOON: Duration = Duration::from_secs(1);
/// `memory.max` is read again after this long (it rarely changes).
const LIMIT_EVERY: Duration = Duration::from_secs(30);
/// Containers sampled at most.
const MAX_CONTAINERS: usize = 8192;

/// What the sampler is asked to do (from the policy's settings).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub interval: Duration,
    /// Read a container's processes when it used at least this percent of
    /// one core over the interval.
    pub busy_percent: u32,
    /// A `resources` report per container this often; None: never.
    pub report_every: Option<Duration>,
}

/// One process of a busy container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSample {
    pub pid: u32,
    /// Start time, clock ticks after boot (with the pid, the process).
    pub start_ticks: u64,
    /// CPU since the previous reading; `memory_bytes` is its resident set.
    pub usage: Usage,
}

/// One container's sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSample {
    pub container: ContainerRef,
    pub cgroup_id: u64,
    pub usage: Usage,
    /// Its processes, when the container was busy enough to read them.
    pub procs: Option<Vec<ProcSample>>,
    /// Its `resources` event is due.
    pub report: bool,
}

struct Prev {
    at: Instant,
    usage_usec: u64,
    memory: Option<u64>,
}

struct Tracked {
    container: ContainerRef,
    dirs: Dirs,
    cgroup_id: u64,
    prev: Option<Prev>,
    limit: Option<u64>,
    limit_read: Option<Instant>,
    last_report: Option<Instant>,
    /// (pid, start ticks) -> (read at, CPU ticks then).
    procs: HashMap<(u32, u64), (Instant, u64)>,
}

pub struct Sampler {
    root: PathBuf,
    containers: HashMap<String, Tracked>,
    reader: Reader,
    last_walk: Option<Instant>,
    walk_soon: bool,
    last_sample: Option<Instant>,
    ticks_per_s: u64,
    page_size: u64,
}

/// `part` of `whole` in percent, saturating.
fn percent(part: u64, whole: u64) -> u32 {
    if whole == 0 {
        return 0;
    }
    u32::try_from(part.saturating_mul(100) / whole).unwrap_or(u32::MAX)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A container's use between two readings.
pub fn container_usage(
    window: Duration,
    before: (u64, Option<u64>),
    f: &Figures,
    limit: Option<u64>,
) -> Usage {
    let window_ms = ms(window).max(1);
    let cpu_ms = f.usage_usec.saturating_sub(before.0) / 1000;
    let growth = match (before.1, f.memory_current) {
        (Some(b), Some(n)) => {
            let d = i128::from(n) - i128::from(b);
            i64::try_from(d * 1000 / i128::from(window_ms)).ok()
        }
        _ => None,
    };
    Usage {
        window_ms,
        cpu_ms,
        cpu_percent: percent(cpu_ms, window_ms),
        cpu_total_ms: f.usage_usec / 1000,
        memory_bytes: f.memory_current,
        memory_limit_bytes: limit,
        memory_percent: f.memory_current.zip(limit).map(|(m, l)| percent(m, l)),
        memory_growth_bytes_per_s: growth,
        pids: f.pids,
        oom_kills: f.oom_kills,
    }
}

/// A process's use between two readings of its CPU ticks.
pub fn process_usage(window: Duration, ticks: (u64, u64), ticks_per_s: u64, rss: u64) -> Usage {
    let to_ms = |t: u64| t.saturating_mul(1000) / ticks_per_s.max(1);
    let window_ms = ms(window).max(1);
    let cpu_ms = to_ms(ticks.1.saturating_sub(ticks.0));
    Usage {
        window_ms,
        cpu_ms,
        cpu_percent: percent(cpu_ms, window_ms),
        cpu_total_ms: to_ms(ticks.1),
        memory_bytes: Some(rss),
        ..Usage::default()
    }
}

impl Sampler {
    /// Sampling the cgroup v2 tree mounted at `root`.
    pub fn new(root: &Path) -> Self {
        Sampler {
            root: root.to_owned(),
            containers: HashMap::new(),
            reader: Reader::default(),
            last_walk: None,
            walk_soon: true,
            last_sample: None,
            ticks_per_s: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
        }
    }

    /// Containers being sampled.
    pub fn tracked(&self) -> usize {
        self.containers.len()
    }

    /// Whether a sample is due at `now`.
    pub fn due(&self, now: Instant, cfg: &Config) -> bool {
        self.last_sample
            .is_none_or(|t| now.saturating_duration_since(t) >= cfg.interval)
    }

    /// A container appeared: look for its cgroup soon.
    pub fn rediscover(&mut self) {
        self.walk_soon = true;
    }

    /// A deleted container is no longer sampled.
    pub fn forget(&mut self, id: &str) {
        self.containers.remove(id);
    }

    fn discover(&mut self, now: Instant) {
        let since = self.last_walk.map(|t| now.saturating_duration_since(t));
        let due = since.is_none_or(|s| s >= WALK_EVERY || (self.walk_soon && s >= WALK_SOON));
        if !due {
            return;
        }
        self.last_walk = Some(now);
        self.walk_soon = false;
        let found = crate::container::cgroup::containers(&self.root);
        self.containers.retain(|id, _| found.contains_key(id));
        for (id, (container, rel, cgroup_id)) in found {
            if self.containers.len() >= MAX_CONTAINERS {
                break;
            }
            // a new container, or the same id in a new cgroup (re-created)
            if self
                .containers
                .get(&id)
                .is_some_and(|t| t.cgroup_id == cgroup_id)
            {
                continue;
            }
            let t = Tracked {
                container,
                dirs: Dirs::of(&self.root, &rel),
                cgroup_id,
                prev: None,
                limit: None,
                limit_read: None,
                last_report: None,
                procs: HashMap::new(),
            };
            self.containers.insert(id, t);
        }
    }

    /// Sample every container (call when [`Sampler::due`]).
    pub fn sample(&mut self, now: Instant, cfg: &Config) -> Vec<ContainerSample> {
        self.last_sample = Some(now);
        self.discover(now);
        let mut out = Vec::with_capacity(self.containers.len());
        let mut gone = Vec::new();
        let (ticks_per_s, page_size) = (self.ticks_per_s, self.page_size);
        for (id, t) in &mut self.containers {
            let f = match self.reader.figures(&t.dirs) {
                Ok(f) => f,
                Err(e) => {
                    debug!(container = %id, error = %e, "no longer sampled");
                    gone.push(id.clone());
                    continue;
                }
            };
            if t.limit_read
                .is_none_or(|r| now.saturating_duration_since(r) >= LIMIT_EVERY)
            {
                t.limit = self.reader.memory_max(&t.dirs);
                t.limit_read = Some(now);
            }
            let prev = t.prev.replace(Prev {
                at: now,
                usage_usec: f.usage_usec,
                memory: f.memory_current,
            });
            let Some(prev) = prev else { continue };
            let window = now.saturating_duration_since(prev.at);
            let usage = container_usage(window, (prev.usage_usec, prev.memory), &f, t.limit);
            let procs = if usage.cpu_percent >= cfg.busy_percent {
                let pids = self.reader.pids(&t.dirs.v2);
                Some(read_procs(&mut t.procs, &pids, now, ticks_per_s, page_size))
            } else {
                t.procs.clear();
                None
            };
            let report = cfg.report_every.is_some_and(|every| {
                t.last_report
                    .is_none_or(|r| now.saturating_duration_since(r) >= every)
            });
            if report {
                t.last_report = Some(now);
            }
            out.push(ContainerSample {
                container: t.container.clone(),
                cgroup_id: t.cgroup_id,
                usage,
                procs,
                report,
            });
        }
        for id in gone {
            self.containers.remove(&id);
        }
        out
    }
}

/// The CPU of `pids` since their previous reading (a process read for the
/// first time has none yet); `seen` keeps this reading for the next.
fn read_procs(
    seen: &mut HashMap<(u32, u64), (Instant, u64)>,
    pids: &[u32],
    now: Instant,
    ticks_per_s: u64,
    page_size: u64,
) -> Vec<ProcSample> {
    let mut next = HashMap::with_capacity(pids.len());
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(stat) = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) else {
            continue; // exited since the cgroup listed it
        };
        let key = (pid, stat.starttime);
        let ticks = stat.utime.saturating_add(stat.stime);
        if let Some((at, before)) = seen.get(&key) {
            let window = now.saturating_duration_since(*at);
            let rss = stat.rss.saturating_mul(page_size);
            out.push(ProcSample {
                pid,
                start_ticks: stat.starttime,
                usage: process_usage(window, (*before, ticks), ticks_per_s, rss),
            });
        }
        next.insert(key, (now, ticks));
    }
    *seen = next;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_use_over_a_window() {
        let f = Figures {
            usage_usec: 5_000_000,
            memory_current: Some(30 << 20),
            oom_kills: Some(0),
            pids: Some(4),
        };
        let u = container_usage(
            Duration::from_secs(2),
            (3_200_000, Some(28 << 20)),
            &f,
            Some(32 << 20),
        );
        assert_eq!(u.window_ms, 2000);
        assert_eq!(u.cpu_ms, 1800);
        assert_eq!(u.cpu_percent, 90);
        assert_eq!(u.cpu_total_ms, 5000);
        assert_eq!(u.memory_percent, Some(93));
        assert_eq!(u.memory_growth_bytes_per_s, Some(1 << 20));
        // no limit: no percentage; a counter that went back (a new cgroup
        // under the same name) is no negative CPU
        let u = container_usage(Duration::ZERO, (9_000_000, None), &f, None);
        assert_eq!(
            (
                u.cpu_ms,
                u.window_ms,
                u.memory_percent,
                u.memory_growth_bytes_per_s
            ),
            (0, 1, None, None)
        );
    }

    #[test]
    fn process_use_over_a_window() {
        // 100 ticks per second: 190 ticks in 2 s is 95% of a core
        let u = process_usage(Duration::from_secs(2), (1000, 1190), 100, 4096);
        assert_eq!(
            (u.cpu_ms, u.cpu_percent, u.cpu_total_ms),
            (1900, 95, 11_900)
        );
        assert_eq!(u.memory_bytes, Some(4096));
        // two busy threads
        let u = process_usage(Duration::from_secs(1), (0, 200), 100, 0);
        assert_eq!(u.cpu_percent, 200);
    }
}
