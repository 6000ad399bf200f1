//! Maps shared by all probes. Sizes here are defaults; the agent may
//! resize `EVENTS` at load time (`ring_buffer_bytes` in the config).
use agent_common::{
    counter, path::PathNorm, ConnectRuleKey, EventHeader, ExecEvent, ExecRuleKey, ExitKey,
    KernelOffsets,
};
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// All records, kernel -> agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU loss and error counters, indexed by `agent_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU scratch space for building an exec record (too big for the stack).
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// TCP connects in flight: `struct sock` address -> the connecting task,
/// captured at CLOSE -> SYN_SENT (process context) and consumed when the
/// handshake ends in softirq context (every SYN_SENT socket reaches
/// ESTABLISHED or CLOSE, so entries do not leak). A preallocated hash map:
/// cheaper per update than an LRU map; when full, connects are counted
/// as untracked.
#[map]
pub static CONNECTS: HashMap<u64, EventHeader> = HashMap::with_max_entries(16384, 0);

/// UDP (socket cookie, peer) pairs already reported, so that a stream of
/// datagrams to one peer yields one record.
#[map]
pub static UDP_PEERS: LruHashMap<UdpPeerKey, u8> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpPeerKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// Processes whose exit record was sent, on kernels whose exit record has
/// no `group_dead`: every thread that reaches the exit tracepoint after the
/// last `signal->live` decrement sees 0, and only the first to claim the
/// process here sends its record. LRU: entries age out; a reused pid has a
/// new start time, so a new key.
#[map]
pub static EXITS_SENT: LruHashMap<ExitKey, u8> = LruHashMap::with_max_entries(8192, 0);

/// Which enforcement tables hold entries (`agent_common::enforce` bits);
/// written by the agent when policy changes.
#[map]
pub static ENFORCE: Array<u32> = Array::with_max_entries(1, 0);

/// Exec kill rules: (cgroup id, path prefix or exact path) -> rule slot.
#[map]
pub static EXEC_KILL: LpmTrie<ExecRuleKey, u32> = LpmTrie::with_max_entries(65536, 0);

/// Connect deny rules: (cgroup id, destination prefix) -> 0 allow, else
/// deny (rule slot).
#[map]
pub static CONNECT_DENY: LpmTrie<ConnectRuleKey, u32> = LpmTrie::with_max_entries(65536, 0);

/// Per-CPU scratch for the exec rule key (256 bytes: too big for the stack
/// beside the exec probe's own locals).
#[map]
pub static EXEC_RULE_KEY: PerCpuArray<Key<ExecRuleKey>> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU state of the path normaliser that builds the exec rule key
/// (agent-common `path`): in map memory, so the verifier sees one state
/// per byte, not one per history.
#[map]
pub static PATH_NORM: PerCpuArray<PathNorm> = PerCpuArray::with_max_entries(1, 0);

/// UDP sockets with an explicit bind, by socket cookie, filled at
/// `post_bind4|6` and emptied at `sock_release`: only these sockets'
/// releases are reported (a client's implicit bind is not a service).
/// Filled only while `sock_release` is attached (`FEATURES`), so entries
/// cannot pile up. A preallocated hash map: when full, the bind is still
/// reported and the miss counted (`BIND_TRACK_FULL`).
#[map]
pub static BOUND_UDP: HashMap<u64, BoundUdp> = HashMap::with_max_entries(16384, 0);

/// The local side of a bound UDP socket, as bound: a later `connect(2)`
/// can change the socket's own address, the bind is what was reported.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BoundUdp {
    pub saddr: [u8; 16],
    pub sport: u16,
    pub family: u16,
    pub _pad: u32,
}

/// `agent_common::feature` bits, written by the agent after attaching.
#[map]
pub static FEATURES: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn feature(bit: u32) -> bool {
    FEATURES.get(0).is_some_and(|v| *v & bit != 0)
}

#[inline(always)]
pub fn enforcing(bit: u32) -> bool {
    ENFORCE.get(0).is_some_and(|v| *v & bit != 0)
}

/// Kernel struct offsets, written by the agent before load.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_mm: 0,
    task_exit_code: 0,
    task_start_time: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    cgroup_level: 0,
    kernfs_node_name: 0,
    kernfs_node_parent: 0,
    task_group_leader: 0,
    task_signal: 0,
    signal_live: 0,
    exit_group_dead: 0,
    signal_flags: 0,
    signal_group_exit_code: 0,
    sock_net: 0,
    net_ns_inum: 0,
};

/// Ring buffer fill level (bytes) above which a record wakes the reader.
/// Below it records are submitted without a wakeup and the reader polls on
/// a short timer: a wakeup per record costs microseconds in a VM.
#[unsafe(no_mangle)]
pub static WAKEUP_THRESHOLD: u64 = 1024 * 1024;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a global the loader patched; volatile so the
    // compiler does not fold the zero initializer.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS) }
}
