//! In-kernel actions: the `kill` and `deny-connect` entries of the policy
//! become longest-prefix entries of the probes' `EXEC_KILL` and
//! `CONNECT_DENY` maps, per cgroup of a container in scope. The plan is
//! pure; [`Enforcer`] writes it and keeps a mirror to tell which rule the
//! kernel applied.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use agent_common::{enforce as bits, ConnectRuleKey, ExecRuleKey, RULE_PATH_LEN};
use aya::maps::{lpm_trie::Key, Array, LpmTrie, MapData};
use tracing::{info, warn};

use crate::{
    container::meta::ContainerMeta,
    policy::{
        addr::{internet_exceptions, non_internet_ranges, Cidr},
        path_matches, Action, Policy, RuleId,
    },
};

/// Directories where shells are looked for when `process.shell` kills.
const BIN_DIRS: &[&str] = &[
    "/bin/",
    "/usr/bin/",
    "/usr/local/bin/",
    "/sbin/",
    "/usr/sbin/",
];

/// What the kernel should enforce for one cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (pattern, Some(rule) to kill | None to allow): exact paths, or
    /// prefixes ending in `/`; the longest match decides.
    pub exec: Vec<(String, Option<RuleId>)>,
    /// (range, Some(rule) to deny | None to allow), applied in order
    /// (later entries with the same range win).
    pub connect: Vec<(Cidr, Option<RuleId>)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.exec.is_empty() && self.connect.is_empty()
    }

    /// The rule the kernel applied to an exec of `path` (longest match).
    pub fn exec_rule(&self, path: &str) -> Option<RuleId> {
        self.exec
            .iter()
            .filter(|(p, _)| path_matches(p, path))
            // Longest match; among equal patterns the first (as written).
            .rev()
            .max_by_key(|(p, _)| p.len() + usize::from(!p.ends_with('/')))
            .and_then(|(_, r)| *r)
    }

    /// The rule the kernel applied to a connect to `ip` (longest prefix;
    /// None when allowed).
    pub fn connect_rule(&self, ip: IpAddr) -> Option<RuleId> {
        let mut best: Option<(u8, Option<RuleId>)> = None;
        for (c, r) in &self.connect {
            let (_, len) = c.mapped();
            if c.contains(ip) && best.is_none_or(|(b, _)| len >= b) {
                best = Some((len, *r));
            }
        }
        best.and_then(|(_, r)| r)
    }
}

/// The plan for a container under `policy`.
pub fn plan(policy: &Policy, meta: &ContainerMeta) -> Plan {
    let mut p = Plan::default();
    let s = &policy.settings;
    for rule in [
        RuleId::ProcessExec,
        RuleId::ProcessShell,
        RuleId::ProcessWritablePath,
        RuleId::ProcessMemfd,
    ] {
        let entries: Vec<_> = if rule == RuleId::ProcessExec {
            policy.custom(rule, meta).collect()
        } else {
            policy
                .effective(rule, meta)
                .and_then(|e| e.entry)
                .into_iter()
                .collect()
        };
        for e in entries.into_iter().filter(|e| e.action == Action::Kill) {
            let patterns: Vec<String> = match rule {
                RuleId::ProcessExec => e.executables.clone(),
                RuleId::ProcessShell => s
                    .shells
                    .iter()
                    .flat_map(|sh| BIN_DIRS.iter().map(move |d| format!("{d}{sh}")))
                    .collect(),
                RuleId::ProcessWritablePath => s.writable_paths.clone(),
                _ => vec!["/dev/fd/".into(), "/proc/self/fd/".into()],
            };
            for pat in patterns {
                let allowed = e.allow.executables.iter().any(|a| path_matches(a, &pat));
                if !allowed && pat.len() < RULE_PATH_LEN {
                    p.exec.push((pat, Some(rule)));
                }
            }
            // Allowed files under a killed prefix: exceptions the kernel
            // sees (a longer match).
            for a in &e.allow.executables {
                if a.len() < RULE_PATH_LEN {
                    p.exec.push((a.clone(), None));
                }
            }
        }
    }
    // Internet egress first (its allows), then listed destinations, so a
    // listed range overrides an allow of the same range.
    if let Some(e) = policy
        .effective(RuleId::InternetEgress, meta)
        .and_then(|e| e.entry)
        .filter(|e| e.action == Action::DenyConnect)
    {
        for all in ["0.0.0.0/0", "::/0"] {
            let c: Cidr = all.parse().expect("valid");
            p.connect.push((c, Some(RuleId::InternetEgress)));
        }
        for c in non_internet_ranges()
            .into_iter()
            .chain(s.egress_allow.iter().cloned())
            .chain(e.allow.destinations.iter().cloned())
        {
            p.connect.push((c, None));
        }
        for c in internet_exceptions() {
            p.connect.push((c, Some(RuleId::InternetEgress)));
        }
    }
    for e in policy
        .custom(RuleId::NetworkConnect, meta)
        .filter(|e| e.action == Action::DenyConnect)
    {
        for c in &e.destinations {
            p.connect.push((c.clone(), Some(RuleId::NetworkConnect)));
        }
        for c in &e.allow.destinations {
            p.connect.push((c.clone(), None));
        }
    }
    p
}

