//! Records shared by the Spyglass eBPF programs (`spyglass-ebpf`) and the
//! agent. Every record starts with an [`EventHeader`]; its `kind` says which
//! struct follows. All types are `#[repr(C)]`, fixed width, explicitly
//! padded, and their sizes are asserted at compile time so that the kernel
//! and user sides can never silently disagree.
//!
//! Never renumber a kind, an op or a counter: add new ones at the end.
#![cfg_attr(not(test), no_std)]

pub mod path;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of the executable path (`bprm->filename`) kept per exec.
pub const FILENAME_LEN: usize = 512;
/// Bytes kept of a cgroup directory name (`cri-containerd-<64 hex>.scope`
/// is 86).
pub const CGROUP_NAME_LEN: usize = 128;
/// Bytes kept of the parent cgroup's name (a containerd namespace, a pod
/// slice).
pub const CGROUP_PARENT_LEN: usize = 96;
/// Bytes of the argument block (`mm->arg_start..arg_end`) kept per exec.
pub const ARGV_LEN: usize = 4096;

/// Record kinds (value of [`EventHeader::kind`]).
pub mod kind {
    /// [`super::ExecEvent`]
    pub const EXEC: u32 = 1;
    /// [`super::ExitEvent`]
    pub const EXIT: u32 = 2;
    /// [`super::ForkEvent`]
    pub const FORK: u32 = 3;
    /// [`super::NetEvent`]
    pub const NET: u32 = 4;
    /// [`super::OomEvent`]
    pub const OOM: u32 = 5;
}

/// Network operations (value of [`NetEvent::op`]).
pub mod net_op {
    /// A TCP socket entered LISTEN (`listen(2)`).
    pub const TCP_LISTEN: u8 = 1;
    /// An outbound TCP connection finished its handshake or failed.
    pub const TCP_CONNECT: u8 = 2;
    /// An inbound TCP connection completed its handshake on a listener.
    /// The accepting process is not known in the kernel at that point
    /// (softirq); userspace attributes it to the listener's owner.
    pub const TCP_ACCEPT: u8 = 3;
    /// A UDP socket was bound to a local address and port (`bind(2)`).
    pub const UDP_BIND: u8 = 4;
    /// A UDP socket was connected to a peer (`connect(2)`).
    pub const UDP_CONNECT: u8 = 5;
    /// First datagram a UDP socket sent to a given peer (`sendto`/`sendmsg`).
    pub const UDP_SEND: u8 = 6;
    /// A TCP listener closed (LISTEN -> CLOSE: `close(2)` of its last
    /// descriptor, `shutdown(2)`, its process exiting, or a failed
    /// `listen(2)`). The record carries the listener's local address.
    pub const TCP_CLOSE: u8 = 7;
    /// A UDP socket with an explicit bind was released (its last
    /// descriptor closed). The record carries the address it was bound to.
    pub const UDP_CLOSE: u8 = 8;
}

/// TCP socket states (include/net/tcp_states.h), as
/// `inet_sock_set_state` reports them.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// What the `inet_sock_set_state` probe does with a state transition. Of
/// the ~8 transitions of a connection, four matter, and at most one record
/// is sent per connection per side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpStep {
    /// Nothing to report.
    Ignore,
    /// Any -> LISTEN (process context): a listen record.
    Listen,
    /// LISTEN -> CLOSE (process context: the closing task, or the exiting
    /// process closing its files): a close record.
    ListenClosed,
    /// CLOSE -> SYN_SENT (process context): remember the connecting task.
    ConnectStarted,
    /// SYN_SENT -> ESTABLISHED or CLOSE (softirq): a connect record with
    /// this [`outcome`].
    ConnectEnded { outcome: u8 },
    /// SYN_RECV -> ESTABLISHED (softirq): an accept record.
    Accepted,
}

