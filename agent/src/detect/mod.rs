//! The detect stage: attributed events in, findings out (and, where the
//! policy says so, in-kernel actions set up per container). One owner:
//! the pipeline calls [`Detector::observe`] on every batch and
//! [`Detector::tick`] on its housekeeping timer.
pub mod baseline;
pub mod dedup;
pub mod enforce;
mod exec;
mod fork;
pub mod hit;
mod memory;
mod network;
pub mod oom;
mod posture;
pub mod proc;
mod restart;
mod runaway;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use baseline::Baselines;
use dedup::{Dedup, Key, Limits};
use enforce::Enforcer;
use hit::{Ctx, Hit, State};

use crate::{
    container::{
        lifecycle::{Change, Observer},
        meta::ContainerMeta,
    },
    event::{Event, FindingInfo, Kind, Mitre, Outcome},
    policy::{info_of, Action, Policy, Severity},
};

/// Containers remembered (first-event checks, fork rates, upper layers).
const MAX_CONTAINERS: usize = 8192;
/// Forget a container after this long without events.
const CONTAINER_IDLE: Duration = Duration::from_secs(600);

/// One container's sample as events: its `resources` event and, when it
/// was busy enough for its processes to be read, theirs with each
/// process's start time in clock ticks.
pub struct Sampled {
    pub container: Event,
    pub procs: Option<Vec<(Event, u64)>>,
}

/// What the detector keeps per container.
#[derive(Default)]
struct Seen_ {
    /// The container's metadata, to plan enforcement again on reload.
    meta: Option<Arc<ContainerMeta>>,
    cgroups: Vec<u64>,
    checks: State,
    last: Option<Instant>,
}

pub struct Detector {
    policy: Arc<Policy>,
    containers: HashMap<String, Seen_>,
    dedup: Dedup,
    baselines: Baselines,
    enforcer: Option<Enforcer>,
    /// The `oom:mark_victim` probe is attached: exits name OOM victims
    /// (else the cgroups' OOM-kill counters are the only sign).
    oom_tracepoint: bool,
    /// Inits and their exits per pod container (container.restart_loop).
    restarts: restart::Loops,
    last_save: Option<Instant>,
    /// Findings emitted, by rule (for metrics).
    pub emitted: HashMap<crate::event::Name, u64>,
}

