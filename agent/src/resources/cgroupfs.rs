//! A container cgroup's figures from its cgroup v2 files (`cpu.stat`,
//! `memory.current`, `memory.max`, `memory.events`, `pids.current`) and
//! the pids in it (`cgroup.procs`). On hybrid hosts (v2 mounted at
//! `/sys/fs/cgroup/unified`, controllers on v1) memory and pids come from
//! the same path under the v1 `memory` and `pids` hierarchies
//! (`memory.usage_in_bytes`, `memory.limit_in_bytes`, `memory.oom_control`).
//! Parsers are pure; reads reuse one buffer.
use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// Bytes read from one cgroup file at most (they are a few lines).
const FILE_MAX: usize = 4096;
/// Levels of nested cgroups under a container read for its pids.
const PROCS_DEPTH: usize = 3;
/// Pids read from one container at most.
const PROCS_MAX: usize = 65_536;

/// Why a container's cgroup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupfsError {
    #[error("cannot read {path}: {source} (the container's cgroup is gone, or cgroup v2 controllers are not enabled for it)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no `usage_usec` line (not a cgroup v2 cpu.stat file)")]
    Format { path: PathBuf },
}

/// A v1 limit at or above this is "no limit" (the kernel writes
/// PAGE_COUNTER_MAX pages, about 2^63 bytes).
const V1_UNLIMITED: u64 = 1 << 62;

/// Where a container cgroup's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirs {
    /// The cgroup v2 directory (`cpu.stat`, `cgroup.procs`).
    pub v2: PathBuf,
    /// Hybrid hosts: the v1 `memory` and `pids` directories of the same path.
    pub v1: Option<(PathBuf, PathBuf)>,
    /// The mount the memory directory is under (limits are looked up to
    /// it, not beyond).
    pub memory_root: PathBuf,
}

impl Dirs {
    /// The directories of the cgroup at `rel` (`/k8s.io/web`) under the v2
    /// mount `root`; v1 ones when `root` is a hybrid host's `unified`
    /// mount beside a v1 `memory` hierarchy.
    pub fn of(root: &Path, rel: &str) -> Dirs {
        let rel = rel.trim_start_matches('/');
        let v1_roots = root
            .parent()
            .filter(|_| root.ends_with("unified"))
            .map(|base| (base.join("memory"), base.join("pids")))
            .filter(|(m, _)| m.join("memory.usage_in_bytes").exists());
        Dirs {
            v2: root.join(rel),
            v1: v1_roots.as_ref().map(|(m, p)| (m.join(rel), p.join(rel))),
            memory_root: v1_roots.map_or_else(|| root.to_owned(), |(m, _)| m),
        }
    }
}

/// One reading of a container cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// `cpu.stat` `usage_usec`.
    pub usage_usec: u64,
    pub memory_current: Option<u64>,
    /// `memory.events` `oom_kill`.
    pub oom_kills: Option<u64>,
    pub pids: Option<u64>,
}

/// The value of `key` in a flat keyed file (`usage_usec 123`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single-value file: a number.
pub fn single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `memory.max`: `Some(None)` for `max` (no limit), `Some(Some(n))` for a
/// limit, `None` for anything else.
pub fn limit(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        t => t.parse().ok().map(Some),
    }
}

