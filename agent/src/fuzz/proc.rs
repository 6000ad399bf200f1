//! Targets `proc-status`, `proc-cmdline`, `proc-mountinfo`,
//! `proc-net-tcp` and `proc-cgroup`: the /proc files the agent reads
//! (its own parsers, and the `procfs` crate's it relies on), in the
//! kernel's format with the fields a process controls (its name, its
//! arguments) set to anything, then mutated; and random text. Valid files
//! must read back exactly; nothing may panic.
use std::net::{IpAddr, SocketAddr};

use agent_common::ARGV_LEN;
use procfs::{
    net::{TcpNetEntries, UdpNetEntries},
    process::{Stat, Status},
    ExplicitSystemInfo, FromBufReadSI, FromRead,
};
use proptest::prelude::*;
use spyglass_proto::model::Args;

use super::{config, mutate, mutate_text, mutation};
use crate::{
    bpf::preflight::parse_cap_eff, detect::proc::upperdir_of_mountinfo, process::snapshot,
};

/// /proc/PID/status of a 6.18 kernel, with `{name}`, `{uid}`, `{gid}` and
/// `{cap}` to fill.
const STATUS: &str = "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n\
Pid:\t4242\nPPid:\t1\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\n\
FDSize:\t64\nGroups:\t \nNStgid:\t4242\nNSpid:\t4242\nNSpgid:\t4242\nNSsid:\t4242\nKthread:\t0\n\
VmPeak:\t    3060 kB\nVmSize:\t    3060 kB\nVmRSS:\t    1604 kB\nThreads:\t1\nSigQ:\t1/96367\n\
SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n\
SigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\nCapInh:\t0000000000000000\n\
CapPrm:\t{cap}\nCapEff:\t{cap}\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
NoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\n\
Mems_allowed_list:\t0\nvoluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t0\n";

/// /proc/PID/stat after `PID (COMM) `: state, ppid (7), ..., flags.
const STAT_REST: &str = "S 7 4242 4242 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 44243 3133440 378 \
18446744073709551615 94805841379328 94805841399209 140725289884672 0 0 0 0 0 0 0 0 0 17 0 0 0 0 \
0 0 94805841415216 94805841416832 94806457950208 140725289888482 140725289888502 \
140725289888502 140725289889771 0";

/// A task name as the kernel shows it in status: up to 15 bytes, `\n`
/// and `\\` escaped.
fn comm() -> impl Strategy<Value = String> {
    prop::collection::vec(1..=255u8, 1..=15).prop_map(|b| {
        String::from_utf8_lossy(&b)
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
    })
}

fn status(name: &str, uid: u32, gid: u32, cap: u64) -> String {
    STATUS
        .replace("{name}", name)
        .replace("{uid}", &uid.to_string())
        .replace("{gid}", &gid.to_string())
        .replace("{cap}", &format!("{cap:016x}"))
}

