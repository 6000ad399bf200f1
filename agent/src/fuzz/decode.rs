//! Target `decode`: ring-buffer records. Garbage, valid records of every
//! kind (built field by field from agent-common's types, so a layout
//! change is followed, never hard-coded offsets), each truncated at every
//! length, and valid records with bytes flipped, inserted or removed.
use agent_common::{
    kind, EventHeader, ExecEvent, ExitEvent, ForkEvent, NetEvent, ARGV_LEN, CGROUP_NAME_LEN,
    CGROUP_PARENT_LEN, COMM_LEN, FILENAME_LEN,
};
use proptest::prelude::*;

use super::{config, mutate, mutation};
use crate::pipeline::decode::{decode, RawEvent};

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: agent-common's records are repr(C) plain old data with
    // explicit padding: every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// Text up to the first NUL, lossily (what a reader of a C string sees).
fn c_text(b: &[u8]) -> String {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[derive(Clone, Debug)]
struct Head {
    pid: u32,
    tid: u32,
    uid: u32,
    gid: u32,
    ts_ns: u64,
    cgroup_id: u64,
    comm: [u8; COMM_LEN],
}

fn head() -> impl Strategy<Value = Head> {
    (
        any::<(u32, u32, u32, u32, u64, u64)>(),
        any::<[u8; COMM_LEN]>(),
    )
        .prop_map(|((pid, tid, uid, gid, ts_ns, cgroup_id), comm)| Head {
            pid,
            tid,
            uid,
            gid,
            ts_ns,
            cgroup_id,
            comm,
        })
}

impl Head {
    fn header(&self, kind: u32) -> EventHeader {
        EventHeader {
            kind,
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            gid: self.gid,
            ts_ns: self.ts_ns,
            cgroup_id: self.cgroup_id,
            comm: self.comm,
            ..EventHeader::default()
        }
    }

    fn matches(&self, h: &crate::pipeline::decode::Header) -> bool {
        (h.pid, h.tid, h.uid, h.gid, h.ts_ns, h.cgroup_id)
            == (
                self.pid,
                self.tid,
                self.uid,
                self.gid,
                self.ts_ns,
                self.cgroup_id,
            )
            && h.comm == c_text(&self.comm)
    }
}

/// A record as the kernel sends it, and what it must decode to.
#[derive(Clone, Debug)]
enum Valid {
    Exec {
        head: Head,
        ppid: u32,
        flags: u32,
        filename: Vec<u8>,
        argv: Vec<u8>,
    },
    Exit {
        head: Head,
        code: u32,
        start: u64,
    },
    Fork {
        head: Head,
        child: u32,
        start: u64,
    },
    Net {
        head: Head,
        v6: bool,
        op: u8,
        saddr: [u8; 16],
        daddr: [u8; 16],
        ports: (u16, u16),
    },
}

/// Argument bytes: mostly printable words and NULs, some anything.
fn arg_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(
            prop_oneof![4 => 0x20..0x7fu8, 1 => Just(0u8)],
            0..=max.min(64)
        ),
        prop::collection::vec(any::<u8>(), 0..=max),
    ]
}

fn valid() -> impl Strategy<Value = Valid> {
    prop_oneof![
        (
            head(),
            any::<u32>(),
            any::<u32>(),
            arg_bytes(FILENAME_LEN),
            arg_bytes(ARGV_LEN)
        )
            .prop_map(|(head, ppid, flags, filename, argv)| Valid::Exec {
                head,
                ppid,
                flags,
                filename,
                argv
            }),
        (head(), any::<u32>(), any::<u64>()).prop_map(|(head, code, start)| Valid::Exit {
            head,
            code,
            start
        }),
        (head(), any::<u32>(), any::<u64>()).prop_map(|(head, child, start)| Valid::Fork {
            head,
            child,
            start
        }),
        (
            head(),
            any::<bool>(),
            1..=6u8,
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<(u16, u16)>()
        )
            .prop_map(|(head, v6, op, saddr, daddr, ports)| Valid::Net {
                head,
                v6,
                op,
                saddr,
                daddr,
                ports
            }),
    ]
}

