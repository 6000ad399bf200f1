//! The model <-> spyglass.v1 wire messages, both directions: the only code
//! that touches wire types for event content. The agent sends
//! [`to_wire`]; the collector reads [`from_wire`], so what it writes is
//! the agent's own event, rendered by the same code.
use std::{net::IpAddr, sync::Arc};

use super::*;
use crate::v1 as w;

/// A wire event the model cannot hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{field}: `{value}` is not an IP address (an agent sends textual IPv4 or IPv6)")]
    Address { field: &'static str, value: String },
    #[error("{field}: port {value} is out of range 0-65535")]
    Port { field: &'static str, value: u32 },
    #[error("{field} is missing (an agent always sends it)")]
    Missing { field: &'static str },
    #[error("finding.evidence[{index}]: {source}")]
    Evidence {
        index: usize,
        source: Box<WireError>,
    },
}

fn kind_to(k: Kind) -> w::EventKind {
    match k {
        Kind::Exec => w::EventKind::Exec,
        Kind::Exit => w::EventKind::Exit,
        Kind::Fork => w::EventKind::Fork,
        Kind::Listen => w::EventKind::Listen,
        Kind::Connect => w::EventKind::Connect,
        Kind::Accept => w::EventKind::Accept,
        Kind::Loss => w::EventKind::Loss,
        Kind::Agent => w::EventKind::Agent,
        Kind::Finding => w::EventKind::Finding,
        Kind::Resources => w::EventKind::Resources,
        Kind::Close => w::EventKind::Close,
        Kind::Container => w::EventKind::Container,
        Kind::Unspecified => w::EventKind::Unspecified,
    }
}

/// The model's kind of a wire kind number (unknown numbers: unspecified).
pub fn kind_from(k: i32) -> Kind {
    match w::EventKind::try_from(k).unwrap_or(w::EventKind::Unspecified) {
        w::EventKind::Exec => Kind::Exec,
        w::EventKind::Exit => Kind::Exit,
        w::EventKind::Fork => Kind::Fork,
        w::EventKind::Listen => Kind::Listen,
        w::EventKind::Connect => Kind::Connect,
        w::EventKind::Accept => Kind::Accept,
        w::EventKind::Loss => Kind::Loss,
        w::EventKind::Agent => Kind::Agent,
        w::EventKind::Finding => Kind::Finding,
        w::EventKind::Resources => Kind::Resources,
        w::EventKind::Close => Kind::Close,
        w::EventKind::Container => Kind::Container,
        w::EventKind::Unspecified => Kind::Unspecified,
    }
}

fn severity_to(s: Severity) -> w::Severity {
    match s {
        Severity::Info => w::Severity::Info,
        Severity::Low => w::Severity::Low,
        Severity::Medium => w::Severity::Medium,
        Severity::High => w::Severity::High,
        Severity::Critical => w::Severity::Critical,
        Severity::Unspecified => w::Severity::Unspecified,
    }
}

/// The model's severity of a wire severity number.
pub fn severity_from(s: i32) -> Severity {
    match w::Severity::try_from(s).unwrap_or(w::Severity::Unspecified) {
        w::Severity::Info => Severity::Info,
        w::Severity::Low => Severity::Low,
        w::Severity::Medium => Severity::Medium,
        w::Severity::High => Severity::High,
        w::Severity::Critical => Severity::Critical,
        w::Severity::Unspecified => Severity::Unspecified,
    }
}

fn text(s: &str) -> String {
    s.to_owned()
}

fn nonzero_time(t: Option<Timestamp>) -> i64 {
    t.map_or(0, |t| t.0)
}

fn time_from(ns: i64) -> Option<Timestamp> {
    (ns != 0).then_some(Timestamp(ns))
}

fn word<T: Copy>(v: Option<T>, s: impl Fn(T) -> &'static str) -> String {
    v.map(s).unwrap_or_default().to_owned()
}

fn process_to(p: &Process) -> w::Process {
    w::Process {
        pid: p.pid,
        tid: p.tid.unwrap_or(0),
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        comm: text(&p.comm),
        exe: text(&p.exe),
        argv: p.argv.to_vec(),
        argv_truncated: p.argv_truncated,
        cgroup_id: p.cgroup_id,
        start_time_unix_nano: nonzero_time(p.start_time),
        exe_truncated: p.exe_truncated,
        unread: p.unread.iter().map(|u| u.as_str().to_owned()).collect(),
        package: p.package.as_deref().map(|k| w::PackageRef {
            kind: k.kind.clone(),
            name: k.name.clone(),
            version: k.version.clone(),
            source: k.source.clone(),
            arch: k.arch.clone(),
            purl: k.purl.clone(),
        }),
        unpackaged: p.unpackaged,
    }
}

fn process_from(p: w::Process) -> Process {
    Process {
        pid: p.pid,
        tid: (p.tid != 0).then_some(p.tid),
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        comm: p.comm.into(),
        exe: p.exe.into(),
        argv: p.argv.into(),
        argv_truncated: p.argv_truncated,
        exe_truncated: p.exe_truncated,
        unread: p.unread.iter().map(|u| Unread::parse_lenient(u)).collect(),
        cgroup_id: p.cgroup_id,
        start_time: time_from(p.start_time_unix_nano),
        package: p.package.map(|k| {
            Arc::new(PackageRef {
                kind: k.kind,
                name: k.name,
                version: k.version,
                source: k.source,
                arch: k.arch,
                purl: k.purl,
            })
        }),
        unpackaged: p.unpackaged,
    }
}

fn ancestor_to(a: &Ancestor) -> w::Ancestor {
    w::Ancestor {
        pid: a.pid,
        exe: text(&a.exe),
        comm: text(&a.comm),
    }
}

fn ancestor_from(a: w::Ancestor) -> Ancestor {
    Ancestor {
        pid: a.pid,
        exe: a.exe.into(),
        comm: a.comm.into(),
    }
}

fn posture_to(p: &Posture) -> w::Posture {
    w::Posture {
        uid: p.uid,
        gid: p.gid,
        user_namespace: p.user_namespace,
        privileged: p.privileged,
        capabilities: p.capabilities.clone(),
        host_network: p.host_network,
        host_pid: p.host_pid,
        host_ipc: p.host_ipc,
        read_only_rootfs: p.read_only_rootfs,
        no_new_privileges: p.no_new_privileges,
        seccomp: p.seccomp.as_str().into(),
    }
}

fn posture_from(p: w::Posture) -> Posture {
    Posture {
        uid: p.uid,
        gid: p.gid,
        user_namespace: p.user_namespace,
        privileged: p.privileged,
        capabilities: p.capabilities,
        host_network: p.host_network,
        host_pid: p.host_pid,
        host_ipc: p.host_ipc,
        read_only_rootfs: p.read_only_rootfs,
        no_new_privileges: p.no_new_privileges,
        seccomp: Seccomp::parse_lenient(&p.seccomp),
    }
}

fn container_to(c: &Container) -> w::ContainerContext {
    let pod = c.pod.clone().unwrap_or_default();
    let mut out = w::ContainerContext {
        id: c.id.clone(),
        runtime: c.runtime.as_str().into(),
        pod_name: pod.name,
        pod_namespace: pod.namespace,
        pod_uid: pod.uid,
        pod_labels: pod.labels.into_iter().collect(),
        unattributed: word(c.unattributed, Unattributed::as_str),
        ..w::ContainerContext::default()
    };
    if let Some(m) = &c.meta {
        out.name = m.name.clone();
        if c.pod.is_some() {
            out.container_name = m.name.clone();
        }
        out.image_ref = m.image.reference.clone();
        out.image_digest = m.image.digest.clone();
        out.image_index_digest = m.image.index_digest.clone();
        out.image_config_digest = m.image.config_digest.clone();
        out.image_exposed_ports = m.image.exposed_ports.clone();
        out.namespace = m.namespace.clone();
        out.oci_runtime = m.oci_runtime.clone();
        out.created_unix_nano = nonzero_time(m.created);
        out.labels = m
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.posture = m.posture.as_ref().map(posture_to);
    }
    out
}

/// Whether the wire context carries containerd's metadata (the agent
/// sends it only when it had it).
fn has_meta(c: &w::ContainerContext) -> bool {
    !(c.name.is_empty()
        && c.container_name.is_empty()
        && c.image_index_digest.is_empty()
        && c.image_config_digest.is_empty()
        && c.image_exposed_ports.is_empty()
        && c.namespace.is_empty()
        && c.oci_runtime.is_empty()
        && c.image_ref.is_empty()
        && c.image_digest.is_empty()
        && c.created_unix_nano == 0
        && c.labels.is_empty()
        && c.posture.is_none())
}

fn container_from(c: w::ContainerContext) -> Container {
    let with_meta = has_meta(&c);
    let pod = Pod {
        name: c.pod_name,
        namespace: c.pod_namespace,
        uid: c.pod_uid,
        labels: c.pod_labels.into_iter().collect(),
    };
    let has_pod = !(pod.name.is_empty()
        && pod.namespace.is_empty()
        && pod.uid.is_empty()
        && pod.labels.is_empty());
    let meta = with_meta.then(|| {
        Arc::new(ContainerMeta {
            id: c.id.clone(),
            name: if c.name.is_empty() {
                c.container_name
            } else {
                c.name
            },
            namespace: c.namespace,
            oci_runtime: c.oci_runtime,
            created: time_from(c.created_unix_nano),
            image: Image {
                reference: c.image_ref,
                digest: c.image_digest,
                index_digest: c.image_index_digest,
                config_digest: c.image_config_digest,
                exposed_ports: c.image_exposed_ports,
                lineage: None,
            },
            pod: None,
            labels: c.labels.into_iter().collect(),
            posture: c.posture.map(posture_from),
            entrypoint: Vec::new(),
        })
    });
    Container {
        id: c.id,
        runtime: Runtime::parse_lenient(&c.runtime),
        pod: has_pod.then_some(pod),
        unattributed: (!c.unattributed.is_empty())
            .then(|| Unattributed::parse_lenient(&c.unattributed)),
        meta,
    }
}

fn endpoint_to(e: &Endpoint) -> w::Endpoint {
    w::Endpoint {
        addr: addr_text(e.addr),
        port: u32::from(e.port),
    }
}

/// An address as the wire carries it: what `Display` prints. IPv4 is
/// written digit by digit (core::fmt was 7% of the agent's CPU in a
/// connect storm); IPv6 keeps `Display` (its `::` rules).
fn addr_text(addr: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

fn endpoint_from(e: &w::Endpoint, field: &'static str) -> Result<Endpoint, WireError> {
    let addr: IpAddr = e.addr.parse().map_err(|_| WireError::Address {
        field,
        // quoted as in Rust source: control characters cannot forge log lines
        value: e
            .addr
            .chars()
            .take(64)
            .collect::<String>()
            .escape_debug()
            .to_string(),
    })?;
    let port = u16::try_from(e.port).map_err(|_| WireError::Port {
        field,
        value: e.port,
    })?;
    Ok(Endpoint { addr, port })
}

fn network_to(n: &Network) -> w::Network {
    w::Network {
        protocol: n.protocol.as_str().into(),
        family: n.family.as_str().into(),
        op: n.op.as_str().into(),
        local: Some(endpoint_to(&n.local)),
        remote: n.remote.as_ref().map(endpoint_to),
        outcome: word(n.outcome, ConnectOutcome::as_str),
        wildcard: n.wildcard.unwrap_or(false),
    }
}

fn network_from(n: w::Network) -> Result<Network, WireError> {
    let op = NetOp::parse_lenient(&n.op);
    let local = match n.local {
        Some(l) => endpoint_from(&l, "network.local")?,
        None => {
            return Err(WireError::Missing {
                field: "network.local",
            })
        }
    };
    Ok(Network {
        protocol: Protocol::parse_lenient(&n.protocol),
        family: Family::parse_lenient(&n.family),
        op,
        local,
        remote: n
            .remote
            .map(|r| endpoint_from(&r, "network.remote"))
            .transpose()?,
        outcome: (!n.outcome.is_empty()).then(|| ConnectOutcome::parse_lenient(&n.outcome)),
        wildcard: matches!(op, NetOp::Listen | NetOp::Bind).then_some(n.wildcard),
    })
}

fn loss_to(l: &Loss) -> w::Loss {
    w::Loss {
        stage: l.stage.as_str().into(),
        exec: l.exec,
        exit: l.exit,
        fork: l.fork,
        network: l.network,
        read_errors: l.read_errors,
        connect_untracked: l.connect_untracked,
        decode_errors: l.decode_errors,
        spool_dropped: l.spool_dropped,
        totals: l.totals.map(|t| w::LossTotals {
            exec: t.exec,
            exit: t.exit,
            fork: t.fork,
            network: t.network,
            read_errors: t.read_errors,
            connect_untracked: t.connect_untracked,
            decode_errors: t.decode_errors,
            spool_dropped: t.spool_dropped,
        }),
    }
}

fn loss_from(l: &w::Loss) -> Loss {
    Loss {
        stage: LossStage::parse_lenient(&l.stage),
        exec: l.exec,
        exit: l.exit,
        fork: l.fork,
        network: l.network,
        read_errors: l.read_errors,
        connect_untracked: l.connect_untracked,
        decode_errors: l.decode_errors,
        spool_dropped: l.spool_dropped,
        totals: l.totals.as_ref().map(|t| LossTotals {
            exec: t.exec,
            exit: t.exit,
            fork: t.fork,
            network: t.network,
            read_errors: t.read_errors,
            connect_untracked: t.connect_untracked,
            decode_errors: t.decode_errors,
            spool_dropped: t.spool_dropped,
        }),
    }
}

fn agent_to(a: &AgentInfo) -> w::AgentInfo {
    w::AgentInfo {
        state: a.state.as_str().into(),
        version: a.version.to_string(),
        kernel: a.kernel.clone(),
        probes: a
            .probes
            .iter()
            .map(|p| w::ProbeStatus {
                program: p.program.to_string(),
                attached: p.attached,
                error: p.error.clone().unwrap_or_default(),
                note: p.note.as_deref().unwrap_or_default().to_owned(),
            })
            .collect(),
        tracked: a.tracked.map(|t| w::Tracked {
            processes: t.processes,
            containers: t.containers,
            pending_events: t.pending_events,
            cgroups: t.cgroups,
        }),
        snapshot_processes: a.snapshot_processes,
        snapshot_sockets: a.snapshot_sockets,
        snapshot_containers: a.snapshot_containers,
    }
}

fn agent_from(a: w::AgentInfo) -> AgentInfo {
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    AgentInfo {
        state: AgentState::parse_lenient(&a.state),
        version: a.version.into(),
        kernel: a.kernel,
        probes: a
            .probes
            .into_iter()
            .map(|p| ProbeStatus {
                program: p.program.into(),
                attached: p.attached,
                error: nonempty(p.error),
                note: nonempty(p.note).map(Name::from),
            })
            .collect(),
        snapshot_processes: a.snapshot_processes,
        snapshot_sockets: a.snapshot_sockets,
        snapshot_containers: a.snapshot_containers,
        tracked: a.tracked.map(|t| Tracked {
            processes: t.processes,
            containers: t.containers,
            pending_events: t.pending_events,
            cgroups: t.cgroups,
        }),
    }
}

fn finding_to(f: &FindingInfo) -> w::Finding {
    w::Finding {
        rule_id: f.rule_id.to_string(),
        severity: severity_to(f.severity) as i32,
        summary: f.summary.clone(),
        mitre_technique: f
            .mitre
            .as_ref()
            .map(|m| m.technique.to_string())
            .unwrap_or_default(),
        mitre_name: f
            .mitre
            .as_ref()
            .map(|m| m.name.to_string())
            .unwrap_or_default(),
        evidence: f.evidence.iter().map(to_wire).collect(),
        count: f.count,
        first_seen_unix_nano: f.first_seen.0,
        last_seen_unix_nano: f.last_seen.0,
        subject: f.subject.clone(),
        action: f.action.as_str().into(),
        outcome: word(f.outcome, Outcome::as_str),
        resolved: f.resolved,
        restarts: f.restarts.as_ref().map(|r| w::Restarts {
            count: r.count,
            window_s: r.window_s,
            exit_codes: r.exit_codes.clone(),
        }),
    }
}

fn usage_to(u: &Usage) -> w::Usage {
    w::Usage {
        window_ms: u.window_ms,
        cpu_ms: u.cpu_ms,
        cpu_percent: u.cpu_percent,
        cpu_total_ms: u.cpu_total_ms,
        memory_bytes: u.memory_bytes,
        memory_limit_bytes: u.memory_limit_bytes,
        memory_percent: u.memory_percent,
        memory_growth_bytes_per_s: u.memory_growth_bytes_per_s,
        pids: u.pids,
        oom_kills: u.oom_kills,
    }
}

fn usage_from(u: &w::Usage) -> Usage {
    Usage {
        window_ms: u.window_ms,
        cpu_ms: u.cpu_ms,
        cpu_percent: u.cpu_percent,
        cpu_total_ms: u.cpu_total_ms,
        memory_bytes: u.memory_bytes,
        memory_limit_bytes: u.memory_limit_bytes,
        memory_percent: u.memory_percent,
        memory_growth_bytes_per_s: u.memory_growth_bytes_per_s,
        pids: u.pids,
        oom_kills: u.oom_kills,
    }
}

fn finding_from(f: w::Finding) -> Result<FindingInfo, WireError> {
    let mitre = (!f.mitre_technique.is_empty()).then(|| Mitre {
        technique: f.mitre_technique.into(),
        name: f.mitre_name.into(),
    });
    Ok(FindingInfo {
        rule_id: f.rule_id.into(),
        severity: severity_from(f.severity),
        mitre,
        summary: f.summary,
        subject: f.subject,
        action: Action::parse_lenient(&f.action),
        outcome: (!f.outcome.is_empty()).then(|| Outcome::parse_lenient(&f.outcome)),
        count: f.count,
        resolved: f.resolved,
        restarts: f.restarts.map(|r| Restarts {
            count: r.count,
            window_s: r.window_s,
            exit_codes: r.exit_codes,
        }),
        first_seen: Timestamp(f.first_seen_unix_nano),
        last_seen: Timestamp(f.last_seen_unix_nano),
        evidence: f
            .evidence
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                from_wire(e).map_err(|source| WireError::Evidence {
                    index,
                    source: Box::new(source),
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// One event on the wire.
pub fn to_wire(ev: &Event) -> w::Event {
    use w::event::Detail;
    let detail = if let Some(x) = &ev.exit {
        Some(Detail::Exit(w::ExitInfo {
            exited: x.code.is_some(),
            code: x.code.unwrap_or(0),
            signal: x.signal.unwrap_or(0),
            raw: x.raw,
            oom: x.oom.map(|o| w::OomKill {
                rss_bytes: o.rss_bytes,
                memory_limit_bytes: o.memory_limit_bytes,
            }),
        }))
    } else if let Some(f) = &ev.fork {
        Some(Detail::Fork(w::ForkInfo {
            child_pid: f.child_pid,
        }))
    } else if let Some(n) = &ev.network {
        Some(Detail::Network(network_to(n)))
    } else if let Some(l) = &ev.loss {
        Some(Detail::Loss(loss_to(l)))
    } else if let Some(f) = &ev.finding {
        Some(Detail::Finding(finding_to(f)))
    } else if let Some(u) = &ev.resources {
        Some(Detail::Resources(usage_to(u)))
    } else if let Some(l) = &ev.lifecycle {
        Some(Detail::Lifecycle(w::Lifecycle {
            state: l.state.as_str().into(),
            exit_code: l.exit_code,
            image: l.image.as_deref().map(|i| w::ImageLineage {
                base_digest: i.base_digest.clone(),
                base_name: i.base_name.clone(),
                diff_ids: i.diff_ids.clone(),
            }),
        }))
    } else {
        ev.agent
            .as_ref()
            .map(|a| Detail::Agent(Box::new(agent_to(a))))
    };
    w::Event {
        kind: kind_to(ev.kind) as i32,
        time_unix_nano: ev.time.0,
        node: ev.node.clone(),
        snapshot: ev.snapshot,
        process: ev.process.as_ref().map(process_to),
        parent: ev.parent.as_ref().map(ancestor_to),
        ancestors: ev.ancestors.iter().map(ancestor_to).collect(),
        container: ev.container.as_ref().map(|c| Box::new(container_to(c))),
        host: ev.host,
        detail,
        enforced: word(ev.enforced, Enforced::as_str),
        aggregate: ev.aggregate.as_deref().map(|a| {
            Box::new(w::Aggregate {
                count: a.count,
                first_unix_nano: a.first.0,
                last_unix_nano: a.last.0,
                interval_s: a.interval_s,
            })
        }),
    }
}

/// A wire event as the model, taking its strings without copying. Fails
/// only on content no agent sends (an address that is not one).
pub fn from_wire(ev: w::Event) -> Result<Event, WireError> {
    use w::event::Detail;
    let mut out = Event::new(kind_from(ev.kind), Timestamp(ev.time_unix_nano), ev.node);
    out.snapshot = ev.snapshot;
    out.process = ev.process.map(process_from);
    out.parent = ev.parent.map(ancestor_from);
    out.ancestors = ev.ancestors.into_iter().map(ancestor_from).collect();
    out.container = ev.container.map(|c| container_from(*c));
    out.host = ev.host;
    out.enforced = (!ev.enforced.is_empty()).then(|| Enforced::parse_lenient(&ev.enforced));
    out.aggregate = ev.aggregate.map(|a| {
        Box::new(Aggregate {
            count: a.count,
            first: Timestamp(a.first_unix_nano),
            last: Timestamp(a.last_unix_nano),
            interval_s: a.interval_s,
        })
    });
    match ev.detail {
        Some(Detail::Exit(x)) => {
            out.exit = Some(ExitInfo {
                code: x.exited.then_some(x.code),
                signal: (!x.exited).then_some(x.signal),
                raw: x.raw,
                oom: x.oom.map(|o| OomKill {
                    rss_bytes: o.rss_bytes,
                    memory_limit_bytes: o.memory_limit_bytes,
                }),
            });
        }
        Some(Detail::Fork(f)) => {
            out.fork = Some(ForkInfo {
                child_pid: f.child_pid,
            });
        }
        Some(Detail::Network(n)) => out.network = Some(network_from(n)?),
        Some(Detail::Loss(l)) => out.loss = Some(Box::new(loss_from(&l))),
        Some(Detail::Agent(a)) => out.agent = Some(Box::new(agent_from(*a))),
        Some(Detail::Finding(f)) => out.finding = Some(Box::new(finding_from(f)?)),
        Some(Detail::Resources(u)) => out.resources = Some(Box::new(usage_from(&u))),
        Some(Detail::Lifecycle(l)) => {
            out.lifecycle = Some(Lifecycle {
                state: ContainerState::parse_lenient(&l.state),
                exit_code: l.exit_code,
                image: l.image.map(|i| {
                    Arc::new(ImageLineage {
                        base_digest: i.base_digest,
                        base_name: i.base_name,
                        diff_ids: i.diff_ids,
                    })
                }),
            });
        }
        None => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;

    /// The collector's event is the agent's event: every sample survives
    /// the wire, and both render the same JSON line.
    #[test]
    fn ipv4_text_is_what_display_prints() {
        for a in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 99, 100, 255],
            [1, 20, 200, 9],
        ] {
            let ip = std::net::IpAddr::from(a);
            assert_eq!(addr_text(ip), ip.to_string());
        }
        for b in 0..=255u8 {
            let ip = std::net::IpAddr::from([b, 255 - b, b / 3, 7]);
            assert_eq!(addr_text(ip), ip.to_string());
        }
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(addr_text(v6), "2001:db8::1");
    }

    #[test]
    fn every_sample_renders_the_same_after_the_wire() {
        for ev in samples::all() {
            let back = from_wire(to_wire(&ev)).unwrap();
            assert_eq!(render::to_string(&back), render::to_string(&ev));
        }
    }

    #[test]
    fn hostile_addresses_are_refused_with_the_field_named() {
        let mut ev = to_wire(&samples::connect());
        if let Some(w::event::Detail::Network(n)) = &mut ev.detail {
            n.remote.as_mut().unwrap().addr = "not-an-ip".into();
        }
        let e = from_wire(ev.clone()).unwrap_err();
        assert!(
            e.to_string().starts_with("network.remote: `not-an-ip`"),
            "{e}"
        );
        if let Some(w::event::Detail::Network(n)) = &mut ev.detail {
            n.remote.as_mut().unwrap().addr = "10.0.0.1".into();
            n.local.as_mut().unwrap().port = 70_000;
        }
        assert!(matches!(
            from_wire(ev.clone()),
            Err(WireError::Port { value: 70_000, .. })
        ));
        if let Some(w::event::Detail::Network(n)) = &mut ev.detail {
            n.local = None;
        }
        assert_eq!(
            from_wire(ev.clone()).unwrap_err().to_string(),
            "network.local is missing (an agent always sends it)"
        );
        if let Some(w::event::Detail::Network(n)) = &mut ev.detail {
            n.local = Some(w::Endpoint {
                addr: "1.2.3.4\nforged log line".into(),
                port: 1,
            });
        }
        let mut finding = to_wire(&samples::finding());
        if let Some(w::event::Detail::Finding(f)) = &mut finding.detail {
            f.evidence.push(ev);
        }
        assert_eq!(
            from_wire(finding).unwrap_err().to_string(),
            "finding.evidence[1]: network.local: `1.2.3.4\\nforged log line` is not an IP address (an agent sends textual IPv4 or IPv6)"
        );
    }

    #[test]
    fn words_from_a_newer_agent_read_as_unknown() {
        let mut ev = to_wire(&samples::connect());
        ev.kind = 99;
        if let Some(w::event::Detail::Network(n)) = &mut ev.detail {
            n.protocol = "sctp".into();
        }
        let m = from_wire(ev).unwrap();
        assert_eq!(m.kind, Kind::Unspecified);
        assert_eq!(m.network.unwrap().protocol, Protocol::Unknown);
    }
}
