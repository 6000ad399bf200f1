//! What a check found, before policy, allow lists and dedup decide
//! whether it becomes a finding.
use std::path::PathBuf;

use crate::{
    container::meta::ContainerMeta,
    detect::enforce::Plan,
    event::{Event, Outcome},
    policy::{Action, Policy, RuleId, Severity},
};

/// One detection.
#[derive(Debug, PartialEq, Eq)]
pub struct Hit {
    pub rule: RuleId,
    /// What the finding is about (a path, `port/protocol`, an address);
    /// part of the dedup key.
    pub subject: String,
    pub summary: String,
    /// What the kernel did (killed at exec, denied a connect).
    pub outcome: Option<Outcome>,
    /// Custom rules: severity and action of the entry that matched.
    pub entry: Option<(Severity, Action)>,
    /// The condition ended: the update that closes an earlier finding.
    pub resolved: bool,
    /// `container.restart_loop`: the exits counted.
    pub restarts: Option<crate::event::Restarts>,
    /// The finding's evidence when it is not the event checked (a
    /// runaway's use over the whole time it stayed over its threshold).
    pub evidence: Option<Event>,
}

impl Hit {
    pub fn new(rule: RuleId, subject: impl Into<String>, summary: String) -> Self {
        Hit {
            rule,
            subject: subject.into(),
            summary,
            outcome: None,
            entry: None,
            resolved: false,
            restarts: None,
            evidence: None,
        }
    }
}

/// What a per-kind check reads: the event, its container, the policy in
/// force and the plan the kernel enforces for the event's cgroup.
pub struct Ctx<'a> {
    pub ev: &'a Event,
    pub meta: &'a ContainerMeta,
    pub policy: &'a Policy,
    pub plan: Option<&'a Plan>,
    /// The container image's manifest digest (baselines are per image).
    pub digest: &'a str,
}

#[cfg(test)]
impl<'a> Ctx<'a> {
    /// A context without an enforcement plan or image digest (unit tests
    /// of the checks).
    pub fn bare(ev: &'a Event, meta: &'a ContainerMeta, policy: &'a Policy) -> Self {
        Ctx {
            ev,
            meta,
            policy,
            plan: None,
            digest: "",
        }
    }
}

/// Per-container state the checks keep between events.
#[derive(Debug, Default)]
pub struct State {
    /// Posture checked (once per container and policy).
    pub posture_checked: bool,
    /// The overlay upper layer; `Some(None)` when the root is not an
    /// overlay (not read again).
    pub upper: Option<Option<PathBuf>>,
    /// Start of the current one-second fork window, and forks in it.
    pub fork_window: Option<std::time::Instant>,
    pub forks: u32,
    /// Processes over the CPU threshold, by (pid, start ticks).
    pub runaways: std::collections::HashMap<(u32, u64), Over>,
    /// The container's memory over its threshold.
    pub memory: Option<Over>,
    /// The cgroup's OOM-kill counter at the previous sample.
    pub oom_kills: Option<u64>,
}

/// A measure over its threshold since `since`.
#[derive(Debug, Clone)]
pub struct Over {
    pub since: std::time::Instant,
    /// The measure's running total when it went over (CPU ms, or bytes).
    pub start: u64,
    /// The finding went out (a resolved update follows when it ends).
    pub reported: bool,
    /// The latest event over the threshold (evidence of the resolved
    /// update when the measure is no longer read).
    pub last: Option<Event>,
}
