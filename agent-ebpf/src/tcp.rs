//! TCP listen, connect outcome and accept.
use agent_common::{
    counter, kind, net_op, outcome, tcp_step, EventHeader, NetEvent, TcpStep, OFFSET_ABSENT,
};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext};

use crate::{
    diag::diag,
    emit::{anonymous_header, count, current_header, send},
    maps::CONNECTS,
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;

/// Interface: classic tracepoint `sock/inet_sock_set_state` (kernel 4.16+),
/// stable format: skaddr@8, oldstate@16, newstate@20, sport@24, dport@26,
/// family@28, protocol@30, saddr@32, daddr@36, saddr_v6@40, daddr_v6@56.
/// Of the ~8 transitions of a connection, four matter and at most one
/// record is sent per connection per side (a listener sends two):
/// - CLOSE -> LISTEN (process context): listen record;
/// - LISTEN -> CLOSE (process context: the task closing the listener's
///   last descriptor, or the exiting process closing its files): close
///   record with the listener's local address, netns and `skaddr`;
/// - CLOSE -> SYN_SENT (process context): remember the task in `CONNECTS`;
/// - SYN_SENT -> ESTABLISHED | CLOSE (softirq): connect record with outcome;
/// - SYN_RECV -> ESTABLISHED (softirq): accept record, task unknown.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if let Err(e) = try_state(&ctx) {
        count(counter::READ_ERRORS);
        diag!(&ctx, "inet_sock_set_state: record not sent ({})", e);
    }
    0
}

/// Direct load from the tracepoint record (the verifier allows plain
/// context loads within the record; no helper call needed).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is inside the record (stable format file) and the
    // record lives for the whole program run.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset).cast::<T>()) }
}

fn try_state(ctx: &TracePointContext) -> Result<(), i32> {
    // Most transitions are not interesting: decide on three direct loads,
    // before any map access or helper call.
    let protocol: u16 = field(ctx, 30);
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let step = tcp_step(field(ctx, 16), field(ctx, 20));
    if step == TcpStep::Ignore {
        return Ok(());
    }
    let skaddr: u64 = field(ctx, 8);
    let (header, op, result) = match step {
        TcpStep::Ignore => return Ok(()),
        TcpStep::Listen => (current_header(kind::NET), net_op::TCP_LISTEN, outcome::NONE),
        TcpStep::ListenClosed => (current_header(kind::NET), net_op::TCP_CLOSE, outcome::NONE),
        TcpStep::ConnectStarted => {
            let header = current_header(kind::NET);
            if CONNECTS.insert(skaddr, header, 0).is_err() {
                count(counter::CONNECT_TRACK_FULL);
                diag!(
                    ctx,
                    "inet_sock_set_state: connect not tracked, CONNECTS map full"
                );
            }
            return Ok(());
        }
        TcpStep::ConnectEnded { outcome: result } => {
            // SAFETY: the value is copied out before the entry is removed.
            let header = match unsafe { CONNECTS.get(skaddr) } {
                Some(h) => *h,
                // Connect began before the agent: the task is unknown.
                None => anonymous_header(kind::NET),
            };
            let _ = CONNECTS.remove(skaddr);
            (header, net_op::TCP_CONNECT, result)
        }
        TcpStep::Accepted => (
            anonymous_header(kind::NET),
            net_op::TCP_ACCEPT,
            outcome::NONE,
        ),
    };
    send_tcp(ctx, header, op, result, skaddr)
}

/// The network namespace of socket `sk` (`sk->__sk_common.skc_net.net->ns.inum`,
/// offsets from the agent), or 0 when a read fails or the kernel's BTF
/// lacks the fields. Accepts are attributed to the listener of their own
/// namespace: two pods listening on one port are told apart by this.
#[inline(always)]
fn netns_of(sk: u64) -> u32 {
    let offs = crate::maps::offsets();
    if offs.sock_net == OFFSET_ABSENT || offs.net_ns_inum == OFFSET_ABSENT {
        return 0;
    }
    crate::task::read::<u64>(sk, offs.sock_net)
        .and_then(|net| crate::task::read::<u32>(net, offs.net_ns_inum))
        .unwrap_or(0)
}

fn send_tcp(
    ctx: &TracePointContext,
    header: EventHeader,
    op: u8,
    result: u8,
    skaddr: u64,
) -> Result<(), i32> {
    let family: u16 = field(ctx, 28);
    let mut ev = NetEvent {
        header,
        family,
        protocol: IPPROTO_TCP,
        sport: field(ctx, 24),
        dport: field(ctx, 26),
        op,
        outcome: result,
        sock_id: skaddr,
        netns: netns_of(skaddr),
        ..NetEvent::default()
    };
    if family == AF_INET {
        ev.saddr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, 32));
        ev.daddr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, 36));
    } else {
        ev.saddr = field(ctx, 40);
        ev.daddr = field(ctx, 56);
    }
    send(ctx, &ev, counter::NET_DROPPED);
    Ok(())
}
