//! The policy file (YAML), as written by operators: settings and rule
//! entries. Unknown keys are errors; every entry is checked when it is
//! read, so errors carry the line of the entry.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    addr::Cidr,
    rules::{info_of, Action, RuleId, Severity},
};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Format version: 1.
    pub version: u32,
    #[serde(default)]
    pub settings: Settings,
    /// Entries configuring rules; for one rule, the first entry whose
    /// scope matches a container applies to it.
    #[serde(default)]
    pub rules: Vec<RuleEntry>,
}

/// Knobs of the detections.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// A repeated finding (same container, rule and subject) is folded for
    /// this long; its count, first and last seen go out in one update.
    pub dedup_window_s: u64,
    /// Findings per container per minute; beyond it they are counted and
    /// reported as one summary per rule.
    pub max_findings_per_minute: u32,
    /// Destinations that are not internet egress (beside the IANA
    /// special-purpose ranges).
    pub egress_allow: Vec<Cidr>,
    /// Path prefixes where executing a file is suspicious.
    pub writable_paths: Vec<String>,
    /// Names of shells and interpreters (file names, any directory).
    pub shells: Vec<String>,
    /// Capabilities that make a container worth a finding.
    pub dangerous_capabilities: Vec<String>,
    /// Process creations per second in one container above which
    /// `process.fork_rate` fires.
    pub max_forks_per_second: u32,
    /// Baseline learning per image digest.
    pub baseline: BaselineSettings,
    /// `process.cpu_runaway`: percent of one core (above 100 for several
    /// cores) a process must use ...
    pub cpu_runaway_percent: u32,
    /// ... for this long, seconds.
    pub cpu_runaway_seconds: u64,
    /// `container.memory_near_limit`: percent of the container's memory
    /// limit its use must stay above ...
    pub memory_near_limit_percent: u32,
    /// ... for this long, seconds.
    pub memory_near_limit_seconds: u64,
    /// `container.restart_loop`: more than this many exits of one pod
    /// container ...
    pub restart_loop_count: u32,
    /// ... within this many minutes.
    pub restart_loop_minutes: u64,
    /// How often container cgroups (and the processes of busy ones) are
    /// sampled, milliseconds.
    pub resource_sample_interval_ms: u64,
    /// How often each running container's `resources` event is sent,
    /// seconds; 0: never (sampling and its findings go on).
    pub resources_report_s: u64,
}

/// The bounds of a numeric setting: (name, value, least, most, what it is).
type Bound = (&'static str, u64, u64, u64, &'static str);

