//! Event -> state change: what one event says about the fleet's state
//! (a node seen, a container seen, a listener opened, a destination
//! reached, a finding). Pure: no time but the event's, no I/O; the
//! [`super::tracker`] decides which changes reach the store.
use std::net::IpAddr;

use spyglass_proto::model::{
    AgentState, ConnectOutcome, Container, ContainerState, Event, ImageLineage, Kind, NetOp,
    Severity, Usage,
};

/// Where a socket or finding belongs: a container's id, or `""` for the
/// host (and for events attributed to neither).
fn owner(ev: &Event) -> &str {
    ev.container.as_ref().map_or("", |c| c.id.as_str())
}

/// A container's own resource sample: a `resources` event of a
/// container, not of one of its processes (those name a process).
pub fn container_usage(ev: &Event) -> Option<(&Container, &Usage)> {
    match (ev.kind, &ev.container, &ev.resources, &ev.process) {
        (Kind::Resources, Some(c), Some(u), None) => Some((c, u)),
        _ => None,
    }
}

/// A listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener<'a> {
    pub node: &'a str,
    pub container_id: &'a str,
    pub protocol: &'static str,
    pub address: IpAddr,
    pub port: u16,
    pub wildcard: bool,
    /// The image declares `PORT/PROTOCOL` (`None`: the event carries no
    /// image, so nobody knows).
    pub declared: Option<bool>,
    pub pid: Option<u32>,
    pub exe: &'a str,
    pub at: i64,
}

/// An agent's lifecycle event: who it is and which step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent<'a> {
    pub node: &'a str,
    pub version: &'a str,
    pub kernel: &'a str,
    pub state: AgentState,
    /// `snapshot_complete`: the agent's /proc snapshot reported the
    /// listening sockets (None: the snapshot was off, listeners were not
    /// re-announced).
    pub snapshot_sockets: Option<u64>,
    /// `snapshot_complete`: containerd listed the containers (None: it
    /// could not be asked, containers were not re-announced).
    pub snapshot_containers: Option<u64>,
    pub at: i64,
}

/// A destination a container (or the host) connected or sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress<'a> {
    pub node: &'a str,
    pub container_id: &'a str,
    pub protocol: &'static str,
    pub address: IpAddr,
    pub port: u16,
    pub internet: bool,
    pub at: i64,
}

/// A finding, or the update that resolves one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding<'a> {
    pub node: &'a str,
    pub container_id: &'a str,
    pub rule: &'a str,
    pub subject: &'a str,
    pub severity: Severity,
    pub summary: &'a str,
    pub count: u64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub open: bool,
}