/// The step for a transition from `old` to `new`.
#[inline(always)]
pub fn tcp_step(old: i32, new: i32) -> TcpStep {
    use tcp_state::*;
    match (old, new) {
        (_, LISTEN) => TcpStep::Listen,
        (LISTEN, CLOSE) => TcpStep::ListenClosed,
        (CLOSE, SYN_SENT) => TcpStep::ConnectStarted,
        (SYN_SENT, ESTABLISHED) => TcpStep::ConnectEnded {
            outcome: outcome::ESTABLISHED,
        },
        (SYN_SENT, CLOSE) => TcpStep::ConnectEnded {
            outcome: outcome::FAILED,
        },
        (SYN_RECV, ESTABLISHED) => TcpStep::Accepted,
        _ => TcpStep::Ignore,
    }
}

/// A per-CPU rate limit: `window` is (window start ns, events in it).
/// Whether one more event is allowed at `now_ns`, `per_second` at most in
/// each one-second window.
#[inline(always)]
pub fn rate_allows(window: &mut [u64; 2], now_ns: u64, per_second: u64) -> bool {
    if now_ns.wrapping_sub(window[0]) >= 1_000_000_000 {
        window[0] = now_ns;
        window[1] = 0;
    }
    window[1] += 1;
    window[1] <= per_second
}

/// Outcome of a [`net_op::TCP_CONNECT`] (value of [`NetEvent::outcome`]).
pub mod outcome {
    /// Not applicable to this op.
    pub const NONE: u8 = 0;
    /// SYN_SENT -> ESTABLISHED.
    pub const ESTABLISHED: u8 = 1;
    /// SYN_SENT -> CLOSE: refused (RST), unreachable or timed out.
    pub const FAILED: u8 = 2;
    /// Refused by policy in the cgroup connect hook (the caller got EPERM).
    pub const DENIED: u8 = 3;
}

/// Flags of [`ExecEvent::flags`].
pub mod exec_flags {
    /// The argument block was longer than [`super::ARGV_LEN`] and was cut.
    pub const ARGV_TRUNCATED: u32 = 1;
    /// The argument block could not be read (page not present).
    pub const ARGV_READ_FAILED: u32 = 2;
    /// The executable path was longer than [`super::FILENAME_LEN`] and was cut.
    pub const FILENAME_TRUNCATED: u32 = 4;
    /// The parent pid could not be read.
    pub const PPID_READ_FAILED: u32 = 8;
    /// Policy matched: SIGKILL was sent before the program's first
    /// instruction.
    pub const KILLED: u32 = 16;
}

/// Bits of `ENFORCE[0]`: which enforcement tables hold entries (the probes
/// skip the lookups otherwise).
pub mod enforce {
    pub const EXEC_KILL: u32 = 1;
    pub const CONNECT_DENY: u32 = 2;
}

/// Bits of `FEATURES[0]`: optional work the agent turns on once the
/// probe that needs it is attached.
pub mod feature {
    /// `sock_release` is attached: `post_bind4/6` remember explicitly bound
    /// UDP sockets so that their release is reported (without it the
    /// entries would never be removed).
    pub const TRACK_UDP_BINDS: u32 = 1;
}

/// Bytes of an executable path an exec rule can match.
pub const RULE_PATH_LEN: usize = 248;

/// Data of an `EXEC_KILL` longest-prefix key: the task's cgroup v2 id
/// (native byte order, always matched in full), then the path given to
/// execve. A prefix rule (`/tmp/`) stops before the path's end, an exact
/// rule includes the terminating NUL.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRuleKey {
    pub cgroup_id: [u8; 8],
    pub path: [u8; RULE_PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<ExecRuleKey>() == 256);