impl Settings {
    /// The numeric settings against their bounds: the first one out of
    /// range, named, with what to write instead.
    pub fn check_bounds(&self) -> Result<(), String> {
        let bounds: [Bound; 8] = [
            (
                "cpu_runaway_percent",
                self.cpu_runaway_percent.into(),
                1,
                100 * 1024,
                "percent of one core",
            ),
            (
                "cpu_runaway_seconds",
                self.cpu_runaway_seconds,
                1,
                7 * 86_400,
                "seconds",
            ),
            (
                "memory_near_limit_percent",
                self.memory_near_limit_percent.into(),
                1,
                100,
                "percent of the memory limit",
            ),
            (
                "memory_near_limit_seconds",
                self.memory_near_limit_seconds,
                1,
                7 * 86_400,
                "seconds",
            ),
            (
                "restart_loop_count",
                self.restart_loop_count.into(),
                1,
                10_000,
                "exits",
            ),
            (
                "restart_loop_minutes",
                self.restart_loop_minutes,
                1,
                7 * 1440,
                "minutes",
            ),
            (
                "resource_sample_interval_ms",
                self.resource_sample_interval_ms,
                100,
                600_000,
                "milliseconds",
            ),
            (
                "resources_report_s",
                self.resources_report_s,
                0,
                86_400,
                "seconds (0: never)",
            ),
        ];
        for (name, v, lo, hi, unit) in bounds {
            if v < lo || v > hi {
                return Err(format!(
                    "settings.{name}: {v} is out of range; write {lo} to {hi} ({unit})"
                ));
            }
        }
        let sample_s = self.resource_sample_interval_ms.div_ceil(1000);
        for (name, v) in [
            ("cpu_runaway_seconds", self.cpu_runaway_seconds),
            ("memory_near_limit_seconds", self.memory_near_limit_seconds),
        ] {
            if v < sample_s {
                return Err(format!(
                    "settings.{name}: {v} s is shorter than one sample \
                     (settings.resource_sample_interval_ms {} ms); raise it or sample more often",
                    self.resource_sample_interval_ms
                ));
            }
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dedup_window_s: 300,
            max_findings_per_minute: 60,
            egress_allow: Vec::new(),
            writable_paths: ["/tmp/", "/var/tmp/", "/dev/shm/"]
                .map(String::from)
                .to_vec(),
            shells: [
                "sh", "bash", "dash", "ash", "zsh", "ksh", "csh", "tcsh", "fish", "python",
                "python2", "python3", "perl", "ruby", "node", "php", "lua", "pwsh",
            ]
            .map(String::from)
            .to_vec(),
            dangerous_capabilities: [
                "CAP_SYS_ADMIN",
                "CAP_NET_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_SYS_MODULE",
                "CAP_SYS_RAWIO",
                "CAP_DAC_READ_SEARCH",
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_SYS_BOOT",
            ]
            .map(String::from)
            .to_vec(),
            max_forks_per_second: 200,
            baseline: BaselineSettings::default(),
            cpu_runaway_percent: 90,
            cpu_runaway_seconds: 300,
            memory_near_limit_percent: 90,
            memory_near_limit_seconds: 60,
            restart_loop_count: 5,
            restart_loop_minutes: 10,
            resource_sample_interval_ms: 2000,
            resources_report_s: 60,
        }
    }
}

/// `settings.baseline`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineSettings {
    /// Learning window per image digest from its first container, seconds;
    /// 0 turns baselines off.
    pub learn_s: u64,
    /// Where baselines persist across restarts (empty: memory only).
    pub state_file: String,
}

impl Default for BaselineSettings {
    fn default() -> Self {
        BaselineSettings {
            learn_s: 600,
            state_file: "/var/lib/spyglass/baseline.json".into(),
        }
    }
}

/// Which containers an entry applies to; every condition given must hold
/// (an empty scope is every container).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Scope {
    /// Kubernetes namespaces of the pod.
    pub namespaces: Vec<String>,
    /// Pod labels that must all be present with these values.
    pub pod_labels: BTreeMap<String, String>,
    /// Image references (`*` matches any run of characters) or digests
    /// (`sha256:...`, compared with the manifest, index and config digests).
    pub images: Vec<String>,
    /// Container names (Kubernetes container name, or containerd id).
    pub containers: Vec<String>,
}

/// Exceptions: matches that give no finding (and are not enforced).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Allow {
    /// Exact paths, or prefixes ending in `/`.
    pub executables: Vec<String>,
    pub ports: Vec<u16>,
    pub destinations: Vec<Cidr>,
}

/// One entry of `rules`, checked: the action suits the rule, custom rules
/// have their match lists.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RawEntry")]
pub struct RuleEntry {
    pub rule: RuleId,
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub action: Action,
    pub scope: Scope,
    pub allow: Allow,
    /// `process.exec`: exact paths or prefixes ending in `/`.
    pub executables: Vec<String>,
    /// `network.connect`: destination ranges.
    pub destinations: Vec<Cidr>,
    /// A `kill` without a scope whose paths cover the program directories
    /// (`/`, `/usr/`, `/bin/`, ...) kills nearly every program in every
    /// container; it is refused unless this says it is meant.
    pub confirm_broad_kill: bool,
    /// `kill` of a runaway may hit a container's pid 1 (its init, which
    /// ends the container): only when this says so.
    pub kill_container_init: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    rule: RuleId,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    severity: Option<Severity>,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    allow: Allow,
    #[serde(default)]
    executables: Vec<String>,
    #[serde(default)]
    destinations: Vec<Cidr>,
    #[serde(default)]
    confirm_broad_kill: bool,
    #[serde(default)]
    kill_container_init: bool,
}

