//! The catalogue of detections: every rule the agent knows, with its
//! default severity, MITRE ATT&CK technique, and which in-kernel actions
//! it supports. docs/findings.md is written from this table.
use serde::{Deserialize, Serialize};

pub use spyglass_proto::model::{Action, Severity};

/// Rule identifiers, as written in policy files and findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuleId {
    #[serde(rename = "container.root")]
    ContainerRoot,
    #[serde(rename = "container.privileged")]
    ContainerPrivileged,
    #[serde(rename = "container.dangerous_capabilities")]
    ContainerCapabilities,
    #[serde(rename = "container.host_namespace")]
    ContainerHostNamespace,
    #[serde(rename = "port.wildcard")]
    PortWildcard,
    #[serde(rename = "port.host_network")]
    PortHostNetwork,
    #[serde(rename = "port.undeclared")]
    PortUndeclared,
    #[serde(rename = "network.internet_egress")]
    InternetEgress,
    #[serde(rename = "network.connect")]
    NetworkConnect,
    #[serde(rename = "process.shell")]
    ProcessShell,
    #[serde(rename = "process.not_in_image")]
    ProcessNotInImage,
    #[serde(rename = "process.writable_path_exec")]
    ProcessWritablePath,
    #[serde(rename = "process.memfd_exec")]
    ProcessMemfd,
    #[serde(rename = "process.exec")]
    ProcessExec,
    #[serde(rename = "process.fork_rate")]
    ProcessForkRate,
    #[serde(rename = "process.cpu_runaway")]
    ProcessCpuRunaway,
    #[serde(rename = "container.memory_near_limit")]
    ContainerMemoryNearLimit,
    #[serde(rename = "container.oom_kill")]
    ContainerOomKill,
    #[serde(rename = "container.restart_loop")]
    ContainerRestartLoop,
    #[serde(rename = "baseline.new_executable")]
    BaselineExecutable,
    #[serde(rename = "baseline.new_port")]
    BaselinePort,
    #[serde(rename = "baseline.new_destination")]
    BaselineDestination,
}

/// A rule's fixed facts.
#[derive(Debug)]
pub struct RuleInfo {
    pub id: RuleId,
    pub name: &'static str,
    pub severity: Severity,
    /// MITRE ATT&CK technique id and name, where one applies.
    pub mitre: Option<(&'static str, &'static str)>,
    /// On by default everywhere (built-in); otherwise only where a policy
    /// entry lists it (custom rules carry their own match lists).
    pub default_on: bool,
    pub kill: bool,
    pub deny_connect: bool,
    /// `kill` sends SIGKILL from user space to the process found (not at
    /// exec, in the kernel).
    pub user_kill: bool,
    /// One line for the catalogue.
    pub what: &'static str,
}

const fn info(
    id: RuleId,
    name: &'static str,
    severity: Severity,
    mitre: Option<(&'static str, &'static str)>,
    default_on: bool,
    (kill, deny_connect): (bool, bool),
    what: &'static str,
) -> RuleInfo {
    RuleInfo {
        id,
        name,
        severity,
        mitre,
        default_on,
        kill,
        deny_connect,
        user_kill: false,
        what,
    }
}

/// A rule whose `kill` is sent from user space (runaway processes).
const fn user_kill(mut r: RuleInfo) -> RuleInfo {
    r.user_kill = true;
    r
}

const ESCAPE: Option<(&str, &str)> = Some(("T1611", "Escape to Host"));
const SHELL: Option<(&str, &str)> = Some(("T1059", "Command and Scripting Interpreter"));
const INGRESS_TOOL: Option<(&str, &str)> = Some(("T1105", "Ingress Tool Transfer"));
const C2: Option<(&str, &str)> = Some(("T1071", "Application Layer Protocol"));
const EXPOSED: Option<(&str, &str)> = Some(("T1133", "External Remote Services"));
const HIJACK: Option<(&str, &str)> = Some(("T1496", "Resource Hijacking"));
const NONE: (bool, bool) = (false, false);

