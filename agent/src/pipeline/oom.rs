//! OOM kills: the victims that `oom/mark_victim` records name, held until
//! their exit events, with what the OOM killer saw (the victim's resident
//! memory where the kernel's record carries it) and the memory limit of
//! the victim's container, read from its cgroup when the record arrives.
//!
//! The kernel probe copies the tracepoint's record as raw bytes
//! (agent-ebpf/src/oom.rs); this module decodes them with the offsets of
//! this kernel's format file, so one probe serves every layout: `pid` at
//! offset 8 on every kernel, and on Linux 6.8 and later `anon_rss`,
//! `file_rss` and `shmem_rss` (kB) after it.
use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::OOM_RECORD_LEN;
use tracing::{debug, warn};

use crate::{bpf::tracefs, event::OomKill};

/// Victims waiting for their exit at most (a burst of OOM kills of
/// processes whose exits never come: the oldest go first).
const CAPACITY: usize = 1024;
/// A victim's exit comes moments after its record; an entry older than
/// this is forgotten (its exit record was lost, or the pid was not a
/// process the agent reports).
const TTL: Duration = Duration::from_secs(60);

/// Where this kernel's `mark_victim` record keeps the fields the agent
/// reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pid: usize,
    /// `anon_rss`, `file_rss`, `shmem_rss` (kB, 8 bytes each), where the
    /// record has all three (Linux 6.8 and later).
    rss: Option<[usize; 3]>,
}

impl Layout {
    /// The layout every kernel shares: `pid` at 8, no memory figures.
    pub const OLDEST: Layout = Layout { pid: 8, rss: None };

    /// The layout the format file's fields describe; fields of an
    /// unexpected size or outside the bytes the probe copies are not read.
    pub fn from_fields(fields: &[tracefs::Field]) -> Layout {
        let at = |name: &str, size: u32| {
            fields
                .iter()
                .find(|f| f.name == name && f.size == size)
                .map(|f| f.offset as usize)
                .filter(|&o| o + size as usize <= OOM_RECORD_LEN)
        };
        let rss = match (at("anon_rss", 8), at("file_rss", 8), at("shmem_rss", 8)) {
            (Some(a), Some(f), Some(s)) => Some([a, f, s]),
            _ => None,
        };
        Layout {
            pid: at("pid", 4).unwrap_or(8),
            rss,
        }
    }

    /// This kernel's layout, from tracefs; [`Layout::OLDEST`] when the
    /// format file cannot be read.
    pub fn of_kernel() -> Layout {
        let root = tracefs::root();
        match tracefs::read_format(&root, "oom", "mark_victim") {
            Ok(fields) => Layout::from_fields(&fields),
            Err(e) => {
                warn!(error = %e, "OOM victims: format file unreadable; reading the pid only");
                Layout::OLDEST
            }
        }
    }

    /// The victim a record names.
    pub fn victim(&self, record: &[u8; OOM_RECORD_LEN]) -> Victim {
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&record[o..o + 8]);
            u64::from_ne_bytes(b)
        };
        let mut pid = [0u8; 4];
        pid.copy_from_slice(&record[self.pid..self.pid + 4]);
        Victim {
            pid: u32::from_ne_bytes(pid),
            rss_bytes: self.rss.map(|offs| {
                offs.iter()
                    .map(|&o| u64_at(o))
                    .fold(0u64, u64::saturating_add)
                    .saturating_mul(1024)
            }),
        }
    }
}

/// What a `mark_victim` record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Victim {
    /// The victim task's id (a thread id when the OOM killer picked a
    /// thread other than the leader).
    pub pid: u32,
    /// anon + file + shmem resident memory, where the record has it.
    pub rss_bytes: Option<u64>,
}

/// From `/proc/PID/cgroup`: the cgroup v2 path (`0::/path`) and the v1
/// memory controller's path (`N:memory:/path`, also `N:cpu,memory:`).
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_owned());
        } else if ctrls.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_owned());
        }
    }
    (v2, v1)
}

/// The thread group of a task id, from `/proc/TID/status` (thread ids
/// have /proc entries too) while the task exists.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// cgroup paths remembered by id at most.
const PATHS_MAX: usize = 4096;

