//! The detect stage: attributed events in, findings out (and, where the
//! policy says so, in-kernel actions set up per container). One owner:
//! the agent's main loop calls [`Detector::observe`] on every batch and
//! [`Detector::tick`] on its housekeeping timer.
pub mod baseline;
pub mod dedup;
pub mod enforce;
pub mod proc;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use baseline::{Baselines, Seen, What};
use dedup::{Dedup, Key, Limits};
use enforce::Enforcer;

use crate::{
    container::meta::ContainerMeta,
    event::{ConnectOutcome, Event, FindingInfo, Kind, Mitre, Outcome},
    policy::{addr, info_of, path_matches, Action, Policy, RuleId, Severity},
};

/// Containers remembered (first-event checks, fork rates, upper layers).
const MAX_CONTAINERS: usize = 8192;
/// Forget a container after this long without events.
const CONTAINER_IDLE: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Seen_ {
    posture_checked: bool,
    /// The container's metadata, to plan enforcement again on reload.
    meta: Option<Arc<ContainerMeta>>,
    cgroups: Vec<u64>,
    /// The overlay upper layer; `Some(None)` when the root is not an
    /// overlay (not read again).
    upper: Option<Option<PathBuf>>,
    fork_window: Option<Instant>,
    forks: u32,
    last: Option<Instant>,
}

/// One detection before policy and dedup.
struct Hit {
    rule: RuleId,
    subject: String,
    summary: String,
    outcome: Option<Outcome>,
    /// Custom rules: severity and action of the entry that matched.
    entry: Option<(Severity, Action)>,
}

fn hit(rule: RuleId, subject: impl Into<String>, summary: String) -> Hit {
    Hit {
        rule,
        subject: subject.into(),
        summary,
        outcome: None,
        entry: None,
    }
}

