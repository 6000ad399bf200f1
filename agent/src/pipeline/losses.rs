//! Loss accounting: per-CPU kernel counters and agent-side decode errors,
//! turned into explicit `loss` events whenever they move.
use std::sync::{atomic::Ordering, Arc};

use agent_common::counter;
use aya::maps::{MapData, PerCpuArray};
use tracing::warn;

use super::reader::ReaderStats;
use crate::{
    event::{Loss, LossStage, LossTotals},
    metrics::Metrics,
};

/// Totals summed over CPUs, indexed by `agent_common::counter`.
pub type Totals = [u64; counter::COUNT as usize];

/// What the kernel counters and the decode errors say so far.
fn totals(cur: &Totals, decode_errors: u64) -> LossTotals {
    let c = |i: u32| cur[i as usize];
    LossTotals {
        exec: c(counter::EXEC_DROPPED),
        exit: c(counter::EXIT_DROPPED) + c(counter::OOM_DROPPED),
        fork: c(counter::FORK_DROPPED),
        // a bind not tracked is a close record that will not be sent
        network: c(counter::NET_DROPPED) + c(counter::BIND_TRACK_FULL),
        read_errors: c(counter::READ_ERRORS),
        connect_untracked: c(counter::CONNECT_TRACK_FULL),
        decode_errors,
        spool_dropped: 0,
    }
}

/// Loss since `prev` (`prev_decode` decode errors then, `decode` now),
/// with the totals since the agent started, or None when nothing moved.
pub fn delta(prev: &Totals, cur: &Totals, prev_decode: u64, decode: u64) -> Option<Loss> {
    let d = |i: u32| cur[i as usize].saturating_sub(prev[i as usize]);
    let loss = Loss {
        stage: LossStage::Kernel,
        exec: d(counter::EXEC_DROPPED),
        // an OOM record is the marker of an exit: its loss counts there
        exit: d(counter::EXIT_DROPPED) + d(counter::OOM_DROPPED),
        fork: d(counter::FORK_DROPPED),
        network: d(counter::NET_DROPPED) + d(counter::BIND_TRACK_FULL),
        read_errors: d(counter::READ_ERRORS),
        connect_untracked: d(counter::CONNECT_TRACK_FULL),
        decode_errors: decode.saturating_sub(prev_decode),
        spool_dropped: 0,
        totals: None,
    };
    (loss != Loss::new(LossStage::Kernel)).then_some(Loss {
        totals: Some(totals(cur, decode)),
        ..loss
    })
}

/// Reads the kernel's per-CPU loss counters and the reader's decode
/// errors, and says what moved since the last read.
pub struct LossReporter {
    counters: PerCpuArray<MapData, u64>,
    stats: Arc<ReaderStats>,
    /// The counters are fresh maps created at load: zero is the baseline
    /// (reading them at start would hide drops made before that point).
    prev: Totals,
    prev_decode: u64,
}

impl LossReporter {
    pub fn new(counters: PerCpuArray<MapData, u64>, stats: Arc<ReaderStats>) -> Self {
        LossReporter {
            counters,
            stats,
            prev: Totals::default(),
            prev_decode: 0,
        }
    }

    fn read(&self) -> Totals {
        let mut totals = Totals::default();
        for (i, t) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *t = values.iter().sum();
            }
        }
        totals
    }

    /// Loss since the last call (added to the metrics and logged), or None.
    pub fn poll(&mut self, metrics: &Metrics) -> Option<Loss> {
        let cur = self.read();
        let decode = self.stats.decode_errors.load(Ordering::Relaxed);
        let loss = delta(&self.prev, &cur, self.prev_decode, decode);
        self.prev = cur;
        self.prev_decode = decode;
        let l = loss?;
        metrics.add_loss(&l);
        warn!(
            exec = l.exec,
            exit = l.exit,
            fork = l.fork,
            network = l.network,
            read_errors = l.read_errors,
            decode_errors = l.decode_errors,
            "events lost or incomplete"
        );
        Some(l)
    }

    /// The last read, at stop, once nothing can add to the counters (the
    /// probes are detached and the ring buffer drained): always a loss
    /// event, with zero counts when nothing moved, so the final totals
    /// are said.
    pub fn poll_final(&mut self, metrics: &Metrics) -> Loss {
        self.poll(metrics).unwrap_or_else(|| Loss {
            totals: Some(totals(&self.prev, self.prev_decode)),
            ..Loss::new(LossStage::Kernel)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_movement_with_totals_since_start() {
        let a: Totals = [1, 0, 0, 4, 0, 0, 0, 0];
        assert_eq!(delta(&a, &a, 0, 0), None);
        let b: Totals = [3, 0, 0, 4, 1, 0, 0, 0];
        let l = delta(&a, &b, 2, 2).unwrap();
        assert_eq!((l.exec, l.network, l.read_errors), (2, 0, 1));
        let t = l.totals.unwrap();
        assert_eq!(
            (t.exec, t.network, t.read_errors, t.decode_errors),
            (3, 4, 1, 2)
        );
        let c: Totals = [3, 1, 0, 4, 1, 0, 2, 0];
        let l = delta(&b, &c, 2, 2).unwrap();
        assert_eq!(l.exit, 3, "OOM records dropped count under exit");
        assert_eq!(l.totals.unwrap().exit, 3);
        let d: Totals = [3, 1, 0, 4, 1, 0, 2, 5];
        let l = delta(&c, &d, 2, 2).unwrap();
        assert_eq!(l.network, 5, "UDP binds not tracked count under network");
        assert_eq!(l.totals.unwrap().network, 9);
        let l = delta(&a, &a, 1, 6).unwrap();
        assert_eq!(l.decode_errors, 5);
        assert_eq!(l.totals.unwrap().decode_errors, 6);
    }
}
