//! The positions topic: each agent stream's last committed batch, written
//! in the same transaction as the batch's records, and read back
//! (read_committed) when the collector starts, so the dedupe ledger knows
//! what Kafka already holds. Keyed `node/stream`, so a compacted topic
//! keeps the last position of each stream.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
};
use serde::{Deserialize, Serialize};

use super::Settings;

/// The high-water mark of one agent stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub node: String,
    pub stream: String,
    pub sequence: u64,
    /// Where the stream's records end in each partition it wrote to (the
    /// offset after its last record): recovery reads on from there.
    #[serde(default)]
    pub tails: Vec<Tail>,
}

/// The offset after a stream's last record in one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

impl Position {
    /// A record of the stream was delivered at `next - 1`.
    pub fn advance(&mut self, topic: &str, partition: i32, next: i64) {
        match self
            .tails
            .iter_mut()
            .find(|t| t.topic == topic && t.partition == partition)
        {
            Some(t) => t.next = t.next.max(next),
            None => self.tails.push(Tail {
                topic: topic.to_owned(),
                partition,
                next,
            }),
        }
    }

    /// The record's key: the dedupe key of the ledger.
    pub fn key(&self) -> String {
        crate::ledger::space(&self.node, &self.stream)
    }

    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The partition of the positions topic that claims and transaction
/// marks go to: one partition, so they are in one order (`gate.rs`).
pub const CLAIMS_PARTITION: i32 = 0;

/// The first record of a transaction that commits batches: the gate
/// reads the claims partition up to it. Keyed `OWNER#txn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The replica's transactional.id.
    pub txn: String,
}

impl Mark {
    pub fn key(&self) -> String {
        format!("{}#txn", self.txn)
    }

    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A replica took a node's streams (a new agent stream reached it): a
/// batch of the node a replica received under an earlier claim is not
/// committed after it (`gate.rs`). Written to [`CLAIMS_PARTITION`],
/// keyed `NODE#claim` (node ids hold no `#`, so it never shares a key
/// with a position, and compaction keeps the last claim).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The node id.
    pub claim: String,
    /// The claiming replica's transactional.id.
    pub owner: String,
}

impl Claim {
    pub fn key(&self) -> String {
        format!("{}#claim", self.claim)
    }

    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A record of the positions topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Position(Position),
    Claim(Claim),
    Mark(Mark),
}

impl Entry {
    /// `None`: not a record the collector writes.
    pub fn parse(payload: &[u8]) -> Option<Entry> {
        if let Ok(p) = serde_json::from_slice::<Position>(payload) {
            return Some(Entry::Position(p));
        }
        if let Ok(c) = serde_json::from_slice::<Claim>(payload) {
            return Some(Entry::Claim(c));
        }
        serde_json::from_slice::<Mark>(payload)
            .ok()
            .map(Entry::Mark)
    }
}

/// The highest position per stream among `group`'s batches.
pub fn of_group<'a>(batches: impl Iterator<Item = (&'a str, &'a str, u64)>) -> Vec<Position> {
    let mut high: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (node, stream, seq) in batches {
        let h = high.entry((node, stream)).or_default();
        *h = (*h).max(seq);
    }
    high.into_iter()
        .map(|((node, stream), sequence)| Position {
            node: node.to_owned(),
            stream: stream.to_owned(),
            sequence,
            tails: Vec::new(),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PositionsError {
    #[error("cannot create a Kafka consumer: {0}")]
    Client(KafkaError),
    #[error("cannot read the metadata of topic {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error(
        "topic {0} does not exist: create it (for example `kafka-topics.sh --create --topic {0} \
         --config cleanup.policy=compact`); the collector does not create topics"
    )]
    Missing(String),
    #[error("reading topic {topic}: {source}")]
    Read { topic: String, source: KafkaError },
    #[error("reading topic {0} took over {1:?}; retrying")]
    Slow(String, Duration),
}

/// Logs a consumer's errors, but the end of a partition (which reading
/// to the end asks for).
pub struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::warn!(%error, reason, "kafka consumer error");
        }
    }
}

impl ConsumerContext for Quiet {}

/// A consumer of the site's settings (TLS, SASL) that reads committed
/// records only.
/// `reset`: where a start offset past the end goes (`earliest` or
/// `latest`).
pub fn consumer(settings: &Settings, reset: &str) -> Result<BaseConsumer<Quiet>, PositionsError> {
    client(settings, reset, "read_committed")
}

