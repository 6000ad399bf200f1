//! Policy: which detections apply to which containers, with what severity
//! and action. Loaded from a YAML file (`[policy] file`), checked
//! completely before it replaces the running one; without a file the
//! built-in rules run with their defaults.
pub use spyglass_proto::addr;
pub mod model;
pub mod rules;

use std::path::{Path, PathBuf};

pub use model::{normal_path, path_matches, PolicyFile, RuleEntry, Scope, Settings};
pub use rules::{info_of, Action, RuleId, Severity};

use crate::container::meta::ContainerMeta;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path}, line {line} column {column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("policy file {path}: {message}")]
    Document { path: PathBuf, message: String },
}

/// A checked policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub settings: Settings,
    pub entries: Vec<RuleEntry>,
}

/// How a rule applies to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective<'a> {
    pub rule: RuleId,
    pub severity: Severity,
    pub action: Action,
    /// The entry that applies (None: built-in defaults).
    pub entry: Option<&'a RuleEntry>,
}

impl Effective<'_> {
    /// Whether the entry's allow list covers an executable path.
    pub fn allows_exe(&self, path: &str) -> bool {
        self.entry
            .is_some_and(|e| e.allow.executables.iter().any(|p| path_matches(p, path)))
    }

    pub fn allows_port(&self, port: u16) -> bool {
        self.entry.is_some_and(|e| e.allow.ports.contains(&port))
    }

    pub fn allows_ip(&self, ip: std::net::IpAddr) -> bool {
        self.entry
            .is_some_and(|e| e.allow.destinations.iter().any(|c| c.contains(ip)))
    }
}

/// Parse and check a policy document; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    let file: PolicyFile = yaml_serde::from_str(text).map_err(|e| match e.location() {
        Some(loc) => PolicyError::Invalid {
            path: path.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: strip_location(&e.to_string()),
        },
        None => PolicyError::Document {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })?;
    if let Some(w) = file
        .settings
        .writable_paths
        .iter()
        .find(|w| !w.starts_with('/') || !w.ends_with('/') || model::not_normal(w).is_some())
    {
        return Err(PolicyError::Document {
            path: path.to_owned(),
            message: format!(
                "settings.writable_paths: `{w}` must be a directory prefix: absolute, ending in /, \
                 without //, . or .. segments"
            ),
        });
    }
    if let Some(w) = file
        .settings
        .writable_paths
        .iter()
        .find(|w| w.len() >= agent_common::RULE_PATH_LEN)
    {
        // a kill under it could not enter the kernel's table: refused,
        // never left unenforced
        return Err(PolicyError::Document {
            path: path.to_owned(),
            message: format!(
                "settings.writable_paths: `{w}` is {} bytes long; at most {} (the kernel's \
                 path table)",
                w.len(),
                agent_common::RULE_PATH_LEN - 1
            ),
        });
    }
    if let Some(sh) = file
        .settings
        .shells
        .iter()
        .find(|s| s.is_empty() || s.contains('/') || s.len() > 64)
    {
        return Err(PolicyError::Document {
            path: path.to_owned(),
            message: format!("settings.shells: `{sh}` must be a file name (no /, not empty)"),
        });
    }
    if let Some(w) = file
        .settings
        .writable_paths
        .iter()
        .find(|w| model::covers_programs(w))
    {
        let unconfirmed = file.rules.iter().find(|e| {
            e.rule == RuleId::ProcessWritablePath
                && model::unconfirmed_broad_kill(e.action, &e.scope, e.confirm_broad_kill)
        });
        if let Some(e) = unconfirmed {
            return Err(PolicyError::Document {
                path: path.to_owned(),
                message: format!(
                    "settings.writable_paths holds `{w}`: {}",
                    model::broad_kill(info_of(e.rule).name, w)
                ),
            });
        }
    }
    if let Err(message) = file.settings.check_bounds() {
        return Err(PolicyError::Document {
            path: path.to_owned(),
            message,
        });
    }
    if file.version != 1 {
        return Err(PolicyError::Document {
            path: path.to_owned(),
            message: format!(
                "version: {} is not supported; write `version: 1`",
                file.version
            ),
        });
    }
    Ok(Policy {
        settings: file.settings,
        entries: file.rules,
    })
}

/// yaml_serde appends " at line L column C"; the error says it already.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Read, parse and check the policy file at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Whether `pattern` (with `*` wildcards) matches `text` in full.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a scope covers a container.
pub fn in_scope(scope: &Scope, meta: &ContainerMeta) -> bool {
    let pod_ns = meta.pod.as_ref().map_or("", |p| p.namespace.as_str());
    if !scope.namespaces.is_empty() && !scope.namespaces.iter().any(|n| n == pod_ns) {
        return false;
    }
    // A pod's own labels; a container outside a pod offers its labels.
    let labels = match meta.pod.as_ref().filter(|p| !p.labels.is_empty()) {
        Some(p) => &p.labels,
        None => &meta.labels,
    };
    if !scope
        .pod_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    if !scope.images.is_empty() {
        let img = &meta.image;
        let hit = scope.images.iter().any(|p| {
            if p.starts_with("sha256:") {
                [&img.digest, &img.index_digest, &img.config_digest].contains(&p)
            } else {
                glob(p, &img.reference)
            }
        });
        if !hit {
            return false;
        }
    }
    if !scope.containers.is_empty()
        && !scope
            .containers
            .iter()
            .any(|c| *c == meta.name || *c == meta.id)
    {
        return false;
    }
    true
}

