//! Wire events -> OCSF 1.8.0 JSON, which SIEMs ingest:
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
use spyglass_proto::v1::{event::Detail, ContainerContext, Event, EventKind, Process, Severity};

use crate::convert;

pub const OCSF_VERSION: &str = "1.8.0";

fn ms(unix_nano: i64) -> i64 {
    unix_nano / 1_000_000
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
    if p.tid != 0 {
        m.insert("tid".into(), json!(p.tid));
    }
    if p.start_time_unix_nano != 0 {
        m.insert("created_time".into(), json!(ms(p.start_time_unix_nano)));
    }
    Value::Object(m)
}

fn severity_id(s: i32) -> u8 {
    match Severity::try_from(s).unwrap_or(Severity::Unspecified) {
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
fn container(c: &ContainerContext) -> Value {
    let mut m = Map::new();
    m.insert("uid".into(), json!(c.id));
    if !c.name.is_empty() {
        m.insert("name".into(), json!(c.name));
    }
    if !c.oci_runtime.is_empty() {
        m.insert("runtime".into(), json!(c.oci_runtime));
    } else if !c.runtime.is_empty() {
        m.insert("runtime".into(), json!(c.runtime));
    }
    if !c.image_ref.is_empty() {
        let uid = if c.image_config_digest.is_empty() {
            &c.image_digest
        } else {
            &c.image_config_digest
        };
        let mut image = json!({"name": c.image_ref, "uid": uid});
        if let Some((_, tag)) = c
            .image_ref
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
        {
            image["tag"] = json!(tag);
        }
        m.insert("image".into(), image);
    }
    if let Some(hex) = c.image_digest.strip_prefix("sha256:") {
        // the manifest digest identifies what runs
        m.insert(
            "hash".into(),
            json!({"algorithm_id": 3, "algorithm": "SHA-256", "value": hex}),
        );
    }
    if !c.pod_uid.is_empty() {
        m.insert("orchestrator".into(), json!("Kubernetes"));
        let uuid = c.pod_uid.len() == 36 && c.pod_uid.matches('-').count() == 4;
        if uuid {
            m.insert("pod_uuid".into(), json!(c.pod_uid));
        }
    }
    if !c.labels.is_empty() {
        let mut labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        m.insert("labels".into(), json!(labels));
    }
    Value::Object(m)
}

/// One wire event as an OCSF object; the delivery goes to
/// `unmapped.delivery`.
pub fn event_ocsf(ev: &Event, d: &convert::Delivery) -> Value {
    let node_id = d.node_id.as_str();
    let kind = EventKind::try_from(ev.kind).unwrap_or(EventKind::Unspecified);
    let (class_uid, category_uid, activity_id): (u32, u32, u32) = match (kind, &ev.detail) {
        (EventKind::Exec, _) => (1007, 1, 1),   // Launch
        (EventKind::Exit, _) => (1007, 1, 2),   // Terminate
        (EventKind::Fork, _) => (1007, 1, 99),  // Other
        (EventKind::Listen, _) => (4001, 4, 7), // Listen
        (EventKind::Accept, _) => (4001, 4, 1), // Open
        (EventKind::Connect, Some(Detail::Network(n))) if n.outcome == "failed" => (4001, 4, 4), // Fail
        (EventKind::Connect, Some(Detail::Network(n))) if n.outcome == "denied" => (4001, 4, 5), // Refuse
        (EventKind::Connect, _) => (4001, 4, 1), // Open
        // A folded repeat is an update of the finding first reported.
        (EventKind::Finding, Some(Detail::Finding(f))) if f.count > 1 => (2004, 2, 2),
        (EventKind::Finding, _) => (2004, 2, 1), // Create
        _ => (1008, 1, 99),                      // Event Log Activity: Other
    };
    let mut m = Map::new();
    m.insert("class_uid".into(), json!(class_uid));
    m.insert("category_uid".into(), json!(category_uid));
    m.insert("activity_id".into(), json!(activity_id));
    m.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    m.insert("time".into(), json!(ms(ev.time_unix_nano)));
    m.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "profiles": if ev.container.is_some() { json!(["host", "container"]) } else { json!(["host"]) },
            "product": {"name": "Spyglass", "vendor_name": "Spyglass", "version": env!("CARGO_PKG_VERSION")},
            "log_name": convert::kind_name(ev.kind),
        }),
    );
    m.insert("device".into(), json!({"type_id": 0, "hostname": ev.node}));
    let mut severity = 1; // Informational
    let mut unmapped = Map::new();
    if !ev.enforced.is_empty() {
        // The policy killed this process at exec.
        unmapped.insert("enforced".into(), json!(ev.enforced));
    }
    unmapped.insert("delivery".into(), convert::delivery(d));
    unmapped.insert("kind".into(), json!(convert::kind_name(ev.kind)));
    if ev.snapshot {
        unmapped.insert("snapshot".into(), json!(true));
    }
    if let Some(p) = &ev.process {
        unmapped.insert("cgroup_id".into(), json!(p.cgroup_id));
    }
    if let Some(c) = &ev.container {
        unmapped.insert("container".into(), convert::container_json(c));
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
            match &ev.detail {
                Some(Detail::Exit(x)) => {
                    if x.exited {
                        m.insert("exit_code".into(), json!(x.code));
                    } else {
                        unmapped.insert("signal".into(), json!(x.signal));
                    }
                }
                Some(Detail::Fork(f)) => {
                    unmapped.insert("child_pid".into(), json!(f.child_pid));
                }
                _ => {}
            }
        }
        4001 => {
            if let Some(p) = &ev.process {
                m.insert("actor".into(), json!({"process": process(p)}));
            }
            if let Some(Detail::Network(n)) = &ev.detail {
                let ep = |e: &Option<spyglass_proto::v1::Endpoint>| {
                    e.as_ref().map(|e| json!({"ip": e.addr, "port": e.port}))
                };
                let (local, remote) = (ep(&n.local), ep(&n.remote));
                // direction: 1 inbound (listen/accept), 2 outbound (connect/send)
                let inbound = matches!(n.op.as_str(), "listen" | "bind" | "accept");
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
                        "protocol_ver_id": if n.family == "ipv6" { 6 } else { 4 },
                        "direction_id": if inbound { 1 } else { 2 },
                    }),
                );
                unmapped.insert("op".into(), json!(n.op));
                if !n.outcome.is_empty() {
                    unmapped.insert("outcome".into(), json!(n.outcome));
                }
                if n.op == "listen" || n.op == "bind" {
                    unmapped.insert("wildcard".into(), json!(n.wildcard));
                }
            }
        }
        2004 => {
            if let Some(Detail::Finding(f)) = &ev.detail {
                severity = severity_id(f.severity);
                let mut info = json!({
                    "uid": format!("{}:{}:{}", node_id, f.rule_id, f.first_seen_unix_nano),
                    "title": f.summary,
                    "analytic": {"uid": f.rule_id, "name": f.rule_id, "type_id": 1},
                    "first_seen_time": ms(f.first_seen_unix_nano),
                    "last_seen_time": ms(f.last_seen_unix_nano),
                });
                if !f.mitre_technique.is_empty() {
                    info["attacks"] =
                        json!([{"technique": {"uid": f.mitre_technique, "name": f.mitre_name}}]);
                }
                m.insert("finding_info".into(), info);
                unmapped.insert("count".into(), json!(f.count));
                unmapped.insert("action".into(), json!(f.action));
                if !f.outcome.is_empty() {
                    unmapped.insert("outcome".into(), json!(f.outcome));
                }
                if !f.subject.is_empty() {
                    unmapped.insert("subject".into(), json!(f.subject));
                }
                unmapped.insert(
                    "evidence".into(),
                    Value::Array(f.evidence.iter().map(convert::event_json).collect()),
                );
            }
            if let Some(p) = &ev.process {
                m.insert("actor".into(), json!({"process": process(p)}));
            }
        }
        _ => {
            // loss / agent: the whole Spyglass event, unmapped
            let full = convert::event_json(ev);
            for key in ["loss", "agent"] {
                if let Some(v) = full.get(key) {
                    unmapped.insert(key.into(), v.clone());
                }
            }
            m.insert("log_name".into(), json!("spyglass"));
            m.insert("log_provider".into(), json!("spyglass-agent"));
            let message =
                match &ev.detail {
                    Some(Detail::Loss(l)) => format!(
                    "{} events lost at stage {} (exec {}, exit {}, fork {}, network {}, spool {})",
                    l.exec + l.exit + l.fork + l.network + l.decode_errors + l.spool_dropped,
                    l.stage, l.exec, l.exit, l.fork, l.network, l.spool_dropped
                ),
                    Some(Detail::Agent(a)) => format!("agent {} (version {})", a.state, a.version),
                    _ => convert::kind_name(ev.kind).to_owned(),
                };
            m.insert("message".into(), json!(message));
            if kind == EventKind::Loss {
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
    use spyglass_proto::v1::{Ancestor, Endpoint, Network};

    #[test]
    fn exec_is_process_launch_with_parent_as_actor() {
        let ev = Event {
            kind: EventKind::Exec as i32,
            time_unix_nano: 1_700_000_000_123_456_789,
            node: "n1".into(),
            process: Some(Process {
                pid: 7,
                comm: "curl".into(),
                exe: "/usr/bin/curl".into(),
                argv: vec!["curl".into(), "-s".into()],
                ..Process::default()
            }),
            parent: Some(Ancestor {
                pid: 1,
                exe: "/bin/sh".into(),
                comm: "sh".into(),
            }),
            ..Event::default()
        };
        let d = convert::Delivery {
            node_id: "n1".into(),
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
        let ev = Event {
            kind: EventKind::Connect as i32,
            detail: Some(Detail::Network(Network {
                protocol: "tcp".into(),
                family: "ipv4".into(),
                op: "connect".into(),
                local: Some(Endpoint {
                    addr: "127.0.0.1".into(),
                    port: 5,
                }),
                remote: Some(Endpoint {
                    addr: "127.0.0.1".into(),
                    port: 6,
                }),
                outcome: "failed".into(),
                wildcard: false,
            })),
            ..Event::default()
        };
        let o = event_ocsf(&ev, &convert::Delivery::default());
        assert_eq!(o["type_uid"], 400104);
        assert_eq!(o["dst_endpoint"]["port"], 6);
        assert_eq!(o["connection_info"]["direction_id"], 2);
    }
}