/// IPv4 or IPv6 as /proc/net/tcp prints it: each 32-bit word of the
/// address as the host reads it (little-endian here), in hex.
fn hex_addr(ip: IpAddr) -> String {
    let bytes = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

#[derive(Clone, Debug)]
struct Sock {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    uid: u32,
    inode: u64,
}

fn sock() -> impl Strategy<Value = Sock> {
    let addr = |v6: bool| -> BoxedStrategy<IpAddr> {
        if v6 {
            any::<[u8; 16]>().prop_map(IpAddr::from).boxed()
        } else {
            any::<[u8; 4]>().prop_map(IpAddr::from).boxed()
        }
    };
    any::<bool>().prop_flat_map(move |v6| {
        (
            addr(v6),
            any::<u16>(),
            addr(v6),
            any::<u16>(),
            1..=11u8,
            any::<u32>(),
            any::<u64>(),
        )
            .prop_map(|(l, lp, r, rp, state, uid, inode)| Sock {
                local: SocketAddr::new(l, lp),
                remote: SocketAddr::new(r, rp),
                state,
                uid,
                inode,
            })
    })
}

fn net_table(socks: &[Sock]) -> String {
    let mut t = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    for (i, s) in socks.iter().enumerate() {
        t.push_str(&format!(
            "{i:4}: {}:{:04X} {}:{:04X} {:02X} 00000000:00000000 00:00000000 00000000 {:5} 0 {} 1 0000000063a80771 100 0 0 10 0\n",
            hex_addr(s.local.ip()),
            s.local.port(),
            hex_addr(s.remote.ip()),
            s.remote.port(),
            s.state,
            s.uid,
            s.inode,
        ));
    }
    t
}

fn system() -> ExplicitSystemInfo {
    ExplicitSystemInfo {
        boot_time_secs: 1,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: true,
    }
}

/// One mountinfo line: `ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS] - TYPE SRC SUPER`.
#[derive(Clone, Debug)]
struct Mount {
    point: String,
    fstype: String,
    upper: Option<String>,
}

fn mount() -> impl Strategy<Value = Mount> {
    (
        prop_oneof![Just("/".to_owned()), "/[a-z/]{1,12}"],
        prop_oneof![
            Just("overlay".to_owned()),
            Just("ext4".to_owned()),
            "[a-z]{1,6}"
        ],
        prop::option::weighted(0.7, "/[a-zA-Z0-9/._-]{1,40}"),
    )
        .prop_map(|(point, fstype, upper)| Mount {
            point,
            fstype,
            upper,
        })
}

fn mountinfo(mounts: &[Mount]) -> String {
    let mut t = String::new();
    for (i, m) in mounts.iter().enumerate() {
        let mut opts = String::from("rw,lowerdir=/var/lib/c/1/fs");
        if let Some(u) = &m.upper {
            opts.push_str(&format!(",upperdir={u},workdir={u}-work"));
        }
        t.push_str(&format!(
            "{} 1 0:{i} / {} rw,relatime master:1 - {} {} {opts}\n",
            1000 + i,
            m.point,
            m.fstype,
            m.fstype
        ));
    }
    t
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn status_of_any_task_name_reads_its_ids_and_capabilities(
        name in comm(),
        uid in any::<u32>(),
        gid in any::<u32>(),
        cap in any::<u64>(),
    ) {
        let text = status(&name, uid, gid, cap);
        prop_assert_eq!(parse_cap_eff(&text), Some(cap));
        let s = Status::from_read(text.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!((s.ruid, s.rgid), (uid, gid));
    }

    #[test]
    fn status_mutated_or_garbage_never_panics(
        name in comm(),
        cap in any::<u64>(),
        muts in prop::collection::vec(mutation(), 1..8),
        garbage in "(?s).{0,200}",
    ) {
        let text = mutate_text(&status(&name, 0, 0, cap), &muts);
        let _ = parse_cap_eff(&text);
        let _ = Status::from_read(text.as_bytes());
        let _ = parse_cap_eff(&garbage);
        let _ = Status::from_read(garbage.as_bytes());
    }

    #[test]
    fn status_stat_of_any_task_name_reads_its_name_and_parent(
        comm in prop::collection::vec(1..=255u8, 1..=15),
        muts in prop::collection::vec(mutation(), 0..4),
    ) {
        // the kernel writes the name raw: `(`, `)`, spaces and newlines
        // included; the parser must take the last `)`
        let mut text = b"4242 (".to_vec();
        text.extend_from_slice(&comm);
        text.extend_from_slice(b") ");
        // The kernel always writes the fields after the name, none with a
        // parenthesis: procfs 0.18 panics (slices out of bounds) on a stat
        // line cut right after the `)`, so mutations keep that shape.
        let rest: Vec<u8> = mutate(STAT_REST.as_bytes().to_vec(), &muts)
            .into_iter()
            .map(|b| if b == b')' || b == b'(' { b'x' } else { b })
            .collect();
        if String::from_utf8_lossy(&rest).trim().is_empty() {
            return Ok(());
        }
        text.extend_from_slice(&rest);
        let parsed = Stat::from_read(&text[..]);
        if muts.is_empty() {
            let s = parsed.map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let want = String::from_utf8_lossy(&comm);
            // the parser trims the whole line, a name's own trailing
            // whitespace is kept (it sits before the `)`)
            prop_assert_eq!(s.comm.as_str(), &*want);
            prop_assert_eq!((s.pid, s.ppid, s.flags), (4242, 7, 4_194_304));
        }
    }

    #[test]
    fn cmdline_splits_exactly_and_a_prefix_stays_within_its_bound(
        block in prop_oneof![
            prop::collection::vec(prop_oneof![4 => 0x20..0x7fu8, 1 => Just(0u8)], 0..300),
            prop::collection::vec(any::<u8>(), 0..=ARGV_LEN + 2),
            (0..=ARGV_LEN + 2).prop_map(|n| vec![0u8; n]),
        ],
        max in 0..5000usize,
    ) {
        let args = Args::from_nul_separated(&block);
        let trimmed = block.strip_suffix(&[0]).unwrap_or(&block);
        let want: Vec<String> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        };
        prop_assert_eq!(args.to_vec(), want.clone());
        prop_assert_eq!(args.len(), want.len());
        prop_assert!(args.byte_len() <= 3 * block.len() + 1);
        let (cut, dropped) = args.prefix(max);
        prop_assert!(cut.byte_len() <= max, "prefix of {} bytes over {max}", cut.byte_len());
        prop_assert_eq!(dropped, args.byte_len() > max);
        // whole arguments, then the last one kept possibly cut (as the
        // kernel cuts a long block)
        let kept = cut.to_vec();
        if let Some((last, whole)) = kept.split_last() {
            prop_assert!(want.starts_with(whole), "prefix is not a prefix");
            prop_assert!(want[whole.len()].starts_with(last.as_str()), "last argument is not a prefix");
        }
        // arguments given as strings are cut at a NUL, never split by it
        let joined: Args = want.iter().map(|a| format!("{a}\0tail")).collect();
        prop_assert_eq!(joined.to_vec(), want);
    }

    #[test]
    fn mountinfo_finds_the_root_overlay_upper_layer(
        mounts in prop::collection::vec(mount(), 0..6),
        muts in prop::collection::vec(mutation(), 0..4),
    ) {
        let text = mountinfo(&mounts);
        let want = mounts
            .iter()
            .find(|m| m.point == "/" && m.fstype == "overlay" && m.upper.is_some())
            .and_then(|m| m.upper.clone());
        if muts.is_empty() {
            prop_assert_eq!(upperdir_of_mountinfo(&text), want.map(std::path::PathBuf::from));
        } else {
            let text = mutate_text(&text, &muts);
            if let Some(p) = upperdir_of_mountinfo(&text) {
                let p = p.to_string_lossy().into_owned();
                prop_assert!(text.contains(&format!("upperdir={p}")), "{:?} not in {:?}", p, text);
            }
        }
    }

    #[test]
    fn mountinfo_garbage_never_panics(text in "(?s).{0,300}") {
        if let Some(p) = upperdir_of_mountinfo(&text) {
            let p = p.to_string_lossy().into_owned();
            prop_assert!(text.contains(&format!("upperdir={p}")), "{:?} not in {:?}", p, text);
        }
    }

    #[test]
    fn net_tcp_tables_read_back_every_socket(socks in prop::collection::vec(sock(), 0..8)) {
        let text = net_table(&socks);
        let t = TcpNetEntries::from_buf_read(text.as_bytes(), &system())
            .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(t.0.len(), socks.len());
        for (got, want) in t.0.iter().zip(&socks) {
            prop_assert_eq!((got.local_address, got.remote_address), (want.local, want.remote));
            prop_assert_eq!((got.uid, got.inode), (want.uid, want.inode));
        }
        // UDP tables share the format (states 1..=11 are all UDP states too? no: only some)
        let _ = UdpNetEntries::from_buf_read(text.as_bytes(), &system());
    }

    #[test]
    fn net_tcp_mutated_or_garbage_never_panics(
        socks in prop::collection::vec(sock(), 0..4),
        muts in prop::collection::vec(mutation(), 1..8),
        garbage in "(?s).{0,300}",
    ) {
        for text in [mutate_text(&net_table(&socks), &muts), garbage] {
            let _ = TcpNetEntries::from_buf_read(text.as_bytes(), &system());
            let _ = UdpNetEntries::from_buf_read(text.as_bytes(), &system());
        }
    }

    #[test]
    fn cgroup_file_gives_the_v2_path(
        v1 in prop::collection::vec(("[0-9]{1,2}", "[a-z_=,]{1,12}", "/[a-z0-9./-]{0,20}"), 0..5),
        v2 in prop::option::of("/[a-z0-9.:/-]{0,30}"),
        garbage in "(?s).{0,100}",
    ) {
        let mut text: String = v1.iter().map(|(n, c, p)| format!("{n}:{c}:{p}\n")).collect();
        if let Some(p) = &v2 {
            text.push_str(&format!("0::{p}\n"));
        }
        prop_assert_eq!(snapshot::cgroup2_path(&text), v2.as_deref());
        let _ = snapshot::cgroup2_path(&garbage);
    }
}