/// The probes that refuse connections for `deny-connect`: TCP and UDP
/// connect, UDP sendmsg, each for IPv4 and IPv6.
pub const DENY_PROBES: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// Why `policy` cannot be enforced with the probes in `status`, if it
/// cannot: a `deny-connect` entry needs every one of [`DENY_PROBES`]
/// (cgroup socket hooks, optional at attach). Running it unenforced
/// would let every connection it names through in silence.
pub fn unenforceable(policy: &Policy, status: &[crate::event::ProbeStatus]) -> Option<String> {
    let entry = policy
        .entries
        .iter()
        .position(|e| e.enabled && e.action == Action::DenyConnect)?;
    let missing: Vec<String> = DENY_PROBES
        .iter()
        .filter(|name| !status.iter().any(|p| p.program == **name && p.attached))
        .map(|name| {
            let why = status
                .iter()
                .find(|p| p.program == *name)
                .and_then(|p| p.error.clone())
                .unwrap_or_else(|| "not loaded".into());
            format!("{name} ({why})")
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "rules[{entry}] ({}) has action `deny-connect`, but the probes that refuse \
             connections are not attached: {}; fix the probes (see docs/troubleshooting.md) \
             or remove the deny-connect entries",
            info_of(policy.entries[entry].rule).name,
            missing.join(", ")
        )
    })
}

