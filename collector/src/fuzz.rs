//! Targets `batch` and `render`: what one agent's bytes can make the
//! collector do. A batch (every kind of event, with hostile text in the
//! fields an attacker in a container controls, other nodes' names,
//! extreme times, nested evidence) is encoded, maybe corrupted, then run
//! through the collector's own path: the codec's scan (spyglass_proto
//! codec), prost's decode, validation ([`Received::from_batch`]) and the
//! outputs' rendering (JSON lines, OCSF, syslog frames).
//!
//! Validation must accept exactly the batches within proto/src/limits.rs
//! whose events speak for their own node; rendering must give one JSON
//! object per event, on one line, with its delivery.
//!
//! Target `identity`: the `--node-identities` file, which widens what a
//! client certificate may publish for: accepted exactly when every name
//! and node id is shaped like a node id, and then a certificate publishes
//! for its own names and the ids listed for them, nothing else. `cargo test` runs
//! each with a small case count; `cargo xtask fuzz batch|render` runs one
//! for longer; failures are saved under collector/proptest-regressions/.
use proptest::{prelude::*, test_runner::FileFailurePersistence};
use prost::Message;
use serde_json::Value;
use spyglass_proto::{
    codec::Bounded,
    limits,
    model::{samples, wire},
    v1::{self as w, event::Detail, Batch},
};

use crate::{
    delivery::Received,
    identity::{Binding, NodeIdentities},
    output::{Format, LineSink, Outputs},
    syslog,
};

fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Text a process, image or pod name could hold: log and JSON breakers,
/// other scripts, long runs.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", "<script>alert(1)</script>", "a\nb", "a\r\n<14>1 2026-01-01T00:00:00Z forged spyglass - - - x",
            "\"}", "\\", "\u{0}", "\u{7f}\u{1b}[31m", "\u{2028}\u{2029}", "é", "\u{1F600}", "%s%n",
            "${jndi:ldap://x}", "null", "{}", "[", "/tmp/../../etc/passwd",
        ])
        .prop_map(String::from),
        1 => ".{0,24}",
        1 => (200..400usize).prop_map(|n| "x".repeat(n)),
    ]
}

fn node_id() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9._-]{1,40}",
        1 => Just("n".repeat(limits::MAX_NODE_ID_LEN)),
        1 => Just("n".repeat(limits::MAX_NODE_ID_LEN + 1)),
        1 => hostile(),
    ]
}

fn stream_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-f]{32}",
        1 => Just(String::new()),
        1 => Just("s".repeat(limits::MAX_STREAM_ID_LEN + 1)),
        1 => hostile(),
    ]
}

/// Changes to one wire event.
#[derive(Clone, Debug)]
struct Twist {
    time: Option<i64>,
    /// 0: none, 1: the batch's own node, 2: another.
    node: u8,
    kind: Option<i32>,
    text: Option<String>,
    addr: Option<String>,
    port: Option<u32>,
    /// Wrap the event as evidence of this many nested findings.
    nest: usize,
}

fn twist() -> impl Strategy<Value = Twist> {
    (
        prop::option::weighted(0.3, any::<i64>()),
        prop::sample::select(vec![0u8, 0, 0, 1, 2]),
        prop::option::weighted(0.1, -2..12i32),
        prop::option::weighted(0.6, hostile()),
        prop::option::weighted(
            0.1,
            prop_oneof![
                hostile(),
                Just("::ffff:1.2.3.4".to_owned()),
                Just("1.2.3.4 ".to_owned())
            ],
        ),
        prop::option::weighted(
            0.1,
            prop_oneof![0..=65_535u32, Just(65_536u32), Just(u32::MAX)],
        ),
        prop::sample::select(vec![0usize, 0, 0, 1, 3]),
    )
        .prop_map(|(time, node, kind, text, addr, port, nest)| Twist {
            time,
            node,
            kind,
            text,
            addr,
            port,
            nest,
        })
}

