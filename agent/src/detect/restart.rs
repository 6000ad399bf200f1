//! Crash loops (`container.restart_loop`): a pod container whose init
//! process exited more than `settings.restart_loop_count` times within
//! `settings.restart_loop_minutes`.
//!
//! A pod container is (pod uid, container name), or outside a pod
//! (containerd namespace, container name): each restart is a new
//! container (and cgroup), often a new container id, so the count lives
//! here, keyed by that pair, and survives the container's deletion.
//!
//! A restart is an exit of a container's init. The init is the first
//! process that is not runc's own to exec in a cgroup whose start was
//! seen (runc's `runc:[..]` processes come first in a new container's
//! cgroup; `runc:[2:INIT]` execs the entrypoint). In a cgroup whose start
//! was not seen (a container running when the agent started) the init is
//! not known, and no process of it is taken for one (so a `kubectl exec`
//! there is not), until the container restarts in a new cgroup.
//!
//! Bounded: cgroups followed, pod containers tracked (fewer when the
//! count asks for many exits each) and exits kept per pod container (the
//! last `count + 1`, all the check needs); entries out of the window go
//! first when room is needed.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::hit::Hit;
use crate::{
    container::meta::ContainerMeta,
    event::{Event, Kind, Restarts},
    policy::{Policy, RuleId},
};

/// Cgroups whose init is followed at most.
const MAX_CGROUPS: usize = 8192;
/// Pod containers tracked at most.
const MAX_LOOPS: usize = 4096;
/// Exits kept over all pod containers at most (each keeps `count + 1`).
const MAX_EXITS: usize = 65_536;

/// What the policy asks: more than `count` exits within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
}

impl Limit {
    pub fn of(p: &Policy) -> Self {
        Limit {
            count: p.settings.restart_loop_count.max(1),
            window: Duration::from_secs(p.settings.restart_loop_minutes.max(1) * 60),
        }
    }

    /// Exits kept per pod container: enough to see `count + 1`.
    fn kept(self) -> usize {
        self.count as usize + 1
    }

    /// Pod containers tracked at most under this limit.
    fn loops(self) -> usize {
        (MAX_EXITS / self.kept()).clamp(1, MAX_LOOPS)
    }
}

/// What is known of a cgroup's init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    /// runc was seen starting it; the next exec is the init.
    Starting,
    Pid(u32),
    /// The start was not seen: no init known.
    Unknown,
}

/// The exits of one pod container.
#[derive(Debug, Default)]
struct Exits {
    /// (when, exit code), oldest first.
    exits: VecDeque<(Instant, i32)>,
    /// When this loop was last reported.
    reported: Option<Instant>,
}

impl Exits {
    /// Nothing in it counts any more at `now`.
    fn stale(&self, now: Instant, window: Duration) -> bool {
        let old = |t: Instant| now.duration_since(t) >= window;
        self.exits.back().is_none_or(|(t, _)| old(*t)) && self.reported.is_none_or(old)
    }
}

/// Inits followed per cgroup, exits per pod container.
#[derive(Debug, Default)]
pub struct Loops {
    cgroups: HashMap<u64, Init>,
    loops: HashMap<String, Exits>,
}

/// The exit code a restart is counted with: the code, or 128 + the signal.
pub fn exit_code(ev: &Event) -> i32 {
    match &ev.exit {
        Some(x) => match (x.code, x.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => i32::try_from(x.raw).unwrap_or(i32::MAX),
        },
        None => 0,
    }
}

/// The pod container an event's container belongs to: `POD-UID/NAME` in
/// a pod, `CONTAINERD-NAMESPACE/NAME` outside one.
pub fn pod_container(ev: &Event, meta: &ContainerMeta) -> String {
    let uid = ev
        .container
        .as_ref()
        .and_then(|c| c.pod.as_ref())
        .or(meta.pod.as_ref())
        .map(|p| p.uid.as_str())
        .filter(|u| !u.is_empty());
    match uid {
        Some(uid) => format!("{uid}/{}", meta.name),
        None => format!("{}/{}", meta.namespace, meta.name),
    }
}

impl Loops {
    /// One attributed event: a hit when it is the init's exit that makes
    /// its pod container a loop.
    pub fn observe(
        &mut self,
        p: &Policy,
        ev: &Event,
        meta: &ContainerMeta,
        now: Instant,
    ) -> Option<Hit> {
        let pr = ev.process.as_ref()?;
        if ev.snapshot {
            // Running before the agent: its start was not seen.
            self.follow(pr.cgroup_id, Kind::Fork, false, pr.pid);
            return None;
        }
        let runc = pr.comm.starts_with("runc:");
        if !self.follow(pr.cgroup_id, ev.kind, runc, pr.pid) {
            return None;
        }
        let key = pod_container(ev, meta);
        let limit = Limit::of(p);
        let r = self.exit(&key, exit_code(ev), now, limit)?;
        let codes: Vec<String> = r.exit_codes.iter().map(i32::to_string).collect();
        let mut h = Hit::new(
            RuleId::ContainerRestartLoop,
            key.clone(),
            format!(
                "container {key} exited {} times in {} minutes (exit codes {})",
                r.count,
                limit.window.as_secs() / 60,
                codes.join(", ")
            ),
        );
        h.restarts = Some(r);
        Some(h)
    }