fn yes() -> bool {
    true
}

impl TryFrom<RawEntry> for RuleEntry {
    type Error = String;

    fn try_from(r: RawEntry) -> Result<Self, String> {
        let info = info_of(r.rule);
        match r.action {
            Action::Kill if !info.kill && !info.user_kill => {
                return Err(format!(
                    "action `kill` is not available for rule `{}`; it applies to process.exec, \
                     process.shell, process.writable_path_exec, process.memfd_exec and \
                     process.cpu_runaway",
                    info.name
                ))
            }
            Action::DenyConnect if !info.deny_connect => {
                return Err(format!(
                    "action `deny-connect` is not available for rule `{}`; it applies to \
                     network.connect and network.internet_egress",
                    info.name
                ))
            }
            _ => {}
        }
        if r.rule == RuleId::ProcessExec && r.executables.is_empty() {
            return Err(
                "rule `process.exec` needs `executables` (paths, or prefixes ending in /)".into(),
            );
        }
        if let Some(c) = r.destinations.iter().find(|c| covers_mapped_v4(c)) {
            return Err(format!(
                "destination `{c}` also covers every IPv4 address (as ::ffff:a.b.c.d); \
                 list IPv4 ranges on their own, and for IPv6 use e.g. 2000::/3"
            ));
        }
        if r.rule == RuleId::NetworkConnect && r.destinations.is_empty() {
            return Err("rule `network.connect` needs `destinations` (CIDRs)".into());
        }
        if !r.executables.is_empty() && r.rule != RuleId::ProcessExec {
            return Err(format!(
                "`executables` belongs to rule `process.exec` (for `{}`, use allow.executables)",
                info.name
            ));
        }
        if !r.destinations.is_empty() && r.rule != RuleId::NetworkConnect {
            return Err(format!(
                "`destinations` belongs to rule `network.connect` (for `{}`, use allow.destinations)",
                info.name
            ));
        }
        for p in r.executables.iter().chain(&r.allow.executables) {
            if p.contains('*') {
                return Err(format!(
                    "executable `{p}`: no wildcards; write an exact path or a prefix ending in /"
                ));
            }
            if !p.starts_with('/') {
                return Err(format!("executable `{p}` must be an absolute path"));
            }
            if let Some(n) = not_normal(p) {
                return Err(format!(
                    "executable `{p}` is not in normal form: write `{n}` (paths are judged with //, . and .. undone)"
                ));
            }
            if p.len() >= agent_common::RULE_PATH_LEN {
                return Err(format!(
                    "executable `{p}` is longer than {} bytes",
                    agent_common::RULE_PATH_LEN - 1
                ));
            }
        }
        if r.kill_container_init && !(info.user_kill && r.action == Action::Kill) {
            return Err(format!(
                "`kill_container_init` belongs to an entry with action `kill` of \
                 process.cpu_runaway (not `{}` with `{}`)",
                info.name, r.action
            ));
        }
        if let Some(p) = r.executables.iter().find(|p| covers_programs(p)) {
            if unconfirmed_broad_kill(r.action, &r.scope, r.confirm_broad_kill) {
                return Err(broad_kill(info.name, p));
            }
        }
        Ok(RuleEntry {
            rule: r.rule,
            enabled: r.enabled,
            severity: r.severity,
            action: r.action,
            scope: r.scope,
            allow: r.allow,
            executables: r.executables,
            destinations: r.destinations,
            confirm_broad_kill: r.confirm_broad_kill,
            kill_container_init: r.kill_container_init,
        })
    }
}

/// Directories that hold a system's programs.
const PROGRAM_DIRS: [&str; 6] = [
    "/bin/",
    "/sbin/",
    "/usr/bin/",
    "/usr/sbin/",
    "/usr/local/bin/",
    "/usr/local/sbin/",
];

/// Whether a path pattern covers a whole program directory (`/`, `/usr/`,
/// `/usr/bin/`, ...): killing under it kills nearly every program.
pub fn covers_programs(pattern: &str) -> bool {
    pattern.ends_with('/') && PROGRAM_DIRS.iter().any(|d| d.starts_with(pattern))
}

