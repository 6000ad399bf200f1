//! Repeats folded into one event (`aggregate` in the export filter): the
//! first connect (or accept) of a program to one destination in a window
//! goes out at once; the repeats within the window are held as a count
//! and the last of them, which goes out when the window closes, carrying
//! `aggregate {count, first, last, interval_s}`. So each destination gives
//! at most two events per window, the first without delay, and the counts
//! add up to every occurrence.
//!
//! Pure: times are the events' own and the `now` the caller passes.
use std::{collections::HashMap, net::IpAddr};

use spyglass_proto::time::Timestamp;

use crate::event::{Aggregate, Args, ConnectOutcome, Event, Kind, NetOp, Protocol, Text};

const NANOS: i64 = 1_000_000_000;

/// What makes two events repeats of one another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    /// The container, or the host process's cgroup.
    container: Option<String>,
    cgroup: u64,
    exe: Option<Text>,
    /// Who ran it, and how: a shell and a client of the same binary to
    /// one destination are not each other's repeats.
    uid: u32,
    argv: Option<Args>,
    protocol: Protocol,
    op: NetOp,
    remote: Option<IpAddr>,
    /// The remote port of a connect, the local port of an accept (the
    /// other side's port changes with every connection).
    port: u16,
    outcome: Option<ConnectOutcome>,
}

impl Key {
    fn of(ev: &Event) -> Option<Key> {
        let n = ev.network.as_ref()?;
        let port = match ev.kind {
            Kind::Accept => n.local.port,
            _ => n.remote.map_or(0, |r| r.port),
        };
        Some(Key {
            kind: ev.kind,
            container: ev.container.as_ref().map(|c| c.id.clone()),
            cgroup: ev.process.as_ref().map_or(0, |p| p.cgroup_id),
            exe: ev.process.as_ref().map(|p| p.exe.clone()),
            uid: ev.process.as_ref().map_or(u32::MAX, |p| p.uid),
            argv: ev.process.as_ref().map(|p| p.argv.clone()),
            protocol: n.protocol,
            op: n.op,
            remote: n.remote.map(|r| r.addr),
            port,
            outcome: n.outcome,
        })
    }
}

/// One destination's open window.
#[derive(Debug)]
struct Window {
    opened: Timestamp,
    /// Repeats held, and the time of the first of them.
    count: u64,
    first: Timestamp,
    /// The latest repeat, sent when the window closes.
    last: Option<Event>,
}

/// The open windows, at most `max_keys`.
#[derive(Debug)]
pub struct Aggregator {
    interval_s: u32,
    max_keys: usize,
    windows: HashMap<Key, Window>,
    /// No window closes before this (sweeps before it do nothing).
    next_close: i64,
    /// Since the last [`Aggregator::take_counts`]: window events sent,
    /// events let through unaggregated for lack of room.
    sent: u64,
    overflowed: u64,
}

impl Aggregator {
    pub fn new(interval_s: u32, max_keys: usize) -> Self {
        Aggregator {
            interval_s,
            max_keys,
            windows: HashMap::new(),
            next_close: i64::MAX,
            sent: 0,
            overflowed: 0,
        }
    }

    fn interval(&self) -> i64 {
        i64::from(self.interval_s) * NANOS
    }

    /// Windows open.
    pub fn open(&self) -> usize {
        self.windows.len()
    }

    /// (window events sent, events let through for lack of room) since
    /// the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.sent),
            std::mem::take(&mut self.overflowed),
        )
    }

    /// An event of a kind being aggregated: pushed to `out` when it is
    /// to go now (the first of its window, or no room to hold a window),
    /// after the event of its previous window when that one ended and
    /// was not swept yet. False when it is held as a repeat.
    pub fn offer(&mut self, ev: Event, out: &mut Vec<Event>) -> bool {
        let Some(key) = Key::of(&ev) else {
            out.push(ev);
            return true;
        };
        let interval = self.interval();
        if let Some(w) = self.windows.get_mut(&key) {
            if ev.time.0 < w.opened.0.saturating_add(interval) {
                if w.count == 0 {
                    w.first = ev.time;
                }
                w.count += 1;
                w.last = Some(ev);
                return false;
            }
            if let Some(ev) = close(w, self.interval_s) {
                self.sent += 1;
                out.push(ev);
            }
        } else if self.windows.len() >= self.max_keys {
            self.overflowed += 1;
            out.push(ev);
            return true;
        }
        let opened = ev.time;
        self.next_close = self.next_close.min(opened.0.saturating_add(interval));
        self.windows.insert(
            key,
            Window {
                opened,
                count: 0,
                first: opened,
                last: None,
            },
        );
        out.push(ev);
        true
    }

    /// Close the windows whose interval ended by `now` (all of them with
    /// `all`): the events standing for their repeats, oldest first.
    pub fn sweep(&mut self, now: Timestamp, all: bool) -> Vec<Event> {
        if !all && now.0 < self.next_close {
            return Vec::new();
        }
        let interval = self.interval();
        let mut out = Vec::new();
        let mut next = i64::MAX;
        self.windows.retain(|_, w| {
            let closes = w.opened.0.saturating_add(interval);
            if !all && now.0 < closes {
                next = next.min(closes);
                return true;
            }
            out.extend(close(w, self.interval_s));
            false
        });
        self.next_close = next;
        self.sent += out.len() as u64;
        out.sort_by_key(|e| e.time.0);
        out
    }
}

