//! An agent's restart, per node: the agent's startup snapshot is the
//! truth for its node, so what the store holds of the node and the new
//! agent does not re-announce has ended while no agent watched.
//!
//! An agent starting sends, in order: its /proc snapshot (processes and
//! listening sockets, `snapshot: true`, all at one time), `started`, one
//! `created` (`snapshot: true`) per container containerd lists, then
//! `snapshot_complete`. The restart's cutoff is the earliest of those
//! times: every re-announcement is written with a `last_seen` no older,
//! and everything the old agent reported is older. At the marker the
//! rows of the node older than the cutoff are ended ([`super::sweep`]).
//!
//! Pure: the times are the events'.
use std::collections::HashMap;

/// Nodes tracked at most in each map; past it the maps are cleared (a
/// restart whose start was forgotten is not swept, which leaves rows
/// listed, never ends live ones).
const MAX_NODES: usize = 100_000;

#[derive(Debug, Default)]
pub struct Restarts {
    /// node -> the earliest snapshot event seen before its `started`.
    pending: HashMap<String, i64>,
    /// node -> the cutoff of the restart under way (`started` seen,
    /// `snapshot_complete` not yet).
    open: HashMap<String, i64>,
    /// node -> the cutoff of its last completed restart: a snapshot event
    /// no later than it is a straggler of that restart (an event held for
    /// containerd's answer), not the start of a new one.
    last: HashMap<String, i64>,
}

impl Restarts {
    /// An event with `snapshot: true` from `node` at `at`.
    pub fn snapshot_event(&mut self, node: &str, at: i64) {
        if self.open.contains_key(node) || self.last.get(node).is_some_and(|l| at <= *l) {
            return; // a `created` of the restart under way, or a straggler
        }
        bound(&mut self.pending);
        let t = self.pending.entry(node.to_owned()).or_insert(at);
        *t = (*t).min(at);
    }

    /// `node`'s agent sent `started` at `at`.
    pub fn started(&mut self, node: &str, at: i64) {
        let first = self.pending.remove(node).filter(|t| *t <= at);
        bound(&mut self.open);
        self.open
            .insert(node.to_owned(), first.map_or(at, |t| t.min(at)));
    }

    /// `node`'s agent sent `snapshot_complete`: the cutoff to sweep the
    /// node with, None when its start was not seen (this collector
    /// started after it: nothing is ended on a guess).
    pub fn complete(&mut self, node: &str) -> Option<i64> {
        self.pending.remove(node);
        let cutoff = self.open.remove(node)?;
        bound(&mut self.last);
        self.last.insert(node.to_owned(), cutoff);
        Some(cutoff)
    }

    /// Whether `node`'s agent is re-announcing what exists: its changes
    /// are written even when the tracker takes them as known (a listener
    /// or container the old agent reported, written less than the
    /// `last_seen` step ago, would otherwise keep its old `last_seen` and
    /// be ended by the sweep).
    /// Something the store should have received was lost (an update
    /// dropped, rows dropped or forgotten): a restart open now may have
    /// lost its re-announcements, so its `snapshot_complete` must not end
    /// what it did not see. Every open restart is abandoned (no sweep;
    /// the rows stay until they are closed or retained away).
    pub fn abandon(&mut self) -> usize {
        let n = self.open.len() + self.pending.len();
        self.open.clear();
        self.pending.clear();
        n
    }

    pub fn restarting(&self, node: &str) -> bool {
        self.open.contains_key(node) || self.pending.contains_key(node)
    }
}

fn bound(m: &mut HashMap<String, i64>) {
    if m.len() >= MAX_NODES {
        m.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_snapshot_s_time_and_complete_ends_the_restart() {
        let mut r = Restarts::default();
        assert!(!r.restarting("n1"));
        r.snapshot_event("n1", 100);
        r.snapshot_event("n1", 100);
        assert!(r.restarting("n1"));
        r.started("n1", 150);
        r.snapshot_event("n1", 160); // a `created`: not the cutoff
        assert!(r.restarting("n1"));
        assert!(!r.restarting("n2"));
        assert_eq!(r.complete("n1"), Some(100));
        assert!(!r.restarting("n1"));
        assert_eq!(r.complete("n1"), None, "one sweep per restart");
    }

    #[test]
    fn without_a_snapshot_the_cutoff_is_started() {
        let mut r = Restarts::default();
        r.started("n1", 150);
        assert_eq!(r.complete("n1"), Some(150));
    }

    #[test]
    fn a_marker_without_its_start_sweeps_nothing() {
        let mut r = Restarts::default();
        assert_eq!(r.complete("n1"), None);
        // snapshot events seen, the start missed
        r.snapshot_event("n1", 100);
        assert_eq!(r.complete("n1"), None);
        assert!(!r.restarting("n1"));
    }

    #[test]
    fn a_straggler_of_the_last_restart_does_not_start_a_new_one() {
        let mut r = Restarts::default();
        r.snapshot_event("n1", 100);
        r.started("n1", 150);
        assert_eq!(r.complete("n1"), Some(100));
        // held for containerd, released after the marker
        r.snapshot_event("n1", 100);
        assert!(!r.restarting("n1"));
        // the next restart
        r.snapshot_event("n1", 900);
        r.started("n1", 950);
        assert_eq!(r.complete("n1"), Some(900));
    }

    #[test]
    fn a_snapshot_event_later_than_started_is_not_its_cutoff() {
        // clocks: a pending time after `started` is not this start's
        let mut r = Restarts::default();
        r.snapshot_event("n1", 200);
        r.started("n1", 150);
        assert_eq!(r.complete("n1"), Some(150));
    }
}
