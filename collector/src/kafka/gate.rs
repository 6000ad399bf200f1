//! Fencing: a replica commits a node's batch only under the claim it
//! arrived under.
//!
//! When an agent stream reaches a replica, the replica first commits a
//! claim of the node ([`positions::Claim`]) to the positions topic's
//! claims partition, then reads that partition past its claim, and only
//! then the node's positions (`refresh`). Each batch remembers the claim
//! it arrived under. A transaction that commits batches first writes a
//! mark ([`positions::Mark`]) to the claims partition and reads it up to
//! the mark: under read_committed that read ends only once every
//! transaction whose first record there is earlier ended. A batch whose node was claimed
//! again since its own claim (by another replica, or by a newer stream
//! here) is fenced: left out of the transaction and refused to its agent,
//! which resends it where it is now.
//!
//! Why that leaves no duplicate when an agent moved from replica A to B
//! while A still held a batch: A's mark and B's claim are in one
//! partition. If A's mark comes first, B's read past its claim waits for
//! A's transaction to end and B then reads what it committed; if B's
//! claim comes first, A's gate reads it and A leaves the batch out. One
//! partition keeps every wait pointing at an earlier offset, so two
//! transactions never wait for each other.
use std::collections::HashMap;

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Offset, TopicPartitionList,
};

use super::{
    positions::{self, PositionsError, Quiet},
    Settings,
};

/// A read_committed tail of the positions topic: the last claim of each
/// node.
pub struct Gate {
    consumer: BaseConsumer<Quiet>,
    topic: String,
    /// Per node, the offset of its last claim read.
    latest: HashMap<String, i64>,
}

impl Gate {
    /// A tail of the claims partition from its start (offset 0, not
    /// the end: Tansu answers the end wrongly, and a compacted partition
    /// holds a few records per node and replica).
    pub fn new(s: &Settings) -> Result<Gate, PositionsError> {
        let consumer = positions::consumer(s, "earliest")?;
        let topic = s.positions_topic.clone();
        let mut list = TopicPartitionList::new();
        let read = |source| PositionsError::Read {
            topic: topic.clone(),
            source,
        };
        list.add_partition_offset(&topic, positions::CLAIMS_PARTITION, Offset::Offset(0))
            .map_err(read)?;
        consumer.assign(&list).map_err(read)?;
        Ok(Gate {
            consumer,
            topic,
            latest: HashMap::new(),
        })
    }

    /// Read the claims partition up to `mark` (the transaction's first
    /// record there); then, per batch of `batches` ((node, the claim it
    /// arrived under)), whether its node was claimed again since.
    /// Blocking.
    pub fn fenced(
        &mut self,
        mark: i64,
        batches: &[(&str, i64)],
    ) -> Result<Vec<bool>, PositionsError> {
        let latest = &mut self.latest;
        positions::read_claims_to(&self.consumer, &self.topic, mark, |c, offset| {
            let at = latest.entry(c.claim).or_insert(offset);
            *at = (*at).max(offset);
        })?;
        Ok(judge(&self.latest, batches))
    }
}

/// Per batch of `batches` ((node, the claim it arrived under)): its
/// node's last claim is newer than its own.
fn judge(latest: &HashMap<String, i64>, batches: &[(&str, i64)]) -> Vec<bool> {
    batches
        .iter()
        .map(|(node, claim)| latest.get(*node).is_some_and(|&l| l > *claim))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_fenced_only_by_a_later_claim_of_its_node() {
        let latest: HashMap<String, i64> = [("a".to_owned(), 10), ("b".to_owned(), 4)].into();
        let got = judge(&latest, &[("a", 7), ("a", 10), ("b", 4), ("c", 1)]);
        assert_eq!(got, [true, false, false, false]);
        assert_eq!(judge(&latest, &[("b", 3)]), [true]);
    }
}
