//! What a collector that died mid-transaction left in Kafka.
//!
//! On Apache Kafka an aborted transaction's records are never seen by a
//! read_committed consumer, so this finds nothing. A broker that lets
//! them through (Tansu 0.6 does: its fetch lists no aborted
//! transactions) shows some records of batches the agents will resend.
//! At start, after the positions are read, each stream's partitions are
//! read on from where its last committed records ended (the position's
//! `tails`), and every record past the stream's position is placed by its
//! headers: a batch found whole raises the stream's mark (its resend is a
//! duplicate), and the first batch found torn is remembered with the
//! lines present, so its resend produces only the missing ones.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::Consumer,
    error::KafkaError,
    message::{BorrowedMessage, Headers},
    Message, Offset, TopicPartitionList,
};

use super::{
    positions::{self, Position, PositionsError},
    Settings,
};

/// Record headers: the agent stream, batch and line of a record.
pub const NODE: &str = "sg.node";
pub const STREAM: &str = "sg.stream";
pub const SEQUENCE: &str = "sg.seq";
pub const INDEX: &str = "sg.index";
pub const COUNT: &str = "sg.count";

/// A batch of which Kafka holds some lines only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub node: String,
    pub stream: String,
    pub sequence: u64,
    pub present: BTreeSet<usize>,
}

/// What the start hands to the ledger: each stream's mark, and the torn
/// batches.
#[derive(Debug, Default)]
pub struct Recovered {
    pub marks: Vec<Position>,
    pub partial: Vec<Partial>,
    /// Whole batches found past their stream's position.
    pub whole: usize,
}

/// One record's place in its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    node: String,
    stream: String,
    sequence: u64,
    index: usize,
    count: usize,
}

fn place(m: &BorrowedMessage<'_>) -> Option<Place> {
    let h = m.headers()?;
    let get = |key: &str| {
        h.iter()
            .find(|x| x.key == key)
            .and_then(|x| x.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    Some(Place {
        node: get(NODE)?,
        stream: get(STREAM)?,
        sequence: get(SEQUENCE)?.parse().ok()?,
        index: get(INDEX)?.parse().ok()?,
        count: get(COUNT)?.parse().ok()?,
    })
}

/// A batch's line count, and the lines of it found.
type Lines = (usize, BTreeSet<usize>);

/// Raise each stream's mark over the whole batches found past it, and
/// return the first torn one per stream.
fn fold(marks: &mut [Position], found: Vec<Place>) -> (Vec<Partial>, usize) {
    // per stream: per batch, (its count, the lines found)
    let mut seen: HashMap<(String, String), BTreeMap<u64, Lines>> = HashMap::new();
    for p in found {
        let b = seen
            .entry((p.node, p.stream))
            .or_default()
            .entry(p.sequence)
            .or_insert((p.count, BTreeSet::new()));
        if p.index < b.0 {
            b.1.insert(p.index);
        }
    }
    let mut torn = Vec::new();
    let mut whole = 0;
    for m in marks.iter_mut() {
        let Some(batches) = seen.remove(&(m.node.clone(), m.stream.clone())) else {
            continue;
        };
        let mut next = m.sequence + 1;
        while let Some((count, lines)) = batches.get(&next) {
            if lines.len() == *count {
                m.sequence = next;
                next += 1;
                whole += 1;
                continue;
            }
            torn.push(Partial {
                node: m.node.clone(),
                stream: m.stream.clone(),
                sequence: next,
                present: lines.clone(),
            });
            break;
        }
    }
    (torn, whole)
}

/// Read on from every stream's tails (blocking: run it off the runtime).
/// Nothing is read unless the broker needs it (`--kafka-recover-aborted`).
pub fn scan(settings: &Settings, mut marks: Vec<Position>) -> Result<Recovered, PositionsError> {
    if !settings.recover_aborted {
        return Ok(Recovered {
            marks,
            ..Recovered::default()
        });
    }
    let read = |topic: &str, source: KafkaError| PositionsError::Read {
        topic: topic.to_owned(),
        source,
    };
    // where to start in each partition: the earliest tail of any stream
    let mut from: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for t in marks.iter().flat_map(|m| &m.tails) {
        let at = from.entry((t.topic.clone(), t.partition)).or_insert(t.next);
        *at = (*at).min(t.next);
    }
    // a tail past the end (nothing more was written) starts at the end;
    // each partition is read to its EOF, not to its watermark (which
    // Tansu 0.6 answers wrongly)
    let c = positions::consumer(settings, "latest")?;
    let mut list = TopicPartitionList::new();
    let mut open = Vec::new();
    for ((topic, partition), next) in from {
        list.add_partition_offset(&topic, partition, Offset::Offset(next))
            .map_err(|e| read(&topic, e))?;
        open.push((topic, partition));
    }
    if open.is_empty() {
        return Ok(Recovered {
            marks,
            ..Recovered::default()
        });
    }
    c.assign(&list).map_err(|e| read("(recovery)", e))?;
    let streams: BTreeMap<(&str, &str), u64> = marks
        .iter()
        .map(|m| ((m.node.as_str(), m.stream.as_str()), m.sequence))
        .collect();
    let mut found = Vec::new();
    let limit = Duration::from_secs(120);
    let start = Instant::now();
    while !open.is_empty() {
        if start.elapsed() > limit {
            return Err(PositionsError::Slow("(recovery)".into(), limit));
        }
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // the EOF names no topic: a partition number may be in
                // two topics, so wait for both
                if let Some(i) = open.iter().position(|(_, q)| *q == p) {
                    open.remove(i);
                }
            }
            Some(Err(e)) => return Err(read("(recovery)", e)),
            Some(Ok(m)) => {
                let Some(p) = place(&m) else { continue };
                let past = streams
                    .get(&(p.node.as_str(), p.stream.as_str()))
                    .is_some_and(|&high| p.sequence > high);
                if past {
                    found.push(p);
                }
            }
        }
    }
    let (partial, whole) = fold(&mut marks, found);
    Ok(Recovered {
        marks,
        partial,
        whole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(seq: u64) -> Position {
        Position {
            node: "n".into(),
            stream: "s".into(),
            sequence: seq,
            tails: Vec::new(),
        }
    }

    fn at(sequence: u64, index: usize, count: usize) -> Place {
        Place {
            node: "n".into(),
            stream: "s".into(),
            sequence,
            index,
            count,
        }
    }

    #[test]
    fn whole_batches_raise_the_mark_and_the_first_torn_one_is_kept() {
        let mut marks = vec![mark(4)];
        // batch 5 whole (3 lines, one twice), 6 torn (2 of 4), 7 beyond it
        let found = vec![
            at(5, 0, 3),
            at(5, 1, 3),
            at(5, 1, 3),
            at(5, 2, 3),
            at(6, 0, 4),
            at(6, 2, 4),
            at(7, 0, 1),
        ];
        let (torn, whole) = fold(&mut marks, found);
        assert_eq!((marks[0].sequence, whole), (5, 1));
        assert_eq!(
            torn,
            [Partial {
                node: "n".into(),
                stream: "s".into(),
                sequence: 6,
                present: [0, 2].into(),
            }]
        );
    }

    #[test]
    fn nothing_past_the_mark_changes_nothing() {
        let mut marks = vec![mark(4)];
        assert_eq!(fold(&mut marks, Vec::new()), (Vec::new(), 0));
        // a gap: batch 6 without 5 is not taken as written
        assert_eq!(fold(&mut marks, vec![at(6, 0, 1)]), (Vec::new(), 0));
        assert_eq!(marks[0].sequence, 4);
    }
}