    /// Follow a cgroup's init through one event (`runc`: of a runc
    /// process); true when it is the init's exit.
    fn follow(&mut self, cgroup: u64, kind: Kind, runc: bool, pid: u32) -> bool {
        if cgroup == 0 {
            return false;
        }
        if !self.cgroups.contains_key(&cgroup) && self.cgroups.len() >= MAX_CGROUPS {
            // Unknown ones first; then all (their inits become unknown:
            // restarts missed, never invented).
            self.cgroups.retain(|_, i| *i != Init::Unknown);
            if self.cgroups.len() >= MAX_CGROUPS {
                self.cgroups.clear();
            }
        }
        let first = if runc { Init::Starting } else { Init::Unknown };
        let init = self.cgroups.entry(cgroup).or_insert(first);
        match (*init, kind) {
            (Init::Starting, Kind::Exec) if !runc => {
                *init = Init::Pid(pid);
                false
            }
            (Init::Pid(p), Kind::Exit) if p == pid => {
                // The cgroup ends with its init; a run of the same
                // container id again has a new one.
                self.cgroups.remove(&cgroup);
                true
            }
            _ => false,
        }
    }

    /// Count an exit of `key`'s init: the restarts when it makes a loop
    /// not reported in the last window.
    pub fn exit(&mut self, key: &str, code: i32, now: Instant, limit: Limit) -> Option<Restarts> {
        if !self.loops.contains_key(key) {
            self.make_room(now, limit);
        }
        let e = self.loops.entry(key.to_owned()).or_default();
        e.exits.push_back((now, code));
        while e.exits.len() > limit.kept() {
            e.exits.pop_front();
        }
        while e
            .exits
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= limit.window)
        {
            e.exits.pop_front();
        }
        let looping = e.exits.len() > limit.count as usize;
        let quiet = e
            .reported
            .is_none_or(|r| now.duration_since(r) >= limit.window);
        if !(looping && quiet) {
            return None;
        }
        e.reported = Some(now);
        Some(Restarts {
            count: u32::try_from(e.exits.len()).unwrap_or(u32::MAX),
            window_s: limit.window.as_secs(),
            exit_codes: e.exits.iter().map(|(_, c)| *c).collect(),
        })
    }

    /// Room for one more pod container: stale entries go, then the one
    /// whose last exit is oldest.
    fn make_room(&mut self, now: Instant, limit: Limit) {
        let max = limit.loops();
        if self.loops.len() < max {
            return;
        }
        self.loops.retain(|_, e| !e.stale(now, limit.window));
        while self.loops.len() >= max {
            let Some(oldest) = self
                .loops
                .iter()
                .min_by_key(|(_, e)| e.exits.back().map(|(t, _)| *t))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.loops.remove(&oldest);
        }
    }

    /// (cgroups followed, pod containers tracked, exits kept).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize) {
        let exits = self.loops.values().map(|e| e.exits.len()).sum();
        (self.cgroups.len(), self.loops.len(), exits)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::container::meta::Pod;
    use crate::event::{Container, ExitInfo, Process, Runtime};
    use spyglass_proto::model::Timestamp;

    const MIN: Duration = Duration::from_secs(60);

    fn limit(count: u32, minutes: u64) -> Limit {
        Limit {
            count,
            window: MIN * u32::try_from(minutes).unwrap(),
        }
    }

    fn policy(count: u32, minutes: u64) -> Policy {
        let mut p = Policy::default();
        p.settings.restart_loop_count = count;
        p.settings.restart_loop_minutes = minutes;
        p
    }

    fn meta(name: &str, pod_uid: Option<&str>) -> Arc<ContainerMeta> {
        Arc::new(ContainerMeta {
            id: format!("id-{name}"),
            name: name.into(),
            namespace: "k8s.io".into(),
            pod: pod_uid.map(|u| Pod {
                uid: u.into(),
                name: "web-1".into(),
                namespace: "default".into(),
                ..Pod::default()
            }),
            ..ContainerMeta::default()
        })
    }

    fn event(kind: Kind, cgroup: u64, pid: u32, comm: &str, meta: &Arc<ContainerMeta>) -> Event {
        let mut ev = Event::new(kind, Timestamp::default(), "node".into());
        ev.process = Some(Process {
            pid,
            comm: comm.into(),
            cgroup_id: cgroup,
            ..Process::default()
        });
        let mut c = Container::from_cgroup(meta.id.clone(), Runtime::Containerd, None);
        c.fill(meta);
        ev.container = Some(c);
        ev
    }

    fn exit(
        cgroup: u64,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
        m: &Arc<ContainerMeta>,
    ) -> Event {
        let mut ev = event(Kind::Exit, cgroup, pid, "sh", m);
        ev.exit = Some(ExitInfo {
            code,
            signal,
            raw: 0,
            oom: None,
        });
        ev
    }

    /// One run of a container in cgroup `cg`: runc forks, the init execs,
    /// a child of it execs and exits, then the init exits with `code`.
    fn run(
        l: &mut Loops,
        p: &Policy,
        m: &Arc<ContainerMeta>,
        cg: u64,
        code: i32,
        now: Instant,
    ) -> Option<Hit> {
        let pid = u32::try_from(cg).unwrap() * 10;
        let mut hits = Vec::new();
        for ev in [
            event(Kind::Fork, cg, pid, "runc:[1:CHILD]", m),
            event(Kind::Exec, cg, pid, "sh", m),
            event(Kind::Exec, cg, pid + 1, "sleep", m),
            exit(cg, pid + 1, Some(0), None, m),
            exit(cg, pid, Some(code), None, m),
        ] {
            hits.extend(l.observe(p, &ev, m, now));
        }
        assert!(hits.len() <= 1, "{hits:?}");
        hits.pop()
    }

    #[test]
    fn more_than_count_init_exits_in_the_window_is_one_finding() {
        let (p, m, t0) = (policy(3, 1), meta("app", Some("uid-1")), Instant::now());
        let mut l = Loops::default();
        for i in 0..3 {
            assert_eq!(
                run(&mut l, &p, &m, 1 + i, 3, t0 + Duration::from_secs(i)),
                None
            );
        }
        let h = run(&mut l, &p, &m, 4, 3, t0 + Duration::from_secs(3)).expect("the 4th exit");
        assert_eq!(h.rule, RuleId::ContainerRestartLoop);
        assert_eq!(h.subject, "uid-1/app");
        assert_eq!(
            h.restarts,
            Some(Restarts {
                count: 4,
                window_s: 60,
                exit_codes: vec![3, 3, 3, 3]
            })
        );
        assert_eq!(
            h.summary,
            "container uid-1/app exited 4 times in 1 minutes (exit codes 3, 3, 3, 3)"
        );
        // Once per loop: more exits in the same window add nothing.
        for i in 4..8 {
            assert_eq!(
                run(&mut l, &p, &m, 1 + i, 3, t0 + Duration::from_secs(i)),
                None
            );
        }
    }

    #[test]
    fn a_loop_is_reported_again_after_its_window_with_new_exits() {
        let (lim, t0) = (limit(2, 1), Instant::now());
        let mut l = Loops::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(l.exit("k", 1, at(0), lim).is_none());
        assert!(l.exit("k", 2, at(1), lim).is_none());
        assert_eq!(l.exit("k", 3, at(2), lim).unwrap().exit_codes, [1, 2, 3]);
        assert!(l.exit("k", 4, at(30), lim).is_none());
        // A window after the report, three exits within one window: again.
        assert!(l.exit("k", 5, at(62), lim).is_none());
        let r = l.exit("k", 6, at(63), lim).unwrap();
        assert_eq!((r.count, r.window_s, r.exit_codes), (3, 60, vec![4, 5, 6]));
    }

    #[test]
    fn the_window_slides_exits_older_than_it_do_not_count() {
        let (lim, t0) = (limit(3, 1), Instant::now());
        let mut l = Loops::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // One exit every 30 s: never four within 60 s.
        for i in 0..10 {
            assert!(l.exit("k", 1, at(i * 30), lim).is_none(), "exit {i}");
        }
        // Two more quickly: with the two at 240 and 270 s, four in the window.
        assert!(l.exit("k", 1, at(271), lim).is_none());
        let r = l.exit("k", 2, at(272), lim).unwrap();
        assert_eq!((r.count, r.exit_codes), (4, vec![1, 1, 1, 2]));
    }

    #[test]
    fn a_signal_counts_as_128_plus_n() {
        let m = meta("x", None);
        assert_eq!(exit_code(&exit(1, 1, None, Some(9), &m)), 137);
        assert_eq!(exit_code(&exit(1, 1, Some(3), None, &m)), 3);
        let (p, t0) = (policy(1, 1), Instant::now());
        let mut l = Loops::default();
        l.observe(&p, &event(Kind::Fork, 7, 70, "runc:[1:CHILD]", &m), &m, t0);
        l.observe(&p, &event(Kind::Exec, 7, 70, "sh", &m), &m, t0);
        assert!(l
            .observe(&p, &exit(7, 70, None, Some(9), &m), &m, t0)
            .is_none());
        l.observe(&p, &event(Kind::Fork, 8, 80, "runc:[1:CHILD]", &m), &m, t0);
        l.observe(&p, &event(Kind::Exec, 8, 80, "sh", &m), &m, t0);
        let h = l
            .observe(&p, &exit(8, 80, None, Some(15), &m), &m, t0)
            .unwrap();
        assert_eq!(h.restarts.unwrap().exit_codes, [137, 143]);
        // Outside a pod: the containerd namespace and the name.
        assert_eq!(h.subject, "k8s.io/x");
    }

    #[test]
    fn only_the_init_of_a_cgroup_whose_start_was_seen_counts() {
        let (p, m, t0) = (policy(1, 1), meta("app", Some("u")), Instant::now());
        let mut l = Loops::default();
        // A container running before: its processes' exits never count.
        for pid in [5, 6, 7] {
            l.observe(&p, &event(Kind::Exec, 2, pid, "sh", &m), &m, t0);
            assert!(l
                .observe(&p, &exit(2, pid, Some(1), None, &m), &m, t0)
                .is_none());
        }
        // A snapshot event makes the cgroup unknown even if runc follows.
        let mut snap = event(Kind::Exec, 3, 30, "sh", &m);
        snap.snapshot = true;
        l.observe(&p, &snap, &m, t0);
        l.observe(&p, &event(Kind::Fork, 3, 31, "runc:[1:CHILD]", &m), &m, t0);
        l.observe(&p, &event(Kind::Exec, 3, 32, "sh", &m), &m, t0);
        assert!(l
            .observe(&p, &exit(3, 32, Some(1), None, &m), &m, t0)
            .is_none());
        assert_eq!(l.sizes().2, 0, "no exit counted");
        // Children of a seen init, and runc's own exits, do not count.
        assert_eq!(run(&mut l, &p, &m, 4, 1, t0), None);
        assert_eq!(l.sizes().2, 1, "only the init's exit");
        assert!(run(&mut l, &p, &m, 5, 1, t0).is_some());
    }

    #[test]
    fn the_same_cgroup_id_again_gets_a_new_init_and_other_names_are_apart() {
        let (p, t0) = (policy(1, 1), Instant::now());
        let (a, b) = (meta("a", None), meta("b", None));
        let mut l = Loops::default();
        assert_eq!(run(&mut l, &p, &b, 9, 0, t0), None);
        assert_eq!(run(&mut l, &p, &a, 9, 0, t0), None);
        assert_eq!(
            l.sizes(),
            (0, 2, 2),
            "the cgroup is forgotten with its init"
        );
        assert!(run(&mut l, &p, &a, 9, 0, t0).is_some());
        // Same name in another pod: another pod container.
        let other = meta("a", Some("pod-2"));
        assert_eq!(run(&mut l, &p, &other, 10, 0, t0), None);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = Loops::default();
        // Exits kept per pod container: count + 1.
        let lim = limit(3, 10);
        for i in 0..100 {
            l.exit(
                "k",
                i,
                t0 + Duration::from_secs(u64::try_from(i).unwrap()),
                lim,
            );
        }
        assert_eq!(l.sizes().2, 4);
        // Pod containers tracked: the oldest go first.
        for i in 0..MAX_LOOPS + 10 {
            l.exit(
                &format!("c{i}"),
                0,
                t0 + Duration::from_millis(200 + i as u64),
                lim,
            );
        }
        assert_eq!(l.sizes().1, MAX_LOOPS);
        assert!(
            !l.loops.contains_key("c0") && l.loops.contains_key(&format!("c{}", MAX_LOOPS + 9))
        );
        // A large count keeps fewer pod containers (exits overall bounded).
        let big = limit(10_000, 10);
        assert_eq!(big.loops(), MAX_EXITS / 10_001);
        let mut l = Loops::default();
        for i in 0..20 {
            l.exit(&format!("c{i}"), 0, t0, big);
        }
        assert_eq!(l.sizes().1, MAX_EXITS / 10_001);
        // Stale entries go before live ones.
        let mut l = Loops::default();
        let lim = limit(1, 1);
        for i in 0..lim.loops() {
            l.exit(&format!("old{i}"), 0, t0, lim);
        }
        l.exit("new", 0, t0 + 2 * MIN, lim);
        assert_eq!(l.sizes().1, 1);
        // Cgroups followed.
        let (p, m) = (policy(5, 10), meta("m", None));
        let mut l = Loops::default();
        for cg in 1..=(MAX_CGROUPS as u64 + 5) {
            l.observe(&p, &event(Kind::Exec, cg, 1, "sh", &m), &m, t0);
        }
        assert!(l.sizes().0 <= MAX_CGROUPS);
    }
}