impl ExecRuleKey {
    /// Key data of `pattern` in `cgroup_id`, with its prefix length in
    /// bits: a pattern ending in `/` is a prefix (every path under it), any
    /// other is an exact path and includes its NUL. `None` when the
    /// pattern does not fit ([`RULE_PATH_LEN`] - 1 bytes).
    pub fn new(cgroup_id: u64, pattern: &[u8]) -> Option<(u32, Self)> {
        if pattern.len() >= RULE_PATH_LEN {
            return None;
        }
        let mut path = [0u8; RULE_PATH_LEN];
        path[..pattern.len()].copy_from_slice(pattern);
        let bytes = if pattern.last() == Some(&b'/') {
            pattern.len()
        } else {
            pattern.len() + 1
        };
        let key = Self {
            cgroup_id: cgroup_id.to_ne_bytes(),
            path,
        };
        Some((((8 + bytes) * 8) as u32, key))
    }
}

/// Data of a `CONNECT_DENY` longest-prefix key: cgroup v2 id, then the
/// destination as an IPv6 address (IPv4 mapped as ::ffff:a.b.c.d). Value
/// 0 allows (an exception inside a denied range), any other denies.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectRuleKey {
    pub cgroup_id: [u8; 8],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ConnectRuleKey>() == 24);

impl ConnectRuleKey {
    /// Key data of the range `addr/prefix_len` (IPv6, IPv4 mapped, prefix
    /// at most 128) in `cgroup_id`, with its prefix length in bits.
    pub fn new(cgroup_id: u64, addr: [u8; 16], prefix_len: u8) -> (u32, Self) {
        let key = Self {
            cgroup_id: cgroup_id.to_ne_bytes(),
            addr,
        };
        (64 + u32::from(prefix_len.min(128)), key)
    }
}

/// Per-CPU counters in the `COUNTERS` array, indexed by these values.
/// Each increment is a record the kernel could not deliver in full.
pub mod counter {
    /// Ring buffer full: an exec record was dropped.
    pub const EXEC_DROPPED: u32 = 0;
    /// Ring buffer full: an exit record was dropped.
    pub const EXIT_DROPPED: u32 = 1;
    /// Ring buffer full: a fork record was dropped.
    pub const FORK_DROPPED: u32 = 2;
    /// Ring buffer full: a network record was dropped.
    pub const NET_DROPPED: u32 = 3;
    /// A kernel read failed and a record was sent with missing fields.
    pub const READ_ERRORS: u32 = 4;
    /// The TCP connect tracking map was full: the connect was not tracked.
    pub const CONNECT_TRACK_FULL: u32 = 5;
    /// Ring buffer full: an OOM-victim record was dropped (the victim's
    /// exit, if delivered, then lacks its `oom` marker). The agent reports
    /// it under `exit` in `loss` events: the marker belongs to an exit.
    pub const OOM_DROPPED: u32 = 6;
    /// The map of explicitly bound UDP sockets was full: the socket's
    /// release (its `close` record) will not be reported. The agent reports
    /// it under `network` in `loss` events: a close record is lost.
    pub const BIND_TRACK_FULL: u32 = 7;
    /// Number of counters (size of the array).
    pub const COUNT: u32 = 8;
}

