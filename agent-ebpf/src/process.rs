//! Process lifecycle: exec, exit and fork.
use agent_common::{
    counter, enforce, exec_flags, kind, path::norm_state, ExecEvent, ExitEvent, ExitKey, ForkEvent,
    KernelOffsets, ARGV_LEN, EXIT_GROUP_DEAD_ABSENT, FILENAME_LEN, RULE_PATH_LEN,
    SIGNAL_GROUP_EXIT,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user, bpf_send_signal},
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};

use crate::{
    diag::diag,
    emit::{count, current_header, send, send_bytes},
    maps::{enforcing, offsets, EXEC_KILL, EXEC_RULE_KEY, EXEC_SCRATCH, EXITS_SENT, PATH_NORM},
    task::read,
};

/// A successful exec. Interface: classic tracepoint
/// `sched/sched_process_exec` (stable format: `__data_loc char[] filename`
/// at offset 8), fired after the point of no return, in the new program's
/// context, so a failed execve never produces a record. The argument block
/// is read from the new `mm` (`arg_start..arg_end`), already in place.
/// Minimum kernel 3.x; `bpf_ktime_get_boot_ns` needs 5.8.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_exec(&ctx) {
        count(counter::READ_ERRORS);
        diag!(
            &ctx,
            "sched_process_exec: record not sent, a kernel read failed ({})",
            e
        );
    }
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let ev = EXEC_SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU scratch slot owned by this program run.
    let ev = unsafe { &mut *ev };
    let offs = offsets();
    ev.header = current_header(kind::EXEC);
    ev.flags = 0;
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };

    ev.ppid = match read::<u64>(task, offs.task_real_parent)
        .and_then(|parent| read::<u32>(parent, offs.task_tgid))
    {
        Ok(ppid) => ppid,
        Err(e) => {
            ev.flags |= exec_flags::PPID_READ_FAILED;
            diag!(ctx, "sched_process_exec: parent pid unreadable ({})", e);
            0
        }
    };
    ev.start_time_ns = read::<u64>(task, offs.task_start_time).unwrap_or(0);
    cgroup_names(task, ev);

    // filename: __data_loc = (len << 16) | offset from the record start.
    // SAFETY: offset 8 is inside the tracepoint record (format file).
    let loc: u32 = unsafe { ctx.read_at(8)? };
    let name_len = (loc >> 16) as usize; // includes the NUL
                                         // SAFETY: the __data_loc offset points inside the same record; the
                                         // pointer is only read through bpf_probe_read_kernel_str_bytes.
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    // SAFETY: reading kernel memory through the checked helper.
    let used =
        unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.filename) }.map_or(0, <[u8]>::len);
    ev.filename_len = used as u16;
    if name_len > FILENAME_LEN {
        ev.flags |= exec_flags::FILENAME_TRUNCATED;
    }
    if enforcing(enforce::EXEC_KILL) && kill_rule_matches(ev) {
        // SIGKILL to the current task: delivered on the way back to user
        // space, before the new program's first instruction. Helper
        // bpf_send_signal (kernel 5.3+).
        // SAFETY: helper without memory arguments.
        if unsafe { bpf_send_signal(9) } == 0 {
            ev.flags |= exec_flags::KILLED;
        }
    }

    // argv: the NUL-separated block between mm->arg_start and mm->arg_end.
    let mut n: usize = 0;
    ev.argv_total_len = 0;
    if let Ok(mm) = read::<u64>(task, offs.task_mm) {
        let start = read::<u64>(mm, offs.mm_arg_start).unwrap_or(0);
        let end = read::<u64>(mm, offs.mm_arg_end).unwrap_or(0);
        if start != 0 && end > start {
            let total = end - start;
            ev.argv_total_len = total as u32;
            n = if total > ARGV_LEN as u64 {
                ev.flags |= exec_flags::ARGV_TRUNCATED;
                ARGV_LEN
            } else {
                total as usize
            };
            // SAFETY: dst has ARGV_LEN bytes and n <= ARGV_LEN.
            let rc = unsafe {
                bpf_probe_read_user(ev.argv.as_mut_ptr().cast(), n as u32, start as *const _)
            };
            if rc != 0 {
                ev.flags |= exec_flags::ARGV_READ_FAILED;
                diag!(
                    ctx,
                    "sched_process_exec: argv unreadable ({} bytes: {})",
                    n,
                    rc
                );
                n = 0;
            }
        }
    } else {
        ev.flags |= exec_flags::ARGV_READ_FAILED;
    }
    ev.argv_len = n as u16;
    if n > ARGV_LEN {
        return Err(-1);
    }
    // SAFETY: the prefix lies inside the scratch value (n <= ARGV_LEN).
    unsafe {
        send_bytes(
            ctx,
            (ev as *const ExecEvent).cast(),
            ExecEvent::ARGV_OFFSET + n,
            counter::EXEC_DROPPED,
        );
    };
    Ok(())
}