/// The longest-prefix key of an exec pattern in `cgroup` (plans hold
/// patterns shorter than `RULE_PATH_LEN` only).
pub fn exec_key(cgroup: u64, pattern: &str) -> Key<ExecRuleKey> {
    let (bits, data) = ExecRuleKey::new(cgroup, pattern.as_bytes())
        .expect("plans hold only patterns shorter than RULE_PATH_LEN");
    Key::new(bits, data)
}

/// The longest-prefix key of a destination range in `cgroup`.
pub fn connect_key(cgroup: u64, range: &Cidr) -> Key<ConnectRuleKey> {
    let (addr, len) = range.mapped();
    let (bits, data) = ConnectRuleKey::new(cgroup, addr, len);
    Key::new(bits, data)
}

/// The probes' enforcement maps.
pub struct Maps {
    pub flags: Array<MapData, u32>,
    pub exec: LpmTrie<MapData, ExecRuleKey, u32>,
    pub connect: LpmTrie<MapData, ConnectRuleKey, u32>,
}

/// What is written for one cgroup, and what it was planned from.
struct Installed {
    container: String,
    meta: Arc<ContainerMeta>,
    plan: Plan,
}

/// Owns the maps and what was written to them, per cgroup. The records
/// here (not the detector's caches) decide what a reload re-plans and
/// what a container deletion removes.
pub struct Enforcer {
    maps: Maps,
    installed: HashMap<u64, Installed>,
    /// Plans not written because the kernel refused an entry (map full).
    pub write_failures: u64,
}

fn value(rule: Option<RuleId>) -> u32 {
    rule.map_or(0, |r| r as u32 + 1)
}

/// Keys of a plan, deduplicated (exec: first entry wins, as userspace
/// attributes; connect: later entries win), allows before denies so a
/// deny never stands without its exceptions.
/// A plan's kernel keys with their values: exec patterns, connect ranges.
type Entries = (Vec<(String, u32)>, Vec<(Cidr, u32)>);

fn entries(plan: &Plan) -> Entries {
    let mut exec: Vec<(String, u32)> = Vec::new();
    for (pat, rule) in &plan.exec {
        if !exec.iter().any(|(p, _)| p == pat) {
            exec.push((pat.clone(), value(*rule)));
        }
    }
    let mut connect: Vec<(Cidr, u32)> = Vec::new();
    for (range, rule) in &plan.connect {
        connect.retain(|(c, _)| c != range);
        connect.push((range.clone(), value(*rule)));
    }
    exec.sort_by_key(|(_, v)| *v != 0);
    connect.sort_by_key(|(_, v)| *v != 0);
    (exec, connect)
}

impl Enforcer {
    pub fn new(maps: Maps) -> Self {
        Enforcer {
            maps,
            installed: HashMap::new(),
            write_failures: 0,
        }
    }

    /// What is enforced for a cgroup.
    pub fn plan_of(&self, cgroup: u64) -> Option<&Plan> {
        self.installed.get(&cgroup).map(|i| &i.plan)
    }

    /// Make the kernel enforce `plan` for `cgroup`: the new keys are
    /// written over the old ones first, then keys no longer planned are
    /// deleted, so the cgroup is never without its rules in between.
    pub fn apply(&mut self, cgroup: u64, meta: &Arc<ContainerMeta>, plan: Plan) {
        let container = meta.id.clone();
        if self.installed.get(&cgroup).map(|i| &i.plan) == Some(&plan) {
            return;
        }
        if plan.is_empty() {
            self.remove(cgroup);
            return;
        }
        let (exec, connect) = entries(&plan);
        let mut ok = true;
        for (pat, v) in &exec {
            ok &= self.maps.exec.insert(&exec_key(cgroup, pat), *v, 0).is_ok();
        }
        for (range, v) in &connect {
            ok &= self
                .maps
                .connect
                .insert(&connect_key(cgroup, range), *v, 0)
                .is_ok();
        }
        let old = self.installed.remove(&cgroup);
        if let Some(old) = &old {
            let (old_exec, old_connect) = entries(&old.plan);
            for (pat, _) in old_exec
                .iter()
                .filter(|(p, _)| !exec.iter().any(|(n, _)| n == p))
            {
                let _ = self.maps.exec.remove(&exec_key(cgroup, pat));
            }
            for (c, _) in old_connect
                .iter()
                .filter(|(c, _)| !connect.iter().any(|(n, _)| n == c))
            {
                let _ = self.maps.connect.remove(&connect_key(cgroup, c));
            }
        }
        if !ok {
            // Half a plan (a deny without its allows) is worse than none.
            self.write_failures += 1;
            for (pat, _) in &exec {
                let _ = self.maps.exec.remove(&exec_key(cgroup, pat));
            }
            for (c, _) in &connect {
                let _ = self.maps.connect.remove(&connect_key(cgroup, c));
            }
            warn!(
                container,
                cgroup, "enforcement tables full: this container's policy is not enforced"
            );
            self.sync_flags();
            return;
        }
        info!(
            container,
            cgroup,
            exec_rules = plan.exec.len(),
            connect_rules = plan.connect.len(),
            "enforcing policy"
        );
        self.installed.insert(
            cgroup,
            Installed {
                container,
                meta: meta.clone(),
                plan,
            },
        );
        self.sync_flags();
    }

