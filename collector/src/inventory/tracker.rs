//! What the store already holds, remembered in memory, so that only
//! state changes become row writes: a container or listener first seen,
//! metadata first known, a new destination, a finding; `last_seen` is
//! bumped in memory and written at most every [`LAST_SEEN_STEP_NS`].
//! An exec in a known container writes nothing. While a node's agent
//! re-announces what exists at its start ([`super::restarts`]), its
//! listeners and containers are written even when known, and its
//! `snapshot_complete` queues the sweep of what was not re-announced.
use std::collections::{HashMap, HashSet};

use spyglass_proto::model::{AgentState, ImageLineage};

use super::{
    changes::{Agent, Change, Egress, Finding, Listener},
    restarts::Restarts,
    rows::{
        ContainerRow, EgressRow, FindingRow, ImageRow, LineageRow, ListenerRow, NodeRow, Rows,
        SocketKey, Sweep, UsageRow,
    },
};

/// How stale a written `last_seen` may get before it is written again.
pub const LAST_SEEN_STEP_NS: i64 = 30_000_000_000;

/// Entries remembered before the memory is cleared (the store's writes
/// are idempotent upserts, so forgetting costs only writes).
const MAX_REMEMBERED: usize = 1_000_000;

/// Distinct destinations kept per container; past it a container's new
/// destinations are counted in one row with address `*` and port 0, so
/// a container spraying connections at many addresses cannot grow the
/// store (or this memory) without bound.
pub const MAX_DESTINATIONS_PER_CONTAINER: usize = 1024;

/// The address of the row that counts a container's destinations past
/// [`MAX_DESTINATIONS_PER_CONTAINER`].
pub const OTHER_DESTINATIONS: &str = "*";

#[derive(Clone, Copy, Debug)]
struct Written {
    last_seen: i64,
    attributed: bool,
    /// The time of the resource sample last written.
    usage_at: Option<i64>,
}

#[derive(Default)]
pub struct Tracker {
    nodes: HashMap<String, i64>,
    /// node -> container id -> what was written.
    containers: HashMap<String, HashMap<String, Written>>,
    container_count: usize,
    /// key -> (since written, last_seen written, its node's generation
    /// then: an entry of an older generation is not taken as written).
    listeners: HashMap<SocketKey, (i64, i64, u32)>,
    /// node -> generation, bumped when its agent connects
    /// ([`Tracker::connected`]).
    generations: HashMap<String, u32>,
    /// key -> (last_seen written, connections not yet written).
    egress: HashMap<SocketKey, (i64, u64)>,
    /// (node, container) -> distinct destinations in `egress`.
    destinations: HashMap<(String, String), usize>,
    image_refs: HashSet<(String, String)>,
    /// Manifest digests whose lineage was written.
    lineages: HashSet<String>,
    /// Agents restarting, per node.
    restarts: Restarts,
    /// node -> lost events written (its agent's latest totals).
    lost: HashMap<String, u64>,
    /// node -> lag of its latest batch, ms (written with its node row).
    lag: HashMap<String, i64>,
    /// What the next flush writes.
    pub rows: Rows,
}

fn due(written: i64, at: i64) -> bool {
    at >= written.saturating_add(LAST_SEEN_STEP_NS)
}

fn socket_key(
    node: &str,
    container: &str,
    protocol: &'static str,
    addr: std::net::IpAddr,
    port: u16,
) -> SocketKey {
    (
        node.to_owned(),
        container.to_owned(),
        protocol,
        addr.to_string(),
        port,
    )
}

