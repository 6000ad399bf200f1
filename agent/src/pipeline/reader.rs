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
/// `budget` until the pipeline has handled it.
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
    let mut batch = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
        loop {
            while batch.len() < BATCH {
                let Some(item) = ring.next() else { break };
                match decode(&item) {
                    Ok(ev) => batch.push(ev),
                    Err(error) => {
                        stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(%error, len = item.len(), "undecodable ring buffer record");
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == BATCH;
            stats
                .records
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let out = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let bytes = records_bytes(&out);
            if tx
                .blocking_send(Metered::new(out, bytes, &budget).into())
                .is_err()
            {
                debug!("event pipeline closed; reader stops");
                return;
            }
            if !full {
                break;
            }
        }
    }
}