/// Kernel layout the programs need, computed by the agent at load time and
/// written into the `OFFSETS` global (Rust eBPF has no CO-RE relocations):
/// struct field offsets from `/sys/kernel/btf/vmlinux`, and tracepoint
/// record offsets that differ between kernels from the tracepoint's
/// format file in tracefs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.start_time` (ns since boot, monotonic)
    pub task_start_time: u32,
    /// `mm_struct.arg_start`
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `task_struct.cgroups` (the task's `css_set`)
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp` (its cgroup v2 cgroup)
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn` (the cgroup's directory)
    pub cgroup_kn: u32,
    /// `cgroup.level` (depth below the root, which is 0)
    pub cgroup_level: u32,
    /// `kernfs_node.name`
    pub kernfs_node_name: u32,
    /// `kernfs_node.__parent` (`parent` before Linux 6.15)
    pub kernfs_node_parent: u32,
    /// `task_struct.group_leader` (the thread group's first thread)
    pub task_group_leader: u32,
    /// `task_struct.signal` (the thread group's shared `signal_struct`)
    pub task_signal: u32,
    /// `signal_struct.live` (threads not yet exiting; an `atomic_t`)
    pub signal_live: u32,
    /// Offset of `bool group_dead` in the `sched/sched_process_exit`
    /// record, or [`EXIT_GROUP_DEAD_ABSENT`] on kernels whose record has
    /// no such field (6.12 and older; 6.18 has it): the probe then decides group
    /// death from `signal->live`.
    pub exit_group_dead: u32,
    /// `signal_struct.flags` (`SIGNAL_GROUP_EXIT` set by exit_group or a
    /// fatal signal)
    pub signal_flags: u32,
    /// `signal_struct.group_exit_code` (the status wait(2) reports then)
    pub signal_group_exit_code: u32,
    /// `sock.__sk_common.skc_net` (its `net` pointer), or [`OFFSET_ABSENT`]
    pub sock_net: u32,
    /// `net.ns.inum`, or [`OFFSET_ABSENT`]
    pub net_ns_inum: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 88);

/// A [`KernelOffsets`] field the running kernel's BTF does not have (an
/// optional read: the record's field stays 0).
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// `SIGNAL_GROUP_EXIT` in `signal_struct.flags` (include/linux/sched/signal.h,
/// unchanged from 2.6 to 6.18).
pub const SIGNAL_GROUP_EXIT: u32 = 0x4;

/// Key of the `EXITS_SENT` map: a process (thread group id and its
/// leader's start time) whose exit record was sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitKey {
    pub tgid: u32,
    /// Padding, always 0.
    pub _pad: u32,
    pub start_time_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ExitKey>() == 16);

/// [`KernelOffsets::exit_group_dead`] when the exit record has no
/// `group_dead` field.
pub const EXIT_GROUP_DEAD_ABSENT: u32 = 0;

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Thread group id (the process id userspace sees). 0 when the record
    /// comes from interrupt context and the process is unknown.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real uid of the task.
    pub uid: u32,
    /// Real gid of the task.
    pub gid: u32,
    /// Padding, always 0.
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` when the record was made.
    pub ts_ns: u64,
    /// cgroup v2 id of the task (inode of its cgroup directory).
    pub cgroup_id: u64,
    /// Task command name, NUL padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 56);

/// A successful execve/execveat (`sched_process_exec`).
///
/// The kernel sends only the used prefix: the header and fixed fields, the
/// filename, and `argv_len` bytes of `argv`. [`ExecEvent::FIXED_LEN`] is
/// the offset of `filename`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Parent process (tgid of `real_parent`).
    pub ppid: u32,
    /// [`exec_flags`].
    pub flags: u32,
    /// Process start time, ns since boot (`task_struct.start_time`).
    pub start_time_ns: u64,
    /// Bytes of `filename` used (without NUL).
    pub filename_len: u16,
    /// Bytes of `argv` used: NUL-separated arguments.
    pub argv_len: u16,
    /// Full length of the argument block in the process, before truncation.
    pub argv_total_len: u32,
    /// Depth of the task's cgroup v2 cgroup (0 = root), or u32::MAX when
    /// it could not be read.
    pub cgroup_level: u32,
    /// Bytes of `cgroup_leaf` and `cgroup_parent` used.
    pub cgroup_leaf_len: u16,
    pub cgroup_parent_len: u16,
    /// Name of the task's cgroup v2 directory and of its parent: enough to
    /// name the container even when the cgroup is gone before userspace
    /// looks (containers that live a few milliseconds).
    pub cgroup_leaf: [u8; CGROUP_NAME_LEN],
    pub cgroup_parent: [u8; CGROUP_PARENT_LEN],
    /// Executable path as passed to execve (`bprm->filename`).
    pub filename: [u8; FILENAME_LEN],
    /// NUL-separated argument strings.
    pub argv: [u8; ARGV_LEN],
}
impl ExecEvent {
    /// Offset of `filename`: the size of the fixed part of the record.
    pub const FIXED_LEN: usize = core::mem::offset_of!(ExecEvent, filename);
    /// Offset of `argv`.
    pub const ARGV_OFFSET: usize = core::mem::offset_of!(ExecEvent, argv);
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == ExecEvent::ARGV_OFFSET + ARGV_LEN);

/// A process (thread group) ended (`sched_process_exit` with `group_dead`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task_struct.exit_code`: `(status << 8) | signal` as in wait(2).
    pub exit_code: u32,
    /// Padding, always 0.
    pub _pad: u32,
    /// Process start time, ns since boot.
    pub start_time_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 72);

