//! What a fleet inventory needs from the pipeline besides the kernel's
//! records: a `container` event at each step of a container's life, and
//! the marker that the startup snapshot is whole (`agent`
//! `snapshot_complete`). Pure: the pipeline owns the state and emits.
use std::sync::Arc;

use crate::{
    clock::Clock,
    container::meta::ContainerMeta,
    event::{AgentInfo, AgentState, Container, ContainerState, Event, Kind, Lifecycle, Runtime},
};

/// The startup snapshot, until containerd's first listing completes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Startup {
    /// Processes and listening sockets of the /proc snapshot (None: the
    /// snapshot is off).
    pub processes: Option<u64>,
    pub sockets: Option<u64>,
    /// Containers reported with `snapshot: true` so far.
    pub containers: u64,
}

/// A `container` event for `id` (its metadata when known).
pub fn container_event(
    node: &str,
    id: &str,
    meta: Option<&Arc<ContainerMeta>>,
    lifecycle: Lifecycle,
    snapshot: bool,
) -> Event {
    let mut ev = Event::new(Kind::Container, Clock::now(), node.to_owned());
    ev.snapshot = snapshot;
    let mut c = Container::from_cgroup(id.to_owned(), Runtime::Containerd, None);
    if let Some(m) = meta {
        c.fill(m);
    }
    ev.container = Some(c);
    let mut lifecycle = lifecycle;
    if lifecycle.state == ContainerState::Created {
        // once per container, not with every event of it
        lifecycle.image = meta.and_then(|m| m.image.lineage.clone());
    }
    ev.lifecycle = Some(lifecycle);
    ev
}

/// A lifecycle step.
pub fn step(state: ContainerState, exit_code: Option<i32>) -> Lifecycle {
    Lifecycle {
        state,
        exit_code,
        image: None,
    }
}

/// The `snapshot_complete` marker. `containers`: None when containerd
/// could not be asked (disabled or unreachable): a reader must then not
/// take the absence of a container for its end.
pub fn snapshot_complete(
    node: &str,
    version: &'static str,
    kernel: &str,
    s: Startup,
    containers: Option<u64>,
) -> Event {
    let mut ev = Event::new(Kind::Agent, Clock::now(), node.to_owned());
    ev.agent = Some(Box::new(AgentInfo {
        state: AgentState::SnapshotComplete,
        version: version.into(),
        kernel: kernel.to_owned(),
        probes: Vec::new(),
        snapshot_processes: s.processes,
        snapshot_sockets: s.sockets,
        snapshot_containers: containers,
        tracked: None,
    }));
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_event_carries_the_metadata_and_no_process() {
        let meta = Arc::new(ContainerMeta {
            id: "c1".into(),
            name: "web".into(),
            namespace: "k8s.io".into(),
            ..ContainerMeta::default()
        });
        let ev = container_event(
            "n",
            "c1",
            Some(&meta),
            step(ContainerState::Created, None),
            true,
        );
        assert_eq!(
            (ev.kind, ev.snapshot, ev.process.is_none()),
            (Kind::Container, true, true)
        );
        let c = ev.container.unwrap();
        assert_eq!((c.id.as_str(), c.runtime), ("c1", Runtime::Containerd));
        assert_eq!(c.meta.unwrap().name, "web");
        let bare = container_event(
            "n",
            "c2",
            None,
            step(ContainerState::Deleted, Some(3)),
            false,
        );
        assert_eq!(bare.lifecycle, Some(step(ContainerState::Deleted, Some(3))));
        assert!(bare.container.unwrap().meta.is_none());
    }

    #[test]
    fn the_marker_says_what_the_snapshot_listed() {
        let s = Startup {
            processes: Some(10),
            sockets: Some(2),
            containers: 4,
        };
        let ev = snapshot_complete("n", "0.1.0", "6.18", s, None);
        let a = ev.agent.unwrap();
        assert_eq!(a.state, AgentState::SnapshotComplete);
        assert_eq!(
            (
                a.snapshot_processes,
                a.snapshot_sockets,
                a.snapshot_containers
            ),
            (Some(10), Some(2), None)
        );
    }
}