/// Victims named by the kernel, waiting for their exits.
pub struct Victims {
    /// Read from tracefs at the first record (the probe attached, so the
    /// format file is there).
    layout: Option<Layout>,
    /// The cgroup v2 mount (v1 memory beside it on hybrid hosts:
    /// `resources::cgroupfs::Dirs` knows where).
    cgroup_root: PathBuf,
    /// cgroup id -> path from the root, found by a walk once per cgroup
    /// (an OOM storm in one container walks the tree once).
    paths: HashMap<u64, Option<String>>,
    reader: crate::resources::cgroupfs::Reader,
    pending: HashMap<u32, (OomKill, Instant)>,
    /// Arrival order, to expire and bound without a scan.
    order: VecDeque<(u32, Instant)>,
}

impl Victims {
    pub fn new(cgroup_root: &Path) -> Self {
        Victims {
            layout: None,
            cgroup_root: cgroup_root.to_owned(),
            paths: HashMap::new(),
            reader: crate::resources::cgroupfs::Reader::default(),
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Decode a record with this kernel's layout.
    pub fn victim(&mut self, record: &[u8; OOM_RECORD_LEN]) -> Victim {
        self.layout
            .get_or_insert_with(Layout::of_kernel)
            .victim(record)
    }

    /// The memory limit of the container cgroup of process `pid` (its
    /// cgroup v2 id `cgroup_id`, 0 when unknown). The cgroup is found by
    /// its id (the directory with that inode under the v2 root), else by
    /// /proc/PID/cgroup: a victim that already exited can show the root
    /// there. `memory.max` on cgroup v2; `memory.limit_in_bytes` of the
    /// same path in the v1 memory hierarchy on hybrid hosts (runtimes use
    /// one path in every hierarchy).
    pub fn memory_limit(&mut self, pid: u32, cgroup_id: u64) -> Option<u64> {
        let rel = match cgroup_id {
            0 => None,
            id => self.path_of(id),
        }
        .or_else(|| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|t| parse_proc_cgroup(&t).0)
        })?;
        let dirs = crate::resources::cgroupfs::Dirs::of(&self.cgroup_root, &rel);
        self.reader.memory_max(&dirs)
    }

    /// The path from the root of cgroup `id` (cached, bounded).
    fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.paths.get(&id) {
            return p.clone();
        }
        if self.paths.len() >= PATHS_MAX {
            self.paths.clear();
        }
        let mut found = None;
        crate::container::cgroup::walk(&self.cgroup_root, |path, _, ino| {
            if ino == id && found.is_none() {
                found = Some(path.to_owned());
            }
        });
        self.paths.insert(id, found.clone());
        found
    }

    /// Hold what the OOM killer saw of process `pid` until its exit.
    pub fn mark(&mut self, pid: u32, oom: OomKill, now: Instant) {
        debug!(pid, ?oom, "OOM victim");
        if self.pending.len() >= CAPACITY && !self.pending.contains_key(&pid) {
            while let Some((old, at)) = self.order.pop_front() {
                if self.pending.get(&old).is_some_and(|(_, t)| *t == at) {
                    self.pending.remove(&old);
                    break;
                }
            }
        }
        self.pending.insert(pid, (oom, now));
        self.order.push_back((pid, now));
        if self.order.len() > 2 * CAPACITY {
            // repeats of one pid: keep only the entries still held
            let pending = &self.pending;
            self.order
                .retain(|(p, at)| pending.get(p).is_some_and(|(_, t)| t == at));
        }
    }

    /// The OOM kill of process `pid`, at its exit.
    pub fn take(&mut self, pid: u32) -> Option<OomKill> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending.remove(&pid).map(|(o, _)| o)
    }

    /// Forget victims held [`TTL`] or longer.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(pid, at)) = self.order.front() {
            if now.saturating_duration_since(at) < TTL {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&pid).is_some_and(|(_, t)| *t == at) {
                self.pending.remove(&pid);
            }
        }
    }

    /// Victims held.
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::tracefs::parse_format;
    use std::os::unix::fs::MetadataExt;

    /// `oom/mark_victim` as Linux 5.10 to 6.7 print it.
    const FORMAT_5_10: &str = "name: mark_victim
ID: 455
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;

print fmt: \"pid=%d\", REC->pid
";

    /// The same tracepoint on Linux 6.18 (this machine's format file).
    const FORMAT_6_18: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;
