//! Loss accounting: per-CPU kernel counters and agent-side decode errors,
//! turned into explicit `loss` events whenever they move.
use agent_common::counter;

use crate::event::{Loss, LossStage};

/// Totals summed over CPUs, indexed by `agent_common::counter`.
pub type Totals = [u64; counter::COUNT as usize];

/// Loss since `prev`, or None when nothing moved.
pub fn delta(prev: &Totals, cur: &Totals, decode_errors: u64) -> Option<Loss> {
    let d = |i: u32| cur[i as usize].saturating_sub(prev[i as usize]);
    let loss = Loss {
        stage: LossStage::Kernel,
        exec: d(counter::EXEC_DROPPED),
        exit: d(counter::EXIT_DROPPED),
        fork: d(counter::FORK_DROPPED),
        network: d(counter::NET_DROPPED),
        read_errors: d(counter::READ_ERRORS),
        connect_untracked: d(counter::CONNECT_TRACK_FULL),
        decode_errors,
        spool_dropped: 0,
    };
    (loss != Loss::new(LossStage::Kernel)).then_some(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_movement() {
        let a: Totals = [1, 0, 0, 4, 0, 0, 0, 0];
        assert_eq!(delta(&a, &a, 0), None);
        let b: Totals = [3, 0, 0, 4, 1, 0, 0, 0];
        let l = delta(&a, &b, 0).unwrap();
        assert_eq!((l.exec, l.network, l.read_errors), (2, 0, 1));
        let l = delta(&a, &a, 5).unwrap();
        assert_eq!(l.decode_errors, 5);
    }
}
