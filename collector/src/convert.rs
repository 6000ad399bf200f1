//! Wire events -> the JSON event of docs/events.md (the same shape the
//! agent prints), plus a `delivery` object naming the node and batch. The
//! only module of the collector that reads wire types for JSON output.
use serde_json::{json, Map, Value};
use spyglass_proto::{
    time::Timestamp,
    v1::{
        event::Detail, Ancestor, ContainerContext, Endpoint, Event, EventKind, ProbeStatus,
        Process, Severity,
    },
};

pub fn kind_name(k: i32) -> &'static str {
    match EventKind::try_from(k).unwrap_or(EventKind::Unspecified) {
        EventKind::Exec => "exec",
        EventKind::Exit => "exit",
        EventKind::Fork => "fork",
        EventKind::Listen => "listen",
        EventKind::Connect => "connect",
        EventKind::Accept => "accept",
        EventKind::Loss => "loss",
        EventKind::Agent => "agent",
        EventKind::Finding => "finding",
        EventKind::Unspecified => "unspecified",
    }
}

pub fn severity_name(s: i32) -> &'static str {
    match Severity::try_from(s).unwrap_or(Severity::Unspecified) {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
        Severity::Unspecified => "unspecified",
    }
}

fn process(p: &Process) -> Value {
    let mut m = Map::new();
    m.insert("pid".into(), json!(p.pid));
    if p.tid != 0 {
        m.insert("tid".into(), json!(p.tid));
    }
    m.insert("ppid".into(), json!(p.ppid));
    m.insert("uid".into(), json!(p.uid));
    m.insert("gid".into(), json!(p.gid));
    m.insert("comm".into(), json!(p.comm));
    m.insert("exe".into(), json!(p.exe));
    m.insert("argv".into(), json!(p.argv));
    if p.argv_truncated {
        m.insert("argv_truncated".into(), json!(true));
    }
    m.insert("cgroup_id".into(), json!(p.cgroup_id));
    if p.start_time_unix_nano != 0 {
        m.insert(
            "start_time".into(),
            json!(Timestamp(p.start_time_unix_nano).to_string()),
        );
    }
    Value::Object(m)
}

fn ancestor(a: &Ancestor) -> Value {
    json!({"pid": a.pid, "exe": a.exe, "comm": a.comm})
}

fn endpoint(e: &Endpoint) -> Value {
    json!({"addr": e.addr, "port": e.port})
}

/// A container context in the agent's JSON shape, leaving out what the
/// agent did not know.
pub fn container_json(c: &ContainerContext) -> Value {
    // only what the agent knew: empty strings are left out
    let put = |m: &mut Map<String, Value>, k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.into(), json!(v));
        }
    };
    let mut cm = Map::new();
    put(&mut cm, "id", &c.id);
    put(&mut cm, "runtime", &c.runtime);
    let mut pod = Map::new();
    put(&mut pod, "name", &c.pod_name);
    put(&mut pod, "namespace", &c.pod_namespace);
    put(&mut pod, "uid", &c.pod_uid);
    if !c.pod_labels.is_empty() {
        let labels: std::collections::BTreeMap<_, _> = c.pod_labels.iter().collect();
        pod.insert("labels".into(), json!(labels));
    }
    if !pod.is_empty() {
        cm.insert("pod".into(), Value::Object(pod));
    }
    put(&mut cm, "unattributed", &c.unattributed);
    put(&mut cm, "name", &c.name);
    put(&mut cm, "namespace", &c.namespace);
    put(&mut cm, "oci_runtime", &c.oci_runtime);
    if c.created_unix_nano != 0 {
        cm.insert(
            "created".into(),
            json!(Timestamp(c.created_unix_nano).to_string()),
        );
    }
    let mut image = Map::new();
    put(&mut image, "ref", &c.image_ref);
    put(&mut image, "digest", &c.image_digest);
    put(&mut image, "index_digest", &c.image_index_digest);
    put(&mut image, "config_digest", &c.image_config_digest);
    if !image.is_empty() {
        cm.insert("image".into(), Value::Object(image));
    }
    if !c.labels.is_empty() {
        let labels: std::collections::BTreeMap<_, _> = c.labels.iter().collect();
        cm.insert("labels".into(), json!(labels));
    }
    if let Some(p) = &c.posture {
        cm.insert(
            "posture".into(),
            json!({
                "uid": p.uid, "gid": p.gid, "user_namespace": p.user_namespace,
                "privileged": p.privileged, "capabilities": p.capabilities,
                "host_network": p.host_network, "host_pid": p.host_pid, "host_ipc": p.host_ipc,
                "read_only_rootfs": p.read_only_rootfs, "no_new_privileges": p.no_new_privileges,
                "seccomp": p.seccomp,
            }),
        );
    }
    Value::Object(cm)
}