/// A client of the site's settings reading at `isolation`
/// (`read_committed` or `read_uncommitted`; a watermark query answers at
/// the client's isolation too).
fn client(
    settings: &Settings,
    reset: &str,
    isolation: &str,
) -> Result<BaseConsumer<Quiet>, PositionsError> {
    let mut c = ClientConfig::new();
    // these reads end at the partition's end: a fetch there waits this
    // long for new records (librdkafka's default, 500 ms, made every
    // refresh of a node take over a second); the site's file may set it
    c.set("fetch.wait.max.ms", "10");
    for (k, v) in &settings.extra {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &settings.brokers)
        .set(
            "group.id",
            format!("{}-positions", settings.transactional_id),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", reset)
        .create_with_context(Quiet)
        .map_err(PositionsError::Client)
}

/// The end of `part` of `topic` counting the records of transactions
/// still open or whose commit marker has not reached it yet (its high
/// watermark).
fn written_end(settings: &Settings, topic: &str, part: i32) -> Result<i64, PositionsError> {
    let c = client(settings, "earliest", "read_uncommitted")?;
    c.fetch_watermarks(topic, part, Duration::from_secs(10))
        .map(|(_, high)| high)
        .map_err(|source| PositionsError::Read {
            topic: topic.to_owned(),
            source,
        })
}

/// The partitions of `topic`, or why not.
pub fn partitions(
    c: &BaseConsumer<Quiet>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, PositionsError> {
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| PositionsError::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| PositionsError::Missing(topic.to_owned()))?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(PositionsError::Missing(topic.to_owned()));
    }
    Ok(t.partitions()
        .iter()
        .map(rdkafka::metadata::MetadataPartition::id)
        .collect())
}

/// The positions partition of a node's streams (FNV-1a of the node id):
/// chosen by the collector, not the client's partitioner, so a replica
/// reads one partition to learn where a node's streams stand.
pub fn partition_of(node: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1).unsigned_abs()) as i32
}

/// Every stream's last committed position (blocking: run it off the
/// runtime), and the partition count. A record that is not a position is
/// skipped and counted.
pub fn read(settings: &Settings) -> Result<(Vec<Position>, u64), PositionsError> {
    let c = consumer(settings, "earliest")?;
    let parts = partitions(&c, &settings.positions_topic, Duration::from_secs(10))?;
    read_from(&c, &settings.positions_topic, &parts, 0, |_| true)
}

/// The last committed positions of `node`'s streams, read from its one
/// partition (blocking). With `claim` (the offset of this replica's
/// claim of the node), first read the claims partition past it: under
/// read_committed that waits until every transaction that began before
/// the claim ended, so what they committed of the node is read
/// (`gate.rs`). Such a transaction's commit marker may reach the claims
/// partition before the node's (Kafka writes each partition's marker on
/// its own), so the node's partition is then read up to where it was
/// written when the claims read ended, not only to its committed end.
pub fn read_node(
    settings: &Settings,
    node: &str,
    partitions: i32,
    claim: Option<i64>,
) -> Result<Vec<Position>, PositionsError> {
    let topic = &settings.positions_topic;
    let part = partition_of(node, partitions);
    let mut end = 0;
    if let Some(claim) = claim {
        let c = consumer(settings, "earliest")?;
        read_past(&c, topic, claim)?;
        end = written_end(settings, topic, part)?;
    }
    let c = consumer(settings, "earliest")?;
    read_from(&c, topic, &[part], end, |p| p.node == node).map(|(marks, _)| marks)
}

/// Read the claims partition from `offset` until the read passed it.
fn read_past(c: &BaseConsumer<Quiet>, topic: &str, offset: i64) -> Result<(), PositionsError> {
    let read = |source| PositionsError::Read {
        topic: topic.to_owned(),
        source,
    };
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, CLAIMS_PARTITION, Offset::Offset(offset))
        .map_err(read)?;
    c.assign(&list).map_err(read)?;
    read_claims_to(c, topic, offset + 1, |_, _| {})
}

/// Read the claims partition on until everything before offset `end`
/// was read (under read_committed: until every transaction with a record
/// there before `end` ended), handing each claim and its offset to
/// `claim`. At most 120 s (the brokers abort a transaction after 60 s).
pub fn read_claims_to(
    c: &BaseConsumer<Quiet>,
    topic: &str,
    end: i64,
    mut claim: impl FnMut(Claim, i64),
) -> Result<(), PositionsError> {
    let limit = Duration::from_secs(120);
    let start = Instant::now();
    while next_offset(c, topic, CLAIMS_PARTITION).is_none_or(|n| n < end) {
        if start.elapsed() > limit {
            return Err(PositionsError::Slow(topic.to_owned(), limit));
        }
        match c.poll(Duration::from_millis(10)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(source)) => {
                return Err(PositionsError::Read {
                    topic: topic.to_owned(),
                    source,
                })
            }
            Some(Ok(m)) => {
                if let Some(Entry::Claim(c)) = m.payload().and_then(Entry::parse) {
                    claim(c, m.offset());
                }
            }
        }
    }
    Ok(())
}