/// A new process was forked (`sched_process_fork`, threads excluded). The
/// header describes the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// Pid of the new process.
    pub child_pid: u32,
    /// Padding, always 0.
    pub _pad: u32,
    /// Child start time, ns since boot.
    pub child_start_time_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 72);

/// A listen, bind, connect, send or accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvent {
    pub header: EventHeader,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// `IPPROTO_TCP` (6) or `IPPROTO_UDP` (17).
    pub protocol: u16,
    /// Local port, host byte order (0 if not yet bound).
    pub sport: u16,
    /// Remote port, host byte order (0 for listen/bind).
    pub dport: u16,
    /// One of [`net_op`].
    pub op: u8,
    /// One of [`outcome`].
    pub outcome: u8,
    /// Padding, always 0.
    pub _pad: [u8; 2],
    /// Inode number of the socket's network namespace (`ns_common.inum`,
    /// as `/proc/PID/ns/net` shows it); 0 when unknown (UDP records, which
    /// come from cgroup hooks, and kernels without the BTF offsets).
    pub netns: u32,
    /// Local address; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    /// Remote address; IPv4 in the first 4 bytes.
    pub daddr: [u8; 16],
    /// Kernel socket identity (socket cookie or `struct sock` address), to
    /// correlate records of one socket. Opaque.
    pub sock_id: u64,
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 112);

/// Bytes of the `oom/mark_victim` tracepoint record an [`OomEvent`]
/// carries: the longest layout known (Linux 6.8 and later: `pid` at 8,
/// then `comm`, `total_vm`, `anon_rss`, `file_rss`, `shmem_rss`, `uid`,
/// `pgtables`, `oom_score_adj`, 66 bytes), rounded up to 8. Older kernels'
/// records are shorter (5.10 and 6.1: `pid` only, 12 bytes): the bytes
/// past their end are not part of the record, and the agent reads only
/// the fields the kernel's format file lists.
pub const OOM_RECORD_LEN: usize = 72;

