//! The one definition of a Spyglass event. The agent builds these; every
//! shape is produced from them: the agent's and the collector's JSON lines
//! (the `Serialize` impls here, rendered by [`render`]), the wire messages
//! ([`wire`], both directions) and the collector's OCSF and syslog.
//! Field names are a stable contract, documented in docs/events.md and
//! docs/findings.md (a test checks both against these types): add fields,
//! never rename or repurpose.
use std::{borrow::Cow, collections::BTreeMap, net::IpAddr, sync::Arc};

use serde::Serialize;

pub use crate::time::Timestamp;

mod args;
mod names;
pub mod render;
pub mod wire;

pub use names::{
    Action, AgentState, ConnectOutcome, ContainerState, Enforced, Family, Kind, LossStage, NetOp,
    Outcome, Protocol, Runtime, Seccomp, Severity, Unattributed, Unread,
};

/// Shared, immutable text: a process's names and arguments are copied into
/// many events; sharing them saves an allocation per field per event.
pub type Text = Arc<str>;
pub use args::Args;
/// A name that is usually a constant of the agent (a rule id, a probe
/// name) but arrives as text at the collector.
pub type Name = Cow<'static, str>;

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
    /// The path given to execve was longer than the kernel keeps (511
    /// bytes): `exe` is its start.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exe_truncated: bool,
    /// What the kernel could not read at exec (those fields are empty or
    /// 0, not the process's own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<Unread>,
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: u64,
    /// Process start, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
    /// An exec in a container: the OS package of the container's image
    /// that owns `exe` (read from the image's own dpkg or apk database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<Arc<PackageRef>>,
    /// An exec in a container: no package of the image owns `exe` (a file
    /// copied or built in, a script, a download).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unpackaged: bool,
}

/// An OS package, as an exec's owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PackageRef {
    /// `deb` or `apk`.
    pub kind: String,
    pub name: String,
    pub version: String,
    /// The source package, when it is not `name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// `pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64&distro=debian-12`.
    pub purl: String,
}

/// An ancestor in the parent chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: Text,
    pub comm: Text,
}

/// Exit details: `code` for a normal exit, else `signal`.
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
    /// The kernel's OOM killer chose this process (`oom:mark_victim`):
    /// present only then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom: Option<OomKill>,
}

/// What the kernel's OOM killer saw when it chose a victim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OomKill {
    /// The victim's resident memory (anon + file + shmem) when chosen,
    /// where the kernel's tracepoint carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// The memory limit of the victim's container (cgroup `memory.max`);
    /// absent for no limit or a host process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
}

/// Resource use, sampled: a container's cgroup (`resources` events), or
/// one process (the evidence of `process.cpu_runaway`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The window the CPU figures cover, milliseconds (the sampling
    /// interval, or for a finding the time it stayed over the threshold).
    pub window_ms: u64,
    /// CPU time used in the window, milliseconds (all threads summed).
    pub cpu_ms: u64,
    /// `cpu_ms` as a percentage of one core (above 100 on several cores).
    pub cpu_percent: u32,
    /// CPU time used since the process or container started, milliseconds.
    pub cpu_total_ms: u64,
    /// Memory charged now: the cgroup's `memory.current`, or a process's
    /// resident set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The cgroup's `memory.max`; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// `memory_bytes` as a percentage of the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<u32>,
    /// Memory growth over the window, bytes per second (negative: shrinking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_growth_bytes_per_s: Option<i64>,
    /// Tasks in the cgroup (`pids.current`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// OOM kills in the cgroup since it was created (`memory.events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// A container restarting in a loop (`container.restart_loop`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Restarts {
    /// Exits of the pod container (pod uid + container name) in the window.
    pub count: u32,
    pub window_s: u64,
    /// Their exit codes, oldest first (a signal `n` is written 128 + n).
    pub exit_codes: Vec<i32>,
}

/// Fork details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkInfo {
    pub child_pid: u32,
}

/// One socket endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl From<std::net::SocketAddr> for Endpoint {
    fn from(a: std::net::SocketAddr) -> Self {
        Endpoint {
            addr: a.ip(),
            port: a.port(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::net::SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// Network details for listen, connect and accept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Network {
    pub protocol: Protocol,
    pub family: Family,
    pub op: NetOp,
    pub local: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<Endpoint>,
    /// TCP connect: established or failed; denied when a policy refused
    /// it in the kernel (TCP or UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ConnectOutcome>,
    /// Listen/bind on a wildcard address (0.0.0.0 or ::): reachable from
    /// every interface of its network namespace. Listen and bind only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wildcard: Option<bool>,
}

/// Events the kernel or agent could not deliver, with counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Loss {
    pub stage: LossStage,
    /// Records dropped since the previous loss event of this stage, by
    /// record kind.
    pub exec: u64,
    pub exit: u64,
    pub fork: u64,
    pub network: u64,
    /// Records sent with fields the kernel could not read.
    pub read_errors: u64,
    /// TCP connects not tracked because the tracking map was full.
    pub connect_untracked: u64,
    /// Records that failed to decode.
    pub decode_errors: u64,
    /// Events in batches dropped because the spool was full (stage agent).
    pub spool_dropped: u64,
    /// Running totals of every counter, both stages, since the stream
    /// began: a later loss event still accounts for every earlier drop,
    /// even when the loss events that reported them were lost too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<LossTotals>,
}

/// Every loss counter summed since the stream began (`loss.totals`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LossTotals {
    pub exec: u64,
    pub exit: u64,
    pub fork: u64,
    pub network: u64,
    pub read_errors: u64,
    pub connect_untracked: u64,
    pub decode_errors: u64,
    pub spool_dropped: u64,
}