fn limits(p: &Policy) -> Limits {
    Limits {
        window: Duration::from_secs(p.settings.dedup_window_s.max(1)),
        per_minute: p.settings.max_findings_per_minute.max(1),
        max_keys: 65536,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Detector {
    pub fn new(policy: Policy, enforcer: Option<Enforcer>) -> Self {
        let b = &policy.settings.baseline;
        let path = (!b.state_file.is_empty()).then(|| PathBuf::from(&b.state_file));
        Detector {
            dedup: Dedup::new(limits(&policy)),
            baselines: Baselines::open(b.learn_s, path.as_deref()),
            policy: Arc::new(policy),
            containers: HashMap::new(),
            enforcer,
            oom_tracepoint: false,
            restarts: restart::Loops::default(),
            last_save: None,
            emitted: HashMap::new(),
        }
    }

    /// Replace the policy (already checked); enforcement follows for every
    /// container seen, and containers are checked again.
    pub fn set_policy(&mut self, policy: Policy) {
        self.dedup.set_limits(limits(&policy));
        self.policy = Arc::new(policy);
        // Enforcement follows at once for every cgroup enforced or seen
        // (not at its next event).
        if let Some(enf) = &mut self.enforcer {
            enf.replan(&self.policy);
            for seen in self.containers.values() {
                let Some(meta) = &seen.meta else { continue };
                let plan = enforce::plan(&self.policy, meta);
                for cg in &seen.cgroups {
                    enf.apply(*cg, meta, plan.clone());
                }
            }
        }
        for seen in self.containers.values_mut() {
            seen.checks.posture_checked = false;
        }
    }

    /// Whether the `oom:mark_victim` probe is attached.
    pub fn set_oom_tracepoint(&mut self, attached: bool) {
        self.oom_tracepoint = attached;
    }

    /// The settings in force.
    pub fn settings(&self) -> &crate::policy::Settings {
        &self.policy.settings
    }

    /// Findings of one container's sample: memory near its limit, and
    /// its processes' CPU (a runaway found, killed, or back under).
    pub fn sampled(&mut self, s: &Sampled, now: Instant) -> Vec<Event> {
        let Some(meta) = s.container.container.as_ref().and_then(|c| c.meta.clone()) else {
            return Vec::new();
        };
        let policy = self.policy.clone();
        if !self.containers.contains_key(&meta.id) && self.containers.len() >= MAX_CONTAINERS {
            return Vec::new();
        }
        let seen = self.containers.entry(meta.id.clone()).or_default();
        seen.last = Some(now);
        let state = &mut seen.checks;
        let digest = meta.image.digest.as_str();
        let ctx = |ev| Ctx {
            ev,
            meta: &meta,
            policy: &policy,
            plan: None,
            digest,
        };
        let mut hits: Vec<(Event, Hit)> = Vec::new();
        let c = ctx(&s.container);
        let oom = oom::on_resources(&c, &mut state.oom_kills, self.oom_tracepoint);
        for h in memory::check(&c, state, now).into_iter().chain(oom) {
            hits.push((s.container.clone(), h));
        }
        match &s.procs {
            None => {
                for h in runaway::settle(&ctx(&s.container), state) {
                    let ev = h.evidence.clone().unwrap_or_else(|| s.container.clone());
                    hits.push((ev, h));
                }
            }
            Some(procs) => {
                for (ev, start_ticks) in procs {
                    let r = runaway::Reading {
                        ev,
                        start_ticks: *start_ticks,
                    };
                    if let Some(h) = runaway::check(&ctx(ev), &r, state, now) {
                        hits.push((ev.clone(), h));
                    }
                }
                let present = procs.iter().map(|(ev, t)| runaway::key(ev, *t)).collect();
                for h in runaway::sweep(&ctx(&s.container), state, &present) {
                    let ev = h.evidence.clone().unwrap_or_else(|| s.container.clone());
                    hits.push((ev, h));
                }
            }
        }
        hits.into_iter()
            .filter_map(|(ev, h)| self.finding(&ev, &meta, h, now))
            .collect()
    }

    /// (cgroups enforced, plans not written for lack of room).
    pub fn enforcement(&self) -> (usize, u64) {
        self.enforcer
            .as_ref()
            .map_or((0, 0), |e| (e.cgroups(), e.write_failures))
    }

    /// Findings for a batch of events (in order).
    pub fn observe(&mut self, events: &[Event], now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for ev in events {
            // a container's lifecycle events are news of containerd, not
            // activity in it: the posture is checked on its first activity
            if matches!(ev.kind, Kind::Finding | Kind::Container) {
                continue;
            }
            let Some(meta) = ev.container.as_ref().and_then(|c| c.meta.clone()) else {
                continue;
            };
            let hits = self.check(ev, &meta, now);
            for h in hits {
                if let Some(f) = self.finding(ev, &meta, h, now) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// Updates (folded counts, rate-limit summaries), baseline saves and
    /// forgetting idle containers.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        // Baselines are written every 30 s at most (and at stop).
        if self
            .last_save
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30))
        {
            self.baselines.save();
            self.last_save = Some(now);
        }
        if self.containers.len() > MAX_CONTAINERS / 2 {
            self.containers.retain(|_, s| {
                s.last
                    .is_some_and(|l| now.duration_since(l) < CONTAINER_IDLE)
            });
        }
        let out = self.dedup.flush(now);
        for f in &out {
            if let Some(info) = &f.finding {
                *self.emitted.entry(info.rule_id.clone()).or_default() += 1;
            }
        }
        out
    }

    /// On stop: folded counts not yet reported, and the baselines.
    pub fn close(&mut self) -> Vec<Event> {
        self.baselines.save();
        self.dedup.flush_all()
    }

    /// Every hit of one event: the container's posture once, then the
    /// checks of the event's kind.
    fn check(&mut self, ev: &Event, shared: &Arc<ContainerMeta>, now: Instant) -> Vec<Hit> {
        let policy = self.policy.clone();
        let cgroup = ev.process.as_ref().map_or(0, |pr| pr.cgroup_id);
        self.track(ev, shared, cgroup, &policy, now);
        let seen = self.containers.get_mut(&shared.id).expect("tracked above");
        let mut hits = Vec::new();
        if !seen.checks.posture_checked {
            seen.checks.posture_checked = true;
            hits.extend(posture::check(&policy, shared));
        }
        let c = Ctx {
            ev,
            meta: shared,
            policy: &policy,
            plan: self.enforcer.as_ref().and_then(|e| e.plan_of(cgroup)),
            digest: shared.image.digest.as_str(),
        };
        let state = &mut seen.checks;
        let baselines = &mut self.baselines;
        match ev.kind {
            Kind::Exec => hits.extend(exec::check(&c, state, baselines)),
            Kind::Listen => hits.extend(network::listen(&c, baselines)),
            Kind::Connect => hits.extend(network::connect(&c, baselines)),
            Kind::Fork => hits.extend(fork::check(&policy, shared, state, now)),
            Kind::Exit => hits.extend(oom::check(&c)),
            _ => {}
        }
        hits.extend(self.restarts.observe(&policy, ev, shared, now));
        hits
    }

    /// The container's state, created on its first event; a new cgroup of
    /// it gets the container's enforcement plan. runc's own processes in
    /// the new cgroup come first; enforcement starts with the container's
    /// first process (so its entrypoint is not killed by a policy meant for
    /// what runs inside).
    fn track(
        &mut self,
        ev: &Event,
        shared: &Arc<ContainerMeta>,
        cgroup: u64,
        policy: &Policy,
        now: Instant,
    ) {
        let cid = &shared.id;
        if !self.containers.contains_key(cid) && self.containers.len() >= MAX_CONTAINERS {
            self.containers.clear();
        }
        let seen = self.containers.entry(cid.clone()).or_default();
        seen.last = Some(now);
        // The event's own shared copy, not a new one.
        let meta = seen.meta.get_or_insert_with(|| shared.clone());
        let runc = ev
            .process
            .as_ref()
            .is_some_and(|pr| pr.comm.starts_with("runc:"));
        if cgroup != 0 && !runc && !seen.cgroups.contains(&cgroup) {
            seen.cgroups.push(cgroup);
            if let Some(enf) = &mut self.enforcer {
                enf.apply(cgroup, meta, enforce::plan(policy, shared));
            }
        }
    }

    /// Policy, allow lists and dedup applied to a hit.
    fn finding(&mut self, ev: &Event, meta: &ContainerMeta, h: Hit, now: Instant) -> Option<Event> {
        let info = info_of(h.rule);
        // What the kernel did names the action, whatever the policy says
        // now (a reload may have changed it since).
        let acted = match h.outcome {
            Some(Outcome::Killed) => Some(Action::Kill),
            Some(Outcome::Denied) => Some(Action::DenyConnect),
            Some(Outcome::Unknown) | None => None,
        };
        let (severity, action) = match h.entry {
            // Custom rules: the entry that matched (allow lists applied).
            Some(e) => e,
            None => {
                // What the kernel did is always reported, even when the
                // policy no longer names the rule (a reload in between).
                let Some(eff) = self.policy.effective(h.rule, meta) else {
                    let action = acted?;
                    return self.emit(ev, meta, h, info.severity, action, now);
                };
                // Allow lists: by the evidence's destination or port.
                let (ip, port) = match &ev.network {
                    Some(n) if ev.kind == Kind::Listen => (None, Some(n.local.port)),
                    Some(n) => (n.remote.as_ref().map(|r| r.addr), None),
                    None => (None, None),
                };
                let exe = ev.process.as_ref().map_or("", |p| p.exe.as_ref());
                if (ev.kind == Kind::Exec && (eff.allows_exe(&h.subject) || eff.allows_exe(exe)))
                    || ip.is_some_and(|ip| eff.allows_ip(ip))
                    || port.is_some_and(|p| eff.allows_port(p))
                {
                    return None;
                }
                (eff.severity, acted.unwrap_or(eff.action))
            }
        };
        self.emit(ev, meta, h, severity, action, now)
    }

    /// The finding event, through dedup.
    fn emit(
        &mut self,
        ev: &Event,
        meta: &ContainerMeta,
        h: Hit,
        severity: Severity,
        action: Action,
        now: Instant,
    ) -> Option<Event> {
        let info = info_of(h.rule);
        let mut f = Event::new(Kind::Finding, ev.time, ev.node.clone());
        f.process = ev.process.clone();
        f.container = ev.container.clone();
        f.parent = ev.parent.clone();
        f.snapshot = ev.snapshot;
        f.finding = Some(Box::new(FindingInfo {
            rule_id: info.name.into(),
            severity,
            mitre: info.mitre.map(|(technique, name)| Mitre {
                technique: technique.into(),
                name: name.into(),
            }),
            summary: h.summary,
            subject: h.subject.clone(),
            action,
            outcome: h.outcome,
            count: 1,
            resolved: h.resolved,
            restarts: h.restarts,
            first_seen: ev.time,
            last_seen: ev.time,
            evidence: vec![h.evidence.unwrap_or_else(|| ev.clone())],
        }));
        let key = Key {
            container: meta.id.clone(),
            rule: h.rule,
            subject: h.subject,
            outcome: h.outcome,
            resolved: h.resolved,
        };
        if !self.dedup.hit(key, &f, now) {
            return None;
        }
        *self.emitted.entry(info.name.into()).or_default() += 1;
        Some(f)
    }
}

impl Observer for Detector {
    /// A deleted container's state goes, and its kernel entries with it;
    /// again when it is forgotten (events in flight during the grace may
    /// have made them anew).
    fn on_container(&mut self, change: &Change) {
        let (Change::Deleted(id) | Change::Forgotten(id)) = change;
        self.containers.remove(id);
        if let Some(enf) = &mut self.enforcer {
            enf.on_container(change);
        }
    }
}