/// Whether (cgroup, path) has a kill entry in `EXEC_KILL` (longest
/// prefix), for the path normalised (`//`, `.` and `..` undone:
/// agent-common `path`, the code the agent's rules judge by) or for the
/// path as given: `..` is undone lexically, and through a symlink or a
/// descriptor directory (`/dev/fd/N/..`) the kernel's walk goes
/// elsewhere, so either one matching kills.
#[inline(always)]
fn kill_rule_matches(ev: &ExecEvent) -> bool {
    let Some(key) = EXEC_RULE_KEY.get_ptr_mut(0) else {
        return false;
    };
    let Some(norm) = PATH_NORM.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch slots owned by this program run.
    let (key, norm) = unsafe { (&mut *key, &mut *norm) };
    key.prefix_len = (RULE_PATH_LEN as u32 + 8) * 8;
    key.data.cgroup_id = ev.header.cgroup_id.to_ne_bytes();
    norm.reset();
    for i in 0..FILENAME_LEN {
        if !norm.push(&mut key.data.path, ev.filename[i]) {
            break;
        }
    }
    // a filename that filled its buffer ends here
    norm.push(&mut key.data.path, 0);
    // SAFETY: read of a field of the live per-CPU value.
    let relative =
        unsafe { core::ptr::read_volatile(&raw const norm.state) } == norm_state::RELATIVE;
    // Value 0: an allowed file inside a killed prefix.
    if !relative && EXEC_KILL.get(&*key).is_some_and(|v| *v != 0) {
        return true;
    }
    // Bytes after the path's NUL do not matter: an entry never extends
    // past its own path's NUL, which the lookup must match.
    // SAFETY: both buffers hold at least RULE_PATH_LEN bytes.
    let rc = unsafe {
        bpf_probe_read_kernel(
            key.data.path.as_mut_ptr().cast(),
            RULE_PATH_LEN as u32,
            ev.filename.as_ptr().cast(),
        )
    };
    rc == 0 && EXEC_KILL.get(&*key).is_some_and(|v| *v != 0)
}

/// Names of the task's cgroup v2 directory and its parent
/// (`task->cgroups->dfl_cgrp->kn->{name, __parent->name}`), and its depth.
#[inline(always)]
fn cgroup_names(task: u64, ev: &mut ExecEvent) {
    let offs = offsets();
    ev.cgroup_level = u32::MAX;
    ev.cgroup_leaf_len = 0;
    ev.cgroup_parent_len = 0;
    let Ok(cgrp) = read::<u64>(task, offs.task_cgroups)
        .and_then(|css_set| read::<u64>(css_set, offs.css_set_dfl_cgrp))
    else {
        return;
    };
    if let Ok(level) = read::<i32>(cgrp, offs.cgroup_level) {
        ev.cgroup_level = level as u32;
    }
    let Ok(kn) = read::<u64>(cgrp, offs.cgroup_kn) else {
        return;
    };
    ev.cgroup_leaf_len = kernfs_name(kn, &mut ev.cgroup_leaf);
    if let Ok(parent) = read::<u64>(kn, offs.kernfs_node_parent) {
        ev.cgroup_parent_len = kernfs_name(parent, &mut ev.cgroup_parent);
    }
}

/// `kn->name` into `dst`; bytes used (0 when unreadable).
#[inline(always)]
fn kernfs_name(kn: u64, dst: &mut [u8]) -> u16 {
    let Ok(name) = read::<u64>(kn, offsets().kernfs_node_name) else {
        return 0;
    };
    // SAFETY: reading kernel memory through the checked helper.
    unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, dst) }.map_or(0, |s| s.len() as u16)
}

