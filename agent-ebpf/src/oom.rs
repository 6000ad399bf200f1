//! OOM kills: the kernel's OOM killer chose a victim.
use agent_common::{counter, kind, OomEvent, OOM_RECORD_LEN};
use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext,
    EbpfContext,
};

use crate::{
    diag::diag,
    emit::{count, current_header, send},
};

/// Interface: classic tracepoint `oom/mark_victim` (kernel 4.13+), fired
/// in `mark_oom_victim` when the OOM killer (global or a memory cgroup's)
/// has chosen a victim and is about to send it SIGKILL. The record
/// describes the victim, not `current` (the task whose allocation
/// failed): `int pid` at offset 8 on every kernel; Linux 6.8 and later
/// add `comm`, `total_vm`, `anon_rss`, `file_rss`, `shmem_rss` (kB),
/// `uid`, `pgtables` and `oom_score_adj`. The probe copies the first
/// [`OOM_RECORD_LEN`] bytes of the record as they are (on older kernels
/// the bytes past the record's end are not part of it) and the agent
/// decodes them with the offsets of this kernel's format file: one
/// program for every layout. Fires once per OOM kill: never hot.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_mark_victim(&ctx) {
        count(counter::READ_ERRORS);
        diag!(
            &ctx,
            "mark_victim: record not sent, the tracepoint record was unreadable ({})",
            e
        );
    }
    0
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    let mut ev = OomEvent {
        header: current_header(kind::OOM),
        record: [0u8; OOM_RECORD_LEN],
    };
    // SAFETY: dst holds OOM_RECORD_LEN bytes; the helper checks the source
    // (the tracepoint's record, in the per-CPU trace buffer) and fails
    // cleanly.
    let rc = unsafe {
        bpf_probe_read_kernel(
            ev.record.as_mut_ptr().cast(),
            OOM_RECORD_LEN as u32,
            ctx.as_ptr().cast_const(),
        )
    };
    if rc != 0 {
        return Err(rc as i32);
    }
    send(ctx, &ev, counter::OOM_DROPPED);
    Ok(())
}
