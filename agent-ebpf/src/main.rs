//! Spyglass kernel probes. One hook family per module; every entry point
//! is a thin wrapper around a `try_` function, and every failure is
//! counted in `COUNTERS` (see `emit.rs`), never lost silently.
//!
//! Hooks used (all available without kprobes, fentry or LSM):
//! - `tracepoint/sched/sched_process_exec`, `sched_process_exit` (process.rs)
//! - `tp_btf/sched_process_fork` (process.rs)
//! - `tracepoint/sock/inet_sock_set_state` (tcp.rs)
//! - `tracepoint/oom/mark_victim` (oom.rs)
//! - `cgroup/connect4|6`, `cgroup/sendmsg4|6`, `cgroup/post_bind4|6`,
//!   `cgroup/sock_release` (udp.rs)
#![no_std]
#![no_main]
// Program contexts (one pointer each) are passed by value, as aya's
// entry points receive them.
#![allow(clippy::needless_pass_by_value)]

mod diag;
mod emit;
mod maps;
mod oom;
mod process;
mod task;
mod tcp;
mod udp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic; the verifier rejects any path that could.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