/// One change of state an event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Any event: its node is alive at `at`.
    Node {
        node: &'a str,
        at: i64,
    },
    /// An agent's lifecycle event: its version and kernel, and its start
    /// and the end of its startup snapshot (the snapshot is the truth
    /// for its node).
    Agent(Agent<'a>),
    /// The event is part of an agent's startup snapshot (`snapshot:
    /// true`): what follows re-announces state that already existed.
    Snapshot {
        node: &'a str,
        at: i64,
    },
    /// The event ran in this container at `at`.
    Container {
        node: &'a str,
        container: &'a Container,
        at: i64,
    },
    Listen(Listener<'a>),
    /// A listener closed (kind `close`): its key and when.
    Close {
        node: &'a str,
        container_id: &'a str,
        protocol: &'static str,
        address: IpAddr,
        port: u16,
        at: i64,
    },
    Egress(Egress<'a>),
    Finding(Finding<'a>),
    /// The node's agent lost `lost` events since it started (a `loss`
    /// event's running totals).
    Lost {
        node: &'a str,
        lost: u64,
    },
    /// A container's resource sample ([`container_usage`]).
    Usage {
        node: &'a str,
        container_id: &'a str,
        usage: &'a Usage,
        at: i64,
    },
    /// A container's lifecycle step (kind `container`).
    Lifecycle {
        node: &'a str,
        container_id: &'a str,
        state: ContainerState,
        exit_code: Option<i32>,
        at: i64,
    },
    /// Where a container's image comes from (its `created` step).
    Lineage {
        /// The image's manifest digest and config digest.
        digest: &'a str,
        config_digest: &'a str,
        lineage: &'a ImageLineage,
    },
}

/// The image lineage a container's `created` step carries, keyed by
/// the image's digests (none without both).
fn lineage_change(ev: &Event) -> Option<Change<'_>> {
    let lineage = ev.lifecycle.as_ref()?.image.as_deref()?;
    let image = &ev.container.as_ref()?.meta.as_ref()?.image;
    (!image.digest.is_empty() && !image.config_digest.is_empty()).then_some(Change::Lineage {
        digest: &image.digest,
        config_digest: &image.config_digest,
        lineage,
    })
}

/// Whether the image of the event's container declares `port/protocol`.
fn declared(ev: &Event, port: u16, protocol: &str) -> Option<bool> {
    let meta = ev.container.as_ref()?.meta.as_ref()?;
    let want = format!("{port}/{protocol}");
    Some(meta.image.exposed_ports.contains(&want))
}

fn network_change<'a>(ev: &'a Event, internet: fn(IpAddr) -> bool) -> Option<Change<'a>> {
    let n = ev.network.as_ref()?;
    let protocol = n.protocol.as_str();
    let at = ev.time.0;
    match (ev.kind, n.op) {
        (Kind::Listen, NetOp::Listen | NetOp::Bind) => Some(Change::Listen(Listener {
            node: &ev.node,
            container_id: owner(ev),
            protocol,
            address: n.local.addr,
            port: n.local.port,
            wildcard: n.wildcard.unwrap_or_else(|| n.local.addr.is_unspecified()),
            declared: declared(ev, n.local.port, protocol),
            pid: ev.process.as_ref().map(|p| p.pid),
            exe: ev.process.as_ref().map_or("", |p| &*p.exe),
            at,
        })),
        (Kind::Close, _) => Some(Change::Close {
            node: &ev.node,
            container_id: owner(ev),
            protocol,
            address: n.local.addr,
            port: n.local.port,
            at,
        }),
        (Kind::Connect, _) => {
            let remote = n.remote?;
            if n.outcome == Some(ConnectOutcome::Denied) {
                return None; // refused in the kernel: never reached
            }
            Some(Change::Egress(Egress {
                node: &ev.node,
                container_id: owner(ev),
                protocol,
                address: remote.addr,
                port: remote.port,
                internet: internet(remote.addr),
                at,
            }))
        }
        _ => None,
    }
}

