//! Record headers, ring buffer output and loss counting.
use agent_common::{EventHeader, COMM_LEN};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
};

use aya_ebpf::EbpfContext;

use crate::{
    diag::diag,
    maps::{COUNTERS, EVENTS, WAKEUP_THRESHOLD},
};

/// Header describing the current task.
#[inline(always)]
pub fn current_header(kind: u32) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        // SAFETY: helpers without preconditions.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        // SAFETY: as above, a helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
    }
}

/// Header for a record made in interrupt context, where the current task
/// is unrelated to the event.
#[inline(always)]
pub fn anonymous_header(kind: u32) -> EventHeader {
    EventHeader {
        kind,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        ..EventHeader::default()
    }
}

/// Add one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Wake the reader only when the buffer is filling up.
#[inline(always)]
fn wakeup_flags() -> u64 {
    // SAFETY: plain read of a loader-patched global.
    let threshold = unsafe { core::ptr::read_volatile(&raw const WAKEUP_THRESHOLD) };
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) > threshold {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Send a fixed-size record; on failure count it under `dropped`.
#[inline(always)]
pub fn send<C: EbpfContext, T>(ctx: &C, record: &T, dropped: u32) {
    if EVENTS.output::<T>(record, wakeup_flags()).is_err() {
        count(dropped);
        diag!(
            ctx,
            "ring buffer full: record dropped (loss counter {})",
            dropped
        );
    }
}

/// Send the first `len` bytes at `start`; on failure count it under `dropped`.
///
/// # Safety
/// `start..start+len` must lie inside one map value.
#[inline(always)]
pub unsafe fn send_bytes<C: EbpfContext>(ctx: &C, start: *const u8, len: usize, dropped: u32) {
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        count(dropped);
        diag!(
            ctx,
            "ring buffer full: record dropped (loss counter {})",
            dropped
        );
    }
}