impl Tracker {
    /// Take one change into account.
    pub fn apply(&mut self, change: &Change<'_>) {
        match change {
            Change::Node { node, at } => self.node_seen(node, *at),
            Change::Agent(a) => self.agent(a),
            Change::Snapshot { node, at } => self.restarts.snapshot_event(node, *at),
            Change::Container {
                node,
                container,
                at,
            } => self.container_seen(node, container, *at),
            Change::Listen(l) => self.listener_seen(l),
            Change::Close {
                node,
                container_id,
                protocol,
                address,
                port,
                at,
            } => {
                let key = socket_key(node, container_id, protocol, *address, *port);
                // a listen after it is new again
                self.listeners.remove(&key);
                let t = self.rows.closed.entry(key).or_insert(*at);
                *t = (*t).max(*at);
            }
            Change::Egress(e) => self.egress_seen(e),
            Change::Finding(f) => self.finding_seen(f),
            Change::Lost { node, lost } => {
                if self.lost.get(*node) != Some(lost) {
                    self.lost.insert((*node).to_owned(), *lost);
                    let at = self.nodes.get(*node).copied().unwrap_or_default();
                    self.node_row(node, at).lost = Some(*lost);
                }
            }
            Change::Usage {
                node,
                container_id,
                usage,
                at,
            } => self.usage_seen(node, container_id, usage, *at),
            Change::Lifecycle {
                node,
                container_id,
                state,
                exit_code,
                at,
            } => self.lifecycle(node, container_id, *state, *exit_code, *at),
            Change::Lineage {
                digest,
                config_digest,
                lineage,
            } => self.lineage_seen(digest, config_digest, lineage),
        }
        self.bound();
    }

    /// An agent's stream opened or closed. Opened: what this collector
    /// holds as written of the node is forgotten, since while the agent
    /// streamed to another collector (a failover and back) that one may
    /// have closed listeners or ended containers this one takes as open
    /// and would not write again.
    pub fn connected(&mut self, node: &str, connected: bool, at: i64) {
        if connected {
            self.forget_node(node);
        }
        self.node_row(node, at).connected = Some(connected);
    }

    /// Forget `node`'s containers and listeners (their next event writes
    /// them again), without a pass over every node's listeners: they are
    /// of an older generation now. Destinations keep their counts not
    /// yet written.
    fn forget_node(&mut self, node: &str) {
        if let Some(m) = self.containers.remove(node) {
            self.container_count -= m.len();
        }
        match self.generations.get_mut(node) {
            Some(g) => *g = g.wrapping_add(1),
            None => {
                self.generations.insert(node.to_owned(), 1);
            }
        }
    }

    fn generation(&self, node: &str) -> u32 {
        self.generations.get(node).copied().unwrap_or(0)
    }

    fn agent(&mut self, a: &Agent<'_>) {
        let row = self.node_row(a.node, a.at);
        row.agent_version = Some(a.version.to_owned());
        row.kernel = Some(a.kernel.to_owned());
        match a.state {
            AgentState::Started => self.restarts.started(a.node, a.at),
            AgentState::SnapshotComplete => {
                let Some(cutoff) = self.restarts.complete(a.node) else {
                    return;
                };
                let sweep = Sweep {
                    node: a.node.to_owned(),
                    cutoff,
                    listeners: a.snapshot_sockets.is_some(),
                    containers: a.snapshot_containers.is_some(),
                };
                self.forget_swept(&sweep);
                self.rows.sweeps.push(sweep);
            }
            _ => {}
        }
    }

    /// What the sweep ends is no longer taken as written: a listen or
    /// container seen after it is written again.
    fn forget_swept(&mut self, sweep: &Sweep) {
        if sweep.listeners {
            self.listeners
                .retain(|k, (_, last, _)| k.0 != sweep.node || *last >= sweep.cutoff);
        }
        if sweep.containers {
            if let Some(m) = self.containers.get_mut(&sweep.node) {
                let before = m.len();
                m.retain(|_, w| w.last_seen >= sweep.cutoff);
                self.container_count -= before - m.len();
            }
        }
    }

    fn node_row(&mut self, node: &str, at: i64) -> &mut NodeRow {
        self.nodes.insert(node.to_owned(), at);
        let row = self.rows.nodes.entry(node.to_owned()).or_insert(NodeRow {
            first_seen: at,
            last_seen: at,
            ..NodeRow::default()
        });
        row.first_seen = row.first_seen.min(at);
        row.last_seen = row.last_seen.max(at);
        row
    }

    fn node_seen(&mut self, node: &str, at: i64) {
        match self.nodes.get(node) {
            Some(w) if !due(*w, at) => {}
            _ => {
                self.node_row(node, at);
            }
        }
    }

