//! The process table: pid -> what the agent knows of that process, kept
//! from the startup snapshot and fork/exec/exit records, so that every
//! event carries its process and parent chain.
//!
//! Bounded: at most `max_entries` processes, and about `max_bytes` of
//! memory. Exited processes stay for a short while (the last
//! `exited_retained` exits) so that events racing with the exit, and
//! children asking for their parent, still resolve; then they are evicted.
//! When the table is full of live processes, the oldest-started entry is
//! evicted and counted. When it is over its bytes, exited entries go
//! first, then a new process keeps only the first [`ARGV_KEPT_WHEN_FULL`]
//! bytes of its arguments (marked truncated, counted: a flood of new
//! processes cannot erase what the table knew of older ones), then the
//! oldest entries with long arguments are cut the same way, and only then is a
//! live entry evicted: a process that execs or forks in a loop with
//! thousands of arguments cannot grow the agent.
use std::collections::{HashMap, VecDeque};

use crate::event::Ancestor;

/// What the agent knows of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: crate::event::Text,
    pub exe: crate::event::Text,
    pub argv: crate::event::Args,
    pub argv_truncated: bool,
    /// The kernel kept only the start of the path given to execve.
    pub exe_truncated: bool,
    /// What the kernel could not read at exec.
    pub unread: Vec<crate::event::Unread>,
    pub cgroup_id: u64,
    /// ns since boot; 0 if unknown.
    pub start_time_ns: u64,
    /// `start_time_ns` came from /proc (clock ticks of another clock), not
    /// from the kernel's records: it cannot be compared with theirs.
    pub start_from_proc: bool,
}

/// Table limits (config `[process]`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: usize,
    pub exited_retained: usize,
    /// Exited processes are forgotten after this long, even when fewer
    /// than `exited_retained` exited since.
    pub exited_ttl: std::time::Duration,
    /// Approximate memory the table may hold, bytes.
    pub max_bytes: usize,
}

/// Arguments a process keeps once the table is over its bytes.
pub const ARGV_KEPT_WHEN_FULL: usize = 256;

/// What an entry costs besides its texts: the entry, its map slot and the
/// exited queue's, and the allocations' headers.
const ENTRY_OVERHEAD: usize = 256;

#[derive(Debug)]
struct Entry {
    info: ProcInfo,
    exited: bool,
    /// Bytes charged to this entry (see [`charge`]).
    bytes: usize,
    /// It has an element in `long_args` (at most one: a process that
    /// re-execs itself must not add one per exec).
    queued: bool,
}

/// Bytes an entry holds. A fork's child shares its parent's texts (the
/// buffers are reference-counted) but is charged them too: the parent may
/// exec again, and the child alone then keeps the old arguments.
fn charge(info: &ProcInfo) -> usize {
    ENTRY_OVERHEAD + info.exe.len() + info.comm.len() + info.argv.byte_len()
}

pub struct ProcessTable {
    map: HashMap<u32, Entry>,
    exited: VecDeque<(u32, u64, std::time::Instant)>,
    limits: Limits,
    /// Bytes charged to the entries in `map`.
    bytes: usize,
    /// Entries inserted with arguments longer than [`ARGV_KEPT_WHEN_FULL`],
    /// oldest first, by (pid, start time): the ones to cut when over bytes.
    long_args: VecDeque<(u32, u64)>,
    /// Live entries evicted because the table was full.
    pub evicted: u64,
    /// Processes whose arguments were cut because the table was over its
    /// bytes.
    pub argv_trimmed: u64,
}

impl ProcessTable {
    pub fn new(limits: Limits) -> Self {
        ProcessTable {
            map: HashMap::new(),
            exited: VecDeque::new(),
            limits,
            bytes: 0,
            long_args: VecDeque::new(),
            evicted: 0,
            argv_trimmed: 0,
        }
    }