/// The event standing for a window's repeats, if it held any.
fn close(w: &mut Window, interval_s: u32) -> Option<Event> {
    let mut ev = w.last.take()?;
    ev.aggregate = Some(Box::new(Aggregate {
        count: w.count,
        first: w.first,
        last: ev.time,
        interval_s,
    }));
    w.count = 0;
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spyglass_proto::model::samples;

    fn connect(at_s: i64, port: u16) -> Event {
        let mut ev = samples::connect();
        ev.aggregate = None;
        ev.time = Timestamp(at_s * NANOS);
        ev.network.as_mut().unwrap().remote.as_mut().unwrap().port = port;
        ev
    }

    /// Offer one event: whether it went, and what went.
    fn offer(a: &mut Aggregator, ev: Event) -> (bool, Vec<Event>) {
        let mut out = Vec::new();
        let sent = a.offer(ev, &mut out);
        (sent, out)
    }

    #[test]
    fn the_first_goes_at_once_and_repeats_close_the_window_with_a_count() {
        let mut a = Aggregator::new(60, 16);
        assert_eq!(offer(&mut a, connect(100, 443)).1.len(), 1);
        for t in [101, 130, 159] {
            assert_eq!(offer(&mut a, connect(t, 443)), (false, vec![]));
        }
        // another destination is its own window
        assert!(offer(&mut a, connect(120, 80)).0);
        assert!(
            a.sweep(Timestamp(159 * NANOS), false).is_empty(),
            "still open"
        );
        let out = a.sweep(Timestamp(160 * NANOS), false);
        assert_eq!(out.len(), 1);
        let agg = out[0].aggregate.as_deref().unwrap();
        assert_eq!(
            (agg.count, agg.first.0, agg.last.0, agg.interval_s),
            (3, 101 * NANOS, 159 * NANOS, 60)
        );
        assert_eq!(out[0].time.0, 159 * NANOS, "the last repeat");
        assert_eq!(a.open(), 1, "port 80's window is still open");
        // no repeats: the window closes with nothing to send
        assert!(a.sweep(Timestamp(180 * NANOS), false).is_empty());
        assert_eq!(a.open(), 0);
        assert_eq!(a.take_counts(), (1, 0), "one window event sent");
        // the next connect opens a new window and goes at once
        assert!(offer(&mut a, connect(200, 443)).0);
    }

    #[test]
    fn a_window_over_but_not_swept_is_closed_by_the_next_event() {
        let mut a = Aggregator::new(10, 16);
        offer(&mut a, connect(0, 443));
        offer(&mut a, connect(5, 443));
        let (sent, out) = offer(&mut a, connect(12, 443));
        assert!(sent);
        assert_eq!(out.len(), 2, "the old window's event, then the new first");
        assert_eq!(out[0].aggregate.as_deref().unwrap().count, 1);
        assert_eq!(
            (out[1].aggregate.is_none(), out[1].time.0),
            (true, 12 * NANOS)
        );
        assert!(a.sweep(Timestamp(21 * NANOS), false).is_empty());
        assert_eq!(a.take_counts(), (1, 0), "closed in offer, counted too");
    }

    #[test]
    fn outcome_program_user_and_arguments_separate_windows() {
        let mut a = Aggregator::new(60, 16);
        let mut failed = connect(1, 443);
        failed.network.as_mut().unwrap().outcome = Some(ConnectOutcome::Failed);
        let mut other = connect(1, 443);
        other.process.as_mut().unwrap().exe = "/opt/other/bin/client".into();
        let mut root = connect(1, 443);
        root.process.as_mut().unwrap().uid = 4242;
        let mut shell = connect(1, 443);
        shell.process.as_mut().unwrap().argv = Args::from_nul_separated(b"sh\0-i\0");
        for ev in [connect(1, 443), failed, other, root, shell] {
            assert!(offer(&mut a, ev).0);
        }
        assert_eq!(a.open(), 5);
    }

    #[test]
    fn no_room_lets_events_through_and_counts_them() {
        let mut a = Aggregator::new(60, 2);
        for port in [1, 2, 3, 3] {
            assert!(offer(&mut a, connect(1, port)).0);
        }
        assert_eq!((a.open(), a.take_counts()), (2, (0, 2)));
        assert_eq!(a.take_counts(), (0, 0), "taken");
    }

    #[test]
    fn a_final_sweep_sends_every_held_repeat() {
        let mut a = Aggregator::new(60, 16);
        for (t, port) in [(1, 443), (2, 443), (3, 80), (4, 80)] {
            offer(&mut a, connect(t, port));
        }
        let out = a.sweep(Timestamp(5 * NANOS), true);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|e| e.aggregate.as_deref().unwrap().count == 1));
        assert!(out[0].time.0 < out[1].time.0, "oldest first");
        assert_eq!(a.open(), 0);
    }
}