    fn container_seen(&mut self, node: &str, c: &spyglass_proto::model::Container, at: i64) {
        let attributed = c.meta.is_some();
        let known = self
            .containers
            .get(node)
            .and_then(|m| m.get(&c.id))
            .copied();
        let write_meta = match known {
            Some(w) if w.attributed || !attributed => {
                if !due(w.last_seen, at) && !self.restarts.restarting(node) {
                    return;
                }
                false
            }
            _ => attributed,
        };
        let w = Written {
            last_seen: at.max(known.map_or(at, |w| w.last_seen)),
            attributed: attributed || known.is_some_and(|w| w.attributed),
            usage_at: known.and_then(|w| w.usage_at),
        };
        if known.is_none() {
            self.container_count += 1;
        }
        self.containers
            .entry(node.to_owned())
            .or_default()
            .insert(c.id.clone(), w);
        let row = self
            .rows
            .containers
            .entry((node.to_owned(), c.id.clone()))
            .or_insert(ContainerRow {
                first_seen: at,
                last_seen: at,
                meta: None,
                usage: None,
            });
        row.first_seen = row.first_seen.min(at);
        row.last_seen = row.last_seen.max(at);
        if write_meta {
            row.meta = Some(c.clone());
            self.image_seen(c, at);
        }
    }

    /// A container's resource sample: written at most every
    /// [`LAST_SEEN_STEP_NS`] per container (the agent reports every
    /// minute by default; an agent sending more costs no more writes).
    fn usage_seen(&mut self, node: &str, id: &str, u: &spyglass_proto::model::Usage, at: i64) {
        if let Some(w) = self.containers.get_mut(node).and_then(|m| m.get_mut(id)) {
            if w.usage_at.is_some_and(|t| !due(t, at)) {
                return;
            }
            w.usage_at = Some(at);
        }
        let row = self
            .rows
            .containers
            .entry((node.to_owned(), id.to_owned()))
            .or_insert(ContainerRow {
                first_seen: at,
                last_seen: at,
                meta: None,
                usage: None,
            });
        if row.usage.is_none_or(|old| old.at <= at) {
            row.usage = Some(UsageRow::new(u, at));
        }
    }

    fn image_seen(&mut self, c: &spyglass_proto::model::Container, at: i64) {
        let Some(meta) = &c.meta else { return };
        let img = &meta.image;
        if img.digest.is_empty() {
            return;
        }
        let key = (img.digest.clone(), img.reference.clone());
        if !self.image_refs.insert(key.clone()) {
            return;
        }
        let row = self
            .rows
            .images
            .entry(img.digest.clone())
            .or_insert(ImageRow {
                index_digest: img.index_digest.clone(),
                config_digest: img.config_digest.clone(),
                first_seen: at,
                last_seen: at,
            });
        row.last_seen = row.last_seen.max(at);
        if !img.reference.is_empty() {
            self.rows.image_refs.insert(key, ());
        }
    }

    /// An image's lineage: written once per manifest digest (an image's
    /// lineage never changes).
    fn lineage_seen(&mut self, digest: &str, config: &str, lineage: &ImageLineage) {
        if !self.lineages.insert(digest.to_owned()) {
            return;
        }
        self.rows.lineages.insert(
            digest.to_owned(),
            LineageRow {
                config_digest: config.to_owned(),
                base_digest: lineage.base_digest.clone(),
                base_name: lineage.base_name.clone(),
                diff_ids: lineage.diff_ids.clone(),
            },
        );
    }

    fn listener_seen(&mut self, l: &Listener<'_>) {
        let key = socket_key(l.node, l.container_id, l.protocol, l.address, l.port);
        let generation = self.generation(l.node);
        let known = self
            .listeners
            .get(&key)
            .filter(|w| w.2 == generation)
            .map(|w| (w.0, w.1));
        let reannounced = self.restarts.restarting(l.node);
        if known.is_some_and(|(since, last)| since <= l.at && !due(last, l.at)) && !reannounced {
            return;
        }
        let (since, last) = known.unwrap_or((l.at, l.at));
        self.listeners
            .insert(key.clone(), (since.min(l.at), last.max(l.at), generation));
        let row = self.rows.listeners.entry(key).or_insert(ListenerRow {
            wildcard: l.wildcard,
            declared: l.declared,
            pid: l.pid,
            exe: l.exe.to_owned(),
            since: l.at,
            last_seen: l.at,
        });
        row.since = row.since.min(l.at);
        row.last_seen = row.last_seen.max(l.at);
    }