/// Evidence as an agent sends it: naming no node (the batch's).
fn unnamed(ev: &mut w::Event) {
    if let Some(Detail::Finding(f)) = ev.detail.as_mut() {
        for e in &mut f.evidence {
            e.node.clear();
            unnamed(e);
        }
    }
}

fn apply(mut ev: w::Event, t: &Twist, node: &str) -> w::Event {
    unnamed(&mut ev);
    if let Some(x) = t.time {
        ev.time_unix_nano = x;
    }
    ev.node = match t.node {
        1 => node.to_owned(),
        2 => format!("{node}-other"),
        _ => String::new(),
    };
    if let Some(k) = t.kind {
        ev.kind = k;
    }
    if let Some(s) = &t.text {
        if let Some(p) = ev.process.as_mut() {
            p.exe.clone_from(s);
            p.comm.clone_from(s);
            p.argv.push(s.clone());
        }
        if let Some(c) = ev.container.as_mut() {
            c.name.clone_from(s);
            c.pod_name.clone_from(s);
            c.image_ref.clone_from(s);
        }
        if let Some(Detail::Finding(f)) = ev.detail.as_mut() {
            f.summary.clone_from(s);
            f.subject.clone_from(s);
            f.rule_id.clone_from(s);
        }
    }
    if let Some(Detail::Network(n)) = ev.detail.as_mut() {
        if let (Some(a), Some(l)) = (&t.addr, n.local.as_mut()) {
            l.addr.clone_from(a);
        }
        if let (Some(p), Some(r)) = (t.port, n.remote.as_mut()) {
            r.port = p;
        }
    }
    for _ in 0..t.nest {
        let mut outer = wire::to_wire(&samples::finding());
        outer.node = String::new();
        if let Some(Detail::Finding(f)) = outer.detail.as_mut() {
            f.evidence = vec![ev];
        }
        ev = outer;
    }
    ev
}

/// What a batch may be: its fields and the twists of its events.
#[derive(Clone, Debug)]
struct Plan {
    node: String,
    stream: String,
    sequence: u64,
    events: Vec<(usize, Twist)>,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        node_id(),
        stream_id(),
        prop_oneof![9 => 1..u64::MAX, 1 => Just(0u64)],
        prop::collection::vec((any::<usize>(), twist()), 0..8),
    )
        .prop_map(|(node, stream, sequence, events)| Plan {
            node,
            stream,
            sequence,
            events,
        })
}

impl Plan {
    fn batch(&self) -> Batch {
        let all = samples::all();
        Batch {
            node_id: self.node.clone(),
            sequence: self.sequence,
            events: self
                .events
                .iter()
                .map(|(i, t)| apply(wire::to_wire(&all[i % all.len()]), t, &self.node))
                .collect(),
            sent_unix_nano: 1,
            stream_id: self.stream.clone(),
        }
    }

    /// Whether the collector must accept it: ids within limits, a
    /// sequence, no event naming another node, nothing but what samples
    /// hold in address fields.
    fn acceptable(&self) -> Option<bool> {
        if self
            .events
            .iter()
            .any(|(_, t)| t.addr.is_some() || t.port.is_some())
        {
            return None; // the address check has its own unit tests
        }
        Some(
            limits::node_id_problem(&self.node).is_none()
                && limits::stream_id_problem(&self.stream).is_none()
                && self.sequence >= 1
                && self.events.iter().all(|(_, t)| t.node != 2),
        )
    }
}

/// Events at any depth: each one and its finding's evidence.
fn events_within(events: &[w::Event]) -> usize {
    events
        .iter()
        .map(|e| match &e.detail {
            Some(Detail::Finding(f)) => 1 + events_within(&f.evidence),
            _ => 1,
        })
        .sum()
}

/// The collector's path for one message: scan, decode, validate.
fn receive(bytes: &[u8]) -> Option<Received> {
    if let Err(s) = <Batch as Bounded>::check(bytes) {
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        return None;
    }
    let batch = Batch::decode(bytes).ok()?;
    let n = events_within(&batch.events);
    assert!(n <= limits::MAX_BATCH_EVENTS, "{n} events passed the scan");
    Received::from_batch(batch).ok()
}

