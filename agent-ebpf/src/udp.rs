//! UDP bind, connect, first send to a peer and release of a bound socket,
//! from cgroup socket hooks attached at the cgroup v2 root. They run only
//! on those operations, in the calling task's context, and always allow
//! the operation (return 1).
use agent_common::{counter, enforce, feature, kind, net_op, outcome, ConnectRuleKey, NetEvent};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sock_addr},
    maps::lpm_trie::Key,
    programs::{SockAddrContext, SockContext},
    EbpfContext,
};

use crate::{
    diag::diag,
    emit::{count, current_header, send},
    maps::{enforcing, BoundUdp, UdpPeerKey, BOUND_UDP, CONNECT_DENY, UDP_PEERS},
};

const IPPROTO_UDP: u16 = 17;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u16 = 6;
const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// `cgroup/connect4` (BPF_CGROUP_INET4_CONNECT, kernel 4.17+). Returns 0
/// (the caller gets EPERM) when a deny-connect rule covers the task's
/// cgroup and the destination.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    if denied(&ctx, AF_INET, net_op::UDP_CONNECT) {
        return DENY;
    }
    on_sock_addr(&ctx, AF_INET, net_op::UDP_CONNECT, false);
    ALLOW
}

/// `cgroup/connect6` (BPF_CGROUP_INET6_CONNECT, kernel 4.17+).
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    if denied(&ctx, AF_INET6, net_op::UDP_CONNECT) {
        return DENY;
    }
    on_sock_addr(&ctx, AF_INET6, net_op::UDP_CONNECT, false);
    ALLOW
}

/// Look the (cgroup, destination) up in `CONNECT_DENY`; on a deny, report
/// the refused connect (TCP, or UDP as `udp_op`: a connect or a send to
/// an explicit destination) with outcome `DENIED`.
#[inline(always)]
fn denied(ctx: &SockAddrContext, family: u16, udp_op: u8) -> bool {
    if !enforcing(enforce::CONNECT_DENY) {
        return false;
    }
    // SAFETY: the context pointer is valid for the program run.
    let sa = unsafe { &*ctx.sock_addr };
    let mut daddr = [0u8; 16];
    let mut key = ConnectRuleKey {
        cgroup_id: [0; 8],
        addr: [0; 16],
    };
    if family == AF_INET {
        // SAFETY: ctx field; the verifier allows 4-byte loads.
        let ip4 = unsafe { core::ptr::read_volatile(&raw const sa.user_ip4) }.to_ne_bytes();
        daddr[..4].copy_from_slice(&ip4);
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        key.addr[12..].copy_from_slice(&ip4);
    } else {
        daddr = ip6_words(&sa.user_ip6);
        key.addr = daddr;
    }
    let header = current_header(kind::NET);
    key.cgroup_id = header.cgroup_id.to_ne_bytes();
    match CONNECT_DENY.get(Key::new(((8 + 16) * 8) as u32, key)) {
        Some(v) if *v != 0 => {}
        _ => return false,
    }
    let (protocol, op) = if sa.protocol == u32::from(IPPROTO_UDP) {
        (IPPROTO_UDP, udp_op)
    } else {
        (IPPROTO_TCP, net_op::TCP_CONNECT)
    };
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if op == net_op::UDP_SEND {
        // Refused sends are reported once per socket and peer, as allowed
        // ones are: a loop of sendto must not flood the ring buffer. The
        // key's last field tells a refused peer from an allowed one.
        let peer = UdpPeerKey {
            cookie,
            addr: daddr,
            port: u16::from_be(sa.user_port as u16),
            family,
            _pad: 1,
        };
        if UDP_PEERS.insert(peer, 1u8, u64::from(BPF_NOEXIST)).is_err() {
            return true;
        }
    }
    let ev = NetEvent {
        header,
        family,
        protocol,
        sport: 0,
        dport: u16::from_be(sa.user_port as u16),
        op,
        outcome: outcome::DENIED,
        _pad: [0; 2],
        netns: 0,
        saddr: [0; 16],
        daddr,
        sock_id: cookie,
    };
    send(ctx, &ev, counter::NET_DROPPED);
    true
}

/// `cgroup/sendmsg4` (BPF_CGROUP_UDP4_SENDMSG, kernel 4.18+): only sends
/// with an explicit destination; deduplicated per socket and peer. A
/// deny-connect rule refuses these too (the caller gets EPERM): without
/// it, `sendto` on an unconnected socket would pass every UDP deny.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    if denied(&ctx, AF_INET, net_op::UDP_SEND) {
        return DENY;
    }
    on_sock_addr(&ctx, AF_INET, net_op::UDP_SEND, true);
    ALLOW
}

/// `cgroup/sendmsg6` (BPF_CGROUP_UDP6_SENDMSG, kernel 4.18+).
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    if denied(&ctx, AF_INET6, net_op::UDP_SEND) {
        return DENY;
    }
    on_sock_addr(&ctx, AF_INET6, net_op::UDP_SEND, true);
    ALLOW
}