pub struct Detector {
    policy: Arc<Policy>,
    containers: HashMap<String, Seen_>,
    dedup: Dedup,
    baselines: Baselines,
    enforcer: Option<Enforcer>,
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

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
            seen.posture_checked = false;
        }
    }

    /// A container was deleted: forget it and drop its kernel entries.
    pub fn container_deleted(&mut self, id: &str) {
        self.containers.remove(id);
        if let Some(enf) = &mut self.enforcer {
            enf.forget_container(id);
        }
    }

    /// (cgroups enforced, plans not written for lack of room).
    pub fn enforcement(&self) -> (usize, u64) {
        self.enforcer
            .as_ref()
            .map(|e| (e.cgroups(), e.write_failures))
            .unwrap_or((0, 0))
    }

    /// Findings for a batch of events (in order).
    pub fn observe(&mut self, events: &[Event], now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for ev in events {
            if ev.kind == Kind::Finding {
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

    fn check(&mut self, ev: &Event, shared: &Arc<ContainerMeta>, now: Instant) -> Vec<Hit> {
        let meta: &ContainerMeta = shared;
        let policy = self.policy.clone();
        let p = &*policy;
        let mut hits = Vec::new();
        let cid = meta.id.clone();
        if !self.containers.contains_key(&cid) && self.containers.len() >= MAX_CONTAINERS {
            self.containers.clear();
        }
        let seen = self.containers.entry(cid.clone()).or_default();
        seen.last = Some(now);
        if seen.meta.is_none() {
            // The event's own shared copy, not a new one.
            seen.meta = Some(shared.clone());
        }
        let cgroup = ev.process.as_ref().map(|pr| pr.cgroup_id).unwrap_or(0);
        // runc's own processes in the new cgroup come first; enforcement
        // starts with the container's first process (so its entrypoint is
        // not killed by a policy meant for what runs inside).
        let runc = ev
            .process
            .as_ref()
            .is_some_and(|pr| pr.comm.starts_with("runc:"));
        if cgroup != 0 && !runc && !seen.cgroups.contains(&cgroup) {
            seen.cgroups.push(cgroup);
            if let (Some(enf), Some(m)) = (&mut self.enforcer, &seen.meta) {
                enf.apply(cgroup, m, enforce::plan(p, meta));
            }
        }
        if !seen.posture_checked {
            seen.posture_checked = true;
            hits.extend(posture_hits(p, meta));
        }
        let digest = meta.image.digest.as_str();
        match ev.kind {
            Kind::Exec => {
                let Some(pr) = &ev.process else { return hits };
                // The path given to execve when absolute. A relative one,
                // or a descriptor path, is resolved through /proc/PID/exe
                // (which may already name a later exec of the same pid:
                // only a fallback).
                let by_fd = pr.exe.starts_with("/dev/fd/") || pr.exe.starts_with("/proc/self/fd/");
                let real = if ev.snapshot || (pr.exe.starts_with('/') && !by_fd) {
                    None
                } else {
                    proc::exe(pr.pid)
                };
                let path = real.as_deref().unwrap_or(&pr.exe).to_owned();
                if ev.enforced.is_some() {
                    let rule = self
                        .enforcer
                        .as_ref()
                        .and_then(|e| e.plan_of(cgroup))
                        .and_then(|pl| pl.exec_rule(&pr.exe))
                        .unwrap_or(RuleId::ProcessExec);
                    // A custom rule: the kill entry that covers this path.
                    let entry = p
                        .custom(RuleId::ProcessExec, meta)
                        .find(|e| {
                            e.action == Action::Kill
                                && e.executables.iter().any(|x| path_matches(x, &pr.exe))
                        })
                        .filter(|_| rule == RuleId::ProcessExec)
                        .map(|e| (e.severity.unwrap_or(info_of(rule).severity), e.action));
                    hits.push(Hit {
                        outcome: Some(Outcome::Killed),
                        entry,
                        ..hit(
                            rule,
                            pr.exe.to_string(),
                            format!(
                                "killed at exec by policy: {} in container {}",
                                pr.exe, meta.name
                            ),
                        )
                    });
                    return hits;
                }
                let listed = p.custom(RuleId::ProcessExec, meta).find(|e| {
                    let hit_path = |x: &String| path_matches(x, &path) || path_matches(x, &pr.exe);
                    e.executables.iter().any(hit_path) && !e.allow.executables.iter().any(hit_path)
                });
                if let Some(e) = listed {
                    let sev = e.severity.unwrap_or(info_of(RuleId::ProcessExec).severity);
                    hits.push(Hit {
                        entry: Some((sev, e.action)),
                        ..hit(
                            RuleId::ProcessExec,
                            path.clone(),
                            format!("{path} executed in container {}", meta.name),
                        )
                    });
                }
                let name = basename(&path);
                let argv0 = pr.argv.first().map(|a| basename(a)).unwrap_or("");
                let is_shell = p.settings.shells.iter().any(|s| s == name || s == argv0);
                // The entrypoint itself; a script entrypoint runs as
                // [interpreter, script, args...] after the kernel reads #!.
                let is_entry = !meta.entrypoint.is_empty()
                    && (*pr.argv == *meta.entrypoint
                        || pr.argv.get(1..) == Some(&meta.entrypoint[..]));
                if is_shell && !is_entry {
                    hits.push(hit(
                        RuleId::ProcessShell,
                        pr.exe.to_string(),
                        format!(
                            "shell or interpreter {} started in container {} (not its entrypoint)",
                            pr.exe, meta.name
                        ),
                    ));
                }
                if p.settings
                    .writable_paths
                    .iter()
                    .any(|w| path.starts_with(w.as_str()) || pr.exe.starts_with(w.as_str()))
                {
                    hits.push(hit(
                        RuleId::ProcessWritablePath,
                        path.clone(),
                        format!(
                            "{path} executed from a writable path in container {}",
                            meta.name
                        ),
                    ));
                }
                let memfd = path.starts_with("/memfd:") || path.ends_with(" (deleted)") || by_fd;
                if memfd {
                    hits.push(hit(
                        RuleId::ProcessMemfd,
                        path.clone(),
                        format!("fileless execution ({path}) in container {}", meta.name),
                    ));
                } else if !ev.snapshot {
                    let seen = self.containers.get_mut(&cid).expect("inserted above");
                    if seen.upper.is_none() {
                        seen.upper = Some(proc::upperdir(pr.pid));
                    }
                    if let Some(Some(upper)) = &seen.upper {
                        if path.starts_with('/') && proc::in_upper(upper, &path) {
                            hits.push(hit(
                                RuleId::ProcessNotInImage,
                                path.clone(),
                                format!("{path} is not part of image {} (written after container {} started) and was executed", meta.image.reference, meta.name),
                            ));
                        }
                    }
                }
                // The path the program was started by (what an operator
                // recognises; the resolved file may be a multi-call binary).
                let started = pr.exe.to_string();
                if self
                    .baselines
                    .observe(digest, What::Executable, &started, unix_now())
                    == Seen::New
                {
                    hits.push(hit(
                        RuleId::BaselineExecutable,
                        started.clone(),
                        format!(
                            "{started} executed in container {}: new for image {}",
                            meta.name, meta.image.reference
                        ),
                    ));
                }
            }
            Kind::Listen => {
                let Some(n) = &ev.network else { return hits };
                let port = format!("{}/{}", n.local.port, n.protocol);
                let host_net = meta.posture.as_ref().is_some_and(|p| p.host_network);
                if host_net {
                    hits.push(hit(
                        RuleId::PortHostNetwork,
                        port.clone(),
                        format!(
                            "container {} listens on {}:{} in the host network namespace",
                            meta.name, n.local.addr, port
                        ),
                    ));
                } else if n.wildcard == Some(true) {
                    hits.push(hit(
                        RuleId::PortWildcard,
                        port.clone(),
                        format!(
                            "container {} listens on {}:{} (every interface)",
                            meta.name, n.local.addr, port
                        ),
                    ));
                }
                let local = n.local.addr.is_loopback();
                if !local && !meta.image.exposed_ports.contains(&port) {
                    hits.push(hit(
                        RuleId::PortUndeclared,
                        port.clone(),
                        format!(
                            "container {} listens on {port}, which image {} does not declare",
                            meta.name, meta.image.reference
                        ),
                    ));
                }
                if self
                    .baselines
                    .observe(digest, What::Port, &port, unix_now())
                    == Seen::New
                {
                    hits.push(hit(
                        RuleId::BaselinePort,
                        port.clone(),
                        format!(
                            "container {} listens on {port}: new for image {}",
                            meta.name, meta.image.reference
                        ),
                    ));
                }
            }
            Kind::Connect => {
                let Some(n) = &ev.network else { return hits };
                let Some(remote) = &n.remote else { return hits };
                let ip = remote.addr;
                let dest = format!("{}:{}", remote.addr, remote.port);
                if n.outcome == Some(ConnectOutcome::Denied) {
                    let rule = self
                        .enforcer
                        .as_ref()
                        .and_then(|e| e.plan_of(cgroup))
                        .and_then(|pl| pl.connect_rule(ip))
                        .unwrap_or(RuleId::NetworkConnect);
                    let entry = p
                        .custom(RuleId::NetworkConnect, meta)
                        .find(|e| {
                            e.action == Action::DenyConnect
                                && e.destinations.iter().any(|c| c.contains(ip))
                        })
                        .filter(|_| rule == RuleId::NetworkConnect)
                        .map(|e| (e.severity.unwrap_or(info_of(rule).severity), e.action));
                    hits.push(Hit {
                        outcome: Some(Outcome::Denied),
                        entry,
                        ..hit(
                            rule,
                            dest.clone(),
                            format!(
                                "connection to {dest} from container {} refused by policy",
                                meta.name
                            ),
                        )
                    });
                    return hits;
                }
                let listed = p.custom(RuleId::NetworkConnect, meta).find(|e| {
                    e.destinations.iter().any(|c| c.contains(ip))
                        && !e.allow.destinations.iter().any(|c| c.contains(ip))
                });
                if let Some(e) = listed {
                    let sev = e
                        .severity
                        .unwrap_or(info_of(RuleId::NetworkConnect).severity);
                    hits.push(Hit {
                        entry: Some((sev, e.action)),
                        ..hit(
                            RuleId::NetworkConnect,
                            dest.clone(),
                            format!("container {} connects to {dest}", meta.name),
                        )
                    });
                }
                if addr::is_internet(ip, &p.settings.egress_allow) {
                    hits.push(hit(
                        RuleId::InternetEgress,
                        remote.addr.to_string(),
                        format!(
                            "container {} connects to internet address {dest}",
                            meta.name
                        ),
                    ));
                    if self.baselines.observe(
                        digest,
                        What::Destination,
                        &remote.addr.to_string(),
                        unix_now(),
                    ) == Seen::New
                    {
                        hits.push(hit(
                            RuleId::BaselineDestination,
                            remote.addr.to_string(),
                            format!(
                                "container {} connects to {dest}: new for image {}",
                                meta.name, meta.image.reference
                            ),
                        ));
                    }
                }
            }
            Kind::Fork => {
                let max = p.settings.max_forks_per_second;
                let seen = self.containers.get_mut(&cid).expect("inserted above");
                match seen.fork_window {
                    Some(w) if now.duration_since(w) < Duration::from_secs(1) => seen.forks += 1,
                    _ => {
                        seen.fork_window = Some(now);
                        seen.forks = 1;
                    }
                }
                if max > 0 && seen.forks == max + 1 {
                    hits.push(hit(
                        RuleId::ProcessForkRate,
                        "",
                        format!(
                            "container {} created more than {max} processes in one second",
                            meta.name
                        ),
                    ));
                }
            }
            _ => {}
        }
        hits
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
                let exe = ev.process.as_ref().map(|p| p.exe.as_ref()).unwrap_or("");
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
            first_seen: ev.time,
            last_seen: ev.time,
            evidence: vec![ev.clone()],
        }));
        let key = Key {
            container: meta.id.clone(),
            rule: h.rule,
            subject: h.subject,
            outcome: h.outcome,
        };
        if !self.dedup.hit(key, &f, now) {
            return None;
        }
        *self.emitted.entry(info.name.into()).or_default() += 1;
        Some(f)
    }
}