fn nodes_are(ev: &spyglass_proto::model::Event, node: &str) -> bool {
    ev.node == node
        && ev
            .finding
            .as_ref()
            .is_none_or(|f| f.evidence.iter().all(|e| nodes_are(e, node)))
}

/// What an accepted batch promises.
fn promises(r: &Received) -> Result<(), TestCaseError> {
    prop_assert!(
        limits::node_id_problem(&r.node_id).is_none(),
        "node_id {:?} accepted",
        r.node_id
    );
    prop_assert!(!r.node_id.is_empty() && r.node_id.len() <= limits::MAX_NODE_ID_LEN);
    prop_assert!(limits::stream_id_problem(&r.stream_id).is_none());
    prop_assert!(r.sequence >= 1);
    prop_assert!(r.events.len() <= limits::MAX_BATCH_EVENTS);
    for e in &r.events {
        prop_assert!(nodes_are(e, &r.node_id), "an event speaks for {:?}", e.node);
    }
    Ok(())
}

fn lines(format: Format, r: &Received) -> Vec<String> {
    let sink = LineSink::open("-", 0, 0).expect("stdout sink");
    let mut out = Outputs::new(format, sink, None);
    let lines = out.render_batch(r);
    let n = lines.bytes().iter().filter(|&&b| b == b'\n').count();
    assert_eq!(n, r.events.len(), "one newline per event");
    lines.iter().map(str::to_owned).collect()
}

/// Every output of an accepted batch: one JSON object per event and
/// line, with its delivery; syslog frames whose length is their length.
fn renders(r: &Received) -> Result<(), TestCaseError> {
    let json = lines(Format::Json, r);
    prop_assert_eq!(json.len(), r.events.len());
    for (i, (line, ev)) in json.iter().zip(&r.events).enumerate() {
        prop_assert!(!line.contains('\n'), "a line holds a newline");
        let v: Value = serde_json::from_str(line)
            .map_err(|e| TestCaseError::fail(format!("line {i} is not JSON ({e}): {line}")))?;
        prop_assert!(v.is_object());
        prop_assert_eq!(&v["node"], &Value::from(r.node_id.as_str()));
        prop_assert_eq!(&v["kind"], &Value::from(ev.kind.to_string()));
        let d = &v["delivery"];
        prop_assert_eq!(&d["node_id"], &Value::from(r.node_id.as_str()));
        prop_assert_eq!(&d["stream_id"], &Value::from(r.stream_id.as_str()));
        prop_assert_eq!(&d["sequence"], &Value::from(r.sequence));
        prop_assert_eq!(
            (&d["index"], &d["count"]),
            (&Value::from(i), &Value::from(r.events.len()))
        );
        let frame = syslog::frame(ev, line);
        let text = String::from_utf8(frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (len, msg) = text.split_once(' ').expect("LEN SP MSG");
        prop_assert_eq!(len.parse::<usize>().ok(), Some(msg.len()));
        prop_assert!(!msg.contains('\n'), "a syslog frame holds a newline");
        prop_assert_eq!(
            msg.split(' ').nth(2),
            Some(r.node_id.as_str()),
            "HOST field"
        );
    }
    let ocsf = lines(Format::Ocsf, r);
    prop_assert_eq!(ocsf.len(), r.events.len());
    for line in &ocsf {
        prop_assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(line)
            .map_err(|e| TestCaseError::fail(format!("OCSF line is not JSON ({e}): {line}")))?;
        prop_assert!(v.is_object());
    }
    Ok(())
}

/// One change to encoded bytes.
#[derive(Clone, Debug)]
enum Cut {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Truncate(usize),
}

fn cut() -> impl Strategy<Value = Cut> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Cut::Flip(i, x)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(i, b)| Cut::Insert(i, b)),
        1 => any::<usize>().prop_map(Cut::Truncate),
    ]
}