impl Policy {
    /// How `rule` applies to a container (None: off for it). Host
    /// processes (`meta` None) get no findings from container rules.
    pub fn effective(&self, rule: RuleId, meta: &ContainerMeta) -> Option<Effective<'_>> {
        let info = info_of(rule);
        let entry = self
            .entries
            .iter()
            .find(|e| e.rule == rule && in_scope(&e.scope, meta));
        match entry {
            Some(e) if !e.enabled => None,
            Some(e) => Some(Effective {
                rule,
                severity: e.severity.unwrap_or(info.severity),
                action: e.action,
                entry: Some(e),
            }),
            None if info.default_on => Some(Effective {
                rule,
                severity: info.severity,
                action: Action::Alert,
                entry: None,
            }),
            None => None,
        }
    }

    /// Every entry of a custom rule (`process.exec`, `network.connect`)
    /// that covers a container, in file order.
    pub fn custom<'a>(
        &'a self,
        rule: RuleId,
        meta: &'a ContainerMeta,
    ) -> impl Iterator<Item = &'a RuleEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.rule == rule && e.enabled && in_scope(&e.scope, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, image: &str) -> ContainerMeta {
        ContainerMeta {
            id: "c1".into(),
            name: "web".into(),
            image: crate::container::meta::Image {
                reference: image.into(),
                digest: "sha256:aaa".into(),
                ..Default::default()
            },
            pod: Some(crate::container::meta::Pod {
                name: "p".into(),
                namespace: ns.into(),
                uid: "u".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
            }),
            ..Default::default()
        }
    }

    fn p(text: &str) -> Result<Policy, String> {
        parse(text, Path::new("policy.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_a_full_policy_and_scopes_entries() {
        let pol = p(r#"
version: 1
settings:
  egress_allow: [203.0.113.0/24]
  max_findings_per_minute: 10
rules:
  - rule: process.shell
    action: kill
    severity: critical
    scope:
      namespaces: [prod]
      pod_labels: {app: web}
      images: ["docker.io/library/*:1"]
    allow:
      executables: [/bin/sh]
  - rule: process.shell
    enabled: false
  - rule: network.connect
    destinations: [127.0.0.1/32]
    action: deny-connect
    scope:
      containers: [web]
"#)
        .unwrap();
        assert_eq!(pol.settings.max_findings_per_minute, 10);
        let prod = meta("prod", "docker.io/library/nginx:1");
        let e = pol.effective(RuleId::ProcessShell, &prod).unwrap();
        assert_eq!((e.severity, e.action), (Severity::Critical, Action::Kill));
        assert!(e.allows_exe("/bin/sh") && !e.allows_exe("/bin/bash"));
        // Elsewhere the second entry switches it off.
        assert!(pol
            .effective(
                RuleId::ProcessShell,
                &meta("dev", "docker.io/library/nginx:1")
            )
            .is_none());
        assert!(pol
            .effective(RuleId::ProcessShell, &meta("prod", "quay.io/x:1"))
            .is_none());
        // Defaults for rules without entries; custom rules only where listed.
        let root = pol.effective(RuleId::ContainerRoot, &prod).unwrap();
        assert_eq!(
            (root.severity, root.action),
            (Severity::Medium, Action::Alert)
        );
        assert_eq!(pol.custom(RuleId::NetworkConnect, &prod).count(), 1);
        let mut other = prod.clone();
        other.name = "db".into();
        other.id = "c2".into();
        assert_eq!(pol.custom(RuleId::NetworkConnect, &other).count(), 0);
        assert!(pol.effective(RuleId::ProcessExec, &prod).is_none());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = p("version: 1\nrules:\n  - rule: process.shell\n    sevrity: high\n").unwrap_err();
        assert!(
            e.starts_with("policy file policy.yaml, line 4 column 5:"),
            "{e}"
        );
        assert!(e.contains("unknown field `sevrity`"), "{e}");
        let e = p("version: 1\nrules:\n  - rule: process.shel\n").unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("unknown variant `process.shel`"),
            "{e}"
        );
        let e = p("version: 1\nrules:\n  - rule: container.root\n    action: kill\n").unwrap_err();
        assert!(
            e.contains("line 3")
                && e.contains("action `kill` is not available for rule `container.root`"),
            "{e}"
        );
        let e = p("version: 1\nsettings:\n  egress_allow: [10.0.0.1/8]\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("10.0.0.1/8"), "{e}");
        let e = p("version: 1\nrules:\n  - rule: process.exec\n").unwrap_err();
        assert!(e.contains("needs `executables`"), "{e}");
        let e = p("version: 1\nrules:\n  - rule: network.connect\n    destinations: [\"::/0\"]\n")
            .unwrap_err();
        assert!(e.contains("also covers every IPv4 address"), "{e}");
        assert!(p("version: 1\nrules:\n  - rule: network.connect\n    destinations: [\"2000::/3\", \"::ffff:10.0.0.0/104\"]\n").is_ok());
        let e = p("version: 1\nsettings:\n  shells: [\"\"]\n").unwrap_err();
        assert!(e.contains("settings.shells"), "{e}");
        let e = p("version: 2\n").unwrap_err();
        assert!(e.contains("version: 2 is not supported"), "{e}");
        let e = p("rules: [\n").unwrap_err();
        assert!(e.starts_with("policy file policy.yaml"), "{e}");
    }

    #[test]
    fn runaway_thresholds_out_of_range_are_refused_by_name() {
        let cases = [
            (
                "cpu_runaway_percent: 0",
                "settings.cpu_runaway_percent: 0 is out of range; write 1 to 102400",
            ),
            (
                "cpu_runaway_seconds: 0",
                "settings.cpu_runaway_seconds: 0 is out of range",
            ),
            (
                "cpu_runaway_seconds: 99999999999",
                "settings.cpu_runaway_seconds: 99999999999 is out of range",
            ),
            (
                "memory_near_limit_percent: 101",
                "settings.memory_near_limit_percent: 101 is out of range; write 1 to 100",
            ),
            (
                "memory_near_limit_seconds: 0",
                "settings.memory_near_limit_seconds: 0",
            ),
            ("restart_loop_count: 0", "settings.restart_loop_count: 0"),
            (
                "restart_loop_minutes: 0",
                "settings.restart_loop_minutes: 0",
            ),
            (
                "resource_sample_interval_ms: 10",
                "settings.resource_sample_interval_ms: 10 is out of range; write 100 to 600000",
            ),
            (
                "resources_report_s: 100000",
                "settings.resources_report_s: 100000",
            ),
            (
                "resource_sample_interval_ms: 5000\n  cpu_runaway_seconds: 2",
                "settings.cpu_runaway_seconds: 2 s is shorter than one sample",
            ),
        ];
        for (yaml, want) in cases {
            let e = p(&format!("version: 1\nsettings:\n  {yaml}\n")).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        // a negative number is refused by the parser, with the line
        let e = p("version: 1\nsettings:\n  cpu_runaway_percent: -5\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("-5"), "{e}");
        let ok = p("version: 1\nsettings:\n  cpu_runaway_percent: 150\n  cpu_runaway_seconds: 2\n  resource_sample_interval_ms: 500\n").unwrap();
        assert_eq!(ok.settings.cpu_runaway_percent, 150);
        let e = p("version: 1\nrules:\n  - rule: process.shell\n    kill_container_init: true\n")
            .unwrap_err();
        assert!(e.contains("`kill_container_init` belongs to"), "{e}");
        assert!(p("version: 1\nrules:\n  - rule: process.cpu_runaway\n    action: kill\n    kill_container_init: true\n").is_ok());
    }

    #[test]
    fn globs() {
        assert!(glob("docker.io/library/*", "docker.io/library/nginx:1"));
        assert!(glob("*nginx*", "docker.io/library/nginx:1"));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c-b"));
        assert!(glob("exact", "exact") && !glob("exact", "exact2"));
    }
}
