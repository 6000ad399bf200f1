//! The agent's output event: one JSON object per line on stdout (and, later,
//! the source of the gRPC messages). Field names are a stable contract,
//! documented in docs/events.md: add fields, never rename or repurpose.
use std::net::SocketAddr;

use serde::Serialize;

use crate::clock::Timestamp;

/// Shared, immutable text: a process's names and arguments are copied into
/// many events; sharing them saves an allocation per field per event.
pub type Text = std::sync::Arc<str>;
/// Shared argument vector.
pub type Args = std::sync::Arc<[String]>;

/// `kind` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Exec,
    Exit,
    Fork,
    Listen,
    Connect,
    Accept,
    Loss,
    Agent,
    Finding,
}

/// A process as the agent knows it when the event is made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    /// Thread that did it (equals pid for single-threaded processes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: Text,
    /// Executable path as passed to execve; empty if never seen.
    pub exe: Text,
    pub argv: Args,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: u64,
    /// Process start, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
}

/// An ancestor in the parent chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: Text,
    pub comm: Text,
}

/// Exit details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// Exit status when the process exited normally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Raw `wait(2)` status word.
    pub raw: u32,
}

/// Fork details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkInfo {
    pub child_pid: u32,
}

/// One socket endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub addr: String,
    pub port: u16,
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint {
            addr: a.ip().to_string(),
            port: a.port(),
        }
    }
}

/// Network details for listen, connect and accept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Network {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// What happened: `listen`, `bind` (UDP), `connect`, `send` (first UDP
    /// datagram to a peer), `accept`.
    pub op: &'static str,
    pub local: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<Endpoint>,
    /// TCP connect: `established` or `failed`; `denied` when a policy
    /// refused it in the kernel (TCP or UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// Listen/bind on a wildcard address (0.0.0.0 or ::): reachable from
    /// every interface of its network namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wildcard: Option<bool>,
}

/// Events the kernel or agent could not deliver, with counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// Where they were lost: `kernel` (ring buffer full) or `agent`.
    pub stage: &'static str,
    /// Records dropped since the previous loss event, by record kind.
    pub exec: u64,
    pub exit: u64,
    pub fork: u64,
    pub network: u64,
    /// Records sent with fields the kernel could not read.
    pub read_errors: u64,
    /// TCP connects not tracked because the tracking map was full (their
    /// outcome events carry no process).
    pub connect_untracked: u64,
    /// Records that failed to decode.
    pub decode_errors: u64,
    /// Events in batches the collector spool dropped when it was full
    /// (stage `agent`).
    pub spool_dropped: u64,
}

/// Agent lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    /// `started`, `running` (heartbeat) or `stopping`.
    pub state: &'static str,
    pub version: &'static str,
    pub kernel: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<crate::bpf::ProbeStatus>,
    /// Processes and listening sockets reported by the startup snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_processes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_sockets: Option<usize>,
    /// What the agent holds in memory (heartbeat and stopping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracked: Option<Tracked>,
}

/// Entries in the agent's caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tracked {
    pub processes: usize,
    pub containers: usize,
    /// Events waiting for their container's metadata.
    pub pending_events: usize,
    /// cgroup ids resolved to a container or to the host.
    pub cgroups: usize,
}

/// The container of the process: its id and runtime from the cgroup
/// path, everything else from containerd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    /// Container id as the runtime names it (64 hex digits for most).
    pub id: String,
    /// `containerd`, `cri-o`, `docker`, `podman`, or `cri` (a Kubernetes
    /// pod whose runtime the cgroup path does not name and containerd
    /// does not know).
    pub runtime: &'static str,
    /// Kubernetes pod: name, namespace and uid from containerd's CRI
    /// labels, or only the uid from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Why the metadata below is missing (`containerd_socket_missing`,
    /// `lookup_timeout`, ...); absent when attributed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unattributed: Option<&'static str>,
    /// name, namespace, image, labels, posture, ... (flattened).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub meta: Option<std::sync::Arc<ContainerMeta>>,
}

impl Container {
    /// What the cgroup path says; metadata comes later.
    pub fn from_cgroup(id: String, runtime: &'static str, pod_uid: Option<String>) -> Self {
        Container {
            id,
            runtime,
            pod: pod_uid.map(|uid| Pod {
                uid,
                ..Pod::default()
            }),
            unattributed: None,
            meta: None,
        }
    }

    /// Attach containerd's metadata.
    pub fn fill(&mut self, meta: &std::sync::Arc<ContainerMeta>) {
        self.runtime = "containerd";
        if meta.pod.is_some() {
            self.pod = meta.pod.clone();
        }
        self.unattributed = None;
        self.meta = Some(meta.clone());
    }
}

pub use crate::container::meta::{ContainerMeta, Pod, Posture};

/// One output event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: Kind,
    /// When it happened, RFC 3339 UTC with nanoseconds.
    pub time: Timestamp,
    /// Node (host) name.
    pub node: String,
    /// Reported by the startup snapshot, not observed live.
    pub snapshot: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Present when the process runs in a container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The process runs on the host, in no container.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Ancestor>,
    /// Parent chain beyond `parent`, nearest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fork: Option<ForkInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    /// Exec: the policy killed the process at exec (`kill`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<Box<FindingInfo>>,
}

/// MITRE ATT&CK technique.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mitre {
    pub technique: &'static str,
    pub name: &'static str,
}

/// A detection: what rule, how bad, what to do about it, and the events
/// that show it. The finding event's `process` and `container` are the
/// evidence's, for querying without opening the evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FindingInfo {
    pub rule_id: &'static str,
    pub severity: crate::policy::Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mitre: Option<Mitre>,
    /// One line a human can act on.
    pub summary: String,
    /// What repeats under this finding: an executable, a port, a
    /// destination; empty for once-per-container rules.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// `alert`, `kill` or `deny-connect`.
    pub action: &'static str,
    /// For enforcing actions: `killed` or `denied` when the kernel acted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// Occurrences folded into this finding (dedup window, rate limit).
    pub count: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub evidence: Vec<Event>,
}

impl Event {
    /// An event with only the common fields set.
    pub fn new(kind: Kind, time: Timestamp, node: String) -> Self {
        Event {
            kind,
            time,
            node,
            snapshot: false,
            process: None,
            container: None,
            host: false,
            parent: None,
            ancestors: Vec::new(),
            exit: None,
            fork: None,
            network: None,
            loss: None,
            agent: None,
            enforced: None,
            finding: None,
        }
    }
}