/// One wire event as JSON (without delivery information).
pub fn event_json(ev: &Event) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), json!(kind_name(ev.kind)));
    m.insert(
        "time".into(),
        json!(Timestamp(ev.time_unix_nano).to_string()),
    );
    m.insert("node".into(), json!(ev.node));
    m.insert("snapshot".into(), json!(ev.snapshot));
    if let Some(p) = &ev.process {
        m.insert("process".into(), process(p));
    }
    if let Some(a) = &ev.parent {
        m.insert("parent".into(), ancestor(a));
    }
    if !ev.ancestors.is_empty() {
        m.insert(
            "ancestors".into(),
            Value::Array(ev.ancestors.iter().map(ancestor).collect()),
        );
    }
    if let Some(c) = &ev.container {
        m.insert("container".into(), container_json(c));
    }
    if ev.host {
        m.insert("host".into(), json!(true));
    }
    if !ev.enforced.is_empty() {
        m.insert("enforced".into(), json!(ev.enforced));
    }
    match &ev.detail {
        Some(Detail::Exit(x)) => {
            let mut e = Map::new();
            if x.exited {
                e.insert("code".into(), json!(x.code));
            } else {
                e.insert("signal".into(), json!(x.signal));
            }
            e.insert("raw".into(), json!(x.raw));
            m.insert("exit".into(), Value::Object(e));
        }
        Some(Detail::Fork(f)) => {
            m.insert("fork".into(), json!({"child_pid": f.child_pid}));
        }
        Some(Detail::Network(n)) => {
            let mut o = Map::new();
            o.insert("protocol".into(), json!(n.protocol));
            o.insert("family".into(), json!(n.family));
            o.insert("op".into(), json!(n.op));
            if let Some(l) = &n.local {
                o.insert("local".into(), endpoint(l));
            }
            if let Some(r) = &n.remote {
                o.insert("remote".into(), endpoint(r));
            }
            if !n.outcome.is_empty() {
                o.insert("outcome".into(), json!(n.outcome));
            }
            if n.op == "listen" || n.op == "bind" {
                o.insert("wildcard".into(), json!(n.wildcard));
            }
            m.insert("network".into(), Value::Object(o));
        }
        Some(Detail::Loss(l)) => {
            m.insert(
                "loss".into(),
                json!({"stage": l.stage, "exec": l.exec, "exit": l.exit, "fork": l.fork,
                       "network": l.network, "read_errors": l.read_errors,
                       "connect_untracked": l.connect_untracked, "decode_errors": l.decode_errors,
                       "spool_dropped": l.spool_dropped}),
            );
        }
        Some(Detail::Agent(a)) => {
            let probes: Vec<Value> = a.probes.iter().map(probe_json).collect();
            let mut agent = json!({"state": a.state, "version": a.version, "kernel": a.kernel, "probes": probes});
            if let Some(t) = &a.tracked {
                agent["tracked"] = json!({"processes": t.processes, "containers": t.containers,
                                          "pending_events": t.pending_events, "cgroups": t.cgroups});
            }
            m.insert("agent".into(), agent);
        }
        Some(Detail::Finding(f)) => {
            m.insert(
                "finding".into(),
                json!({"rule_id": f.rule_id, "severity": severity_name(f.severity),
                       "summary": f.summary, "mitre_technique": f.mitre_technique,
                       "mitre_name": f.mitre_name, "subject": f.subject,
                       "action": f.action, "outcome": f.outcome,
                       "count": f.count,
                       "first_seen": Timestamp(f.first_seen_unix_nano).to_string(),
                       "last_seen": Timestamp(f.last_seen_unix_nano).to_string(),
                       "evidence": f.evidence.iter().map(event_json).collect::<Vec<_>>()}),
            );
        }
        None => {}
    }
    Value::Object(m)
}

/// Where a line came from: node, sequence space, batch, and the line's
/// place in its batch (so recovery can tell a complete batch from a torn one).
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    pub node_id: String,
    pub stream_id: String,
    pub sequence: u64,
    pub index: usize,
    pub count: usize,
}

/// The `delivery` object of an output line.
pub fn delivery(d: &Delivery) -> Value {
    json!({"node_id": d.node_id, "stream_id": d.stream_id, "sequence": d.sequence,
           "index": d.index, "count": d.count})
}

/// One probe's status, as the agent's JSON shows it (error and note only
/// when set).
fn probe_json(p: &ProbeStatus) -> Value {
    let mut v = json!({"program": p.program, "attached": p.attached});
    if !p.error.is_empty() {
        v["error"] = json!(p.error);
    }
    if !p.note.is_empty() {
        v["note"] = json!(p.note);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use spyglass_proto::v1::{ExitInfo, Network};

    #[test]
    fn matches_the_agent_json_shape() {
        let ev = Event {
            kind: EventKind::Connect as i32,
            time_unix_nano: 1_795_549_718_856_200_274,
            node: "n1".into(),
            process: Some(Process {
                pid: 5,
                tid: 5,
                exe: "/bin/x".into(),
                argv: vec!["x".into()],
                ..Process::default()
            }),
            detail: Some(Detail::Network(Network {
                protocol: "tcp".into(),
                family: "ipv4".into(),
                op: "connect".into(),
                local: Some(Endpoint {
                    addr: "127.0.0.1".into(),
                    port: 4000,
                }),
                remote: Some(Endpoint {
                    addr: "127.0.0.1".into(),
                    port: 80,
                }),
                outcome: "established".into(),
                wildcard: false,
            })),
            ..Event::default()
        };
        let v = event_json(&ev);
        assert_eq!(v["kind"], "connect");
        assert_eq!(v["time"], "2026-11-24T19:48:38.856200274Z");
        assert_eq!(v["process"]["exe"], "/bin/x");
        assert_eq!(v["network"]["remote"]["port"], 80);
        assert_eq!(v["network"]["outcome"], "established");
        assert!(v["network"].get("wildcard").is_none());

        let exit = Event {
            kind: EventKind::Exit as i32,
            detail: Some(Detail::Exit(ExitInfo {
                exited: false,
                code: 0,
                signal: 9,
                raw: 9,
            })),
            ..Event::default()
        };
        let v = event_json(&exit);
        assert_eq!(v["exit"]["signal"], 9);
        assert!(v["exit"].get("code").is_none());
    }
}
