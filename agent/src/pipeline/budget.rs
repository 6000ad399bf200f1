//! Byte bounds on the queues between stages. A channel bounded by batch
//! count holds anything from 64 small batches to 64 of 1024 exec events
//! with long argv; a [`Budget`] bounds what is queued by its approximate
//! heap size instead. A batch travels as a [`Metered`] value: making one
//! waits while the queue is over its bound, and dropping it (once the
//! receiver has handled the batch) gives the bytes back. A sender that
//! waits holds the ring buffer's reader back, so overload still ends in
//! the kernel's counted loss, never in unbounded agent memory.
use std::{
    mem::size_of,
    ops::{Deref, DerefMut},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

use super::decode::RawEvent;
use crate::event::Event;

/// Bytes queued between the reader and the pipeline at most.
pub const RECORDS_BYTES: usize = 2 << 20;
/// Bytes queued from the pipeline to each sink at most.
pub const SINK_BYTES: usize = 2 << 20;

#[derive(Debug)]
pub struct Budget {
    max: usize,
    /// Bytes counted in and not given back yet.
    used: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Budget {
            max,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Count `n` bytes in, first waiting while they do not fit. An empty
    /// queue always admits (one batch bigger than the bound still passes).
    pub fn take(&self, n: usize) {
        let mut used = self.lock();
        while *used > 0 && *used + n > self.max {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += n;
    }

    /// The receiver handled `n` bytes.
    pub fn give(&self, n: usize) {
        let mut used = self.lock();
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }

    /// Bytes queued now.
    #[cfg(test)]
    fn used(&self) -> usize {
        *self.lock()
    }
}

/// A batch counted against a budget until it is dropped. Dropping it is
/// what gives the bytes back, so every path that ends a batch (handled,
/// or dropped with a closed channel) frees its room.
#[derive(Debug)]
pub struct Metered<T> {
    item: T,
    bytes: usize,
    budget: Arc<Budget>,
}

impl<T> Metered<T> {
    /// Wait for room for `bytes`, then count them.
    pub fn new(item: T, bytes: usize, budget: &Arc<Budget>) -> Self {
        budget.take(bytes);
        Metered {
            item,
            bytes,
            budget: budget.clone(),
        }
    }
}

impl<T> Metered<T> {
    /// The bytes it counts against its budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A batch of events on its way to a sink.
pub type EventBatch = Metered<Vec<Event>>;

impl<T> Metered<T> {
    /// Not counted against any bound (tests).
    #[cfg(test)]
    pub fn unbounded(item: T) -> Self {
        Metered::new(item, 0, &Arc::new(Budget::new(usize::MAX)))
    }
}

impl<T> Deref for Metered<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.item
    }
}

impl<T> DerefMut for Metered<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.item
    }
}

impl<T> Drop for Metered<T> {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// Approximate heap size of a batch of kernel records.
pub fn records_bytes(batch: &[RawEvent]) -> usize {
    batch
        .iter()
        .map(|r| {
            size_of::<RawEvent>()
                + match r {
                    RawEvent::Exec(e) => e.header.comm.len() + e.filename.len() + e.argv.byte_len(),
                    RawEvent::Exit(e) => e.header.comm.len(),
                    RawEvent::Fork(e) => e.header.comm.len(),
                    RawEvent::Net(e) => e.header.comm.len(),
                    RawEvent::Oom(e) => e.header.comm.len(),
                }
        })
        .sum()
}

/// Approximate heap size of a batch of events (shared container metadata
/// counted once per event as a pointer: it is shared).
pub fn events_bytes(batch: &[Event]) -> usize {
    batch.iter().map(event_bytes).sum()
}

fn event_bytes(ev: &Event) -> usize {
    let process = ev
        .process
        .as_ref()
        .map_or(0, |p| p.exe.len() + p.comm.len() + p.argv.byte_len());
    let evidence = ev
        .finding
        .as_ref()
        .map_or(0, |f| f.summary.len() + events_bytes(&f.evidence));
    size_of::<Event>() + ev.ancestors.len() * 64 + process + evidence
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[test]
    fn a_full_queue_holds_the_sender_until_the_receiver_gives_back() {
        let b = Arc::new(Budget::new(100));
        b.take(60);
        b.take(30);
        assert_eq!(b.used(), 90);
        let sender = {
            let b = b.clone();
            std::thread::spawn(move || b.take(20))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!sender.is_finished(), "110 > 100: the sender waits");
        b.give(60);
        sender.join().unwrap();
        assert_eq!(b.used(), 50);
    }

    #[test]
    fn an_empty_queue_admits_a_big_batch_and_dropping_it_frees_the_room() {
        let b = Arc::new(Budget::new(10));
        let big = Metered::new(vec![0u8; 1000], 1000, &b);
        assert_eq!((b.used(), big.len()), (1000, 1000));
        let sender = {
            let b = b.clone();
            std::thread::spawn(move || Metered::new((), 1, &b).bytes)
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!sender.is_finished(), "1001 > 10: the sender waits");
        drop(big);
        assert_eq!(sender.join().unwrap(), 1);
        assert_eq!(b.used(), 0, "both batches were dropped");
    }

    #[test]
    fn sizes_grow_with_argv() {
        use spyglass_proto::model::samples;
        let all = samples::all();
        let small = events_bytes(&all);
        let mut big = all.clone();
        if let Some(p) = big.iter_mut().find_map(|e| e.process.as_mut()) {
            p.argv = vec!["x".repeat(4096)].into();
        }
        assert!(events_bytes(&big) >= small + 4000, "{small}");
    }
}
