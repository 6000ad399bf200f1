//! Ring buffer bytes -> typed raw events. Pure code: no I/O, no state.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{
    exec_flags, kind, net_op, outcome, EventHeader, ExecEvent, ExitEvent, ForkEvent, NetEvent,
    OomEvent, ARGV_LEN, CGROUP_NAME_LEN, CGROUP_PARENT_LEN, FILENAME_LEN, OOM_RECORD_LEN,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes of a {what} record")]
    TooShort {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("record has unknown kind {0} (agent and eBPF object out of step?)")]
    UnknownKind(u32),
    #[error("exec record declares {field} length {len}, over the maximum {max}")]
    BadLength {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("network record has unknown op {0}")]
    UnknownOp(u8),
    #[error("network record has unknown address family {0}")]
    UnknownFamily(u16),
}

/// Fields every record carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 0 when the record came from interrupt context (task unknown).
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// ns since boot (CLOCK_BOOTTIME).
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub header: Header,
    pub ppid: u32,
    pub start_time_ns: u64,
    pub filename: String,
    pub argv: spyglass_proto::model::Args,
    pub argv_truncated: bool,
    pub flags: u32,
    /// The cgroup's directory name, its parent's, and its depth (None when
    /// the kernel could not read them).
    pub cgroup: Option<CgroupNames>,
}

/// Where a process's cgroup sits, as the exec record names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupNames {
    pub level: u32,
    pub parent: String,
    pub leaf: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub header: Header,
    pub exit_code: u32,
    pub start_time_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    pub header: Header,
    pub child_pid: u32,
    pub child_start_time_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetOp {
    TcpListen,
    TcpConnect,
    TcpAccept,
    UdpBind,
    UdpConnect,
    UdpSend,
    /// A TCP listener closed (LISTEN -> CLOSE).
    TcpClose,
    /// An explicitly bound UDP socket was released.
    UdpClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    None,
    Established,
    Failed,
    /// Refused by a deny-connect policy in the kernel.
    Denied,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Net {
    pub header: Header,
    pub op: NetOp,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub outcome: Outcome,
    pub sock_id: u64,
    /// Inode of the socket's network namespace; 0 when unknown.
    pub netns: u32,
}

/// The OOM killer chose a victim: the header is the task whose
/// allocation failed; the victim is in `record`, the tracepoint's raw
/// bytes, decoded with this kernel's layout (pipeline/oom.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Oom {
    pub header: Header,
    pub record: [u8; OOM_RECORD_LEN],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Exec(Exec),
    Exit(Exit),
    Fork(Fork),
    Net(Net),
    Oom(Oom),
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::TooShort {
            what,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a repr(C) POD from agent-common, valid
    // for any bit pattern; read_unaligned needs no alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Text up to the first NUL, lossily as UTF-8.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn header(h: &EventHeader) -> Header {
    Header {
        pid: h.pid,
        tid: h.tid,
        uid: h.uid,
        gid: h.gid,
        ts_ns: h.ts_ns,
        cgroup_id: h.cgroup_id,
        comm: c_string(&h.comm),
    }
}

fn ip(family: u16, raw: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        2 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        10 => Ok(IpAddr::V6(Ipv6Addr::from(*raw))),
        f => Err(DecodeError::UnknownFamily(f)),
    }
}

/// Field `$f` of record type `$T` in `$bytes`, read at the offset and
/// with the type the shared definition gives it: no offset is written by
/// hand, so a layout change in agent-common cannot decode silently wrong.
macro_rules! field {
    ($bytes:expr, $T:ident . $f:ident) => {
        typed_read($bytes, core::mem::offset_of!($T, $f), |r: &$T| &r.$f)
    };
}

/// [`read`] at `offset`; `_field` ties the result's type to the field's.
fn typed_read<T, F: Copy>(
    bytes: &[u8],
    offset: usize,
    _field: fn(&T) -> &F,
) -> Result<F, DecodeError> {
    read(bytes.get(offset..).unwrap_or_default(), "record field")
}

