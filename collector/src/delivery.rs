//! What a batch from an agent becomes on arrival: its events as the shared
//! model (converted once, then rendered by every output) and where each
//! output line came from (the `delivery` object).
use serde::Serialize;
use spyglass_proto::{
    limits,
    model::{wire, Event, Kind},
    v1::Batch,
};

/// Where a line came from: node, sequence space, batch, and the line's
/// place in its batch (so recovery can tell a complete batch from a torn one).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Delivery<'a> {
    pub node_id: &'a str,
    pub stream_id: &'a str,
    pub sequence: u64,
    pub index: usize,
    pub count: usize,
}

/// A batch whose events passed validation.
#[derive(Debug)]
pub struct Received {
    pub node_id: String,
    pub stream_id: String,
    pub sequence: u64,
    pub sent_unix_nano: i64,
    pub events: Vec<Event>,
}

/// A batch no agent sends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch node_id {0}")]
    NodeId(String),
    #[error("batch stream_id {0}")]
    StreamId(String),
    #[error("batch sequence must start at 1")]
    ZeroSequence,
    #[error("batch {sequence}, event {index}: {source}")]
    Event {
        sequence: u64,
        index: usize,
        source: wire::WireError,
    },
    #[error(
        "batch {sequence}, event {index}: its node {node:?} is not the batch's node; \
         an agent speaks only for its own node"
    )]
    OtherNode {
        sequence: u64,
        index: usize,
        node: String,
    },
}

/// Whether `id` passes, as the error of `what` otherwise (the id is
/// shown escaped and cut short, so it cannot forge log lines).
fn checked_id(
    id: &str,
    problem: fn(&str) -> Option<String>,
    what: fn(String) -> BatchError,
) -> Result<(), BatchError> {
    match problem(id) {
        None => Ok(()),
        Some(why) => {
            let shown: String = id.chars().take(64).collect();
            Err(what(format!("{:?} {why}", shown)))
        }
    }
}

/// Give `ev` (and its evidence) the batch's node where it names none;
/// the node it names otherwise, when it is another.
fn claim_node(ev: &mut Event, node: &str) -> Result<(), String> {
    if ev.node.is_empty() {
        node.clone_into(&mut ev.node);
    } else if ev.node != node {
        return Err(ev.node.chars().take(64).collect());
    }
    if let Some(f) = ev.finding.as_mut() {
        for e in &mut f.evidence {
            claim_node(e, node)?;
        }
    }
    Ok(())
}