/// Whether an entry kills with no scope and without `confirm_broad_kill`:
/// the entries whose program-directory paths are refused.
pub fn unconfirmed_broad_kill(action: Action, scope: &Scope, confirmed: bool) -> bool {
    action == Action::Kill && *scope == Scope::default() && !confirmed
}

/// The refusal of a `kill` entry without scope whose `pattern` covers
/// the program directories.
pub fn broad_kill(rule: &str, pattern: &str) -> String {
    format!(
        "rule `{rule}` with action `kill` and no scope: `{pattern}` covers every program \
         directory, so this would kill nearly every program in every container; give the \
         entry a scope, narrow the path, or set `confirm_broad_kill: true` if that is meant"
    )
}

/// An IPv6 range wide enough to hold `::ffff:0:0/96` (IPv4-mapped
/// addresses): in the kernel's table it would deny IPv4 too.
fn covers_mapped_v4(c: &Cidr) -> bool {
    let (addr, len) = c.mapped();
    if !c.to_string().contains(':') || len > 96 {
        return false;
    }
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    let full = usize::from(len / 8);
    let rest = len % 8;
    addr[..full] == mapped[..full] && (rest == 0 || (addr[full] ^ mapped[full]) >> (8 - rest) == 0)
}

/// `path` as the kernel's kill check sees it: `//`, `.` and `..` undone
/// by the same code (agent-common `path`), on the bytes the kernel keeps.
/// A relative path comes back as given.
pub fn normal_path(path: &str) -> std::borrow::Cow<'_, str> {
    use agent_common::{path::PathNorm, FILENAME_LEN};
    let mut norm = PathNorm::new();
    let mut out = [0u8; FILENAME_LEN];
    let bytes = path.as_bytes();
    for &c in bytes.iter().take(FILENAME_LEN - 1).chain([0u8].iter()) {
        if !norm.push(&mut out, c) {
            break;
        }
    }
    if norm.state != agent_common::path::norm_state::DONE {
        return path.into();
    }
    let end = out.iter().position(|&b| b == 0).unwrap_or(out.len());
    if &out[..end] == bytes {
        return path.into();
    }
    String::from_utf8_lossy(&out[..end]).into_owned().into()
}

/// The normal form of pattern `p` (an absolute path, or a prefix ending in
/// `/`) when `p` is not in it.
pub fn not_normal(p: &str) -> Option<String> {
    let n = normal_path(p);
    let prefix = p.len() > 1 && p.ends_with('/');
    let want = if prefix { &p[..p.len() - 1] } else { p };
    (*n != *want).then(|| {
        if prefix && n != "/" {
            format!("{n}/")
        } else {
            n.into_owned()
        }
    })
}

/// Whether `path` matches an executable pattern: exact, or under a
/// prefix ending in `/`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern.ends_with('/') {
        path.starts_with(pattern)
    } else {
        path == pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_see_the_path_the_kernel_sees() {
        assert_eq!(normal_path("//tmp/./x"), "/tmp/x");
        assert_eq!(normal_path("/bin/../tmp//x"), "/tmp/x");
        assert!(matches!(
            normal_path("/tmp/x"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(
            normal_path("./x"),
            std::borrow::Cow::Borrowed("./x")
        ));
        // the kernel keeps 511 bytes of the path: so does the agent
        let long = format!("/{}/x", "a".repeat(600));
        assert_eq!(normal_path(&long).len(), 511);
        assert!(path_matches("/tmp/", &normal_path("//tmp/x")));
        assert_eq!(not_normal("/tmp/"), None);
        assert_eq!(not_normal("/"), None);
        assert_eq!(not_normal("/usr/bin/nc"), None);
        assert_eq!(not_normal("//tmp/").as_deref(), Some("/tmp/"));
        assert_eq!(not_normal("/usr//").as_deref(), Some("/usr/"));
        assert_eq!(not_normal("/tmp/./x").as_deref(), Some("/tmp/x"));
        assert_eq!(not_normal("/a/../").as_deref(), Some("/"));
    }
}