/// A length field checked against its array's size.
fn bounded(field: &'static str, len: usize, max: usize) -> Result<usize, DecodeError> {
    if len > max {
        return Err(DecodeError::BadLength { field, len, max });
    }
    Ok(len)
}

/// An exec record: the fixed part, then `filename_len` bytes of the path
/// and `argv_len` bytes of arguments (the kernel sends the used prefix).
fn exec(bytes: &[u8], h: &EventHeader) -> Result<Exec, DecodeError> {
    if bytes.len() < ExecEvent::ARGV_OFFSET {
        return Err(DecodeError::TooShort {
            what: "exec",
            len: bytes.len(),
            need: ExecEvent::ARGV_OFFSET,
        });
    }
    let filename_len = usize::from(field!(bytes, ExecEvent.filename_len)?);
    let filename_len = bounded("filename", filename_len, FILENAME_LEN)?;
    let argv_len = bounded(
        "argv",
        usize::from(field!(bytes, ExecEvent.argv_len)?),
        ARGV_LEN,
    )?;
    let argv_at = ExecEvent::ARGV_OFFSET;
    let argv = bytes
        .get(argv_at..argv_at + argv_len)
        .ok_or(DecodeError::TooShort {
            what: "exec argv",
            len: bytes.len(),
            need: argv_at + argv_len,
        })?;
    let name_at = ExecEvent::FIXED_LEN;
    let flags = field!(bytes, ExecEvent.flags)?;
    Ok(Exec {
        header: header(h),
        ppid: field!(bytes, ExecEvent.ppid)?,
        start_time_ns: field!(bytes, ExecEvent.start_time_ns)?,
        filename: c_string(&bytes[name_at..name_at + filename_len]),
        argv: spyglass_proto::model::Args::from_nul_separated(argv),
        argv_truncated: flags & exec_flags::ARGV_TRUNCATED != 0,
        flags,
        cgroup: cgroup_names(bytes)?,
    })
}

/// The cgroup names of an exec record (None when the kernel could not
/// read them).
fn cgroup_names(bytes: &[u8]) -> Result<Option<CgroupNames>, DecodeError> {
    let level = field!(bytes, ExecEvent.cgroup_level)?;
    let leaf_len = usize::from(field!(bytes, ExecEvent.cgroup_leaf_len)?).min(CGROUP_NAME_LEN);
    let parent_len =
        usize::from(field!(bytes, ExecEvent.cgroup_parent_len)?).min(CGROUP_PARENT_LEN);
    if level == u32::MAX || leaf_len == 0 {
        return Ok(None);
    }
    let leaf_at = core::mem::offset_of!(ExecEvent, cgroup_leaf);
    let parent_at = core::mem::offset_of!(ExecEvent, cgroup_parent);
    Ok(Some(CgroupNames {
        level,
        leaf: c_string(&bytes[leaf_at..leaf_at + leaf_len]),
        parent: c_string(&bytes[parent_at..parent_at + parent_len]),
    }))
}