/// Where `c` will read `part` of `topic` next (`None`: not known yet).
pub fn next_offset(c: &BaseConsumer<Quiet>, topic: &str, part: i32) -> Option<i64> {
    let list = c.position().ok()?;
    match list.find_partition(topic, part)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Read `parts` of `topic` from the beginning to their end (committed
/// records only), and each at least up to offset `end` (under
/// read_committed: until every transaction with a record there before
/// `end` ended): the last position of each stream `keep` takes.
fn read_from(
    c: &BaseConsumer<Quiet>,
    topic: &str,
    parts: &[i32],
    end: i64,
    keep: impl Fn(&Position) -> bool,
) -> Result<(Vec<Position>, u64), PositionsError> {
    let read = |source| PositionsError::Read {
        topic: topic.to_owned(),
        source,
    };
    // read to each partition's end (EOF): not to its watermark, which a
    // broker may answer wrongly (Tansu 0.6 does, under an open
    // transaction and for batches of several records)
    let mut list = TopicPartitionList::new();
    let mut open = Vec::new();
    for &p in parts {
        // offset 0, not Beginning: no offset lookup first (a compacted
        // partition that starts later is reset to its start: earliest)
        list.add_partition_offset(topic, p, Offset::Offset(0))
            .map_err(read)?;
        open.push(p);
    }
    if open.is_empty() {
        return Ok((Vec::new(), 0));
    }
    c.assign(&list).map_err(read)?;
    let mut marks: HashMap<(String, String), Position> = HashMap::new();
    let mut skipped = 0;
    let limit = Duration::from_secs(120);
    let start = Instant::now();
    // partitions read to their committed end, waiting to pass `end`
    let mut ended = Vec::new();
    while !open.is_empty() {
        if start.elapsed() > limit {
            return Err(PositionsError::Slow(topic.to_owned(), limit));
        }
        // (no position yet: nothing read, none past the start)
        open.retain(|&p| !(ended.contains(&p) && next_offset(c, topic, p).unwrap_or(0) >= end));
        if open.is_empty() {
            break;
        }
        match c.poll(Duration::from_millis(10)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => ended.push(p),
            Some(Err(source)) => return Err(read(source)),
            Some(Ok(m)) => match m.payload().and_then(Entry::parse) {
                Some(Entry::Claim(_) | Entry::Mark(_)) => {}
                Some(Entry::Position(pos)) if keep(&pos) => {
                    let key = (pos.node.clone(), pos.stream.clone());
                    match marks.get(&key) {
                        Some(had) if had.sequence >= pos.sequence => {}
                        _ => {
                            marks.insert(key, pos);
                        }
                    }
                }
                Some(_) => {}
                None => skipped += 1,
            },
        }
    }
    Ok((marks.into_values().collect(), skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_keeps_each_streams_highest_batch() {
        let got = of_group(
            [
                ("n1", "a", 3),
                ("n1", "a", 5),
                ("n2", "a", 1),
                ("n1", "b", 2),
            ]
            .into_iter(),
        );
        let keys: Vec<_> = got.iter().map(|p| (p.key(), p.sequence)).collect();
        assert_eq!(
            keys,
            [
                ("n1/a".to_owned(), 5),
                ("n1/b".to_owned(), 2),
                ("n2/a".to_owned(), 1)
            ]
        );
        let back: Position = serde_json::from_slice(&got[0].value()).unwrap();
        assert_eq!(back, got[0]);
    }

    #[test]
    fn a_node_keeps_its_partition() {
        // FNV-1a: fixed for every collector build and replica
        assert_eq!(partition_of("", 16), (0x811c_9dc5u32 % 16) as i32);
        let p = partition_of("node-a", 16);
        assert!((0..16).contains(&p));
        assert_eq!(p, partition_of("node-a", 16));
        let spread: std::collections::BTreeSet<i32> = (0..100)
            .map(|i| partition_of(&format!("node-{i}"), 16))
            .collect();
        assert!(spread.len() > 8, "{spread:?}");
        assert_eq!(partition_of("x", 0), 0);
    }
}
