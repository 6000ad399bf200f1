//! The rows one flush writes, keyed by their natural keys: many changes
//! to one key between two flushes become one row write.
use std::collections::HashMap;

use spyglass_proto::model::Container;

/// `nodes`: one row per node id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRow {
    pub agent_version: Option<String>,
    pub kernel: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub connected: Option<bool>,
    /// Events its agent lost since it started (latest totals).
    pub lost: Option<u64>,
    /// Received minus the newest event time of its latest batch, in ms.
    pub lag_ms: Option<i64>,
}

/// `containers`: one row per (node, id). Without `meta` only the times
/// are written (an unattributed event never erases what is known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRow {
    pub first_seen: i64,
    pub last_seen: i64,
    /// The event's container, when it carries containerd's metadata.
    pub meta: Option<Container>,
    /// Its latest resource sample, when one is due to be written.
    pub usage: Option<UsageRow>,
}

/// A container's resource sample (a `resources` event), and its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub at: i64,
    pub cpu_percent: u32,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: Option<u64>,
}

impl UsageRow {
    pub fn new(u: &spyglass_proto::model::Usage, at: i64) -> UsageRow {
        UsageRow {
            at,
            cpu_percent: u.cpu_percent,
            memory_bytes: u.memory_bytes,
            memory_limit_bytes: u.memory_limit_bytes,
            pids: u.pids,
            oom_kills: u.oom_kills,
        }
    }
}

/// `listeners` / `egress` key: node, container (`""`: host), protocol,
/// address, port.
pub type SocketKey = (String, String, &'static str, String, u16);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRow {
    pub wildcard: bool,
    pub declared: Option<bool>,
    pub pid: Option<u32>,
    pub exe: String,
    pub since: i64,
    pub last_seen: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRow {
    pub internet: bool,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Connections since the last write (added to the stored count).
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRow {
    pub index_digest: String,
    pub config_digest: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// An image's lineage (its `images` row's base, and its layers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineageRow {
    pub config_digest: String,
    pub base_digest: String,
    pub base_name: String,
    pub diff_ids: Vec<String>,
}

/// `findings` key: node, container (`""`: host), rule, subject.
pub type FindingKey = (String, String, String, String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FindingRow {
    pub severity: &'static str,
    pub summary: String,
    /// Occurrences in the updates since the last write (added).
    pub count: u64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub open: bool,
}

/// A container's latest lifecycle step: (time, state, exit code).
pub type LifecycleRow = (i64, spyglass_proto::model::ContainerState, Option<i32>);

/// An agent (re)started and its startup snapshot is complete: what the
/// store holds of `node` and was not re-announced since `cutoff` has
/// ended while no agent watched ([`super::sweep`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    pub node: String,
    /// The earliest time of the new agent's re-announcements: rows whose
    /// `last_seen` is older were not re-announced.
    pub cutoff: i64,
    /// Close open listeners (the snapshot reported the sockets).
    pub listeners: bool,
    /// End running containers (containerd listed the containers).
    pub containers: bool,
}

/// Everything one flush writes, in one transaction.
#[derive(Debug, Default)]
pub struct Rows {
    pub nodes: HashMap<String, NodeRow>,
    pub containers: HashMap<(String, String), ContainerRow>,
    pub listeners: HashMap<SocketKey, ListenerRow>,
    /// Listeners closed, and when (written after `listeners`: a listen
    /// later than the close keeps its row open).
    pub closed: HashMap<SocketKey, i64>,
    pub egress: HashMap<SocketKey, EgressRow>,
    /// By manifest digest.
    pub images: HashMap<String, ImageRow>,
    /// (digest, reference).
    pub image_refs: HashMap<(String, String), ()>,
    /// By manifest digest; written after `images`.
    pub lineages: HashMap<String, LineageRow>,
    pub findings: HashMap<FindingKey, FindingRow>,
    /// (node, container id) -> its latest lifecycle step; written after
    /// `containers` and `listeners` (an exit closes the container's
    /// listeners).
    pub lifecycle: HashMap<(String, String), LifecycleRow>,
    /// Nodes whose snapshot completed, in order; run after the rest is
    /// written (the re-announcements must be in the store first).
    pub sweeps: Vec<Sweep>,
}

impl Rows {
    /// Rows waiting.
    pub fn len(&self) -> usize {
        self.nodes.len()
            + self.containers.len()
            + self.listeners.len()
            + self.closed.len()
            + self.egress.len()
            + self.images.len()
            + self.image_refs.len()
            + self.lineages.len()
            + self.findings.len()
            + self.lifecycle.len()
            + self.sweeps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
