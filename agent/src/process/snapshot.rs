//! What was running before the agent started: processes and listening
//! sockets read from /proc (the `procfs` crate), reported once and marked
//! as snapshot. Sockets are read per network namespace
//! (`/proc/PID/net/*` of one process in each), so listeners inside
//! containers are found too.
use std::{
    collections::{HashMap, HashSet},
    io::Read,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::Path,
};

use procfs::{
    net::{TcpState, UdpState},
    process::{FDTarget, Process},
};
use tracing::debug;

use agent_common::ARGV_LEN;
use spyglass_proto::model::Args;

use super::table::{ProcInfo, ARGV_KEPT_WHEN_FULL};

const PF_KTHREAD: u32 = 0x0020_0000;

/// A socket found by the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapSocket {
    pub pid: u32,
    /// `tcp` (LISTEN) or `udp` (bound, unconnected).
    pub protocol: crate::event::Protocol,
    pub local: SocketAddr,
    /// Inode of its network namespace (as the kernel's records give it).
    pub netns: u32,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub processes: Vec<ProcInfo>,
    pub sockets: Vec<SnapSocket>,
}

/// The cgroup v2 path of a process from `/proc/PID/cgroup` (`0::/path`).
pub fn cgroup2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// cgroup v2 id of a path: the inode of its directory under the v2 root.
pub fn cgroup_id(cgroup_root: &Path, path: &str) -> u64 {
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).map_or(0, |m| m.ino())
}

/// Arguments the snapshot reads in all before it keeps only the start of
/// each process's ([`ARGV_KEPT_WHEN_FULL`] bytes): the snapshot is held
/// whole until it is reported, so 65,536 processes of 4 KiB of arguments
/// must not take 256 MiB at start.
const SNAPSHOT_ARGV_BYTES: usize = 32 << 20;

/// A process's arguments from `/proc/PID/cmdline`, reading at most `max`
/// bytes (at most what the kernel probe keeps of an exec, [`ARGV_LEN`]):
/// a process with megabytes of arguments costs the agent no more than one
/// whose exec it saw. Returns the arguments and whether some were left out.
pub fn read_cmdline(pid: i32, max: usize) -> (Args, bool) {
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/cmdline")) else {
        return (Args::default(), false);
    };
    cmdline_from(f, max.min(ARGV_LEN))
}

/// [`read_cmdline`] on any reader: one byte more than `max` is read to
/// tell a block of exactly `max` bytes from a longer one.
fn cmdline_from(r: impl Read, max: usize) -> (Args, bool) {
    let mut buf = Vec::with_capacity(max.min(4096) + 1);
    if r.take(max as u64 + 1).read_to_end(&mut buf).is_err() {
        return (Args::default(), false);
    }
    let truncated = buf.len() > max;
    buf.truncate(max);
    (Args::from_nul_separated(&buf), truncated)
}

fn proc_info(
    p: &Process,
    cgroup_root: &Path,
    ticks: u64,
    own_pid: u32,
    argv_max: usize,
) -> Option<ProcInfo> {
    let stat = p.stat().ok()?;
    if stat.flags & PF_KTHREAD != 0 || p.pid as u32 == own_pid {
        return None;
    }
    let status = p.status().ok();
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
    let (argv, argv_truncated) = read_cmdline(p.pid, argv_max);
    Some(ProcInfo {
        pid: p.pid as u32,
        ppid: stat.ppid as u32,
        uid: status.as_ref().map_or(0, |s| s.ruid),
        gid: status.as_ref().map_or(0, |s| s.rgid),
        comm: stat.comm.as_str().into(),
        exe: p
            .exe()
            .map(|e| e.display().to_string())
            .unwrap_or_default()
            .into(),
        argv,
        argv_truncated,
        exe_truncated: false,
        unread: Vec::new(),
        cgroup_id: cgroup2_path(&cgroup).map_or(0, |c| cgroup_id(cgroup_root, c)),
        start_time_ns: stat.starttime * (1_000_000_000 / ticks.max(1)),
        start_from_proc: true,
    })
}