    /// Plan every cgroup again under a new policy.
    pub fn replan(&mut self, policy: &Policy) {
        let current: Vec<(u64, Arc<ContainerMeta>)> = self
            .installed
            .iter()
            .map(|(cg, i)| (*cg, i.meta.clone()))
            .collect();
        for (cg, meta) in current {
            let p = plan(policy, &meta);
            self.apply(cg, &meta, p);
        }
    }

    /// Stop enforcing for a cgroup.
    pub fn remove(&mut self, cgroup: u64) {
        let Some(old) = self.installed.remove(&cgroup) else {
            return;
        };
        let (exec, connect) = entries(&old.plan);
        for (pat, _) in &exec {
            let _ = self.maps.exec.remove(&exec_key(cgroup, pat));
        }
        for (range, _) in &connect {
            let _ = self.maps.connect.remove(&connect_key(cgroup, range));
        }
        self.sync_flags();
    }

    /// A container was deleted: its cgroups' entries go.
    fn forget_container(&mut self, id: &str) {
        let gone: Vec<u64> = self
            .installed
            .iter()
            .filter(|(_, i)| i.container == id)
            .map(|(cg, _)| *cg)
            .collect();
        for cg in gone {
            self.remove(cg);
        }
    }

    /// Cgroups with entries.
    pub fn cgroups(&self) -> usize {
        self.installed.len()
    }

    fn sync_flags(&mut self) {
        let mut f = 0;
        let plans = || self.installed.values().map(|i| &i.plan);
        if plans().any(|p| p.exec.iter().any(|(_, r)| r.is_some())) {
            f |= bits::EXEC_KILL;
        }
        if plans().any(|p| p.connect.iter().any(|(_, r)| r.is_some())) {
            f |= bits::CONNECT_DENY;
        }
        if let Err(e) = self.maps.flags.set(0, f, 0) {
            warn!(error = %e, "cannot update the enforcement switch");
        }
    }
}

impl crate::container::lifecycle::Observer for Enforcer {
    /// Its processes are gone with it: so go its kernel entries (again
    /// when it is forgotten: an event in flight may have planned them anew).
    fn on_container(&mut self, change: &crate::container::lifecycle::Change) {
        use crate::container::lifecycle::Change;
        let (Change::Deleted(id) | Change::Forgotten(id)) = change;
        self.forget_container(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn meta() -> ContainerMeta {
        ContainerMeta {
            id: "c1".into(),
            name: "web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn plans_kill_and_deny_entries() {
        let pol = parse(
            r#"
version: 1
rules:
  - rule: process.writable_path_exec
    action: kill
    allow:
      executables: [/tmp/app]
  - rule: process.exec
    executables: [/usr/bin/nc]
    action: kill
  - rule: network.internet_egress
    action: deny-connect
    allow:
      destinations: [1.1.1.1/32]
  - rule: network.connect
    destinations: [127.0.0.1/32]
    action: deny-connect
"#,
            std::path::Path::new("p.yaml"),
        )
        .unwrap();
        let p = plan(&pol, &meta());
        assert_eq!(p.exec_rule("/tmp/x"), Some(RuleId::ProcessWritablePath));
        assert_eq!(
            p.exec_rule("/tmp/app"),
            None,
            "allowed inside the killed prefix"
        );
        assert_eq!(p.exec_rule("/tmp/app2"), Some(RuleId::ProcessWritablePath));
        assert_eq!(p.exec_rule("/usr/bin/nc"), Some(RuleId::ProcessExec));
        assert_eq!(p.exec_rule("/usr/bin/ncat"), None);
        assert_eq!(p.exec_rule("/bin/sh"), None, "process.shell is alert only");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(p.connect_rule(ip("8.8.8.8")), Some(RuleId::InternetEgress));
        assert_eq!(
            p.connect_rule(ip("2606:4700::1")),
            Some(RuleId::InternetEgress)
        );
        assert_eq!(p.connect_rule(ip("1.1.1.1")), None, "allow-listed");
        assert_eq!(p.connect_rule(ip("10.1.2.3")), None, "private");
        assert_eq!(
            p.connect_rule(ip("127.0.0.1")),
            Some(RuleId::NetworkConnect)
        );
        assert_eq!(p.connect_rule(ip("127.0.0.2")), None);
        // Nothing to enforce without kill/deny entries.
        assert!(plan(&Policy::default(), &meta()).is_empty());
    }

    #[test]
    fn keys_stop_at_the_prefix_or_include_the_nul() {
        assert_eq!(exec_key(7, "/tmp/").prefix_len(), (8 + 5) * 8);
        assert_eq!(exec_key(7, "/bin/sh").prefix_len(), (8 + 8) * 8);
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(connect_key(7, &c).prefix_len(), 64 + 104);
    }
}
