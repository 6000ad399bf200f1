//! Events (the shared model) -> OCSF 1.8.0 JSON, which SIEMs ingest:
//! - exec, fork, exit -> Process Activity (class 1007);
//! - listen, connect, accept -> Network Activity (class 4001);
//! - findings -> Detection Finding (class 2004);
//! - loss and agent lifecycle -> Event Log Activity (class 1008) so that a
//!   SIEM sees gaps and restarts too.
//!
//! Every event carries the `host` profile (`device`, `actor`). Spyglass
//! fields without an OCSF attribute go under `unmapped`, including the
//! `delivery` object used for deduplication.
use serde_json::{json, Map, Value};
use spyglass_proto::model::{
    ConnectOutcome, Container, Event, Family, Kind, NetOp, Process, Severity, Timestamp,
};

use crate::delivery::Delivery;

pub const OCSF_VERSION: &str = "1.8.0";

fn ms(t: Timestamp) -> i64 {
    t.0 / 1_000_000
}

/// Any model value as JSON (the shared shape of docs/events.md).
fn shape(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// OCSF `file` of an executable path (type 1: regular file).
fn file(exe: &str) -> Option<Value> {
    if exe.is_empty() {
        return None;
    }
    let name = exe.rsplit('/').next().unwrap_or(exe);
    Some(json!({"path": exe, "name": name, "type_id": 1}))
}

fn process(p: &Process) -> Value {
    let mut m = Map::new();
    m.insert("pid".into(), json!(p.pid));
    if !p.comm.is_empty() {
        m.insert("name".into(), json!(p.comm));
    }
    if !p.argv.is_empty() {
        m.insert("cmd_line".into(), json!(p.argv.join(" ")));
    }
    if let Some(f) = file(&p.exe) {
        m.insert("file".into(), f);
    }
    m.insert("user".into(), json!({"uid": p.uid.to_string()}));
    if let Some(tid) = p.tid {
        m.insert("tid".into(), json!(tid));
    }
    if let Some(t) = p.start_time {
        m.insert("created_time".into(), json!(ms(t)));
    }
    Value::Object(m)
}

fn severity_id(s: Severity) -> u8 {
    match s {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
        Severity::Unspecified => 0,
    }
}

/// The OCSF `container` object (container profile) of a container
/// context: what OCSF has a field for. Everything else (posture, index
/// digest, namespace, attribution) stays in `unmapped.container`.
fn container(c: &Container) -> Value {
    let mut m = Map::new();
    m.insert("uid".into(), json!(c.id));
    let meta = c.meta.as_deref();
    if let Some(name) = meta.map(|m| &m.name).filter(|n| !n.is_empty()) {
        m.insert("name".into(), json!(name));
    }
    match meta.map(|m| &m.oci_runtime).filter(|r| !r.is_empty()) {
        Some(r) => m.insert("runtime".into(), json!(r)),
        None => m.insert("runtime".into(), json!(c.runtime)),
    };
    if let Some(img) = meta.map(|m| &m.image).filter(|i| !i.reference.is_empty()) {
        let uid = if img.config_digest.is_empty() {
            &img.digest
        } else {
            &img.config_digest
        };
        let mut image = json!({"name": img.reference, "uid": uid});
        if let Some((_, tag)) = img
            .reference
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
        {
            image["tag"] = json!(tag);
        }
        m.insert("image".into(), image);
    }
    if let Some(hex) = meta.and_then(|m| m.image.digest.strip_prefix("sha256:")) {
        // the manifest digest identifies what runs
        m.insert(
            "hash".into(),
            json!({"algorithm_id": 3, "algorithm": "SHA-256", "value": hex}),
        );
    }
    if let Some(uid) = c.pod.as_ref().map(|p| &p.uid).filter(|u| !u.is_empty()) {
        m.insert("orchestrator".into(), json!("Kubernetes"));
        let uuid = uid.len() == 36 && uid.matches('-').count() == 4;
        if uuid {
            m.insert("pod_uuid".into(), json!(uid));
        }
    }
    if let Some(labels) = meta.map(|m| &m.labels).filter(|l| !l.is_empty()) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        m.insert("labels".into(), json!(labels));
    }
    Value::Object(m)
}

