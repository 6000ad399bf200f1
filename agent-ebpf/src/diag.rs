//! Kernel-side diagnostics (`[kernel] debug_log` in the agent's config):
//! why a probe dropped a record or sent it incomplete, as aya-log lines
//! the agent writes to its log, at most [`PER_SECOND`] lines per CPU.
//!
//! Off (the default) the agent loads the programs with `DEBUG_LOG` = 0 and
//! aya-log's level at off: a diagnostic then costs one global load, and
//! only on the error paths, never on a record that was sent whole.
use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::map, maps::PerCpuArray};

/// 1 when the agent asked for diagnostics; patched before load.
#[unsafe(no_mangle)]
pub static DEBUG_LOG: u8 = 0;

/// Lines allowed per CPU per second.
const PER_SECOND: u64 = 10;

/// Per-CPU rate window: (window start, lines in it).
#[map]
static DIAG_RATE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Whether a diagnostic may be written now.
#[inline(always)]
pub fn allowed() -> bool {
    // SAFETY: a plain read of a loader-patched global.
    if unsafe { core::ptr::read_volatile(&raw const DEBUG_LOG) } == 0 {
        return false;
    }
    let Some(slot) = DIAG_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let slot = unsafe { &mut *slot };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    agent_common::rate_allows(slot, now, PER_SECOND)
}

/// `diag!(ctx, "format", args..)`: an aya-log warning when diagnostics are
/// on and the CPU's budget allows.
macro_rules! diag {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::diag::allowed() {
            aya_log_ebpf::warn!($ctx, $($arg)+);
        }
    };
}
pub(crate) use diag;
