//! cgroup paths -> container ids: the shapes containerd, kubelet (cgroupfs
//! and systemd drivers), CRI-O, Docker and Podman create, on cgroup v2 and
//! hybrid hosts. Pure code, table-tested.
//!
//! The kernel gives each event a cgroup v2 id (the inode of the cgroup
//! directory). [`Resolver`] maps ids to paths by walking the v2 hierarchy
//! on a miss; runtimes create a container's cgroup before its first
//! process starts, so even a container that lived a few milliseconds is
//! found.
use spyglass_proto::model::Runtime;
use std::{
    collections::{HashMap, VecDeque},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// A container as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    /// containerd, CRI-O, Docker, Podman, or `cri` (a Kubernetes pod
    /// cgroup whose runtime the path does not say).
    pub runtime: Runtime,
    /// Kubernetes pod uid, when the path is under a pod cgroup.
    pub pod_uid: Option<String>,
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`.
fn pod_uid(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let i = s.rfind("pod")?;
    let uid = &s[i + 3..];
    let ok = uid.len() == 36
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    ok.then(|| uid.replace('_', "-"))
}

/// A systemd scope `<prefix><id>.scope`.
fn scoped<'a>(segment: &'a str, prefix: &str) -> Option<&'a str> {
    let id = segment
        .strip_prefix(prefix)?
        .strip_suffix(".scope")
        .unwrap_or_else(|| {
            // cgroupfs drivers use the same prefix without `.scope`
            &segment[prefix.len()..]
        });
    is_hex_id(id).then_some(id)
}

/// Parse a cgroup v2 path (`/kubepods/burstable/pod<uid>/<id>`, ...).
pub fn parse(path: &str) -> Option<ContainerRef> {
    parse_path(path, true)
}

/// Parse the last two segments of a deeper path (`exact` false): the
/// `/<namespace>/<name>` shape of plain containerd is then not trusted,
/// since any two host cgroups would match it.
fn parse_path(path: &str, exact: bool) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod = segments.iter().find_map(|s| pod_uid(s));
    let kube = segments.iter().any(|s| s.starts_with("kubepods"));
    // The deepest segment naming a container wins (nested cgroups inside a
    // container stay attributed to it).
    for (i, seg) in segments.iter().enumerate().rev() {
        let (id, runtime) = if let Some(id) = scoped(seg, "cri-containerd-") {
            (id, Runtime::Containerd)
        } else if seg.starts_with("crio-conmon-") || seg.starts_with("libpod-conmon-") {
            continue;
        } else if let Some(id) = scoped(seg, "crio-") {
            (id, Runtime::CriO)
        } else if let Some(id) = scoped(seg, "docker-") {
            (id, Runtime::Docker)
        } else if let Some(id) = scoped(seg, "libpod-") {
            (id, Runtime::Podman)
        } else if is_hex_id(seg) {
            let parent = if i > 0 { segments[i - 1] } else { "" };
            let runtime = if parent == "docker" {
                Runtime::Docker
            } else if kube {
                Runtime::Cri
            } else {
                Runtime::Containerd
            };
            (*seg, runtime)
        } else {
            continue;
        };
        return Some(ContainerRef {
            id: id.to_owned(),
            runtime,
            pod_uid: pod.clone(),
        });
    }
    // containerd without kubelet (cgroupfs): /<namespace>/<container id>,
    // where ids are any name (`ctr run ... t1`).
    if let (true, [ns, id]) = (exact, segments.as_slice()) {
        let systemd =
            |s: &str| s.ends_with(".slice") || s.ends_with(".scope") || s.ends_with(".service");
        if !systemd(ns) && !systemd(id) && !ns.starts_with("kubepods") {
            return Some(ContainerRef {
                id: (*id).to_owned(),
                runtime: Runtime::Containerd,
                pod_uid: None,
            });
        }
    }
    None
}

/// The container of a cgroup from the names the exec record carries (its
/// directory, its parent's, its depth): no filesystem access, so it works
/// after the cgroup is gone.
pub fn from_names(level: u32, parent: &str, leaf: &str) -> Option<ContainerRef> {
    match level {
        0 => None,
        1 => parse_path(&format!("/{leaf}"), true),
        2 => parse_path(&format!("/{parent}/{leaf}"), true),
        _ => parse_path(&format!("/{parent}/{leaf}"), false),
    }
}

/// Every directory of the cgroup v2 tree under `root` (at most
/// [`WALK_LIMIT`], 12 levels deep): `f(path from the root, as /a/b;
/// directory; cgroup id)`.
pub fn walk(root: &Path, mut f: impl FnMut(&str, &Path, u64)) {
    let mut stack = vec![(root.to_owned(), 0usize)];
    let mut seen = 0;
    while let Some((dir, depth)) = stack.pop() {
        seen += 1;
        if seen > WALK_LIMIT {
            break;
        }
        if let Ok(meta) = std::fs::metadata(&dir) {
            let rel = dir.strip_prefix(root).unwrap_or(&dir);
            f(&format!("/{}", rel.display()), &dir, meta.ino());
        }
        if depth >= 12 {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
}

/// The container cgroups under `root`: each container's outermost
/// directory (processes of a container may sit in cgroups nested in it),
/// as a path from the root (`/k8s.io/web`), with its cgroup id.
pub fn containers(root: &Path) -> HashMap<String, (ContainerRef, String, u64)> {
    let mut out: HashMap<String, (ContainerRef, String, u64)> = HashMap::new();
    walk(root, |path, _, ino| {
        let Some(c) = parse(path) else { return };
        match out.get(&c.id) {
            Some((_, p, _)) if p.matches('/').count() <= path.matches('/').count() => {}
            _ => {
                out.insert(c.id.clone(), (c, path.to_owned(), ino));
            }
        }
    });
    out
}

/// cgroup id -> container, with a cache refreshed by walking the v2 tree.
pub struct Resolver {
    root: PathBuf,
    by_id: HashMap<u64, Option<ContainerRef>>,
    /// Containers named by exec records (kept across walks; bounded in
    /// number and in age).
    learned: HashMap<u64, ContainerRef>,
    /// Learned ids in the order they came, for expiry without a scan (the
    /// housekeeping tick runs ten times a second).
    learned_at: VecDeque<(u64, Instant)>,
    last_walk: Option<Instant>,
    /// Walks at most this often; ids unseen in between resolve to None
    /// until the next walk.
    min_walk_interval: Duration,
}

/// Directories visited per walk at most (bounds time and memory).
const WALK_LIMIT: usize = 200_000;
/// cgroups learned from exec records at most; then the map starts over
/// (entries come back with the next exec in each cgroup).
const LEARNED_LIMIT: usize = 65_536;

impl Resolver {
    pub fn new(root: &Path) -> Self {
        Resolver {
            root: root.to_owned(),
            by_id: HashMap::new(),
            learned: HashMap::new(),
            learned_at: VecDeque::new(),
            last_walk: None,
            min_walk_interval: Duration::from_millis(20),
        }
    }

    fn walk(&mut self) {
        self.by_id.clear();
        let by_id = &mut self.by_id;
        walk(&self.root, |path, _, ino| {
            by_id.insert(ino, parse(path));
        });
        self.last_walk = Some(Instant::now());
    }

    /// Remember what an exec record says about its cgroup.
    pub fn learn(&mut self, cgroup_id: u64, level: u32, parent: &str, leaf: &str) {
        if cgroup_id == 0 || self.learned.contains_key(&cgroup_id) {
            return;
        }
        if let Some(c) = from_names(level, parent, leaf) {
            if self.learned.len() >= LEARNED_LIMIT {
                self.learned.clear();
                self.learned_at.clear();
            }
            self.learned.insert(cgroup_id, c);
            self.learned_at.push_back((cgroup_id, Instant::now()));
        }
    }

    /// Forget cgroups learned `ttl` or more before `now` (a live cgroup is
    /// still found by the walk).
    pub fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some(&(id, at)) = self.learned_at.front() {
            if now.saturating_duration_since(at) < ttl {
                break;
            }
            self.learned_at.pop_front();
            self.learned.remove(&id);
        }
    }

    /// A forgotten container's cgroups go from both maps (a cgroup id is
    /// an inode number, which the kernel may give to a new cgroup).
    fn forget(&mut self, id: &str) {
        self.learned.retain(|_, c| c.id != id);
        self.learned_at
            .retain(|(cg, _)| self.learned.contains_key(cg));
        self.by_id
            .retain(|_, c| c.as_ref().is_none_or(|c| c.id != id));
    }

    /// Entries held (both maps).
    pub fn cached(&self) -> usize {
        self.by_id.len() + self.learned.len()
    }

    /// The container of a cgroup id; None for host cgroups.
    pub fn resolve(&mut self, cgroup_id: u64) -> Option<ContainerRef> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(c) = self.learned.get(&cgroup_id) {
            return Some(c.clone());
        }
        if let Some(c) = self.by_id.get(&cgroup_id) {
            return c.clone();
        }
        let due = self
            .last_walk
            .is_none_or(|t| t.elapsed() >= self.min_walk_interval);
        if !due {
            // walked moments ago, maybe before this cgroup existed: ask again
            // on the next event
            return None;
        }
        self.walk();
        // A fresh walk that misses means the cgroup is already gone (the
        // event was made before this walk): remember the miss so its other
        // events do not walk again. The next walk forgets it.
        self.by_id.entry(cgroup_id).or_insert(None).clone()
    }
}

impl super::lifecycle::Observer for Resolver {
    fn on_container(&mut self, change: &super::lifecycle::Change) {
        if let super::lifecycle::Change::Forgotten(id) = change {
            self.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1c2d3e4f-aaaa-bbbb-cccc-0123456789ab";

    /// (id, runtime, pod uid)
    type Want = Option<(&'static str, &'static str, Option<&'static str>)>;

    #[test]
    fn recognises_runtime_and_driver_shapes() {
        let u = UID.replace('-', "_");
        let cases: Vec<(String, Want)> = vec![
            // containerd, cgroupfs, no kubelet (ctr run in namespace k8s.io)
            ("/k8s.io/t1".into(), Some(("t1", "containerd", None))),
            (format!("/default/{ID}"), Some((ID, "containerd", None))),
            // kubelet cgroupfs driver
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Some((ID, "cri", Some(UID)))),
            (format!("/kubepods/pod{UID}/{ID}"), Some((ID, "cri", Some(UID)))),
            // kubelet systemd driver + containerd / CRI-O
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"),
                Some((ID, "containerd", Some(UID))),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"),
                Some((ID, "cri-o", Some(UID))),
            ),
            // Docker (cgroupfs and systemd), Podman
            (format!("/docker/{ID}"), Some((ID, "docker", None))),
            (format!("/system.slice/docker-{ID}.scope"), Some((ID, "docker", None))),
            (format!("/machine.slice/libpod-{ID}.scope"), Some((ID, "podman", None))),
            // a nested cgroup inside a container stays with the container
            (format!("/kubepods/besteffort/pod{UID}/{ID}/sub"), Some((ID, "cri", Some(UID)))),
            // host cgroups and runtime helpers
            ("/".into(), None),
            ("/init.scope".into(), None),
            ("/system.slice/containerd.service".into(), None),
            ("/user.slice/user-0.slice/session-1.scope".into(), None),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            (format!("/kubepods/burstable/pod{UID}"), None),
        ];
        for (path, want) in cases {
            let got = parse(&path);
            let got = got
                .as_ref()
                .map(|c| (c.id.as_str(), c.runtime.as_str(), c.pod_uid.as_deref()));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn container_from_the_names_in_an_exec_record() {
        let u = UID.replace('-', "_");
        let cases: Vec<(u32, String, String, Want)> = vec![
            (
                2,
                "k8s.io".into(),
                "t1".into(),
                Some(("t1", "containerd", None)),
            ),
            (
                4,
                format!("pod{UID}"),
                ID.into(),
                Some((ID, "containerd", Some(UID))),
            ),
            (
                4,
                format!("kubepods-besteffort-pod{u}.slice"),
                format!("cri-containerd-{ID}.scope"),
                Some((ID, "containerd", Some(UID))),
            ),
            (
                2,
                "system.slice".into(),
                format!("docker-{ID}.scope"),
                Some((ID, "docker", None)),
            ),
            // deeper than two levels, two plain names are not a container
            (3, "a".into(), "b".into(), None),
            (2, "system.slice".into(), "containerd.service".into(), None),
            (1, String::new(), "init.scope".into(), None),
            (0, String::new(), String::new(), None),
        ];
        for (level, parent, leaf, want) in cases {
            let got = from_names(level, &parent, &leaf);
            let got = got
                .as_ref()
                .map(|c| (c.id.as_str(), c.runtime.as_str(), c.pod_uid.as_deref()));
            assert_eq!(got, want, "{level} {parent}/{leaf}");
        }
        // learned names resolve without the filesystem, and stay
        let mut r = Resolver::new(Path::new("/nonexistent"));
        r.learn(77, 2, "k8s.io", "gone");
        r.learn(78, 3, "a", "b");
        assert_eq!(r.resolve(77).map(|c| c.id), Some("gone".into()));
        assert_eq!(r.resolve(78), None);
        assert_eq!(r.resolve(77).map(|c| c.id), Some("gone".into()));
        r.expire(Instant::now(), Duration::from_secs(30));
        assert_eq!(r.learned.len(), 1, "young entries stay");
        r.expire(
            Instant::now() + Duration::from_secs(31),
            Duration::from_secs(30),
        );
        assert!(!r.learned.contains_key(&77), "old entries go");
    }

    #[test]
    fn resolves_a_fresh_cgroup_by_id() {
        let root = crate::bpf::preflight::cgroup2_root()
            .expect("this test needs a cgroup v2 mount (run as root, as `cargo xtask test` does)");
        let dir = root.join("spyglass-unit-test").join(ID);
        std::fs::create_dir_all(&dir)
            .expect("this test creates a cgroup and needs root (as under `cargo xtask test`)");
        let ino = std::fs::metadata(&dir).unwrap().ino();
        let mut r = Resolver::new(&root);
        let got = r.resolve(ino);
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(root.join("spyglass-unit-test"));
        let c = got.expect("the new cgroup resolves");
        assert_eq!((c.id.as_str(), c.runtime), (ID, Runtime::Containerd));
        assert_eq!(r.resolve(1), None, "the root cgroup is the host");
        // right after a walk, an unknown id is not remembered (the cgroup
        // may be younger than the walk) ...
        assert_eq!(r.resolve(u64::MAX), None);
        assert!(!r.by_id.contains_key(&u64::MAX));
        // ... a fresh walk that misses it remembers the miss
        r.min_walk_interval = Duration::ZERO;
        assert_eq!(r.resolve(u64::MAX), None);
        assert!(r.by_id.contains_key(&u64::MAX));
        let walked = r.last_walk;
        assert_eq!(r.resolve(u64::MAX), None);
        assert_eq!(r.last_walk, walked, "a remembered miss does not walk again");
    }
}