impl Received {
    /// Validate a batch and take its events as the model.
    pub fn from_batch(batch: Batch) -> Result<Self, BatchError> {
        checked_id(&batch.node_id, limits::node_id_problem, BatchError::NodeId)?;
        checked_id(
            &batch.stream_id,
            limits::stream_id_problem,
            BatchError::StreamId,
        )?;
        if batch.sequence == 0 {
            return Err(BatchError::ZeroSequence);
        }
        let sequence = batch.sequence;
        let events = batch
            .events
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                let mut ev = wire::from_wire(e).map_err(|source| BatchError::Event {
                    sequence,
                    index,
                    source,
                })?;
                claim_node(&mut ev, &batch.node_id).map_err(|node| BatchError::OtherNode {
                    sequence,
                    index,
                    node,
                })?;
                Ok(ev)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Received {
            node_id: batch.node_id,
            stream_id: batch.stream_id,
            sequence,
            sent_unix_nano: batch.sent_unix_nano,
            events,
        })
    }

    /// The delivery of the event at `index`.
    pub fn delivery(&self, index: usize) -> Delivery<'_> {
        Delivery {
            node_id: &self.node_id,
            stream_id: &self.stream_id,
            sequence: self.sequence,
            index,
            count: self.events.len(),
        }
    }

    /// Events lost that the agent reported in this batch.
    pub fn reported_drops(&self) -> u64 {
        self.events
            .iter()
            .filter(|e| e.kind == Kind::Loss)
            .filter_map(|e| e.loss.as_deref())
            .map(spyglass_proto::model::Loss::total)
            .fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spyglass_proto::v1::{self as w, event::Detail};

    fn batch(events: Vec<w::Event>) -> Batch {
        Batch {
            node_id: "n1".into(),
            sequence: 4,
            events,
            ..Batch::default()
        }
    }

    #[test]
    fn a_hostile_event_names_its_batch_and_place() {
        let good = w::Event {
            kind: w::EventKind::Exec as i32,
            ..w::Event::default()
        };
        let bad = w::Event {
            kind: w::EventKind::Connect as i32,
            detail: Some(Detail::Network(w::Network {
                local: Some(w::Endpoint {
                    addr: "<script>".into(),
                    port: 1,
                }),
                ..w::Network::default()
            })),
            ..w::Event::default()
        };
        let e = Received::from_batch(batch(vec![good.clone(), bad])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "batch 4, event 1: network.local: `<script>` is not an IP address (an agent sends textual IPv4 or IPv6)"
        );
        let r = Received::from_batch(batch(vec![good])).unwrap();
        assert_eq!((r.events.len(), r.delivery(0).count), (1, 1));
        let mut empty = batch(vec![]);
        empty.node_id.clear();
        assert_eq!(
            Received::from_batch(empty).unwrap_err().to_string(),
            "batch node_id \"\" is empty"
        );
    }

    #[test]
    fn ids_are_checked_and_shown_escaped() {
        let mut b = batch(vec![]);
        b.node_id = format!("evil\n{}", "x".repeat(300));
        let e = Received::from_batch(b).unwrap_err().to_string();
        assert!(e.starts_with("batch node_id \"evil\\nxxx"), "{e}");
        assert!(e.ends_with("bytes long; at most 253"), "{e}");
        assert!(!e.contains('\n'));
        let mut b = batch(vec![]);
        b.stream_id = "../../etc".into();
        let e = Received::from_batch(b).unwrap_err().to_string();
        assert_eq!(
            e,
            "batch stream_id \"../../etc\" holds '.', which is not allowed"
        );
    }

    #[test]
    fn an_event_takes_the_batch_node_and_may_not_name_another() {
        let ev = |node: &str| w::Event {
            kind: w::EventKind::Exec as i32,
            node: node.into(),
            ..w::Event::default()
        };
        let r = Received::from_batch(batch(vec![ev(""), ev("n1")])).unwrap();
        assert!(r.events.iter().all(|e| e.node == "n1"));
        let e = Received::from_batch(batch(vec![ev("n1"), ev("n2")])).unwrap_err();
        assert_eq!(
            e,
            BatchError::OtherNode {
                sequence: 4,
                index: 1,
                node: "n2".into()
            }
        );
        let finding = w::Event {
            kind: w::EventKind::Finding as i32,
            detail: Some(Detail::Finding(w::Finding {
                rule_id: "process.shell".into(),
                evidence: vec![ev("n2")],
                ..w::Finding::default()
            })),
            ..w::Event::default()
        };
        assert!(matches!(
            Received::from_batch(batch(vec![finding])),
            Err(BatchError::OtherNode { index: 0, .. })
        ));
    }

    #[test]
    fn reported_drops_add_up_without_overflow() {
        let loss = |n: u64| w::Event {
            kind: w::EventKind::Loss as i32,
            detail: Some(Detail::Loss(w::Loss {
                exec: n,
                spool_dropped: 1,
                ..w::Loss::default()
            })),
            ..w::Event::default()
        };
        let r = Received::from_batch(batch(vec![loss(2), loss(3)])).unwrap();
        assert_eq!(r.reported_drops(), 7);
        let r = Received::from_batch(batch(vec![loss(u64::MAX), loss(3)])).unwrap();
        assert_eq!(r.reported_drops(), u64::MAX);
    }
}