impl Valid {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Valid::Exec {
                head,
                ppid,
                flags,
                filename,
                argv,
            } => {
                // SAFETY: ExecEvent is integers and byte arrays: all
                // zeroes is a valid value.
                let mut ev: Box<ExecEvent> = Box::new(unsafe { std::mem::zeroed() });
                ev.header = head.header(kind::EXEC);
                ev.ppid = *ppid;
                ev.flags = *flags;
                ev.filename[..filename.len()].copy_from_slice(filename);
                ev.filename_len = filename.len() as u16;
                ev.argv[..argv.len()].copy_from_slice(argv);
                ev.argv_len = argv.len() as u16;
                ev.cgroup_level = u32::MAX;
                let mut b = bytes_of(&*ev);
                // the kernel sends the used prefix of argv only
                b.truncate(std::mem::offset_of!(ExecEvent, argv) + argv.len());
                b
            }
            Valid::Exit { head, code, start } => bytes_of(&ExitEvent {
                header: head.header(kind::EXIT),
                exit_code: *code,
                start_time_ns: *start,
                ..ExitEvent::default()
            }),
            Valid::Fork { head, child, start } => bytes_of(&ForkEvent {
                header: head.header(kind::FORK),
                child_pid: *child,
                child_start_time_ns: *start,
                ..ForkEvent::default()
            }),
            Valid::Net {
                head,
                v6,
                op,
                saddr,
                daddr,
                ports,
            } => bytes_of(&NetEvent {
                header: head.header(kind::NET),
                family: if *v6 { 10 } else { 2 },
                protocol: 6,
                sport: ports.0,
                dport: ports.1,
                op: *op,
                saddr: *saddr,
                daddr: *daddr,
                ..NetEvent::default()
            }),
        }
    }

    /// Whether `ev` is exactly this record.
    fn check(&self, ev: &RawEvent) -> Result<(), TestCaseError> {
        match (self, ev) {
            (
                Valid::Exec {
                    head,
                    ppid,
                    flags,
                    filename,
                    argv,
                },
                RawEvent::Exec(e),
            ) => {
                prop_assert!(head.matches(&e.header), "{e:?}");
                prop_assert_eq!((e.ppid, e.flags), (*ppid, *flags));
                prop_assert_eq!(&e.filename, &c_text(filename));
                // NUL-separated; one trailing NUL ends the last argument
                let block = argv.strip_suffix(&[0]).unwrap_or(argv);
                let want: Vec<String> = if block.is_empty() {
                    Vec::new()
                } else {
                    block
                        .split(|&b| b == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                };
                prop_assert_eq!(e.argv.to_vec(), want);
                prop_assert!(e.cgroup.is_none());
            }
            (Valid::Exit { head, code, start }, RawEvent::Exit(e)) => {
                prop_assert!(head.matches(&e.header));
                prop_assert_eq!((e.exit_code, e.start_time_ns), (*code, *start));
            }
            (Valid::Fork { head, child, start }, RawEvent::Fork(f)) => {
                prop_assert!(head.matches(&f.header));
                prop_assert_eq!((f.child_pid, f.child_start_time_ns), (*child, *start));
            }
            (
                Valid::Net {
                    head,
                    v6,
                    saddr,
                    daddr,
                    ports,
                    ..
                },
                RawEvent::Net(n),
            ) => {
                prop_assert!(head.matches(&n.header));
                let ip = |a: &[u8; 16]| -> std::net::IpAddr {
                    if *v6 {
                        std::net::Ipv6Addr::from(*a).into()
                    } else {
                        std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
                    }
                };
                prop_assert_eq!(n.local, std::net::SocketAddr::new(ip(saddr), ports.0));
                prop_assert_eq!(n.remote, std::net::SocketAddr::new(ip(daddr), ports.1));
            }
            (want, got) => prop_assert!(false, "{want:?} decoded as {got:?}"),
        }
        Ok(())
    }
}

/// What any decoded record must respect, whatever its bytes: no text
/// longer than its kernel buffer (lossy UTF-8 turns one byte into at most
/// three), no NUL inside a string, both addresses of one family.
fn within_bounds(ev: &RawEvent) -> Result<(), TestCaseError> {
    let text = |s: &str, max: usize, what: &str| -> Result<(), TestCaseError> {
        prop_assert!(s.len() <= 3 * max, "{what} of {} bytes", s.len());
        prop_assert!(!s.contains('\0'), "{what} holds a NUL: {s:?}");
        Ok(())
    };
    let header = match ev {
        RawEvent::Exec(e) => {
            text(&e.filename, FILENAME_LEN, "filename")?;
            prop_assert!(e.argv.len() <= ARGV_LEN + 1, "{} arguments", e.argv.len());
            let bytes: usize = e.argv.iter().map(str::len).sum();
            prop_assert!(bytes <= 3 * ARGV_LEN, "argv of {bytes} bytes");
            for a in e.argv.iter() {
                text(a, ARGV_LEN, "argument")?;
            }
            if let Some(c) = &e.cgroup {
                text(&c.leaf, CGROUP_NAME_LEN, "cgroup leaf")?;
                text(&c.parent, CGROUP_PARENT_LEN, "cgroup parent")?;
            }
            &e.header
        }
        RawEvent::Exit(e) => &e.header,
        RawEvent::Fork(f) => &f.header,
        RawEvent::Oom(o) => &o.header,
        RawEvent::Net(n) => {
            prop_assert_eq!(n.local.is_ipv4(), n.remote.is_ipv4());
            &n.header
        }
    };
    text(&header.comm, COMM_LEN, "comm")
}

/// Random bytes, often behind a real kind so the decoder goes past it.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let max = std::mem::size_of::<ExecEvent>() + 64;
    (
        prop_oneof![Just(None), (1..=5u32).prop_map(Some)],
        prop::collection::vec(any::<u8>(), 0..max),
    )
        .prop_map(|(kind, mut b)| {
            if let (Some(k), true) = (kind, b.len() >= 4) {
                b[..4].copy_from_slice(&k.to_ne_bytes());
            }
            b
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn garbage_decodes_within_bounds_or_is_refused(bytes in garbage()) {
        if let Ok(ev) = decode(&bytes) {
            within_bounds(&ev)?;
        }
    }

    #[test]
    fn valid_records_decode_exactly_and_every_truncation_is_refused(v in valid()) {
        let b = v.bytes();
        v.check(&decode(&b).map_err(|e| TestCaseError::fail(format!("{e}")))?)?;
        for len in 0..b.len() {
            prop_assert!(decode(&b[..len]).is_err(), "a record cut at {len} of {} decoded", b.len());
        }
    }

    #[test]
    fn mutated_records_decode_within_bounds_or_are_refused(
        v in valid(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let b = mutate(v.bytes(), &muts);
        if let Ok(ev) = decode(&b) {
            within_bounds(&ev)?;
        }
    }
}