/// A process ended. Interface: classic tracepoint `sched/sched_process_exit`,
/// fired for every exiting thread after `exit_code` is set and after
/// `signal->live` was decremented (`do_exit`, Linux 5.10 to 6.18). One
/// record is sent per thread group:
/// - where the record has `bool group_dead` (6.18; not 6.12), the agent
///   passes its offset from the format file and the probe reads it;
/// - before that, a thread that finds `signal->live` at 0 is past the last
///   decrement; several threads of an `exit_group` can find 0 at once, so
///   the first to claim the process in `EXITS_SENT` sends the record.
///
/// The record names the process by its group leader's start time (the
/// last thread may not be the leader) and carries the status wait(2)
/// reports: the group's exit code after `exit_group` or a fatal signal,
/// the leader's own otherwise.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_exit(&ctx) {
        count(counter::READ_ERRORS);
        diag!(
            &ctx,
            "sched_process_exit: record not sent, a kernel read failed ({})",
            e
        );
    }
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let offs = offsets();
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let leader = read::<u64>(task, offs.task_group_leader).unwrap_or(task);
    let start_time_ns = read::<u64>(leader, offs.task_start_time).unwrap_or(0);
    let header = current_header(kind::EXIT);
    if !last_thread(ctx, task, &offs, header.pid, start_time_ns)? {
        return Ok(());
    }
    let ev = ExitEvent {
        header,
        exit_code: wait_status(task, leader, &offs),
        _pad: 0,
        start_time_ns,
    };
    send(ctx, &ev, counter::EXIT_DROPPED);
    Ok(())
}

/// Whether this thread sends its thread group's exit record.
#[inline(always)]
fn last_thread(
    ctx: &TracePointContext,
    task: u64,
    offs: &KernelOffsets,
    tgid: u32,
    start_time_ns: u64,
) -> Result<bool, i32> {
    if offs.exit_group_dead != EXIT_GROUP_DEAD_ABSENT {
        // SAFETY: the offset comes from this kernel's format file.
        let dead: u8 = unsafe { ctx.read_at(offs.exit_group_dead as usize)? };
        return Ok(dead != 0);
    }
    let signal = read::<u64>(task, offs.task_signal)?;
    if read::<i32>(signal, offs.signal_live)? != 0 {
        return Ok(false);
    }
    let key = ExitKey {
        tgid,
        _pad: 0,
        start_time_ns,
    };
    match EXITS_SENT.insert(key, 1, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(true),
        // another thread of the process claimed it and sends the record
        Err(EEXIST) => Ok(false),
        // the map refused (memory): send anyway, userspace drops a repeat
        Err(_) => {
            count(counter::READ_ERRORS);
            Ok(true)
        }
    }
}

/// `-EEXIST` from a map insert with `BPF_NOEXIST`.
const EEXIST: i32 = -17;

/// The status wait(2) reports for the process: `signal->group_exit_code`
/// once `SIGNAL_GROUP_EXIT` is set, else the leader's `exit_code`.
#[inline(always)]
fn wait_status(task: u64, leader: u64, offs: &KernelOffsets) -> u32 {
    if let Ok(signal) = read::<u64>(task, offs.task_signal) {
        let group_exit = read::<u32>(signal, offs.signal_flags)
            .is_ok_and(|flags| flags & SIGNAL_GROUP_EXIT != 0);
        if group_exit {
            if let Ok(code) = read::<u32>(signal, offs.signal_group_exit_code) {
                return code;
            }
        }
    }
    read::<u32>(leader, offs.task_exit_code).unwrap_or(0)
}

/// A new process (not a thread). Interface: BTF tracepoint
/// `tp_btf/sched_process_fork(struct task_struct *parent, struct task_struct *child)`,
/// kernel 5.5+. Fires in the parent's context.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = try_fork(&ctx) {
        count(counter::READ_ERRORS);
        diag!(
            &ctx,
            "sched_process_fork: record not sent, a kernel read failed ({})",
            e
        );
    }
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let child: u64 = ctx.arg(1);
    let offs = offsets();
    let pid = read::<u32>(child, offs.task_pid)?;
    let tgid = read::<u32>(child, offs.task_tgid)?;
    if pid != tgid {
        return Ok(()); // a new thread, not a process
    }
    let ev = ForkEvent {
        header: current_header(kind::FORK),
        child_pid: tgid,
        _pad: 0,
        child_start_time_ns: read::<u64>(child, offs.task_start_time).unwrap_or(0),
    };
    send(ctx, &ev, counter::FORK_DROPPED);
    Ok(())
}
