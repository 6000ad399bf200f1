//! One stream's batches between their write and their ack.
//!
//! A stream writes batch N+1 while the fdatasync covering batch N is
//! still running; each batch waits here, in arrival order, for the sync
//! that covers its write generation. Acks leave strictly in order: a
//! batch is acked only when it and every batch before it are on disk.
//! A refused batch (bad input, failed write) ends the stream after the
//! acks of the batches before it; a failed sync ends it at once, and
//! nothing after it is acked. At most `max` batches wait per stream: the
//! stream is not read further until the oldest is acked, so a fast
//! client is held back by gRPC flow control, not buffered. An entry
//! holds no events (they are written already), only what its ack needs.
use std::collections::VecDeque;

use crate::durable::Failure;

/// A batch waiting for its ack, or the refusal that ends the stream.
#[derive(Debug)]
enum Entry<T, E> {
    Written { gen: u64, item: T },
    Refused(E),
}

/// What to send next, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready<T, E> {
    /// On disk: ack it.
    Ack(T),
    /// Refused when it arrived; the stream ends after it.
    Refused(E),
    /// The sync covering this batch failed: nothing from here on is
    /// acked; the stream ends.
    SyncFailed { item: T, error: String },
    /// Kafka left this batch out (its node moved to a newer stream):
    /// nothing from here on is acked; the stream ends.
    Fenced { item: T, error: String },
}

/// The stream's waiting batches, oldest first.
#[derive(Debug)]
pub struct InFlight<T, E> {
    queue: VecDeque<Entry<T, E>>,
    max: usize,
    /// No more batches are taken (the client closed, or one was refused).
    ended: bool,
}

impl<T, E> InFlight<T, E> {
    pub fn new(max: usize) -> Self {
        InFlight {
            queue: VecDeque::new(),
            max: max.max(1),
            ended: false,
        }
    }