/// Every rule, in catalogue order.
pub static RULES: &[RuleInfo] = &[
    info(RuleId::ContainerRoot, "container.root", Severity::Medium, None, true, NONE,
        "A container process runs as uid 0 of the host (no user namespace). Reported once per container."),
    info(RuleId::ContainerPrivileged, "container.privileged", Severity::High, ESCAPE, true, NONE,
        "A privileged container (all capabilities, no masked /proc paths). Reported once per container."),
    info(RuleId::ContainerCapabilities, "container.dangerous_capabilities", Severity::Medium, ESCAPE, true, NONE,
        "A container holds capabilities from settings.dangerous_capabilities (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, ...; not the runtime's defaults). Once per container."),
    info(RuleId::ContainerHostNamespace, "container.host_namespace", Severity::High, ESCAPE, true, NONE,
        "A container shares the host's network, PID or IPC namespace. Once per container."),
    info(RuleId::PortWildcard, "port.wildcard", Severity::Low, EXPOSED, true, NONE,
        "A container listens on a wildcard address (0.0.0.0 or ::), reachable from every interface of its network namespace."),
    info(RuleId::PortHostNetwork, "port.host_network", Severity::High, EXPOSED, true, NONE,
        "A container listens in the host's network namespace: the port is open on the node."),
    info(RuleId::PortUndeclared, "port.undeclared", Severity::Low, EXPOSED, true, NONE,
        "A container listens on a port its image does not declare (image config ExposedPorts)."),
    info(RuleId::InternetEgress, "network.internet_egress", Severity::Medium, C2, true, (false, true),
        "A container connects to a globally routable address (IANA special-purpose ranges and settings.egress_allow are not internet)."),
    info(RuleId::NetworkConnect, "network.connect", Severity::Medium, C2, false, (false, true),
        "A container connects to a destination listed in the entry's `destinations`."),
    info(RuleId::ProcessShell, "process.shell", Severity::Medium, SHELL, true, (true, false),
        "A shell or interpreter starts in a container and is not the container's declared entrypoint."),
    info(RuleId::ProcessNotInImage, "process.not_in_image", Severity::High, INGRESS_TOOL, true, NONE,
        "A container executes a file written after it started (present in its overlay upper layer, not in the image)."),
    info(RuleId::ProcessWritablePath, "process.writable_path_exec", Severity::High, INGRESS_TOOL, true, (true, false),
        "A container executes a file from a writable scratch path (settings.writable_paths: /tmp/, /var/tmp/, /dev/shm/)."),
    info(RuleId::ProcessMemfd, "process.memfd_exec", Severity::Critical, Some(("T1620", "Reflective Code Loading")), true, (true, false),
        "A container executes a file with no path on disk (memfd_create, a deleted file, or fexecve through /dev/fd)."),
    info(RuleId::ProcessExec, "process.exec", Severity::Medium, None, false, (true, false),
        "A container executes one of the entry's `executables` (exact paths, or prefixes ending in /)."),
    info(RuleId::ProcessForkRate, "process.fork_rate", Severity::High, Some(("T1496", "Resource Hijacking")), true, NONE,
        "A container creates processes faster than settings.max_forks_per_second (fork bomb, miner or runaway restart loop)."),
    user_kill(info(RuleId::ProcessCpuRunaway, "process.cpu_runaway", Severity::Medium, HIJACK, true, NONE,
        "A container process uses more than settings.cpu_runaway_percent of one core for settings.cpu_runaway_seconds (a spinner, a miner). Once per process while over; a resolved update when it drops below.")),
    info(RuleId::ContainerMemoryNearLimit, "container.memory_near_limit", Severity::Medium, None, true, NONE,
        "A container's memory stays above settings.memory_near_limit_percent of its limit for settings.memory_near_limit_seconds, with the growth rate. A resolved update when it drops below."),
    info(RuleId::ContainerOomKill, "container.oom_kill", Severity::High, None, true, NONE,
        "The kernel's OOM killer killed a container process: which process, its resident memory, the container's limit."),
    info(RuleId::ContainerRestartLoop, "container.restart_loop", Severity::High, None, true, NONE,
        "A pod container (pod uid + container name) exited more than settings.restart_loop_count times in settings.restart_loop_minutes, with the exit codes."),
    info(RuleId::BaselineExecutable, "baseline.new_executable", Severity::Low, None, true, NONE,
        "After the learning window of its image digest, a container executes a binary the image's containers never ran while learning."),
    info(RuleId::BaselinePort, "baseline.new_port", Severity::Low, EXPOSED, true, NONE,
        "After the learning window, a container listens on a port its image's containers never used while learning."),
    info(RuleId::BaselineDestination, "baseline.new_destination", Severity::Low, C2, true, NONE,
        "After the learning window, a container connects to an internet destination its image's containers never reached while learning."),
];

/// The catalogue as a Markdown table (`spyglass-agent rules`; the table
/// in docs/findings.md is this output).
pub fn catalogue_markdown() -> String {
    let mut s = String::from(
        "| rule | severity | MITRE ATT&CK | default | action beyond alert | what it reports |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in RULES {
        let mitre = r
            .mitre
            .map_or_else(|| "-".into(), |(id, name)| format!("{id} {name}"));
        let action = match (r.kill, r.deny_connect, r.user_kill) {
            (true, _, _) => "kill",
            (_, true, _) => "deny-connect",
            (_, _, true) => "kill (SIGKILL from user space)",
            _ => "-",
        };
        let default = if r.default_on { "on" } else { "listed only" };
        s.push_str(&format!(
            "| `{}` | {:?} | {mitre} | {default} | {action} | {} |\n",
            r.name, r.severity, r.what
        ));
    }
    s.replace("| Info |", "| info |")
        .replace("| Low |", "| low |")
        .replace("| Medium |", "| medium |")
        .replace("| High |", "| high |")
        .replace("| Critical |", "| critical |")
}

/// The facts of `id`.
pub fn info_of(id: RuleId) -> &'static RuleInfo {
    RULES
        .iter()
        .find(|r| r.id == id)
        .expect("every RuleId is in RULES")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_match_the_policy_spelling() {
        for r in RULES {
            let spelled: RuleId = yaml_serde::from_str(r.name).unwrap();
            assert_eq!(spelled, r.id, "{}", r.name);
            assert_eq!(info_of(r.id).name, r.name);
        }
    }
}