/// One event as an OCSF object; the delivery goes to `unmapped.delivery`.
pub fn event_ocsf(ev: &Event, d: &Delivery) -> Value {
    let node_id = d.node_id;
    let outcome = ev.network.as_ref().and_then(|n| n.outcome);
    let (class_uid, category_uid, activity_id): (u32, u32, u32) = match ev.kind {
        Kind::Exec => (1007, 1, 1),   // Launch
        Kind::Exit => (1007, 1, 2),   // Terminate
        Kind::Fork => (1007, 1, 99),  // Other
        Kind::Listen => (4001, 4, 7), // Listen
        Kind::Close => (4001, 4, 2),  // Close
        Kind::Accept => (4001, 4, 1), // Open
        Kind::Connect if outcome == Some(ConnectOutcome::Failed) => (4001, 4, 4), // Fail
        Kind::Connect if outcome == Some(ConnectOutcome::Denied) => (4001, 4, 5), // Refuse
        Kind::Connect => (4001, 4, 1), // Open
        // A folded repeat is an update of the finding first reported.
        Kind::Finding if ev.finding.as_ref().is_some_and(|f| f.count > 1) => (2004, 2, 2),
        Kind::Finding => (2004, 2, 1), // Create
        _ => (1008, 1, 99),            // Event Log Activity: Other
    };
    let mut m = Map::new();
    m.insert("class_uid".into(), json!(class_uid));
    m.insert("category_uid".into(), json!(category_uid));
    m.insert("activity_id".into(), json!(activity_id));
    m.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    m.insert("time".into(), json!(ms(ev.time)));
    m.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "profiles": if ev.container.is_some() { json!(["host", "container"]) } else { json!(["host"]) },
            "product": {"name": "Spyglass", "vendor_name": "Spyglass", "version": env!("CARGO_PKG_VERSION")},
            "log_name": ev.kind.as_str(),
        }),
    );
    m.insert("device".into(), json!({"type_id": 0, "hostname": ev.node}));
    let mut severity = 1; // Informational
    let mut unmapped = Map::new();
    if let Some(e) = ev.enforced {
        // The policy killed this process at exec.
        unmapped.insert("enforced".into(), json!(e));
    }
    if let Some(a) = ev.aggregate.as_deref() {
        // OCSF's own fields for an event standing for several.
        m.insert("count".into(), json!(a.count));
        m.insert("start_time".into(), json!(ms(a.first)));
        m.insert("end_time".into(), json!(ms(a.last)));
        unmapped.insert("aggregate".into(), shape(a));
    }
    unmapped.insert("delivery".into(), shape(d));
    unmapped.insert("kind".into(), json!(ev.kind));
    if ev.snapshot {
        unmapped.insert("snapshot".into(), json!(true));
    }
    if let Some(p) = &ev.process {
        unmapped.insert("cgroup_id".into(), json!(p.cgroup_id));
    }
    if let Some(c) = &ev.container {
        unmapped.insert("container".into(), shape(c));
    }

    let parent = ev.parent.as_ref().map(|a| {
        let mut p = Map::new();
        p.insert("pid".into(), json!(a.pid));
        if !a.comm.is_empty() {
            p.insert("name".into(), json!(a.comm));
        }
        if let Some(f) = file(&a.exe) {
            p.insert("file".into(), f);
        }
        Value::Object(p)
    });

    match class_uid {
        1007 => {
            let mut proc_ = ev
                .process
                .as_ref()
                .map(process)
                .unwrap_or(json!({"pid": 0}));
            if let Some(pp) = &parent {
                proc_["parent_process"] = pp.clone();
            }
            m.insert("process".into(), proc_);
            let actor = parent.clone().unwrap_or(json!({"pid": 0}));
            m.insert("actor".into(), json!({"process": actor}));
            if let Some(x) = &ev.exit {
                if let Some(code) = x.code {
                    m.insert("exit_code".into(), json!(code));
                }
                if let Some(signal) = x.signal {
                    unmapped.insert("signal".into(), json!(signal));
                }
            }
            if let Some(f) = &ev.fork {
                unmapped.insert("child_pid".into(), json!(f.child_pid));
            }
        }
        4001 => {
            if let Some(p) = &ev.process {
                m.insert("actor".into(), json!({"process": process(p)}));
            }
            if let Some(n) = &ev.network {
                let ep =
                    |e: &spyglass_proto::model::Endpoint| json!({"ip": e.addr, "port": e.port});
                let (local, remote) = (Some(ep(&n.local)), n.remote.as_ref().map(ep));
                // direction: 1 inbound (listen/accept), 2 outbound (connect/send)
                let inbound = matches!(n.op, NetOp::Listen | NetOp::Bind | NetOp::Accept);
                if inbound {
                    if let Some(r) = remote {
                        m.insert("src_endpoint".into(), r);
                    }
                    if let Some(l) = local {
                        m.insert("dst_endpoint".into(), l);
                    }
                } else {
                    if let Some(l) = local {
                        m.insert("src_endpoint".into(), l);
                    }
                    if let Some(r) = remote {
                        m.insert("dst_endpoint".into(), r);
                    }
                }
                m.insert(
                    "connection_info".into(),
                    json!({
                        "protocol_name": n.protocol,
                        "protocol_ver_id": if n.family == Family::Ipv6 { 6 } else { 4 },
                        "direction_id": if inbound { 1 } else { 2 },
                    }),
                );
                unmapped.insert("op".into(), json!(n.op));
                if let Some(o) = n.outcome {
                    unmapped.insert("outcome".into(), json!(o));
                }
                if let Some(w) = n.wildcard {
                    unmapped.insert("wildcard".into(), json!(w));
                }
            }
        }
        2004 => {
            if let Some(f) = &ev.finding {
                severity = severity_id(f.severity);
                let mut info = json!({
                    "uid": format!("{}:{}:{}", node_id, f.rule_id, f.first_seen.0),
                    "title": f.summary,
                    "analytic": {"uid": f.rule_id, "name": f.rule_id, "type_id": 1},
                    "first_seen_time": ms(f.first_seen),
                    "last_seen_time": ms(f.last_seen),
                });
                if let Some(mitre) = &f.mitre {
                    info["attacks"] =
                        json!([{"technique": {"uid": mitre.technique, "name": mitre.name}}]);
                }
                m.insert("finding_info".into(), info);
                unmapped.insert("count".into(), json!(f.count));
                unmapped.insert("action".into(), json!(f.action));
                if let Some(o) = f.outcome {
                    unmapped.insert("outcome".into(), json!(o));
                }
                if !f.subject.is_empty() {
                    unmapped.insert("subject".into(), json!(f.subject));
                }
                unmapped.insert("evidence".into(), shape(&f.evidence));
            }
            if let Some(p) = &ev.process {
                m.insert("actor".into(), json!({"process": process(p)}));
            }
        }
        _ => {
            // loss / agent: the Spyglass objects, unmapped
            if let Some(l) = &ev.loss {
                unmapped.insert("loss".into(), shape(l));
            }
            if let Some(a) = &ev.agent {
                unmapped.insert("agent".into(), shape(a));
            }
            m.insert("log_name".into(), json!("spyglass"));
            m.insert("log_provider".into(), json!("spyglass-agent"));
            let message = match (&ev.loss, &ev.agent) {
                (Some(l), _) => format!(
                    "{} events lost at stage {} (exec {}, exit {}, fork {}, network {}, spool {})",
                    l.total(),
                    l.stage,
                    l.exec,
                    l.exit,
                    l.fork,
                    l.network,
                    l.spool_dropped
                ),
                (None, Some(a)) => format!("agent {} (version {})", a.state, a.version),
                (None, None) => ev.kind.as_str().to_owned(),
            };
            m.insert("message".into(), json!(message));
            if ev.kind == Kind::Loss {
                severity = 3; // Medium: telemetry is missing
            }
        }
    }
    m.insert("severity_id".into(), json!(severity));
    m.insert("unmapped".into(), Value::Object(unmapped));
    // The acting process carries its container (OCSF container profile).
    if let Some(c) = &ev.container {
        let target = if class_uid == 1007 {
            m.get_mut("process")
        } else {
            m.get_mut("actor").and_then(|a| a.get_mut("process"))
        };
        if let Some(Value::Object(p)) = target {
            p.insert("container".into(), container(c));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spyglass_proto::model::{Ancestor, Endpoint, Network, Protocol};

    #[test]
    fn exec_is_process_launch_with_parent_as_actor() {
        let mut ev = Event::new(
            Kind::Exec,
            Timestamp(1_700_000_000_123_456_789),
            "n1".into(),
        );
        ev.process = Some(Process {
            pid: 7,
            comm: "curl".into(),
            exe: "/usr/bin/curl".into(),
            argv: vec!["curl".to_string(), "-s".to_string()].into(),
            ..Process::default()
        });
        ev.parent = Some(Ancestor {
            pid: 1,
            exe: "/bin/sh".into(),
            comm: "sh".into(),
        });
        let d = Delivery {
            node_id: "n1",
            sequence: 3,
            count: 1,
            ..Default::default()
        };
        let o = event_ocsf(&ev, &d);
        assert_eq!(
            (o["class_uid"].as_u64(), o["type_uid"].as_u64()),
            (Some(1007), Some(100701))
        );
        assert_eq!(o["time"], 1_700_000_000_123i64);
        assert_eq!(o["process"]["file"]["path"], "/usr/bin/curl");
        assert_eq!(o["process"]["cmd_line"], "curl -s");
        assert_eq!(o["actor"]["process"]["pid"], 1);
        assert_eq!(o["unmapped"]["delivery"]["sequence"], 3);
    }

    #[test]
    fn failed_connect_is_network_fail() {
        let mut ev = Event::new(Kind::Connect, Timestamp(0), String::new());
        let ep = |port| Endpoint {
            addr: "127.0.0.1".parse().unwrap(),
            port,
        };
        ev.network = Some(Network {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            op: NetOp::Connect,
            local: ep(5),
            remote: Some(ep(6)),
            outcome: Some(ConnectOutcome::Failed),
            wildcard: None,
        });
        let o = event_ocsf(&ev, &Delivery::default());
        assert_eq!(o["type_uid"], 400104);
        assert_eq!(o["dst_endpoint"]["port"], 6);
        assert_eq!(o["dst_endpoint"]["ip"], "127.0.0.1");
        assert_eq!(o["connection_info"]["direction_id"], 2);
    }
}