/// Decode one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let h: EventHeader = read(bytes, "header")?;
    match h.kind {
        kind::EXEC => exec(bytes, &h).map(RawEvent::Exec),
        kind::EXIT => {
            let e: ExitEvent = read(bytes, "exit")?;
            Ok(RawEvent::Exit(Exit {
                header: header(&e.header),
                exit_code: e.exit_code,
                start_time_ns: e.start_time_ns,
            }))
        }
        kind::FORK => {
            let e: ForkEvent = read(bytes, "fork")?;
            Ok(RawEvent::Fork(Fork {
                header: header(&e.header),
                child_pid: e.child_pid,
                child_start_time_ns: e.child_start_time_ns,
            }))
        }
        kind::NET => {
            let e: NetEvent = read(bytes, "net")?;
            let op = match e.op {
                net_op::TCP_LISTEN => NetOp::TcpListen,
                net_op::TCP_CONNECT => NetOp::TcpConnect,
                net_op::TCP_ACCEPT => NetOp::TcpAccept,
                net_op::UDP_BIND => NetOp::UdpBind,
                net_op::UDP_CONNECT => NetOp::UdpConnect,
                net_op::UDP_SEND => NetOp::UdpSend,
                net_op::TCP_CLOSE => NetOp::TcpClose,
                net_op::UDP_CLOSE => NetOp::UdpClose,
                other => return Err(DecodeError::UnknownOp(other)),
            };
            let outcome = match e.outcome {
                outcome::ESTABLISHED => Outcome::Established,
                outcome::FAILED => Outcome::Failed,
                outcome::DENIED => Outcome::Denied,
                _ => Outcome::None,
            };
            Ok(RawEvent::Net(Net {
                header: header(&e.header),
                op,
                local: SocketAddr::new(ip(e.family, &e.saddr)?, e.sport),
                remote: SocketAddr::new(ip(e.family, &e.daddr)?, e.dport),
                outcome,
                sock_id: e.sock_id,
                netns: e.netns,
            }))
        }
        kind::OOM => {
            let e: OomEvent = read(bytes, "oom")?;
            Ok(RawEvent::Oom(Oom {
                header: header(&e.header),
                record: e.record,
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Split a `wait(2)`-style exit code into (status, signal).
pub fn split_exit_code(code: u32) -> (Option<i32>, Option<i32>) {
    let signal = (code & 0x7f) as i32;
    if signal == 0 {
        (Some(((code >> 8) & 0xff) as i32), None)
    } else {
        (None, Some(signal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test fixtures are repr(C) PODs.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn hdr(kind: u32) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        EventHeader {
            kind,
            pid: 42,
            tid: 43,
            uid: 1000,
            gid: 1001,
            _pad: 0,
            ts_ns: 123_456,
            cgroup_id: 77,
            comm,
        }
    }

    fn exec_record(filename: &[u8], argv: &[u8], flags: u32) -> Vec<u8> {
        // ExecEvent is ~4.7 KiB: build it on the heap.
        // SAFETY: ExecEvent is plain old data (integers and byte arrays):
        // all zeroes is a valid value.
        let mut ev: Box<ExecEvent> = Box::new(unsafe { std::mem::zeroed() });
        ev.header = hdr(kind::EXEC);
        ev.ppid = 7;
        ev.flags = flags;
        ev.start_time_ns = 99;
        ev.filename[..filename.len()].copy_from_slice(filename);
        ev.filename_len = filename.len() as u16;
        ev.argv[..argv.len()].copy_from_slice(argv);
        ev.argv_len = argv.len() as u16;
        ev.cgroup_level = 2;
        ev.cgroup_leaf[..2].copy_from_slice(b"t1");
        ev.cgroup_leaf_len = 2;
        ev.cgroup_parent[..6].copy_from_slice(b"k8s.io");
        ev.cgroup_parent_len = 6;
        let mut b = bytes_of(&*ev);
        b.truncate(ExecEvent::ARGV_OFFSET + argv.len()); // as the kernel sends it
        b
    }

    #[test]
    fn decodes_exec_with_argv_prefix_only() {
        let b = exec_record(b"/usr/bin/curl", b"curl\0-s\0a b\0", 0);
        let RawEvent::Exec(e) = decode(&b).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.header.pid, 42);
        assert_eq!(e.header.uid, 1000);
        assert_eq!(e.header.comm, "curl");
        assert_eq!((e.ppid, e.start_time_ns, e.flags), (7, 99, 0));
        assert_eq!(e.filename, "/usr/bin/curl");
        assert_eq!(e.argv, ["curl", "-s", "a b"]);
        assert!(!e.argv_truncated);
        let cg = e.cgroup.unwrap();
        assert_eq!(
            (cg.level, cg.parent.as_str(), cg.leaf.as_str()),
            (2, "k8s.io", "t1")
        );
    }

    #[test]
    fn exec_truncation_flag_and_partial_last_arg() {
        let b = exec_record(b"/bin/x", b"x\0yy", exec_flags::ARGV_TRUNCATED);
        let RawEvent::Exec(e) = decode(&b).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.argv, ["x", "yy"]);
        assert!(e.argv_truncated);
    }

    #[test]
    fn exec_with_lying_lengths_is_rejected() {
        let mut b = exec_record(b"/bin/x", b"x\0", 0);
        let at = core::mem::offset_of!(ExecEvent, argv_len);
        b[at..at + 2].copy_from_slice(&100u16.to_ne_bytes()); // argv_len beyond the record
        assert!(matches!(decode(&b), Err(DecodeError::TooShort { .. })));
        b[at..at + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert!(matches!(decode(&b), Err(DecodeError::BadLength { .. })));
    }

    #[test]
    fn decodes_exit_and_fork() {
        let exit = ExitEvent {
            header: hdr(kind::EXIT),
            exit_code: 7 << 8,
            _pad: 0,
            start_time_ns: 5,
        };
        let RawEvent::Exit(e) = decode(&bytes_of(&exit)).unwrap() else {
            panic!()
        };
        assert_eq!(split_exit_code(e.exit_code), (Some(7), None));
        assert_eq!(split_exit_code(9), (None, Some(9)));
        let fork = ForkEvent {
            header: hdr(kind::FORK),
            child_pid: 4242,
            _pad: 0,
            child_start_time_ns: 6,
        };
        let RawEvent::Fork(f) = decode(&bytes_of(&fork)).unwrap() else {
            panic!()
        };
        assert_eq!((f.header.pid, f.child_pid), (42, 4242));
    }

    #[test]
    fn decodes_oom_with_its_raw_record() {
        let mut ev = OomEvent {
            header: hdr(kind::OOM),
            record: [0; OOM_RECORD_LEN],
        };
        ev.record[8..12].copy_from_slice(&4242i32.to_ne_bytes());
        let b = bytes_of(&ev);
        let RawEvent::Oom(o) = decode(&b).unwrap() else {
            panic!("not oom")
        };
        assert_eq!(o.header.pid, 42);
        assert_eq!(o.record, ev.record);
        assert!(matches!(
            decode(&b[..b.len() - 1]),
            Err(DecodeError::TooShort { what: "oom", .. })
        ));
    }

    #[test]
    fn decodes_ipv4_and_ipv6_net() {
        let mut ev = NetEvent {
            header: hdr(kind::NET),
            family: 2,
            protocol: 6,
            sport: 40000,
            dport: 8080,
            op: net_op::TCP_CONNECT,
            outcome: outcome::FAILED,
            ..NetEvent::default()
        };
        ev.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let RawEvent::Net(n) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(n.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(n.remote, "10.1.2.3:8080".parse().unwrap());
        assert_eq!((n.op, n.outcome), (NetOp::TcpConnect, Outcome::Failed));

        ev.family = 10;
        ev.op = net_op::TCP_LISTEN;
        ev.saddr = Ipv6Addr::LOCALHOST.octets();
        ev.daddr = [0; 16];
        let RawEvent::Net(n) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(n.local, "[::1]:40000".parse().unwrap());
        assert_eq!(n.op, NetOp::TcpListen);

        for (op, want) in [
            (net_op::TCP_CLOSE, NetOp::TcpClose),
            (net_op::UDP_CLOSE, NetOp::UdpClose),
        ] {
            ev.op = op;
            let RawEvent::Net(n) = decode(&bytes_of(&ev)).unwrap() else {
                panic!()
            };
            assert_eq!((n.op, n.local), (want, "[::1]:40000".parse().unwrap()));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            decode(&[1, 2, 3]),
            Err(DecodeError::TooShort { .. })
        ));
        let mut h = bytes_of(&hdr(99));
        assert_eq!(decode(&h), Err(DecodeError::UnknownKind(99)));
        h[..4].copy_from_slice(&kind::NET.to_ne_bytes());
        assert!(matches!(decode(&h), Err(DecodeError::TooShort { .. })));
        let bad = NetEvent {
            header: hdr(kind::NET),
            family: 1,
            op: net_op::TCP_LISTEN,
            ..NetEvent::default()
        };
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::UnknownFamily(1)));
        for n in 0..200 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let _ = decode(&junk);
        }
    }
}
