//! TCP listen, connect outcome and accept.
use agent_common::{counter, kind, net_op, outcome, EventHeader, NetEvent};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    emit::{anonymous_header, count, current_header, send},
    maps::CONNECTS,
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Interface: classic tracepoint `sock/inet_sock_set_state` (kernel 4.16+),
/// stable format: skaddr@8, oldstate@16, newstate@20, sport@24, dport@26,
/// family@28, protocol@30, saddr@32, daddr@36, saddr_v6@40, daddr_v6@56.
/// Of the ~8 transitions of a connection, four matter and at most one
/// record is sent per connection per side:
/// - CLOSE -> LISTEN (process context): listen record;
/// - CLOSE -> SYN_SENT (process context): remember the task in `CONNECTS`;
/// - SYN_SENT -> ESTABLISHED | CLOSE (softirq): connect record with outcome;
/// - SYN_RECV -> ESTABLISHED (softirq): accept record, task unknown.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if try_state(&ctx).is_err() {
        count(counter::READ_ERRORS);
    }
    0
}

fn try_state(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY (all read_at): offsets from the stable format file.
    let protocol: u16 = unsafe { ctx.read_at(30)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = unsafe { ctx.read_at(16)? };
    let new: i32 = unsafe { ctx.read_at(20)? };
    let skaddr: u64 = unsafe { ctx.read_at(8)? };

    let (header, op, result) = match (old, new) {
        (_, TCP_LISTEN) => (current_header(kind::NET), net_op::TCP_LISTEN, outcome::NONE),
        (TCP_CLOSE, TCP_SYN_SENT) => {
            let header = current_header(kind::NET);
            if CONNECTS.insert(&skaddr, &header, 0).is_err() {
                count(counter::CONNECT_TRACK_FULL);
            }
            return Ok(());
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) | (TCP_SYN_SENT, TCP_CLOSE) => {
            let result = if new == TCP_ESTABLISHED {
                outcome::ESTABLISHED
            } else {
                outcome::FAILED
            };
            // SAFETY: the value is copied out before the entry is removed.
            let header = match unsafe { CONNECTS.get(&skaddr) } {
                Some(h) => *h,
                // Connect began before the agent: the task is unknown.
                None => anonymous_header(kind::NET),
            };
            let _ = CONNECTS.remove(&skaddr);
            (header, net_op::TCP_CONNECT, result)
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => (
            anonymous_header(kind::NET),
            net_op::TCP_ACCEPT,
            outcome::NONE,
        ),
        _ => return Ok(()),
    };
    send_tcp(ctx, header, op, result, skaddr)
}

fn send_tcp(
    ctx: &TracePointContext,
    header: EventHeader,
    op: u8,
    result: u8,
    skaddr: u64,
) -> Result<(), i32> {
    let family: u16 = unsafe { ctx.read_at(28)? };
    let mut ev = NetEvent {
        header,
        family,
        protocol: IPPROTO_TCP,
        sport: unsafe { ctx.read_at(24)? },
        dport: unsafe { ctx.read_at(26)? },
        op,
        outcome: result,
        sock_id: skaddr,
        ..NetEvent::default()
    };
    if family == AF_INET {
        let s: [u8; 4] = unsafe { ctx.read_at(32)? };
        let d: [u8; 4] = unsafe { ctx.read_at(36)? };
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    } else {
        ev.saddr = unsafe { ctx.read_at(40)? };
        ev.daddr = unsafe { ctx.read_at(56)? };
    }
    send(&ev, counter::NET_DROPPED);
    Ok(())
}