    /// Bytes the entries hold (approximately).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&ProcInfo> {
        self.map.get(&pid).map(|e| &e.info)
    }

    /// Insert or replace a process (exec, snapshot).
    pub fn upsert(&mut self, mut info: ProcInfo) {
        let was_queued = self
            .remove(info.pid)
            .is_some_and(|e| e.queued && e.info.start_time_ns == info.start_time_ns);
        if self.map.len() >= self.limits.max_entries {
            self.make_room();
        }
        let mut bytes = charge(&info);
        if self.over(bytes) {
            self.drop_exited_until(bytes);
        }
        if self.over(bytes) && self.trim(&mut info) {
            bytes = charge(&info);
        }
        while self.over(bytes) && self.trim_oldest_long() {}
        while self.over(bytes) && !self.map.is_empty() {
            self.make_room();
        }
        let long = info.argv.byte_len() > ARGV_KEPT_WHEN_FULL;
        if long && !was_queued {
            self.long_args.push_back((info.pid, info.start_time_ns));
            self.compact_long_args();
        }
        self.bytes += bytes;
        self.map.insert(
            info.pid,
            Entry {
                info,
                exited: false,
                bytes,
                queued: long,
            },
        );
    }

    /// Forget `pid`'s entry, whatever its state.
    fn remove(&mut self, pid: u32) -> Option<Entry> {
        let e = self.map.remove(&pid)?;
        self.bytes -= e.bytes;
        Some(e)
    }

    /// Whether `need` more bytes would take the table over its bytes.
    fn over(&self, need: usize) -> bool {
        self.bytes + need > self.limits.max_bytes
    }

    /// Keep the start of `info`'s arguments; whether any were cut.
    fn trim(&mut self, info: &mut ProcInfo) -> bool {
        let (kept, cut) = info.argv.prefix(ARGV_KEPT_WHEN_FULL);
        if cut {
            info.argv = kept;
            info.argv_truncated = true;
            self.argv_trimmed += 1;
        }
        cut
    }

    /// Cut the arguments of the oldest entry that still has long ones;
    /// false when none is left.
    fn trim_oldest_long(&mut self) -> bool {
        while let Some((pid, start)) = self.long_args.pop_front() {
            let Some(mut e) = self.map.remove(&pid) else {
                continue;
            };
            if e.info.start_time_ns == start {
                e.queued = false; // its element is this one, popped
                if self.trim(&mut e.info) {
                    let bytes = charge(&e.info);
                    self.bytes = self.bytes - e.bytes + bytes;
                    e.bytes = bytes;
                    self.map.insert(pid, e);
                    return true;
                }
            }
            self.map.insert(pid, e);
        }
        false
    }

    /// Forget `long_args` entries of processes gone or already cut, once
    /// they outnumber the table (amortised: the queue stays bounded when
    /// the table is never over its bytes).
    fn compact_long_args(&mut self) {
        if self.long_args.len() <= 2 * self.map.len() + 1024 {
            return;
        }
        let map = &self.map;
        self.long_args.retain(|(pid, start)| {
            map.get(pid).is_some_and(|e| {
                e.info.start_time_ns == *start && e.info.argv.byte_len() > ARGV_KEPT_WHEN_FULL
            })
        });
    }

    /// Drop retained exited entries, oldest first, until `need` more bytes
    /// fit or none is left.
    fn drop_exited_until(&mut self, need: usize) {
        while self.bytes + need > self.limits.max_bytes {
            let Some((pid, start, _)) = self.exited.pop_front() else {
                return;
            };
            self.remove_if_exited(pid, start);
        }
    }

    /// A fork: the child starts as a copy of its parent.
    pub fn fork(&mut self, parent: u32, child: u32, start_time_ns: u64) -> ProcInfo {
        let mut info = self.get(parent).cloned().unwrap_or_default();
        info.pid = child;
        info.ppid = parent;
        info.start_time_ns = start_time_ns;
        info.start_from_proc = false;
        self.upsert(info.clone());
        info
    }

    /// An exit of the process that started at `start_time_ns` (0 when
    /// unknown): the entry is kept until `exited_retained` later exits. An
    /// exit of an older process under a reused pid leaves the new one be.
    pub fn exit(&mut self, pid: u32, start_time_ns: u64) -> Option<ProcInfo> {
        if self.stale_exit(pid, start_time_ns) {
            return None;
        }
        let entry = self.map.get_mut(&pid)?;
        entry.exited = true;
        let info = entry.info.clone();
        self.exited
            .push_back((pid, info.start_time_ns, std::time::Instant::now()));
        while self.exited.len() > self.limits.exited_retained {
            if let Some((old, start, _)) = self.exited.pop_front() {
                self.remove_if_exited(old, start);
            }
        }
        Some(info)
    }

    /// Whether an exit of the process that started at `start_time_ns` is
    /// about an older process than the one the table holds under `pid` (a
    /// reused pid). Unknown or /proc start times never make it stale.
    pub fn stale_exit(&self, pid: u32, start_time_ns: u64) -> bool {
        self.map.get(&pid).is_some_and(|e| {
            let known = e.info.start_time_ns;
            !e.info.start_from_proc && known != 0 && start_time_ns != 0 && known != start_time_ns
        })
    }

    /// Whether `pid`'s entry is marked exited.
    #[cfg(test)]
    pub fn is_exited(&self, pid: u32) -> bool {
        self.map.get(&pid).is_some_and(|e| e.exited)
    }

    /// Forget processes that exited `exited_ttl` or more before `now`.
    pub fn expire(&mut self, now: std::time::Instant) {
        while let Some(&(pid, start, at)) = self.exited.front() {
            if now.saturating_duration_since(at) < self.limits.exited_ttl {
                break;
            }
            self.exited.pop_front();
            self.remove_if_exited(pid, start);
        }
    }

    fn remove_if_exited(&mut self, pid: u32, start: u64) {
        if let Some(e) = self.map.get(&pid) {
            // A reused pid that exec'd again is a different process: keep it.
            if e.exited && e.info.start_time_ns == start {
                self.remove(pid);
            }
        }
    }

    fn make_room(&mut self) {
        while let Some((pid, start, _)) = self.exited.pop_front() {
            let before = self.map.len();
            self.remove_if_exited(pid, start);
            if self.map.len() < before {
                return;
            }
        }
        if let Some(oldest) = self
            .map
            .values()
            .min_by_key(|e| e.info.start_time_ns)
            .map(|e| e.info.pid)
        {
            self.remove(oldest);
            self.evicted += 1;
        }
    }

    /// Parent chain of `pid`: parent first, at most `depth` entries.
    /// Stops at pid 0/1 loops and at unknown processes.
    pub fn ancestors(&self, pid: u32, depth: usize) -> Vec<Ancestor> {
        let mut out = Vec::new();
        let mut cur = self.get(pid).map_or(0, |p| p.ppid);
        while cur != 0 && out.len() < depth {
            let Some(p) = self.get(cur) else {
                out.push(Ancestor {
                    pid: cur,
                    exe: "".into(),
                    comm: "".into(),
                });
                break;
            };
            out.push(Ancestor {
                pid: p.pid,
                exe: p.exe.clone(),
                comm: p.comm.clone(),
            });
            if p.ppid == p.pid {
                break;
            }
            cur = p.ppid;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Args;

    fn proc(pid: u32, ppid: u32, exe: &str, start: u64) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            exe: exe.into(),
            start_time_ns: start,
            ..ProcInfo::default()
        }
    }

    fn table(max: usize, retained: usize) -> ProcessTable {
        ProcessTable::new(Limits {
            max_entries: max,
            exited_retained: retained,
            exited_ttl: std::time::Duration::from_secs(3600),
            max_bytes: usize::MAX,
        })
    }

    fn with_args(pid: u32, args: usize) -> ProcInfo {
        ProcInfo {
            argv: Args::from_nul_separated(&vec![0u8; args + 1]),
            ..proc(pid, 1, "/bin/x", u64::from(pid))
        }
    }

    fn budget(max_entries: usize, max_bytes: usize) -> ProcessTable {
        ProcessTable::new(Limits {
            max_entries,
            exited_retained: 100,
            exited_ttl: std::time::Duration::from_secs(3600),
            max_bytes,
        })
    }

    #[test]
    fn over_its_bytes_arguments_are_cut_before_any_process_is_lost() {
        let mut t = budget(100_000, 1 << 20);
        for pid in 1..=1500 {
            t.upsert(with_args(pid, 4000));
            assert!(t.bytes() <= 1 << 20, "over budget at {pid}: {}", t.bytes());
        }
        // 1500 whole would take 6 MiB: all are kept. New ones are cut
        // first (a flood cannot erase what the table knew), then the
        // oldest whole ones as even cut entries need room.
        assert_eq!((t.len(), t.evicted), (1500, 0));
        let p = t.get(1500).unwrap();
        assert!(p.argv_truncated && p.argv.byte_len() <= ARGV_KEPT_WHEN_FULL);
        assert!(t.get(1).unwrap().argv_truncated, "the oldest are cut next");
        let whole = (1..=1500).filter(|p| !t.get(*p).unwrap().argv_truncated);
        assert!((50..120).contains(&whole.count()));
        assert!(t.argv_trimmed > 1300, "{}", t.argv_trimmed);
        // past what even cut entries fit in, the oldest live ones go
        for pid in 1501..=10_000 {
            t.upsert(with_args(pid, 4000));
            assert!(t.bytes() <= 1 << 20, "over budget at {pid}: {}", t.bytes());
        }
        assert!(
            t.evicted > 5000 && t.len() > 1500,
            "{} {}",
            t.evicted,
            t.len()
        );
        assert!(t.get(10_000).is_some());
        assert!(t.long_args.len() <= 2 * t.len() + 1025);
    }

    #[test]
    fn a_process_that_re_execs_itself_queues_its_arguments_once() {
        let mut t = budget(100_000, 64 << 20);
        for _ in 0..100_000 {
            t.upsert(with_args(7, 4000)); // same pid, same start time
        }
        assert_eq!((t.len(), t.long_args.len()), (1, 1));
    }

    #[test]
    fn forked_children_cannot_keep_arguments_uncounted() {
        // a parent with long arguments forks, then execs again: each child
        // alone keeps an old argument buffer, so each is charged for it
        let mut t = budget(100_000, 1 << 20);
        t.upsert(with_args(1, 4000));
        for child in 2..=2000 {
            t.fork(1, child, u64::from(child));
            t.upsert(with_args(1, 4000 + child as usize % 2));
            assert!(t.bytes() <= 1 << 20);
        }
        assert_eq!(t.evicted, 0);
        assert!(t.get(2).unwrap().argv_truncated);
    }

    #[test]
    fn exited_entries_go_before_live_arguments_are_cut() {
        let mut t = ProcessTable::new(Limits {
            max_entries: 100,
            exited_retained: 100,
            exited_ttl: std::time::Duration::from_secs(3600),
            max_bytes: 3 * (ENTRY_OVERHEAD + 6 + 4001) + 1100,
        });
        t.upsert(with_args(1, 4000));
        t.upsert(with_args(2, 4000));
        t.exit(1, 1);
        t.upsert(with_args(3, 4000));
        t.upsert(with_args(4, 4000));
        assert!(t.get(1).is_none(), "the exited one made room");
        assert!(!t.get(4).unwrap().argv_truncated);
        t.upsert(with_args(5, 4000));
        assert!(t.get(5).unwrap().argv_truncated, "no exited one left");
        assert_eq!((t.argv_trimmed, t.evicted), (1, 0));
        // replacing an entry gives its bytes back
        let before = t.bytes();
        t.upsert(proc(6, 4, "/bin/y", 6));
        t.upsert(proc(6, 4, "/bin/y", 6));
        assert_eq!(t.bytes() - before, ENTRY_OVERHEAD + "/bin/y".len());
    }

    #[test]
    fn fork_exec_chain() {
        let mut t = table(100, 10);
        t.upsert(proc(1, 0, "/sbin/init", 1));
        t.upsert(proc(10, 1, "/bin/bash", 2));
        let child = t.fork(10, 11, 3);
        assert_eq!((child.ppid, &*child.exe), (10, "/bin/bash"));
        t.upsert(proc(11, 10, "/usr/bin/curl", 3));
        let chain = t.ancestors(11, 8);
        let pids: Vec<_> = chain.iter().map(|a| (a.pid, &*a.exe)).collect();
        assert_eq!(pids, [(10, "/bin/bash"), (1, "/sbin/init")]);
        assert_eq!(t.ancestors(11, 1).len(), 1);
    }

    #[test]
    fn unknown_parent_is_named_by_pid() {
        let mut t = table(100, 10);
        t.upsert(proc(5, 4, "/bin/x", 1));
        let chain = t.ancestors(5, 8);
        assert_eq!(chain.len(), 1);
        assert_eq!((chain[0].pid, &*chain[0].exe), (4, ""));
    }

    #[test]
    fn exited_entries_are_forgotten_after_their_ttl() {
        let mut t = ProcessTable::new(Limits {
            max_entries: 100,
            exited_retained: 100,
            exited_ttl: std::time::Duration::from_secs(10),
            max_bytes: usize::MAX,
        });
        t.upsert(proc(5, 1, "/bin/a", 50));
        t.upsert(proc(6, 1, "/bin/b", 60));
        t.exit(5, 50);
        let now = std::time::Instant::now();
        t.expire(now);
        assert!(t.get(5).is_some(), "kept for late events");
        t.expire(now + std::time::Duration::from_secs(11));
        assert!(t.get(5).is_none());
        assert!(t.get(6).is_some(), "live processes stay");
    }

    #[test]
    fn exited_entries_are_retained_then_evicted() {
        let mut t = table(100, 2);
        for pid in 1..=5 {
            t.upsert(proc(pid, 0, "/bin/true", u64::from(pid)));
        }
        for pid in 1..=5 {
            assert!(t.exit(pid, u64::from(pid)).is_some());
        }
        // only the last two exits are retained
        assert_eq!(t.len(), 2);
        assert!(t.get(4).is_some() && t.get(5).is_some());
        assert!(t.exit(99, 0).is_none());
    }

    #[test]
    fn reused_pid_is_not_evicted_by_the_old_exit() {
        let mut t = table(100, 1);
        t.upsert(proc(7, 0, "/old", 1));
        t.exit(7, 1);
        t.upsert(proc(7, 0, "/new", 2)); // pid reused
        t.upsert(proc(8, 0, "/x", 3));
        t.exit(8, 3); // pushes the old (7, 1) out of the retained queue
        assert_eq!(t.get(7).map(|p| &*p.exe), Some("/new"));
        // a late exit of the old process does not end the new one
        assert!(t.exit(7, 1).is_none());
        assert!(!t.is_exited(7));
        assert!(
            t.exit(7, 0).is_some(),
            "an exit without a start time is taken"
        );
    }

    #[test]
    fn a_process_from_proc_ends_whatever_the_kernel_start_time() {
        let mut t = table(100, 10);
        let mut p = proc(9, 0, "/snap", 1_230_000_000); // /proc: 10 ms ticks
        p.start_from_proc = true;
        t.upsert(p);
        assert!(!t.stale_exit(9, 1_234_567_891));
        assert!(t.exit(9, 1_234_567_891).is_some());
        assert!(t.is_exited(9));
    }

    #[test]
    fn bounded_when_full_of_live_processes() {
        let mut t = table(3, 10);
        for pid in 1..=10 {
            t.upsert(proc(pid, 0, "/bin/sleep", u64::from(pid)));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted, 7);
        assert!(t.get(10).is_some());
    }
}
