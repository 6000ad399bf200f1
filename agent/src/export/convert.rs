//! The agent's events -> spyglass.v1 wire messages. The only module of the
//! agent that touches wire types.
use spyglass_proto::v1 as wire;

use crate::{
    event::{Ancestor, Container, Endpoint, Event, Kind, Posture, Process},
    policy::Severity,
};

fn kind(k: Kind) -> wire::EventKind {
    match k {
        Kind::Exec => wire::EventKind::Exec,
        Kind::Exit => wire::EventKind::Exit,
        Kind::Fork => wire::EventKind::Fork,
        Kind::Listen => wire::EventKind::Listen,
        Kind::Connect => wire::EventKind::Connect,
        Kind::Accept => wire::EventKind::Accept,
        Kind::Loss => wire::EventKind::Loss,
        Kind::Agent => wire::EventKind::Agent,
        Kind::Finding => wire::EventKind::Finding,
    }
}

fn process(p: &Process) -> wire::Process {
    wire::Process {
        pid: p.pid,
        tid: p.tid.unwrap_or(0),
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        comm: p.comm.to_string(),
        exe: p.exe.to_string(),
        argv: p.argv.to_vec(),
        argv_truncated: p.argv_truncated,
        cgroup_id: p.cgroup_id,
        start_time_unix_nano: p.start_time.map(|t| t.0).unwrap_or(0),
    }
}

fn posture(p: &Posture) -> wire::Posture {
    wire::Posture {
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
        seccomp: p.seccomp.into(),
    }
}

fn container(c: &Container) -> wire::ContainerContext {
    let pod = c.pod.clone().unwrap_or_default();
    let mut w = wire::ContainerContext {
        id: c.id.clone(),
        runtime: c.runtime.into(),
        pod_name: pod.name,
        pod_namespace: pod.namespace,
        pod_uid: pod.uid,
        pod_labels: pod.labels.into_iter().collect(),
        unattributed: c.unattributed.unwrap_or_default().into(),
        ..wire::ContainerContext::default()
    };
    if let Some(m) = &c.meta {
        w.name = m.name.clone();
        if c.pod.is_some() {
            w.container_name = m.name.clone();
        }
        w.image_ref = m.image.reference.clone();
        w.image_digest = m.image.digest.clone();
        w.image_index_digest = m.image.index_digest.clone();
        w.image_config_digest = m.image.config_digest.clone();
        w.namespace = m.namespace.clone();
        w.oci_runtime = m.oci_runtime.clone();
        w.created_unix_nano = m.created.map(|t| t.0).unwrap_or(0);
        w.labels = m
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        w.posture = m.posture.as_ref().map(posture);
    }
    w
}

fn ancestor(a: &Ancestor) -> wire::Ancestor {
    wire::Ancestor {
        pid: a.pid,
        exe: a.exe.to_string(),
        comm: a.comm.to_string(),
    }
}

fn endpoint(e: &Endpoint) -> wire::Endpoint {
    wire::Endpoint {
        addr: e.addr.clone(),
        port: u32::from(e.port),
    }
}

/// One event on the wire.
pub fn to_wire(ev: &Event) -> wire::Event {
    use wire::event::Detail;
    let detail = if let Some(x) = &ev.exit {
        Some(Detail::Exit(wire::ExitInfo {
            exited: x.code.is_some(),
            code: x.code.unwrap_or(0),
            signal: x.signal.unwrap_or(0),
            raw: x.raw,
        }))
    } else if let Some(f) = &ev.fork {
        Some(Detail::Fork(wire::ForkInfo {
            child_pid: f.child_pid,
        }))
    } else if let Some(n) = &ev.network {
        Some(Detail::Network(wire::Network {
            protocol: n.protocol.into(),
            family: n.family.into(),
            op: n.op.into(),
            local: Some(endpoint(&n.local)),
            remote: n.remote.as_ref().map(endpoint),
            outcome: n.outcome.unwrap_or("").into(),
            wildcard: n.wildcard.unwrap_or(false),
        }))
    } else if let Some(l) = &ev.loss {
        Some(Detail::Loss(wire::Loss {
            stage: l.stage.into(),
            exec: l.exec,
            exit: l.exit,
            fork: l.fork,
            network: l.network,
            read_errors: l.read_errors,
            connect_untracked: l.connect_untracked,
            decode_errors: l.decode_errors,
            spool_dropped: l.spool_dropped,
        }))
    } else if let Some(f) = &ev.finding {
        Some(Detail::Finding(wire::Finding {
            rule_id: f.rule_id.into(),
            severity: match f.severity {
                Severity::Info => wire::Severity::Info,
                Severity::Low => wire::Severity::Low,
                Severity::Medium => wire::Severity::Medium,
                Severity::High => wire::Severity::High,
                Severity::Critical => wire::Severity::Critical,
            } as i32,
            summary: f.summary.clone(),
            mitre_technique: f.mitre.as_ref().map(|m| m.technique).unwrap_or("").into(),
            mitre_name: f.mitre.as_ref().map(|m| m.name).unwrap_or("").into(),
            evidence: f.evidence.iter().map(to_wire).collect(),
            count: f.count,
            first_seen_unix_nano: f.first_seen.0,
            last_seen_unix_nano: f.last_seen.0,
            subject: f.subject.clone(),
            action: f.action.into(),
            outcome: f.outcome.unwrap_or("").into(),
        }))
    } else {
        ev.agent.as_ref().map(|a| {
            Detail::Agent(wire::AgentInfo {
                state: a.state.into(),
                version: a.version.into(),
                kernel: a.kernel.clone(),
                probes: a
                    .probes
                    .iter()
                    .map(|p| wire::ProbeStatus {
                        program: p.program.into(),
                        attached: p.attached,
                        error: p.error.clone().unwrap_or_default(),
                        note: p.note.unwrap_or_default().into(),
                    })
                    .collect(),
                tracked: a.tracked.map(|t| wire::Tracked {
                    processes: t.processes as u64,
                    containers: t.containers as u64,
                    pending_events: t.pending_events as u64,
                    cgroups: t.cgroups as u64,
                }),
            })
        })
    };
    wire::Event {
        kind: kind(ev.kind) as i32,
        time_unix_nano: ev.time.0,
        node: ev.node.clone(),
        snapshot: ev.snapshot,
        process: ev.process.as_ref().map(process),
        parent: ev.parent.as_ref().map(ancestor),
        ancestors: ev.ancestors.iter().map(ancestor).collect(),
        container: ev.container.as_ref().map(container),
        host: ev.host,
        detail,
        enforced: ev.enforced.unwrap_or("").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::Timestamp, event::ExitInfo};

    #[test]
    fn exit_by_signal_and_process_fields() {
        let mut ev = Event::new(Kind::Exit, Timestamp(42), "n".into());
        ev.process = Some(Process {
            pid: 3,
            tid: Some(4),
            argv: vec!["a".to_string()].into(),
            start_time: Some(Timestamp(7)),
            ..Process::default()
        });
        ev.exit = Some(ExitInfo {
            code: None,
            signal: Some(9),
            raw: 9,
        });
        let w = to_wire(&ev);
        assert_eq!(w.kind, wire::EventKind::Exit as i32);
        assert_eq!(w.time_unix_nano, 42);
        let p = w.process.unwrap();
        assert_eq!((p.pid, p.tid, p.start_time_unix_nano), (3, 4, 7));
        match w.detail {
            Some(wire::event::Detail::Exit(x)) => assert!(!x.exited && x.signal == 9),
            other => panic!("{other:?}"),
        }
    }
}