    fn egress_seen(&mut self, e: &Egress<'_>) {
        let mut key = socket_key(e.node, e.container_id, e.protocol, e.address, e.port);
        if !self.egress.contains_key(&key) {
            let n = self
                .destinations
                .entry((e.node.to_owned(), e.container_id.to_owned()))
                .or_default();
            if *n >= MAX_DESTINATIONS_PER_CONTAINER {
                key.3 = OTHER_DESTINATIONS.to_owned();
                key.4 = 0;
            } else {
                *n += 1;
            }
        }
        let entry = self.egress.entry(key.clone()).or_insert((i64::MIN, 0));
        entry.1 += 1;
        if entry.0 != i64::MIN && !due(entry.0, e.at) {
            return;
        }
        let count = std::mem::take(&mut entry.1);
        entry.0 = e.at;
        let row = self.rows.egress.entry(key).or_insert(EgressRow {
            internet: e.internet,
            first_seen: e.at,
            last_seen: e.at,
            count: 0,
        });
        row.first_seen = row.first_seen.min(e.at);
        row.last_seen = row.last_seen.max(e.at);
        row.count += count;
        row.internet |= e.internet;
    }

    fn finding_seen(&mut self, f: &Finding<'_>) {
        let key = (
            f.node.to_owned(),
            f.container_id.to_owned(),
            f.rule.to_owned(),
            f.subject.to_owned(),
        );
        let row = self.rows.findings.entry(key).or_insert(FindingRow {
            severity: f.severity.as_str(),
            summary: String::new(),
            count: 0,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            open: f.open,
        });
        f.summary.clone_into(&mut row.summary);
        row.severity = f.severity.as_str();
        row.count += f.count;
        row.first_seen = row.first_seen.min(f.first_seen);
        if f.last_seen >= row.last_seen {
            row.last_seen = f.last_seen;
            row.open = f.open;
        }
    }

    fn lifecycle(
        &mut self,
        node: &str,
        id: &str,
        state: spyglass_proto::model::ContainerState,
        exit_code: Option<i32>,
        at: i64,
    ) {
        use spyglass_proto::model::ContainerState as S;
        if matches!(state, S::Exited | S::Deleted) {
            // its listeners are closed with it: a listen after is new
            self.listeners.retain(|k, _| !(k.0 == node && k.1 == id));
        }
        let row = self
            .rows
            .lifecycle
            .entry((node.to_owned(), id.to_owned()))
            .or_insert((at, state, exit_code));
        if at >= row.0 {
            *row = (at, state, exit_code.or(row.2));
        }
    }

    /// Forget everything past [`MAX_REMEMBERED`] entries.
    fn bound(&mut self) {
        if self.container_count
            + self.listeners.len()
            + self.egress.len()
            + self.image_refs.len()
            + self.lineages.len()
            > MAX_REMEMBERED
        {
            self.forget();
        }
    }

    /// Changes were lost before they reached the store (an update
    /// dropped, a flush's rows dropped): no open restart may sweep, as
    /// its re-announcements may be among them ([`Restarts::abandon`]).
    pub fn abandon_restarts(&mut self) {
        let n = self.restarts.abandon();
        if n > 0 {
            tracing::warn!(
                restarts = n,
                "inventory changes were lost while agents restarted: their snapshots will not end what they did not re-announce"
            );
        }
    }

    /// What a retention pass deleted (ended containers, closed
    /// listeners, and those containers' destinations and closed
    /// findings) is no longer taken as written. Destinations stay: a
    /// live container's are never deleted, and forgetting them would
    /// reset the count that caps them at
    /// [`MAX_DESTINATIONS_PER_CONTAINER`] at every pass.
    pub fn forget_ended(&mut self) {
        self.containers.clear();
        self.container_count = 0;
        self.listeners.clear();
    }