/// The changes `ev` carries, appended to `out` (a node, its container,
/// then what the event itself says).
pub fn derive<'a>(ev: &'a Event, internet: fn(IpAddr) -> bool, out: &mut Vec<Change<'a>>) {
    let at = ev.time.0;
    out.push(Change::Node { node: &ev.node, at });
    if ev.snapshot {
        out.push(Change::Snapshot { node: &ev.node, at });
    }
    // a deletion says the container is gone, not that it runs: it
    // updates a row the store holds and never creates a bare one
    let deletion = ev.kind == Kind::Container
        && ev
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.state == ContainerState::Deleted);
    if let Some(c) = ev.container.as_ref().filter(|_| !deletion) {
        out.push(Change::Container {
            node: &ev.node,
            container: c,
            at,
        });
    }
    if let Some(a) = &ev.agent {
        out.push(Change::Agent(Agent {
            node: &ev.node,
            version: &a.version,
            kernel: &a.kernel,
            state: a.state,
            snapshot_sockets: a.snapshot_sockets,
            snapshot_containers: a.snapshot_containers,
            at,
        }));
    }
    if let Some(c) = network_change(ev, internet) {
        out.push(c);
    }
    if let Some(c) = lineage_change(ev) {
        out.push(c);
    }
    if let (Kind::Container, Some(l), Some(c)) = (ev.kind, &ev.lifecycle, &ev.container) {
        out.push(Change::Lifecycle {
            node: &ev.node,
            container_id: &c.id,
            state: l.state,
            exit_code: l.exit_code,
            at,
        });
    }
    if let Some((c, usage)) = container_usage(ev) {
        out.push(Change::Usage {
            node: &ev.node,
            container_id: &c.id,
            usage,
            at,
        });
    }
    if let Some(totals) = ev.loss.as_ref().and_then(|l| l.totals) {
        out.push(Change::Lost {
            node: &ev.node,
            lost: totals.lost(),
        });
    }
    if let Some(f) = &ev.finding {
        out.push(Change::Finding(Finding {
            node: &ev.node,
            container_id: owner(ev),
            rule: &f.rule_id,
            subject: &f.subject,
            severity: f.severity,
            summary: &f.summary,
            count: f.count,
            first_seen: f.first_seen.0,
            last_seen: f.last_seen.0,
            open: !f.resolved,
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spyglass_proto::model::{
        ContainerMeta, Endpoint, Family, FindingInfo, Image, Network, Process, Protocol, Runtime,
        Timestamp,
    };

    use super::*;

    fn never(_: IpAddr) -> bool {
        false
    }

    fn always(_: IpAddr) -> bool {
        true
    }

    fn container(ports: &[&str]) -> Container {
        let mut c = Container::from_cgroup("c1".into(), Runtime::Containerd, None);
        c.fill(&Arc::new(ContainerMeta {
            id: "c1".into(),
            namespace: "k8s.io".into(),
            image: Image {
                reference: "r:1".into(),
                digest: "sha256:m".into(),
                exposed_ports: ports.iter().map(|p| (*p).to_owned()).collect(),
                ..Image::default()
            },
            ..ContainerMeta::default()
        }));
        c
    }

    fn net(kind: Kind, op: NetOp, local: &str, remote: Option<&str>) -> Event {
        let mut ev = Event::new(kind, Timestamp(7), "n1".into());
        let ep = |s: &str| Endpoint::from(s.parse::<std::net::SocketAddr>().unwrap());
        let l = ep(local);
        ev.network = Some(Network {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            op,
            local: l,
            remote: remote.map(ep),
            outcome: None,
            wildcard: (kind == Kind::Listen).then(|| l.addr.is_unspecified()),
        });
        ev.process = Some(Process {
            pid: 42,
            exe: "/bin/nc".into(),
            ..Process::default()
        });
        ev
    }

    fn changes(ev: &Event, internet: fn(IpAddr) -> bool) -> Vec<Change<'_>> {
        let mut out = Vec::new();
        derive(ev, internet, &mut out);
        out
    }

    #[test]
    fn an_exec_on_the_host_says_only_its_node_is_alive() {
        let ev = Event::new(Kind::Exec, Timestamp(5), "n1".into());
        assert_eq!(changes(&ev, never), [Change::Node { node: "n1", at: 5 }]);
    }

    #[test]
    fn an_exec_in_a_container_says_the_container_runs() {
        let mut ev = Event::new(Kind::Exec, Timestamp(5), "n1".into());
        ev.container = Some(container(&[]));
        let c = changes(&ev, never);
        assert_eq!(c.len(), 2);
        assert!(
            matches!(&c[1], Change::Container { node: "n1", container, at: 5 } if container.id == "c1")
        );
    }

    #[test]
    fn a_wildcard_listen_in_a_container_is_a_listener_with_its_declaration() {
        let mut ev = net(Kind::Listen, NetOp::Listen, "0.0.0.0:8080", None);
        ev.container = Some(container(&["8080/tcp"]));
        let c = changes(&ev, never);
        let Some(Change::Listen(l)) = c.last() else {
            panic!("no listener in {c:?}")
        };
        assert_eq!(
            *l,
            Listener {
                node: "n1",
                container_id: "c1",
                protocol: "tcp",
                address: "0.0.0.0".parse().unwrap(),
                port: 8080,
                wildcard: true,
                declared: Some(true),
                pid: Some(42),
                exe: "/bin/nc",
                at: 7,
            }
        );
        // undeclared port of the same image
        let mut ev = net(Kind::Listen, NetOp::Listen, "127.0.0.1:9", None);
        ev.container = Some(container(&["8080/tcp"]));
        let c = changes(&ev, never);
        let Some(Change::Listen(l)) = c.last() else {
            panic!("no listener")
        };
        assert_eq!((l.wildcard, l.declared), (false, Some(false)));
    }

    #[test]
    fn a_host_listener_has_no_container_and_no_declaration() {
        let ev = net(Kind::Listen, NetOp::Listen, "127.0.0.1:22", None);
        let c = changes(&ev, never);
        let Some(Change::Listen(l)) = c.last() else {
            panic!("no listener")
        };
        assert_eq!((l.container_id, l.declared), ("", None));
    }

    #[test]
    fn a_connect_is_egress_classified_by_the_given_function() {
        let ev = net(
            Kind::Connect,
            NetOp::Connect,
            "10.0.0.2:5000",
            Some("93.184.216.34:443"),
        );
        let c = changes(&ev, always);
        let Some(Change::Egress(e)) = c.last() else {
            panic!("no egress in {c:?}")
        };
        assert_eq!(
            (e.address.to_string(), e.port, e.internet, e.protocol),
            ("93.184.216.34".into(), 443, true, "tcp")
        );
    }

    #[test]
    fn a_denied_connect_and_an_accept_are_no_egress() {
        let mut ev = net(
            Kind::Connect,
            NetOp::Connect,
            "10.0.0.2:5000",
            Some("1.1.1.1:53"),
        );
        ev.network.as_mut().unwrap().outcome = Some(ConnectOutcome::Denied);
        assert_eq!(changes(&ev, always).len(), 1);
        let ev = net(
            Kind::Accept,
            NetOp::Accept,
            "10.0.0.2:80",
            Some("1.1.1.1:5"),
        );
        assert_eq!(changes(&ev, always).len(), 1);
    }

    #[test]
    fn an_agent_event_gives_version_and_kernel() {
        let ev = spyglass_proto::model::samples::agent();
        let a = ev.agent.as_ref().unwrap();
        assert_eq!(
            changes(&ev, never)[1],
            Change::Agent(Agent {
                node: &ev.node,
                version: &a.version,
                kernel: &a.kernel,
                state: a.state,
                snapshot_sockets: a.snapshot_sockets,
                snapshot_containers: a.snapshot_containers,
                at: ev.time.0
            })
        );
    }

    #[test]
    fn a_container_event_gives_its_lifecycle_step() {
        let ev = spyglass_proto::model::samples::container_exited();
        let c = changes(&ev, never);
        let id = &ev.container.as_ref().unwrap().id;
        assert_eq!(
            c.last(),
            Some(&Change::Lifecycle {
                node: &ev.node,
                container_id: id,
                state: ContainerState::Exited,
                exit_code: Some(137),
                at: ev.time.0
            })
        );
        assert!(matches!(c[1], Change::Container { .. }), "{c:?}");
    }

    #[test]
    fn a_snapshot_event_says_so_before_what_it_re_announces() {
        let mut ev = net(Kind::Listen, NetOp::Listen, "0.0.0.0:8080", None);
        ev.snapshot = true;
        let c = changes(&ev, never);
        assert_eq!(c[1], Change::Snapshot { node: "n1", at: 7 });
        assert!(matches!(c.last(), Some(Change::Listen(_))), "{c:?}");
        ev.snapshot = false;
        assert!(!changes(&ev, never)
            .iter()
            .any(|c| matches!(c, Change::Snapshot { .. })));
    }

    #[test]
    fn a_deletion_updates_the_container_and_never_creates_it() {
        let mut ev = spyglass_proto::model::samples::container_exited();
        ev.lifecycle.as_mut().unwrap().state = ContainerState::Deleted;
        let c = changes(&ev, never);
        assert!(
            !c.iter().any(|c| matches!(c, Change::Container { .. })),
            "{c:?}"
        );
        assert!(matches!(
            c.last(),
            Some(Change::Lifecycle {
                state: ContainerState::Deleted,
                exit_code: Some(137),
                ..
            })
        ));
    }

    #[test]
    fn the_snapshot_marker_says_what_was_re_announced() {
        let ev = spyglass_proto::model::samples::snapshot_complete();
        let c = changes(&ev, never);
        let Some(Change::Agent(a)) = c.last() else {
            panic!("no agent change in {c:?}")
        };
        let info = ev.agent.as_ref().unwrap();
        assert_eq!(a.state, AgentState::SnapshotComplete);
        assert_eq!(
            (a.snapshot_sockets, a.snapshot_containers),
            (info.snapshot_sockets, info.snapshot_containers)
        );
    }

    #[test]
    fn a_close_names_the_listener_it_ends() {
        let mut ev = net(Kind::Close, NetOp::Listen, "0.0.0.0:8080", None);
        ev.container = Some(container(&[]));
        assert_eq!(
            changes(&ev, never).last(),
            Some(&Change::Close {
                node: "n1",
                container_id: "c1",
                protocol: "tcp",
                address: "0.0.0.0".parse().unwrap(),
                port: 8080,
                at: 7
            })
        );
    }

    #[test]
    fn a_resolved_finding_is_closed() {
        let mut ev = Event::new(Kind::Finding, Timestamp(9), "n1".into());
        ev.finding = Some(Box::new(FindingInfo {
            rule_id: "process.cpu_runaway".into(),
            severity: Severity::High,
            mitre: None,
            summary: "spins".into(),
            subject: "pid 4 /bin/yes".into(),
            action: Default::default(),
            outcome: None,
            count: 3,
            resolved: true,
            restarts: None,
            first_seen: Timestamp(1),
            last_seen: Timestamp(8),
            evidence: vec![],
        }));
        let c = changes(&ev, never);
        let Some(Change::Finding(f)) = c.last() else {
            panic!("no finding")
        };
        assert_eq!(
            (
                f.rule,
                f.subject,
                f.count,
                f.first_seen,
                f.last_seen,
                f.open
            ),
            ("process.cpu_runaway", "pid 4 /bin/yes", 3, 1, 8, false)
        );
    }
}