impl LossTotals {
    /// Add the counts of one loss event (its own, not its totals);
    /// saturating.
    pub fn add(&mut self, l: &Loss) {
        let add = |t: &mut u64, v: u64| *t = t.saturating_add(v);
        add(&mut self.exec, l.exec);
        add(&mut self.exit, l.exit);
        add(&mut self.fork, l.fork);
        add(&mut self.network, l.network);
        add(&mut self.read_errors, l.read_errors);
        add(&mut self.connect_untracked, l.connect_untracked);
        add(&mut self.decode_errors, l.decode_errors);
        add(&mut self.spool_dropped, l.spool_dropped);
    }

    /// Events lost in all, as [`Loss::total`] counts them.
    pub fn lost(&self) -> u64 {
        lost_sum([
            self.exec,
            self.exit,
            self.fork,
            self.network,
            self.decode_errors,
            self.spool_dropped,
        ])
    }
}

impl Loss {
    /// No losses yet, at `stage`.
    pub fn new(stage: LossStage) -> Self {
        Loss {
            stage,
            exec: 0,
            exit: 0,
            fork: 0,
            network: 0,
            read_errors: 0,
            connect_untracked: 0,
            decode_errors: 0,
            spool_dropped: 0,
            totals: None,
        }
    }

    /// Events lost in all (read errors and untracked connects were still
    /// delivered, so they are not counted); saturating.
    pub fn total(&self) -> u64 {
        lost_sum([
            self.exec,
            self.exit,
            self.fork,
            self.network,
            self.decode_errors,
            self.spool_dropped,
        ])
    }
}

/// The counters of events lost (exec, exit, fork, network, decode errors,
/// spool drops), summed saturating: one count for [`Loss::total`] and
/// [`LossTotals::lost`].
fn lost_sum(counts: [u64; 6]) -> u64 {
    counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
}

/// Attach state of one probe, reported at start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeStatus {
    pub program: Name,
    pub attached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How the probe works on this kernel where kernels differ (for
    /// example where exit events learn that a process's last thread ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<Name>,
}

/// Agent lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    pub state: AgentState,
    pub version: Name,
    pub kernel: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeStatus>,
    /// Processes and listening sockets reported by the startup snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_processes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_sockets: Option<u64>,
    /// Containers the startup snapshot reported (`snapshot_complete`;
    /// absent when containerd could not be asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_containers: Option<u64>,
    /// What the agent holds in memory (heartbeat and stopping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracked: Option<Tracked>,
}

/// A step in a container's life (`container` events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    pub state: ContainerState,
    /// Exit status of the container's init process as containerd reports
    /// it (a signal n is 128 + n): `exited`, and `deleted` when the agent
    /// saw the exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `created`: the image's lineage, when the agent could read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Arc<ImageLineage>>,
}

/// Entries in the agent's caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tracked {
    pub processes: u64,
    pub containers: u64,
    /// Events waiting for their container's metadata.
    pub pending_events: u64,
    /// cgroup ids resolved to a container or to the host.
    pub cgroups: u64,
}

/// The image a container runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Image {
    /// Reference the container was created from (`docker.io/library/x:1`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Manifest digest of the platform image that runs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// For a multi-platform image: the index (manifest list) digest.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub index_digest: String,
    /// Image config digest (the "image id").
    #[serde(skip_serializing_if = "String::is_empty")]
    pub config_digest: String,
    /// Ports the image declares (`8080/tcp`), from its config.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// Where the image comes from, as the agent read it from containerd.
    /// Not rendered with every event: it goes out once per container, in
    /// its `created` lifecycle event ([`Lifecycle::image`]).
    #[serde(skip)]
    pub lineage: Option<Arc<ImageLineage>>,
}

/// Where an image comes from: the base image its annotations name, and
/// its layers (base first; a base's layers are a prefix of its
/// descendants').
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageLineage {
    /// `org.opencontainers.image.base.digest` of the manifest or index.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub base_digest: String,
    /// `org.opencontainers.image.base.name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub base_name: String,
    /// The config's `rootfs.diff_ids`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diff_ids: Vec<String>,
}