/// Read every process and every listening socket.
pub fn take(cgroup_root: &Path) -> Snapshot {
    let ticks = procfs::ticks_per_second();
    let own_pid = std::process::id();
    let mut snap = Snapshot::default();
    let Ok(all) = procfs::process::all_processes() else {
        return snap;
    };
    let procs: Vec<Process> = all.filter_map(Result::ok).collect();

    let mut inode_owner: HashMap<u64, u32> = HashMap::new();
    let mut netns_reader: HashMap<u64, i32> = HashMap::new();
    let mut argv_read = 0;
    for p in &procs {
        let argv_max = if argv_read < SNAPSHOT_ARGV_BYTES {
            ARGV_LEN
        } else {
            ARGV_KEPT_WHEN_FULL
        };
        let Some(info) = proc_info(p, cgroup_root, ticks, own_pid, argv_max) else {
            continue;
        };
        if let Ok(fds) = p.fd() {
            for fd in fds.flatten() {
                if let FDTarget::Socket(inode) = fd.target {
                    inode_owner.entry(inode).or_insert(info.pid);
                }
            }
        }
        if let Ok(ns) = std::fs::metadata(format!("/proc/{}/ns/net", p.pid)) {
            netns_reader.entry(ns.ino()).or_insert(p.pid);
        }
        argv_read += info.argv.byte_len();
        snap.processes.push(info);
    }

    let mut seen = HashSet::new();
    for (&netns, &pid) in &netns_reader {
        let Ok(p) = Process::new(pid) else { continue };
        let tcp = p
            .tcp()
            .unwrap_or_default()
            .into_iter()
            .chain(p.tcp6().unwrap_or_default());
        for e in tcp.filter(|e| e.state == TcpState::Listen) {
            if let Some(&owner) = inode_owner.get(&e.inode) {
                if seen.insert(("tcp", e.inode)) {
                    snap.sockets.push(SnapSocket {
                        pid: owner,
                        protocol: crate::event::Protocol::Tcp,
                        local: e.local_address,
                        netns: netns as u32,
                    });
                }
            }
        }
        let udp = p
            .udp()
            .unwrap_or_default()
            .into_iter()
            .chain(p.udp6().unwrap_or_default());
        for e in udp.filter(|e| e.state == UdpState::Close && e.local_address.port() != 0) {
            if let Some(&owner) = inode_owner.get(&e.inode) {
                if seen.insert(("udp", e.inode)) {
                    snap.sockets.push(SnapSocket {
                        pid: owner,
                        protocol: crate::event::Protocol::Udp,
                        local: e.local_address,
                        netns: netns as u32,
                    });
                }
            }
        }
        debug!(netns, pid, "read sockets of network namespace");
    }
    snap.processes.sort_by_key(|p| p.pid);
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_reads_at_most_the_kernel_cap() {
        let (a, cut) = cmdline_from(&b"sleep\x0030\0"[..], 4096);
        assert_eq!((a, cut), (Args::from(["sleep", "30"]), false));
        // megabytes of empty arguments: only the cap is read, and marked
        let huge = vec![0u8; 8 << 20];
        let (a, cut) = cmdline_from(&huge[..], 4096);
        assert!(cut);
        assert_eq!((a.len(), a.byte_len()), (4096, 4096));
        // exactly the cap is not a cut
        let (_, cut) = cmdline_from(&[b'x'; 4096][..], 4096);
        assert!(!cut);
    }

    #[test]
    fn finds_the_v2_path_on_hybrid_and_unified_hosts() {
        let hybrid = "12:pids:/user.slice\n1:name=systemd:/k8s.io/abc\n0::/k8s.io/abc\n";
        assert_eq!(cgroup2_path(hybrid), Some("/k8s.io/abc"));
        assert_eq!(cgroup2_path("0::/\n"), Some("/"));
        assert_eq!(cgroup2_path("3:cpu:/x\n"), None);
    }

    #[test]
    fn finds_a_child_process_with_its_argv_and_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // spawn returns once the child's new mm is in place, which can be
        // before exec has written its arguments: wait for them.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(&cmdline).map_or(true, |c| c.is_empty()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{cmdline} stayed empty"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let root =
            crate::bpf::preflight::cgroup2_root().unwrap_or_else(|_| "/sys/fs/cgroup".into());
        let snap = take(&root);
        let _ = child.kill();
        let _ = child.wait();
        let me = std::process::id();
        // The agent leaves itself out; its child is in.
        assert!(snap.processes.iter().all(|p| p.pid != me));
        let c = snap
            .processes
            .iter()
            .find(|p| p.pid == child.id())
            .expect("child listed");
        assert_eq!(c.ppid, me);
        assert_eq!(c.argv, ["sleep", "30"]);
        assert!(c.exe.ends_with("/sleep"), "{}", c.exe);
        assert!(c.start_time_ns > 0);
    }
}