    /// Whether the stream may be read for another batch.
    /// Batches taken and not yet answered (each owes one ack).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn has_room(&self) -> bool {
        !self.ended && self.queue.len() < self.max
    }

    /// A batch written (or found a duplicate) at generation `gen`.
    pub fn written(&mut self, gen: u64, item: T) {
        debug_assert!(!self.ended, "a batch taken after the stream ended");
        self.queue.push_back(Entry::Written { gen, item });
    }

    /// A batch refused: the stream takes nothing more.
    pub fn refuse(&mut self, error: E) {
        self.queue.push_back(Entry::Refused(error));
        self.ended = true;
    }

    /// The client sent its last batch.
    pub fn close(&mut self) {
        self.ended = true;
    }

    /// Ended and nothing left to send.
    pub fn done(&self) -> bool {
        self.ended && self.queue.is_empty()
    }

    /// The generation whose sync the oldest batch waits for (`None`:
    /// nothing waits on a sync).
    pub fn waiting_on(&self) -> Option<u64> {
        match self.queue.front() {
            Some(Entry::Written { gen, .. }) => Some(*gen),
            _ => None,
        }
    }

    /// Take what can be sent now, in order, given `outcome` of a
    /// generation and its batch (`None`: not synced yet). Stops at the
    /// first batch not yet synced; a failed sync or a refusal clears the
    /// rest and ends the stream.
    pub fn take_ready(
        &mut self,
        outcome: impl Fn(u64, &T) -> Option<Result<(), Failure>>,
    ) -> Vec<Ready<T, E>> {
        let mut ready = Vec::new();
        while let Some(front) = self.queue.front() {
            let result = match front {
                Entry::Written { gen, item } => match outcome(*gen, item) {
                    None => break,
                    Some(r) => Some(r),
                },
                Entry::Refused(_) => None,
            };
            let entry = self.queue.pop_front().expect("front exists");
            match (entry, result) {
                (Entry::Written { item, .. }, Some(Ok(()))) => ready.push(Ready::Ack(item)),
                (Entry::Written { item, .. }, Some(Err(failure))) => {
                    ready.push(match failure {
                        Failure::Sync(error) => Ready::SyncFailed { item, error },
                        Failure::Fenced(error) => Ready::Fenced { item, error },
                    });
                    self.queue.clear();
                    self.ended = true;
                }
                (Entry::Refused(e), _) => ready.push(Ready::Refused(e)),
                (Entry::Written { .. }, None) => unreachable!("an unsynced batch is not taken"),
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::SyncState;

    type R = Ready<u64, &'static str>;

    fn sync(s: &SyncState, gen: u64) -> Option<Result<(), Failure>> {
        Some(s.outcome(gen)?.map_err(Failure::Sync))
    }

    #[test]
    fn acks_leave_in_order_only_once_synced() {
        let mut f: InFlight<u64, &str> = InFlight::new(3);
        let mut s = SyncState::default();
        // batches 1..3 written at generations 10, 11, 14 (others between)
        f.written(10, 1);
        f.written(11, 2);
        assert!(f.has_room());
        f.written(14, 3);
        assert!(!f.has_room(), "the cap holds the stream back");
        assert_eq!(f.waiting_on(), Some(10));
        assert_eq!(f.take_ready(|g, _| sync(&s, g)), Vec::<R>::new());
        // a sync covering 11 (not 14) acks 1 and 2, in order
        s.cover(11, Ok(()));
        assert_eq!(f.take_ready(|g, _| sync(&s, g)), [R::Ack(1), R::Ack(2)]);
        assert_eq!(f.waiting_on(), Some(14));
        assert!(f.has_room());
        // a duplicate waits for the last generation written (here 14)
        f.written(14, 2);
        s.cover(13, Ok(()));
        assert_eq!(f.take_ready(|g, _| sync(&s, g)), Vec::<R>::new());
        s.cover(14, Ok(()));
        assert_eq!(f.take_ready(|g, _| sync(&s, g)), [R::Ack(3), R::Ack(2)]);
        assert_eq!(f.waiting_on(), None);
        f.close();
        assert!(f.done() && !f.has_room());
    }

    #[test]
    fn a_failed_sync_acks_nothing_after_it() {
        let mut f: InFlight<u64, &str> = InFlight::new(8);
        let mut s = SyncState::default();
        for (gen, seq) in [(1, 1), (2, 2), (3, 3), (5, 4)] {
            f.written(gen, seq);
        }
        s.cover(1, Ok(()));
        s.cover(3, Err("EIO".into()));
        // 4's generation (5) syncs fine later: still not acked
        s.cover(5, Ok(()));
        assert_eq!(
            f.take_ready(|g, _| sync(&s, g)),
            [
                R::Ack(1),
                R::SyncFailed {
                    item: 2,
                    error: "EIO".into()
                }
            ]
        );
        assert!(f.done(), "the stream ends");
        assert!(!f.has_room());
    }

    #[test]
    fn a_fenced_batch_is_refused_and_nothing_after_it_acked() {
        let mut f: InFlight<u64, &str> = InFlight::new(8);
        for (gen, seq) in [(1, 1), (2, 2), (3, 3)] {
            f.written(gen, seq);
        }
        let outcome = |g: u64, _: &u64| match g {
            2 => Some(Err(Failure::Fenced("moved".into()))),
            _ => Some(Ok(())),
        };
        assert_eq!(
            f.take_ready(outcome),
            [
                R::Ack(1),
                R::Fenced {
                    item: 2,
                    error: "moved".into()
                }
            ]
        );
        assert!(f.done(), "the stream ends");
    }

    #[test]
    fn a_refusal_comes_after_the_acks_before_it() {
        let mut f: InFlight<u64, &str> = InFlight::new(8);
        let mut s = SyncState::default();
        f.written(1, 1);
        f.written(2, 2);
        f.refuse("disk full");
        assert!(!f.has_room(), "nothing is read after a refusal");
        s.cover(1, Ok(()));
        assert_eq!(f.take_ready(|g, _| sync(&s, g)), [R::Ack(1)]);
        assert!(!f.done());
        s.cover(2, Ok(()));
        assert_eq!(
            f.take_ready(|g, _| sync(&s, g)),
            [R::Ack(2), R::Refused("disk full")]
        );
        assert!(f.done());
        // a refusal with nothing before it is sent at once
        let mut f: InFlight<u64, &str> = InFlight::new(1);
        f.refuse("bad batch");
        assert_eq!(f.waiting_on(), None);
        assert_eq!(f.take_ready(|_, _| None), [R::Refused("bad batch")]);
    }
}
