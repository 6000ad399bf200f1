//! The ring buffer reader: a dedicated thread that drains the kernel ring
//! buffer, decodes records and hands them on in batches.
//!
//! Records are submitted without wakeups (see agent-ebpf `emit.rs`), so the
//! reader polls the ring on a short timer; the kernel forces a wakeup when
//! the ring fills past a threshold. When the next stage is slow, this
//! thread blocks on the bounded channel, the ring fills, and the kernel
//! counts what it then drops: back-pressure ends in a counted loss, never a
//! silent one.
use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    budget::{records_bytes, Budget, Metered},
    decode::{decode, RawEvent},
};

/// Most records handed on in one batch.
const BATCH: usize = 1024;

/// Counters the reader shares with the loss reporter.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub records: AtomicU64,
    pub decode_errors: AtomicU64,
}

/// Run until `stop` is set or the receiver is gone. Batches go to the
/// next stage as `T` (the pipeline's input), each counted against
/// `budget` until the pipeline has handled it. At stop the ring is
/// drained to its end first: the agent detaches the probes before it
/// sets `stop`, so what the kernel recorded is all read.
#[allow(clippy::needless_pass_by_value)] // the reader thread owns what it runs on
pub fn run<T: From<Metered<Vec<RawEvent>>>>(
    mut ring: RingBuf<MapData>,
    tx: mpsc::Sender<T>,
    budget: Arc<Budget>,
    poll_interval: Duration,
    stats: Arc<ReaderStats>,
    stop: Arc<AtomicBool>,
) {
    let fd = ring.as_raw_fd();
    let timeout_ms = poll_interval.as_millis().clamp(1, 1000) as i32;
    let mut reader = Reader {
        tx,
        budget,
        stats,
        batch: Vec::with_capacity(BATCH),
    };
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
        if reader.drain(&mut ring).is_err() {
            return;
        }
    }
    // The final drain. A probe that was running on another CPU when it
    // was detached can still commit its record just after; a second
    // pass after a short pause reads it too.
    for _ in 0..2 {
        if reader.drain(&mut ring).is_err() {
            return;
        }
        std::thread::sleep(FINAL_PAUSE);
    }
    if reader.drain(&mut ring).is_ok() {
        debug!(
            records = reader.stats.records.load(Ordering::Relaxed),
            "ring buffer drained; reader stops"
        );
    }
}

/// The pause between the passes of the final drain.
const FINAL_PAUSE: Duration = Duration::from_millis(20);

/// The reader's state between reads of the ring.
struct Reader<T> {
    tx: mpsc::Sender<T>,
    budget: Arc<Budget>,
    stats: Arc<ReaderStats>,
    batch: Vec<RawEvent>,
}

/// The pipeline is gone.
struct Closed;

impl<T: From<Metered<Vec<RawEvent>>>> Reader<T> {
    /// Read the ring until it is empty, handing on full batches and the
    /// last partial one.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<(), Closed> {
        loop {
            while self.batch.len() < BATCH {
                let Some(item) = ring.next() else { break };
                match decode(&item) {
                    Ok(ev) => self.batch.push(ev),
                    Err(error) => {
                        self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(%error, len = item.len(), "undecodable ring buffer record");
                    }
                }
            }
            if self.batch.is_empty() {
                return Ok(());
            }
            let full = self.batch.len() == BATCH;
            self.stats
                .records
                .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
            let out = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
            let bytes = records_bytes(&out);
            if self
                .tx
                .blocking_send(Metered::new(out, bytes, &self.budget).into())
                .is_err()
            {
                debug!("event pipeline closed; reader stops");
                return Err(Closed);
            }
            if !full {
                return Ok(());
            }
        }
    }
}