";

    fn record(pid: i32, rss_kb: [u64; 3], junk: u8) -> [u8; OOM_RECORD_LEN] {
        let mut r = [junk; OOM_RECORD_LEN];
        r[8..12].copy_from_slice(&pid.to_ne_bytes());
        for (i, kb) in rss_kb.iter().enumerate() {
            r[24 + 8 * i..32 + 8 * i].copy_from_slice(&kb.to_ne_bytes());
        }
        r
    }

    #[test]
    fn old_kernels_give_the_pid_only() {
        let layout = Layout::from_fields(&parse_format(FORMAT_5_10).unwrap());
        assert_eq!(layout, Layout::OLDEST);
        // past the 12-byte record: bytes that are not the record's
        let v = layout.victim(&record(4242, [7, 7, 7], 0xAB));
        assert_eq!(
            v,
            Victim {
                pid: 4242,
                rss_bytes: None
            }
        );
    }

    #[test]
    fn new_kernels_give_the_resident_memory_in_bytes() {
        let layout = Layout::from_fields(&parse_format(FORMAT_6_18).unwrap());
        assert_eq!(
            layout,
            Layout {
                pid: 8,
                rss: Some([24, 32, 40])
            }
        );
        let v = layout.victim(&record(77, [30_000, 1_000, 24], 0));
        assert_eq!(v.pid, 77);
        assert_eq!(v.rss_bytes, Some(31_024 * 1024));
        // absurd values saturate, never wrap or panic
        let v = layout.victim(&record(1, [u64::MAX, 1, 1], 0));
        assert_eq!(v.rss_bytes, Some(u64::MAX));
    }

    #[test]
    fn fields_outside_the_copied_bytes_or_of_another_size_are_not_read() {
        let moved = FORMAT_6_18.replace("offset:40;\tsize:8", "offset:72;\tsize:8");
        let layout = Layout::from_fields(&parse_format(&moved).unwrap());
        assert_eq!(layout.rss, None);
        let narrow =
            FORMAT_6_18.replace("int pid;\toffset:8;\tsize:4", "int pid;\toffset:8;\tsize:2");
        assert_eq!(Layout::from_fields(&parse_format(&narrow).unwrap()).pid, 8);
        assert_eq!(Layout::from_fields(&[]), Layout::OLDEST);
    }

    #[test]
    fn proc_cgroup_names_v2_and_v1_memory_paths() {
        let hybrid = "12:memory:/k8s.io/t1\n11:cpu,cpuacct:/k8s.io/t1\n1:name=systemd:/k8s.io/t1\n0::/k8s.io/t1\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            (Some("/k8s.io/t1".into()), Some("/k8s.io/t1".into()))
        );
        assert_eq!(
            parse_proc_cgroup("0::/kubepods.slice/x.scope\n"),
            (Some("/kubepods.slice/x.scope".into()), None)
        );
        assert_eq!(parse_proc_cgroup("garbage\n\n3:memory\n"), (None, None));
    }

    #[test]
    fn the_limit_is_the_smallest_up_the_tree_found_by_cgroup_id() {
        let root = std::env::temp_dir().join(format!("spyglass-oom-{}", std::process::id()));
        let leaf = root.join("pods/p1/c1");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("pods/memory.max"), "max\n").unwrap();
        std::fs::write(root.join("pods/p1/memory.max"), "1000\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "2000\n").unwrap();
        let ino = std::fs::metadata(&leaf).unwrap().ino();
        let mut v = Victims::new(&root);
        assert_eq!(v.memory_limit(0, ino), Some(1000));
        std::fs::write(root.join("pods/p1/memory.max"), "max\n").unwrap();
        assert_eq!(v.memory_limit(0, ino), Some(2000));
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        assert_eq!(v.memory_limit(0, ino), None);
        assert_eq!(v.path_of(ino).as_deref(), Some("/pods/p1/c1"));
        // an unknown id is walked for once, then remembered as unknown
        assert_eq!(v.path_of(1), None);
        assert!(v.paths.contains_key(&1));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn victims_wait_for_their_exit_bounded_and_expiring() {
        let mut v = Victims::new(Path::new("/nonexistent"));
        let t0 = Instant::now();
        let oom = OomKill {
            rss_bytes: Some(1),
            memory_limit_bytes: Some(2),
        };
        v.mark(10, oom, t0);
        assert_eq!(v.take(11), None);
        assert_eq!(v.take(10), Some(oom));
        assert_eq!(v.take(10), None, "taken once");
        for pid in 0..(CAPACITY as u32 + 5) {
            v.mark(pid, oom, t0 + Duration::from_millis(u64::from(pid)));
        }
        assert_eq!(v.held(), CAPACITY);
        assert_eq!(v.take(0), None, "the oldest went first");
        assert_eq!(v.take(CAPACITY as u32 + 4), Some(oom));
        v.expire(t0 + TTL + Duration::from_secs(5));
        assert_eq!(v.held(), 0);
        assert!(v.order.is_empty());
    }
}