/// Kubernetes pod of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pod {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub uid: String,
    /// The pod's labels (on its CRI sandbox), for policy scopes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Security posture from the container's OCI runtime spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Posture {
    /// User and group the container's processes start as.
    pub uid: u32,
    pub gid: u32,
    /// The container has its own user namespace (uid 0 inside is not host
    /// root).
    pub user_namespace: bool,
    /// CAP_SYS_ADMIN and no masked /proc paths: what `--privileged` gives.
    pub privileged: bool,
    /// Effective capabilities (`CAP_...`), sorted.
    pub capabilities: Vec<String>,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub read_only_rootfs: bool,
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
}

impl Default for Posture {
    fn default() -> Self {
        Posture {
            uid: 0,
            gid: 0,
            user_namespace: false,
            privileged: false,
            capabilities: Vec::new(),
            host_network: false,
            host_pid: false,
            host_ipc: false,
            read_only_rootfs: false,
            no_new_privileges: false,
            seccomp: Seccomp::Unconfined,
        }
    }
}

/// Everything known about one container. `id`, `pod` and `entrypoint`
/// are the agent's working state and are not written by this type (the
/// first two are in [`Container`] already; arguments may hold secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerMeta {
    #[serde(skip)]
    pub id: String,
    /// Kubernetes container name, else a `nerdctl/name` label, else the id.
    pub name: String,
    /// containerd namespace (`k8s.io`, `default`, `moby`, ...).
    pub namespace: String,
    /// OCI runtime (`io.containerd.runc.v2`).
    pub oci_runtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    pub image: Image,
    #[serde(skip)]
    pub pod: Option<Pod>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posture: Option<Posture>,
    /// The process the container was created to run (OCI spec
    /// `process.args`).
    #[serde(skip)]
    pub entrypoint: Vec<String>,
}

/// The container of the process: its id and runtime from the cgroup
/// path, everything else from containerd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    /// Container id as the runtime names it (64 hex digits for most).
    pub id: String,
    pub runtime: Runtime,
    /// Kubernetes pod: name, namespace and uid from containerd's CRI
    /// labels, or only the uid from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Why the metadata below is missing; absent when attributed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unattributed: Option<Unattributed>,
    /// name, namespace, image, labels, posture, ... (flattened).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Arc<ContainerMeta>>,
}

impl Container {
    /// What the cgroup path says; metadata comes later.
    pub fn from_cgroup(id: String, runtime: Runtime, pod_uid: Option<String>) -> Self {
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
    pub fn fill(&mut self, meta: &Arc<ContainerMeta>) {
        self.runtime = Runtime::Containerd;
        if meta.pod.is_some() {
            self.pod = meta.pod.clone();
        }
        self.unattributed = None;
        self.meta = Some(meta.clone());
    }
}

/// MITRE ATT&CK technique.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mitre {
    pub technique: Name,
    pub name: Name,
}

/// A detection: what rule, how bad, what to do about it, and the events
/// that show it. The finding event's `process` and `container` are the
/// evidence's, for querying without opening the evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FindingInfo {
    pub rule_id: Name,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mitre: Option<Mitre>,
    /// One line a human can act on.
    pub summary: String,
    /// What repeats under this finding: an executable, a port, a
    /// destination; empty for once-per-container rules.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    pub action: Action,
    /// For enforcing actions: what the kernel did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Occurrences folded into this finding (dedup window, rate limit).
    pub count: u64,
    /// The condition has ended (a runaway process back under its
    /// threshold): the update that closes an earlier finding.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resolved: bool,
    /// `container.restart_loop`: the exits counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<Restarts>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub evidence: Vec<Event>,
}

/// One event.
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
    pub loss: Option<Box<Loss>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<AgentInfo>>,
    /// `resources`: the container's (or, as evidence, the process's)
    /// sampled resource use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<Usage>>,
    /// Exec: the policy killed the process at exec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced: Option<Enforced>,
    /// `container`: what happened to the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<Box<FindingInfo>>,
    /// Repeats the agent's export filter folded into this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Box<Aggregate>>,
}

/// Repeats folded into one event by the agent's export filter
/// (`[export.filter] aggregate`): the event (the last of them) stands
/// for `count` occurrences of the same thing between `first` and `last`;
/// the first occurrence of the window went out on its own before them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Aggregate {
    pub count: u64,
    pub first: Timestamp,
    pub last: Timestamp,
    /// The window the repeats were gathered over, seconds.
    pub interval_s: u32,
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
            resources: None,
            enforced: None,
            lifecycle: None,
            finding: None,
            aggregate: None,
        }
    }
}

/// One event of every kind, every field set: test fixtures (feature
/// `samples`, for other crates' tests).
#[cfg(any(test, feature = "samples"))]
pub mod samples;

#[cfg(test)]
mod docs_check;