/// The kernel's OOM killer chose a victim (`oom/mark_victim`). The header
/// describes the current task (the one whose allocation failed), not the
/// victim: the victim is in `record`, the tracepoint's raw record, decoded
/// by the agent with the offsets of the kernel's format file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    pub header: EventHeader,
    /// The first [`OOM_RECORD_LEN`] bytes at the tracepoint's record.
    pub record: [u8; OOM_RECORD_LEN],
}
const _: () = assert!(core::mem::size_of::<OomEvent>() == 128);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, repr(C), no padding holes (explicit _pad fields).
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: byte arrays only.
    unsafe impl aya::Pod for super::ExecRuleKey {}
    // SAFETY: byte arrays only.
    unsafe impl aya::Pod for super::ConnectRuleKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_rule_prefixes_stop_before_the_nul_exact_paths_include_it() {
        let (bits, k) = ExecRuleKey::new(7, b"/tmp/").unwrap();
        assert_eq!(bits, (8 + 5) * 8);
        assert_eq!(&k.path[..6], b"/tmp/\0");
        assert_eq!(k.cgroup_id, 7u64.to_ne_bytes());
        let (bits, _) = ExecRuleKey::new(7, b"/bin/sh").unwrap();
        assert_eq!(bits, (8 + 8) * 8);
        assert!(ExecRuleKey::new(7, &[b'a'; RULE_PATH_LEN - 1]).is_some());
        assert!(ExecRuleKey::new(7, &[b'a'; RULE_PATH_LEN]).is_none());
    }

    #[test]
    fn connect_rule_prefix_counts_the_cgroup_id() {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(ConnectRuleKey::new(1, mapped, 128).0, 192);
        assert_eq!(ConnectRuleKey::new(1, mapped, 200).0, 192, "capped at /128");
        assert_eq!(ConnectRuleKey::new(1, [0; 16], 0).0, 64);
    }

    #[test]
    fn record_layouts_match_what_the_decoder_reads() {
        assert_eq!(
            core::mem::offset_of!(ExecEvent, filename),
            ExecEvent::FIXED_LEN
        );
        assert_eq!(
            core::mem::offset_of!(ExecEvent, argv),
            ExecEvent::ARGV_OFFSET
        );
        assert_eq!(core::mem::offset_of!(ExitEvent, exit_code), 56);
        assert_eq!(core::mem::offset_of!(ExitEvent, start_time_ns), 64);
        assert_eq!(core::mem::offset_of!(NetEvent, saddr), 72);
        assert_eq!(core::mem::offset_of!(KernelOffsets, exit_group_dead), 68);
        assert_eq!(
            core::mem::offset_of!(KernelOffsets, signal_group_exit_code),
            76
        );
        assert_eq!(core::mem::offset_of!(ExitKey, start_time_ns), 8);
        assert_eq!(core::mem::offset_of!(EventHeader, cgroup_id), 32);
    }

    #[test]
    fn tcp_transitions_that_make_records() {
        use tcp_state::*;
        assert_eq!(tcp_step(CLOSE, LISTEN), TcpStep::Listen);
        assert_eq!(tcp_step(CLOSE, SYN_SENT), TcpStep::ConnectStarted);
        assert_eq!(
            tcp_step(SYN_SENT, ESTABLISHED),
            TcpStep::ConnectEnded {
                outcome: outcome::ESTABLISHED
            }
        );
        assert_eq!(
            tcp_step(SYN_SENT, CLOSE),
            TcpStep::ConnectEnded {
                outcome: outcome::FAILED
            }
        );
        assert_eq!(tcp_step(SYN_RECV, ESTABLISHED), TcpStep::Accepted);
        assert_eq!(tcp_step(LISTEN, CLOSE), TcpStep::ListenClosed);
        // the rest of a connection's life makes no record
        for (old, new) in [
            (ESTABLISHED, 4),
            (4, 5),
            (5, CLOSE),
            (CLOSE, SYN_RECV),
            (SYN_RECV, CLOSE),
        ] {
            assert_eq!(tcp_step(old, new), TcpStep::Ignore, "{old} -> {new}");
        }
    }

    #[test]
    fn rate_limit_allows_n_per_second_window() {
        let mut w = [0u64; 2];
        let t0 = 5_000_000_000;
        assert!((0..10).all(|i| rate_allows(&mut w, t0 + i, 10)));
        assert!(
            !rate_allows(&mut w, t0 + 999_999_999, 10),
            "the 11th in the window"
        );
        assert!(rate_allows(&mut w, t0 + 1_000_000_000, 10), "a new window");
        assert_eq!(w, [t0 + 1_000_000_000, 1]);
    }

    #[test]
    fn flags_are_distinct_bits() {
        let flags = [
            exec_flags::ARGV_TRUNCATED,
            exec_flags::ARGV_READ_FAILED,
            exec_flags::FILENAME_TRUNCATED,
            exec_flags::PPID_READ_FAILED,
            exec_flags::KILLED,
        ];
        let mut all = 0;
        for f in flags {
            assert_eq!(f.count_ones(), 1);
            assert_eq!(all & f, 0);
            all |= f;
        }
        assert_eq!(enforce::EXEC_KILL & enforce::CONNECT_DENY, 0);
        const { assert!(counter::OOM_DROPPED < counter::COUNT) };
        const { assert!(counter::BIND_TRACK_FULL < counter::COUNT) };
    }
}