fn corrupt(mut b: Vec<u8>, cuts: &[Cut]) -> Vec<u8> {
    for c in cuts {
        let len = b.len();
        match c {
            Cut::Flip(i, x) if len > 0 => b[i % len] ^= x,
            Cut::Insert(i, bytes) => {
                let at = i % (len + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Cut::Truncate(i) => b.truncate(i % (len + 1)),
            Cut::Flip(..) => {}
        }
    }
    b
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn batch_validation_accepts_exactly_what_the_limits_allow(p in plan()) {
        let bytes = p.batch().encode_to_vec();
        let got = receive(&bytes);
        if let Some(r) = &got {
            promises(r)?;
            prop_assert_eq!(r.events.len(), p.events.len());
        }
        if let Some(want) = p.acceptable() {
            prop_assert_eq!(got.is_some(), want, "node {:?} stream {:?} seq {}", p.node, p.stream, p.sequence);
        }
    }

    #[test]
    fn batch_corrupted_or_garbage_is_refused_or_within_limits(
        p in plan(),
        cuts in prop::collection::vec(cut(), 1..5),
        garbage in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        for bytes in [corrupt(p.batch().encode_to_vec(), &cuts), garbage] {
            if let Some(r) = receive(&bytes) {
                promises(&r)?;
                renders(&r)?;
            }
        }
    }

    #[test]
    fn render_gives_one_json_object_per_event_with_its_delivery(p in plan()) {
        if let Some(r) = receive(&p.batch().encode_to_vec()) {
            renders(&r)?;
        }
    }
}

/// A word of a `--node-identities` line: a node id, or one that is not.
fn id_word() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9._-]{1,12}",
        1 => Just("n".repeat(limits::MAX_NODE_ID_LEN + 1)),
        1 => prop::sample::select(vec!["a/b", "é", "a:b", "<x>", "a,b"]).prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn identity_file_binds_names_to_exactly_the_listed_nodes(
        lines in prop::collection::vec((id_word(), prop::collection::vec(id_word(), 0..3)), 0..5),
        comment in any::<bool>(),
        muts in prop::collection::vec(cut(), 0..3),
    ) {
        let mut text = String::new();
        for (name, nodes) in &lines {
            text.push_str(&format!("{name} {}{}\n", nodes.join(" "), if comment { " # note" } else { "" }));
        }
        let valid = |w: &String| limits::node_id_problem(w).is_none();
        let mut names: Vec<&String> = lines.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        let want_ok = names.len() == lines.len()
            && lines.iter().all(|(n, ns)| valid(n) && !ns.is_empty() && ns.iter().all(valid));
        if muts.is_empty() {
            match NodeIdentities::parse(&text) {
                Ok(ids) => {
                    prop_assert!(want_ok, "accepted: {text:?}");
                    for (name, nodes) in &lines {
                        let b = Binding::of_names(std::slice::from_ref(name), &ids);
                        for n in nodes.iter().chain([name]) {
                            prop_assert!(b.check(n).is_ok(), "{name} may not publish for {n}");
                        }
                        let other = format!("{name}-not-listed");
                        if !lines.iter().any(|(_, ns)| ns.contains(&other)) {
                            let e = b.check(&other).unwrap_err();
                            prop_assert_eq!(e.code(), tonic::Code::PermissionDenied);
                        }
                    }
                }
                Err((line, why)) => {
                    prop_assert!(!want_ok, "refused ({why}): {text:?}");
                    prop_assert!(line >= 1 && line <= lines.len(), "line {line}");
                }
            }
        } else {
            let text = String::from_utf8_lossy(&corrupt(text.into_bytes(), &muts)).into_owned();
            if let Err((line, _)) = NodeIdentities::parse(&text) {
                prop_assert!(line >= 1 && line <= text.lines().count(), "line {line}");
            }
        }
    }
}