/// Reads a container cgroup's files into one reused buffer.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    /// The text of a small file, or the error.
    fn text(&mut self, path: &Path) -> Result<&str, std::io::Error> {
        self.buf.clear();
        std::fs::File::open(path)?
            .take(FILE_MAX as u64)
            .read_to_end(&mut self.buf)?;
        Ok(std::str::from_utf8(&self.buf).unwrap_or(""))
    }

    /// One file's value through `parse`; None when unreadable (a
    /// controller not enabled) or unparsable.
    fn value<T>(&mut self, dir: &Path, file: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        self.text(&dir.join(file)).ok().and_then(parse)
    }

    /// The figures of the cgroup at `dirs`. An error when `cpu.stat`
    /// cannot be read: the cgroup is gone.
    pub fn figures(&mut self, dirs: &Dirs) -> Result<Figures, CgroupfsError> {
        let dir = &dirs.v2;
        let path = dir.join("cpu.stat");
        let text = self.text(&path).map_err(|source| CgroupfsError::Read {
            path: path.clone(),
            source,
        })?;
        let usage_usec = keyed(text, "usage_usec").ok_or(CgroupfsError::Format { path })?;
        Ok(match &dirs.v1 {
            None => Figures {
                usage_usec,
                memory_current: self.value(dir, "memory.current", single),
                oom_kills: self.value(dir, "memory.events", |t| keyed(t, "oom_kill")),
                pids: self.value(dir, "pids.current", single),
            },
            Some((memory, pids)) => Figures {
                usage_usec,
                memory_current: self.value(memory, "memory.usage_in_bytes", single),
                oom_kills: self.value(memory, "memory.oom_control", |t| keyed(t, "oom_kill")),
                pids: self.value(pids, "pids.current", single),
            },
        })
    }

    /// The memory limit the kernel enforces on the cgroup at `dirs`: the
    /// smallest of its own and its ancestors' (a pod-level limit binds a
    /// container without one). None when unlimited or unreadable.
    pub fn memory_max(&mut self, dirs: &Dirs) -> Option<u64> {
        let (start, v1) = match &dirs.v1 {
            None => (&dirs.v2, false),
            Some((memory, _)) => (memory, true),
        };
        let mut least: Option<u64> = None;
        for dir in start.ancestors() {
            if !dir.starts_with(&dirs.memory_root) || dir == dirs.memory_root {
                break;
            }
            let own = if v1 {
                self.value(dir, "memory.limit_in_bytes", single)
                    .filter(|l| *l < V1_UNLIMITED)
            } else {
                self.value(dir, "memory.max", limit).flatten()
            };
            least = match (least, own) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        least
    }

    /// The pids in the cgroup at `dir` and the cgroups nested in it.
    pub fn pids(&mut self, dir: &Path) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack = vec![(dir.to_owned(), 0usize)];
        while let Some((d, depth)) = stack.pop() {
            if let Ok(text) = read_procs(&d.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if out.len() >= PROCS_MAX {
                out.truncate(PROCS_MAX);
                break;
            }
            if depth >= PROCS_DEPTH {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
        out
    }
}

/// `cgroup.procs` (may be long: not through the small-file buffer).
fn read_procs(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)?
        .take((PROCS_MAX * 8) as u64)
        .read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_files_of_cgroup_v2() {
        let stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n";
        assert_eq!(keyed(stat, "usage_usec"), Some(1_234_567));
        assert_eq!(keyed(stat, "usage"), None);
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "oom"), Some(2));
        assert_eq!(single("33554432\n"), Some(33_554_432));
        assert_eq!(single("garbage"), None);
        assert_eq!(limit("max\n"), Some(None));
        assert_eq!(limit("33554432\n"), Some(Some(33_554_432)));
        assert_eq!(limit("-1"), None);
    }

    #[test]
    fn a_directory_laid_out_like_a_cgroup_reads_and_a_missing_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("spyglass-cgroupfs-{}", std::process::id()));
        let nested = dir.join("nested");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 42\n").unwrap();
        std::fs::write(dir.join("memory.current"), "1000\n").unwrap();
        std::fs::write(dir.join("memory.max"), "2000\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "10\n11\n").unwrap();
        std::fs::write(nested.join("cgroup.procs"), "12\n").unwrap();
        let mut r = Reader::default();
        let dirs = Dirs {
            v2: dir.clone(),
            v1: None,
            memory_root: dir.parent().unwrap().to_owned(),
        };
        let f = r.figures(&dirs).unwrap();
        assert_eq!(
            f,
            Figures {
                usage_usec: 42,
                memory_current: Some(1000),
                oom_kills: None,
                pids: None,
            }
        );
        assert_eq!(r.memory_max(&dirs), Some(2000));
        // a hybrid host's v1 files
        let (m, p) = (dir.join("v1mem"), dir.join("v1pids"));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(m.join("memory.usage_in_bytes"), "3000\n").unwrap();
        std::fs::write(m.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            m.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(p.join("pids.current"), "3\n").unwrap();
        let hybrid = Dirs {
            v2: dir.clone(),
            v1: Some((m.clone(), p)),
            memory_root: dir.clone(),
        };
        let f = r.figures(&hybrid).unwrap();
        assert_eq!(
            (f.memory_current, f.oom_kills, f.pids),
            (Some(3000), Some(2), Some(3))
        );
        assert_eq!(r.memory_max(&hybrid), None, "v1's no-limit value");
        std::fs::write(m.join("memory.limit_in_bytes"), "33554432\n").unwrap();
        assert_eq!(r.memory_max(&hybrid), Some(33_554_432));
        // a limit on a parent (a pod's) binds a child without one
        let child = dir.join("child");
        std::fs::create_dir_all(&child).unwrap();
        std::fs::write(child.join("memory.max"), "max\n").unwrap();
        let in_pod = Dirs {
            v2: child.clone(),
            v1: None,
            memory_root: dir.parent().unwrap().to_owned(),
        };
        assert_eq!(r.memory_max(&in_pod), Some(2000));
        std::fs::write(child.join("memory.max"), "1500\n").unwrap();
        assert_eq!(r.memory_max(&in_pod), Some(1500));
        let mut pids = r.pids(&dir);
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12]);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = r.figures(&dirs).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("cpu.stat"),
            "{e}"
        );
    }
}