/// Once-per-container checks on the OCI spec posture.
fn posture_hits(p: &Policy, meta: &ContainerMeta) -> Vec<Hit> {
    let Some(pos) = &meta.posture else {
        return Vec::new();
    };
    let mut hits = Vec::new();
    let img = &meta.image.reference;
    if pos.uid == 0 && !pos.user_namespace {
        hits.push(hit(
            RuleId::ContainerRoot,
            "",
            format!(
                "container {} (image {img}) runs as root (uid 0 on the host, no user namespace)",
                meta.name
            ),
        ));
    }
    if pos.privileged {
        hits.push(hit(
            RuleId::ContainerPrivileged,
            "",
            format!("container {} (image {img}) is privileged", meta.name),
        ));
    }
    let dangerous: Vec<&str> = pos
        .capabilities
        .iter()
        .filter(|c| p.settings.dangerous_capabilities.contains(c))
        .map(String::as_str)
        .collect();
    if !dangerous.is_empty() && !pos.privileged {
        hits.push(hit(
            RuleId::ContainerCapabilities,
            "",
            format!(
                "container {} (image {img}) holds {}",
                meta.name,
                dangerous.join(", ")
            ),
        ));
    }
    let shared: Vec<&str> = [
        (pos.host_network, "network"),
        (pos.host_pid, "pid"),
        (pos.host_ipc, "ipc"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if !shared.is_empty() {
        hits.push(hit(
            RuleId::ContainerHostNamespace,
            "",
            format!(
                "container {} (image {img}) shares the host's {} namespace",
                meta.name,
                shared.join(", ")
            ),
        ));
    }
    hits
}