#[inline(always)]
fn on_sock_addr(ctx: &SockAddrContext, family: u16, op: u8, dedupe: bool) {
    // SAFETY: the context pointer is valid for the program run.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_DGRAM || sa.protocol != u32::from(IPPROTO_UDP) {
        return; // TCP connects are covered by inet_sock_set_state
    }
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        // SAFETY: ctx field; the verifier allows 4-byte loads.
        let ip4 = unsafe { core::ptr::read_volatile(&raw const sa.user_ip4) };
        daddr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        daddr = ip6_words(&sa.user_ip6);
    }
    let dport = u16::from_be(sa.user_port as u16);
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if dedupe {
        let key = UdpPeerKey {
            cookie,
            addr: daddr,
            port: dport,
            family,
            _pad: 0,
        };
        if UDP_PEERS.insert(key, 1u8, u64::from(BPF_NOEXIST)).is_err() {
            return; // already reported
        }
    }
    // The local side, when the socket is already bound (an unbound socket
    // is bound after this hook and reports 0.0.0.0:0).
    let mut saddr = [0u8; 16];
    let mut sport = 0u16;
    // SAFETY: `sk` is a valid socket pointer for sock_addr programs.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() {
        // SAFETY: narrow loads of bpf_sock fields, checked by the verifier.
        let sk = unsafe { &*sk };
        // SAFETY: as above (a verifier-checked bpf_sock field load).
        sport = unsafe { core::ptr::read_volatile(&raw const sk.src_port) } as u16;
        if family == AF_INET {
            // SAFETY: as above.
            let ip4 = unsafe { core::ptr::read_volatile(&raw const sk.src_ip4) };
            saddr[..4].copy_from_slice(&ip4.to_ne_bytes());
        } else {
            saddr = ip6_words(&sk.src_ip6);
        }
    }
    let ev = NetEvent {
        header: current_header(kind::NET),
        family,
        protocol: IPPROTO_UDP,
        sport,
        dport,
        op,
        outcome: outcome::NONE,
        saddr,
        daddr,
        sock_id: cookie,
        ..NetEvent::default()
    };
    send(ctx, &ev, counter::NET_DROPPED);
}

/// `cgroup/post_bind4` (BPF_CGROUP_INET4_POST_BIND, kernel 4.17+).
#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    on_bind(&ctx, AF_INET);
    ALLOW
}

/// `cgroup/post_bind6` (BPF_CGROUP_INET6_POST_BIND, kernel 4.17+).
#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    on_bind(&ctx, AF_INET6);
    ALLOW
}

#[inline(always)]
fn on_bind(ctx: &SockContext, family: u16) {
    // SAFETY: the context pointer is valid for the program run.
    let sk = unsafe { &*ctx.sock };
    if sk.protocol != u32::from(IPPROTO_UDP) {
        return; // TCP services are reported when they listen
    }
    let mut saddr = [0u8; 16];
    if family == AF_INET {
        saddr[..4].copy_from_slice(&sk.src_ip4.to_ne_bytes());
    } else {
        saddr = ip6_words(&sk.src_ip6);
    }
    // SAFETY: helper valid for cgroup_sock programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let sport = sk.src_port as u16;
    if crate::maps::feature(feature::TRACK_UDP_BINDS) {
        let bound = BoundUdp {
            saddr,
            sport,
            family,
            _pad: 0,
        };
        if BOUND_UDP.insert(cookie, bound, u64::from(BPF_ANY)).is_err() {
            count(counter::BIND_TRACK_FULL);
            diag!(ctx, "post_bind: UDP bind not tracked, BOUND_UDP map full");
        }
    }
    let ev = NetEvent {
        header: current_header(kind::NET),
        family,
        protocol: IPPROTO_UDP,
        sport,
        op: net_op::UDP_BIND,
        outcome: outcome::NONE,
        saddr,
        sock_id: cookie,
        ..NetEvent::default()
    };
    send(ctx, &ev, counter::NET_DROPPED);
}

/// `cgroup/sock_release` (BPF_CGROUP_INET_SOCK_RELEASE, kernel 5.9+): runs
/// for every inet socket released, in the context of the task dropping
/// the last reference (its `close(2)`, or its exit closing its files).
/// Returns at once unless the socket is UDP (one context load) and was
/// bound explicitly while tracked (one hash lookup); then reports a close
/// record with the address it was bound to, and forgets it.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the program run.
    let sk = unsafe { &*ctx.sock };
    if sk.protocol != u32::from(IPPROTO_UDP) {
        return ALLOW;
    }
    // SAFETY: helper valid for cgroup_sock programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(bound) = (unsafe { BOUND_UDP.get(cookie) }).copied() else {
        return ALLOW;
    };
    let _ = BOUND_UDP.remove(cookie);
    let ev = NetEvent {
        header: current_header(kind::NET),
        family: bound.family,
        protocol: IPPROTO_UDP,
        sport: bound.sport,
        op: net_op::UDP_CLOSE,
        outcome: outcome::NONE,
        saddr: bound.saddr,
        sock_id: cookie,
        ..NetEvent::default()
    };
    send(&ctx, &ev, counter::NET_DROPPED);
    ALLOW
}

/// Copy an IPv6 address out of a socket context one 4-byte word at a time:
/// the verifier accepts only narrow loads of these context fields.
#[inline(always)]
fn ip6_words(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: in-bounds read of a context field.
        let w = unsafe { core::ptr::read_volatile(&raw const words[i]) };
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        i += 1;
    }
    out
}