    /// Forget what was taken as written: the next event of each thing
    /// writes it again (after a failed write, what it carried is
    /// re-learned instead of lost for good).
    pub fn forget(&mut self) {
        self.nodes.clear();
        self.containers.clear();
        self.container_count = 0;
        self.listeners.clear();
        self.egress.clear();
        self.destinations.clear();
        self.image_refs.clear();
        self.lineages.clear();
        self.lost.clear();
    }

    /// The rows to write now; the tracker keeps what they say as written.
    pub fn take(&mut self) -> Rows {
        let mut rows = std::mem::take(&mut self.rows);
        for (node, row) in &mut rows.nodes {
            row.lag_ms = self.lag.get(node).copied();
        }
        rows
    }

    /// The lag of `node`'s latest batch (written with its node row).
    pub fn lag(&mut self, node: &str, lag_ms: i64) {
        match self.lag.get_mut(node) {
            Some(l) => *l = lag_ms,
            None => {
                self.lag.insert(node.to_owned(), lag_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spyglass_proto::model::{Container, ContainerMeta, Image, Runtime, Severity};

    use super::*;
    use crate::inventory::changes::Agent;

    const S: i64 = 1_000_000_000;

    fn bare() -> Container {
        Container::from_cgroup("c1".into(), Runtime::Containerd, None)
    }

    fn attributed() -> Container {
        let mut c = bare();
        c.fill(&Arc::new(ContainerMeta {
            id: "c1".into(),
            image: Image {
                reference: "r:1".into(),
                digest: "sha256:m".into(),
                ..Image::default()
            },
            ..ContainerMeta::default()
        }));
        c
    }

    fn seen(t: &mut Tracker, c: &Container, at: i64) {
        t.apply(&Change::Container {
            node: "n1",
            container: c,
            at,
        });
    }

    #[test]
    fn a_container_s_destinations_past_the_cap_share_one_row() {
        let mut t = Tracker::default();
        let dest = |i: usize, at: i64| {
            let ip = std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            Change::Egress(Egress {
                node: "n1",
                container_id: "c1",
                protocol: "udp",
                address: ip,
                port: 53,
                internet: i.is_multiple_of(2),
                at,
            })
        };
        for i in 0..MAX_DESTINATIONS_PER_CONTAINER + 500 {
            t.apply(&dest(i, S));
        }
        let other: SocketKey = (
            "n1".into(),
            "c1".into(),
            "udp",
            OTHER_DESTINATIONS.into(),
            0,
        );
        let rows = t.take();
        assert_eq!(rows.egress.len(), MAX_DESTINATIONS_PER_CONTAINER + 1);
        assert_eq!(
            rows.egress[&other].count, 1,
            "the first, then counted in memory"
        );
        // one more, due: the row takes what was counted meanwhile
        t.apply(&dest(
            MAX_DESTINATIONS_PER_CONTAINER + 500,
            S + LAST_SEEN_STEP_NS,
        ));
        let rows = t.take();
        assert_eq!(rows.egress.len(), 1);
        assert_eq!(rows.egress[&other].count, 500);
        assert!(rows.egress[&other].internet);
        // a destination seen before the cap keeps its own row
        t.apply(&dest(3, S + 2 * LAST_SEEN_STEP_NS));
        assert!(t.take().egress.keys().all(|k| k.3 == "10.0.0.3"));
        assert_eq!(
            t.destinations[&("n1".into(), "c1".into())],
            MAX_DESTINATIONS_PER_CONTAINER
        );
        // a retention pass deleted something: the cap still holds
        t.forget_ended();
        t.apply(&dest(
            MAX_DESTINATIONS_PER_CONTAINER + 600,
            S + 3 * LAST_SEEN_STEP_NS,
        ));
        assert!(t.take().egress.keys().all(|k| k.3 == OTHER_DESTINATIONS));
    }

    #[test]
    fn after_a_failed_write_the_metadata_is_written_again() {
        let mut t = Tracker::default();
        let c = attributed();
        seen(&mut t, &c, S);
        let lost = t.take();
        assert!(lost.containers[&("n1".into(), "c1".into())].meta.is_some());
        seen(&mut t, &c, S + 1);
        assert!(t.take().is_empty(), "taken as written");
        // the write failed: the updater forgets, the next exec rewrites it
        t.forget();
        seen(&mut t, &c, S + 2);
        let rows = t.take();
        assert!(rows.containers[&("n1".into(), "c1".into())].meta.is_some());
        assert!(rows.images.contains_key("sha256:m"));
    }

    #[test]
    fn a_container_is_written_when_first_seen_then_not_for_every_exec() {
        let mut t = Tracker::default();
        let c = attributed();
        seen(&mut t, &c, S);
        let rows = t.take();
        let row = &rows.containers[&("n1".into(), "c1".into())];
        assert_eq!((row.first_seen, row.last_seen), (S, S));
        assert!(row.meta.is_some());
        assert_eq!(rows.images["sha256:m"].first_seen, S);
        assert!(rows
            .image_refs
            .contains_key(&("sha256:m".into(), "r:1".into())));
        for i in 1..1000 {
            seen(&mut t, &c, S + i * 1000);
        }
        assert!(
            t.take().is_empty(),
            "a thousand execs in 1 ms write nothing"
        );
        seen(&mut t, &c, S + LAST_SEEN_STEP_NS);
        let rows = t.take();
        let row = &rows.containers[&("n1".into(), "c1".into())];
        assert_eq!(row.last_seen, S + LAST_SEEN_STEP_NS);
        assert!(row.meta.is_none(), "a bump writes only the time");
        assert!(rows.images.is_empty());
    }

    #[test]
    fn metadata_arriving_later_is_written_at_once() {
        let mut t = Tracker::default();
        seen(&mut t, &bare(), S);
        assert!(t.take().containers.values().all(|r| r.meta.is_none()));
        seen(&mut t, &attributed(), S + 1);
        let rows = t.take();
        assert!(rows.containers[&("n1".into(), "c1".into())].meta.is_some());
        // and an unattributed event after it erases nothing, writes nothing
        seen(&mut t, &bare(), S + 2);
        assert!(t.take().is_empty());
    }

    fn listen(port: u16, at: i64) -> Change<'static> {
        Change::Listen(Listener {
            node: "n1",
            container_id: "c1",
            protocol: "tcp",
            address: "0.0.0.0".parse().unwrap(),
            port,
            wildcard: true,
            declared: None,
            pid: Some(1),
            exe: "/bin/nc",
            at,
        })
    }

    #[test]
    fn an_exit_closes_the_containers_listeners_in_memory_too() {
        use spyglass_proto::model::ContainerState;
        let mut t = Tracker::default();
        t.apply(&listen(80, S));
        t.take();
        t.apply(&Change::Lifecycle {
            node: "n1",
            container_id: "c1",
            state: ContainerState::Exited,
            exit_code: Some(3),
            at: 2 * S,
        });
        t.apply(&Change::Lifecycle {
            node: "n1",
            container_id: "c1",
            state: ContainerState::Deleted,
            exit_code: None,
            at: 3 * S,
        });
        let rows = t.take();
        assert_eq!(
            rows.lifecycle[&("n1".into(), "c1".into())],
            (3 * S, ContainerState::Deleted, Some(3))
        );
        // the same listener again (a new container with the same id) is new
        t.apply(&listen(80, 3 * S + 1));
        assert_eq!(t.take().listeners.len(), 1);
    }

    fn agent(state: AgentState, sockets: Option<u64>, at: i64) -> Change<'static> {
        Change::Agent(Agent {
            node: "n1",
            version: "v",
            kernel: "k",
            state,
            snapshot_sockets: sockets,
            snapshot_containers: Some(1),
            at,
        })
    }

    #[test]
    fn a_restart_re_announcement_is_written_though_known_and_the_marker_sweeps() {
        let mut t = Tracker::default();
        let c = attributed();
        seen(&mut t, &c, S);
        t.apply(&listen(80, S));
        t.apply(&listen(81, S));
        t.take();
        // restart within the last_seen step: without the restart these
        // would write nothing
        t.apply(&Change::Snapshot {
            node: "n1",
            at: 2 * S,
        });
        t.apply(&listen(80, 2 * S));
        t.apply(&agent(AgentState::Started, None, 3 * S));
        seen(&mut t, &c, 4 * S);
        let rows = t.take();
        assert_eq!(rows.listeners.len(), 1, "the re-announced listener");
        assert_eq!(
            rows.containers[&("n1".into(), "c1".into())].last_seen,
            4 * S
        );
        assert!(rows.sweeps.is_empty(), "nothing ends before the marker");
        t.apply(&agent(AgentState::SnapshotComplete, Some(1), 5 * S));
        let rows = t.take();
        assert_eq!(
            rows.sweeps,
            [Sweep {
                node: "n1".into(),
                cutoff: 2 * S,
                listeners: true,
                containers: true
            }]
        );
        // after the marker: known again, not forced
        t.apply(&listen(80, 6 * S));
        assert!(t.take().is_empty());
        // the swept listener (81) is no longer taken as written
        t.apply(&listen(81, 6 * S));
        assert_eq!(t.take().listeners.len(), 1);
    }

    #[test]
    fn a_restart_whose_changes_were_lost_does_not_sweep() {
        let mut t = Tracker::default();
        t.apply(&Change::Snapshot {
            node: "n1",
            at: 2 * S,
        });
        t.apply(&agent(AgentState::Started, None, 3 * S));
        // the batch with the re-announcements was dropped on its way
        t.abandon_restarts();
        t.apply(&agent(AgentState::SnapshotComplete, Some(1), 5 * S));
        assert!(t.take().sweeps.is_empty(), "what was lost is not ended");
        // the next restart, whole, sweeps again
        t.apply(&agent(AgentState::Started, None, 6 * S));
        t.apply(&agent(AgentState::SnapshotComplete, Some(1), 7 * S));
        assert_eq!(t.take().sweeps.len(), 1);
    }

    #[test]
    fn without_the_socket_snapshot_listeners_are_not_swept() {
        let mut t = Tracker::default();
        t.apply(&agent(AgentState::Started, None, 3 * S));
        t.apply(&agent(AgentState::SnapshotComplete, None, 5 * S));
        let sweep = &t.take().sweeps[0];
        assert_eq!(
            (sweep.cutoff, sweep.listeners, sweep.containers),
            (3 * S, false, true)
        );
        // a marker whose start this collector did not see: no sweep
        t.apply(&agent(AgentState::SnapshotComplete, Some(1), 9 * S));
        assert!(t.take().sweeps.is_empty());
    }

    #[test]
    fn a_close_is_written_and_a_listen_after_it_is_new_again() {
        let mut t = Tracker::default();
        t.apply(&listen(80, S));
        let close = Change::Close {
            node: "n1",
            container_id: "c1",
            protocol: "tcp",
            address: "0.0.0.0".parse().unwrap(),
            port: 80,
            at: 2 * S,
        };
        t.apply(&close);
        let rows = t.take();
        assert_eq!(rows.listeners.len(), 1);
        assert_eq!(rows.closed.values().copied().collect::<Vec<_>>(), [2 * S]);
        t.apply(&listen(80, 3 * S));
        let rows = t.take();
        assert_eq!(rows.listeners.values().next().unwrap().since, 3 * S);
    }

    #[test]
    fn a_node_reconnecting_is_written_again_as_another_collector_may_have_ended_it() {
        let mut t = Tracker::default();
        t.apply(&listen(80, S));
        drop(t.take());
        t.apply(&listen(80, 2 * S));
        assert!(t.take().is_empty(), "known: not written");
        // the agent streamed to another collector, which closed the
        // listener; it is back here and the listener is open again
        t.connected("n1", true, 3 * S);
        t.apply(&listen(80, 4 * S));
        let rows = t.take();
        assert_eq!(rows.listeners.len(), 1);
        // another node's reconnection leaves n1 known
        t.connected("n2", true, 5 * S);
        t.apply(&listen(80, 6 * S));
        assert!(t.take().listeners.is_empty());
    }

    #[test]
    fn a_listener_is_written_once_and_its_since_is_the_first_listen() {
        let mut t = Tracker::default();
        t.apply(&listen(80, 2 * S));
        t.apply(&listen(80, S));
        let rows = t.take();
        assert_eq!(rows.listeners.len(), 1);
        let row = rows.listeners.values().next().unwrap();
        assert_eq!((row.since, row.last_seen), (S, 2 * S));
        t.apply(&listen(80, 3 * S));
        assert!(t.take().is_empty());
        t.apply(&listen(81, 3 * S));
        assert_eq!(t.take().listeners.len(), 1);
    }

    fn connect(at: i64) -> Change<'static> {
        Change::Egress(Egress {
            node: "n1",
            container_id: "c1",
            protocol: "tcp",
            address: "1.1.1.1".parse().unwrap(),
            port: 443,
            internet: true,
            at,
        })
    }

    #[test]
    fn egress_counts_are_written_with_the_coarse_last_seen() {
        let mut t = Tracker::default();
        t.apply(&connect(S));
        let rows = t.take();
        assert_eq!(rows.egress.values().next().unwrap().count, 1);
        for i in 1..=5 {
            t.apply(&connect(S + i));
        }
        assert!(
            t.take().is_empty(),
            "five connects within the step: no write"
        );
        t.apply(&connect(S + LAST_SEEN_STEP_NS));
        let rows = t.take();
        let row = rows.egress.values().next().unwrap();
        assert_eq!(
            (row.count, row.last_seen, row.internet),
            (6, S + LAST_SEEN_STEP_NS, true)
        );
    }

    #[test]
    fn a_finding_and_its_resolution_in_one_flush_leave_it_closed() {
        let mut t = Tracker::default();
        let f = |open: bool, last: i64| {
            Change::Finding(Finding {
                node: "n1",
                container_id: "",
                rule: "r",
                subject: "s",
                severity: Severity::High,
                summary: "x",
                count: 2,
                first_seen: S,
                last_seen: last,
                open,
            })
        };
        t.apply(&f(true, 2 * S));
        t.apply(&f(false, 3 * S));
        let rows = t.take();
        let row = rows.findings.values().next().unwrap();
        assert_eq!(
            (row.count, row.open, row.first_seen, row.last_seen),
            (4, false, S, 3 * S)
        );
    }

    #[test]
    fn nodes_are_bumped_coarsely_and_agent_events_always_written() {
        let mut t = Tracker::default();
        t.apply(&Change::Node { node: "n1", at: S });
        assert_eq!(t.take().nodes["n1"].last_seen, S);
        t.apply(&Change::Node {
            node: "n1",
            at: S + 1,
        });
        assert!(t.take().is_empty());
        t.apply(&agent(AgentState::Running, None, S + 2));
        t.connected("n1", true, S + 3);
        let rows = t.take();
        let n = &rows.nodes["n1"];
        assert_eq!(
            (n.agent_version.as_deref(), n.connected, n.last_seen),
            (Some("v"), Some(true), S + 3)
        );
    }

    #[test]
    fn a_node_s_losses_are_written_when_they_change_and_its_lag_with_its_row() {
        let mut t = Tracker::default();
        t.lag("n1", 40);
        t.apply(&Change::Node { node: "n1", at: S });
        t.apply(&Change::Lost {
            node: "n1",
            lost: 3,
        });
        let rows = t.take();
        assert_eq!(
            (rows.nodes["n1"].lost, rows.nodes["n1"].lag_ms),
            (Some(3), Some(40))
        );
        // the same totals again: nothing to write
        t.apply(&Change::Lost {
            node: "n1",
            lost: 3,
        });
        assert!(t.take().is_empty());
        t.lag("n1", 7);
        t.apply(&Change::Lost {
            node: "n1",
            lost: 5,
        });
        let rows = t.take();
        assert_eq!(
            (rows.nodes["n1"].lost, rows.nodes["n1"].lag_ms),
            (Some(5), Some(7))
        );
    }
}
