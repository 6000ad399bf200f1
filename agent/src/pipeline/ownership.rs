//! The ownership stage: the OS package that owns the file each container
//! exec runs, from the package database of the container's image
//! ([`crate::packages::PackageIndex`]: dpkg or apk), read in a container
//! of it.
//!
//! The pipeline thread only probes hash maps. Everything that touches a
//! container's filesystem runs on a worker thread of its own:
//! - An image's index is built once, by its config digest, from
//!   `/proc/PID/root` of an exec of a container of it (70 ms for a
//!   780-package Debian root here), the process checked to still run in
//!   its container before and after. Execs before it is ready carry no
//!   answer (neither `package` nor `unpackaged`).
//! - A lookup is a hash probe on the path as execve got it (~150 ns).
//! - A path no package lists is resolved in a root of the image on the
//!   worker (symlinks such as `/bin/sh -> busybox`, alternatives); the
//!   exec that missed carries no answer, the answer is remembered for
//!   [`RESOLVED_FOR`] per image and path, and later execs of the path
//!   carry it. A slow or hostile filesystem slows those answers, never
//!   the pipeline.
//!
//! No answer either for: a relative path (`./run`: the working directory
//! is not known here), a path with a `..` component or cut by the kernel
//! (the text is not the file the kernel ran), an image with no dpkg or
//! apk database (scratch, distroless static; rpm is not read yet), an
//! index over [`MAX_INDEX_BYTES`].
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        mpsc::{self, Receiver, SyncSender},
        Arc,
    },
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use crate::{
    event::{Event, Kind, PackageRef, Process},
    packages::{Package, PackageIndex, RootFs},
};

/// Most images whose index is held (a node runs tens).
const MAX_IMAGES: usize = 64;
/// The most one image's index may hold in memory (a Debian image of 780
/// packages: 5 MiB); a larger one is not kept.
const MAX_INDEX_BYTES: usize = 32 << 20;
/// The most all indexes may hold; past it the others are dropped first.
const MAX_TOTAL_BYTES: usize = 96 << 20;
/// Most resolved paths remembered per image.
const MAX_RESOLVED: usize = 4096;
/// How long a resolved path's answer is used (a symlink may be changed).
pub const RESOLVED_FOR: Duration = Duration::from_secs(30);
/// Resolutions waiting per image.
const MAX_PENDING: usize = 64;
/// Tries to index an image that failed other than by its process going.
const MAX_TRIES: u8 = 3;
/// Jobs waiting for the worker.
const QUEUE: usize = 64;
/// Most recent execs remembered per image (roots to resolve in).
const RECENT: usize = 8;

/// A process of a container: pid and container id.
type Proc = (u32, String);

/// Work for the worker thread.
enum Job {
    Build {
        image: String,
        proc: Proc,
    },
    Resolve {
        image: String,
        exe: String,
        index: Arc<PackageIndex>,
        /// Newest first.
        roots: Vec<Proc>,
    },
}

/// Why an index was not built.
enum BuildError {
    /// The process ended or left its container: another exec tries.
    Gone,
    Read(String),
}

/// What the worker did.
enum Done {
    Built {
        image: String,
        proc: Proc,
        index: Result<Box<PackageIndex>, BuildError>,
        ms: u128,
    },
    /// `owner`: the package's place, `Some(None)` none owns it, `None`
    /// no root of the image could be opened.
    Resolved {
        image: String,
        exe: String,
        owner: Option<Option<u32>>,
        root: Option<Proc>,
    },
}

/// One image's index and the answers handed out from it.
struct Indexed {
    index: Arc<PackageIndex>,
    /// Each package's shared answer, by its place in `index.packages()`.
    refs: Vec<Arc<PackageRef>>,
    /// Paths a plain lookup missed, resolved in a root: their package,
    /// and until when the answer is used.
    resolved: HashMap<Box<str>, (Option<u32>, Instant)>,
    /// Paths being resolved.
    pending: HashSet<Box<str>>,
    /// Recent execs of the image, newest last.
    recent: Vec<Proc>,
    /// The last process whose root could be opened (first: the one the
    /// index was read from, often a container's long-lived init).
    anchor: Proc,
}

/// `/proc/PID/cgroup` of `pid` names container `id`: the process still
/// runs there (a pid reused by another process is not taken).
fn in_container(pid: u32, id: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id))
}

/// `/proc/PID/root` of `pid` while it still runs in container `id`.
fn root_of(pid: u32, id: &str) -> Option<RootFs> {
    if !in_container(pid, id) {
        return None;
    }
    let root = RootFs::open(&PathBuf::from(format!("/proc/{pid}/root"))).ok()?;
    in_container(pid, id).then_some(root)
}

fn package_ref(p: &Package) -> Arc<PackageRef> {
    Arc::new(PackageRef {
        kind: serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        name: p.name.to_string(),
        version: p.version.to_string(),
        source: p.source.as_deref().unwrap_or_default().to_owned(),
        arch: p.arch.as_deref().unwrap_or_default().to_owned(),
        purl: p.purl.to_string(),
    })
}

/// The place of `p` in `all` (`p` is one of its elements).
fn place(all: &[Package], p: &Package) -> u32 {
    let offset = (p as *const Package as usize).wrapping_sub(all.as_ptr() as usize);
    u32::try_from(offset / std::mem::size_of::<Package>().max(1)).unwrap_or(u32::MAX)
}

/// Whether the text of `exe` names the file the kernel ran: absolute,
/// whole, and without `..` (which the kernel applies after following
/// links, and the text lookup before).
fn plain_path(p: &Process) -> bool {
    p.exe.starts_with('/') && !p.exe_truncated && !p.exe.split('/').any(|c| c == "..")
}

/// What a lookup tells of one exec.
enum Answer {
    Owned(Arc<PackageRef>),
    Unpackaged,
    /// Not known now: resolve `exe` on the worker (its roots newest
    /// first).
    Resolve(Vec<Proc>),
    Unknown,
}

impl Indexed {
    fn new(index: PackageIndex, anchor: Proc) -> Self {
        let refs = index.packages().iter().map(package_ref).collect();
        Indexed {
            index: Arc::new(index),
            refs,
            resolved: HashMap::new(),
            pending: HashSet::new(),
            recent: Vec::new(),
            anchor,
        }
    }

    fn answer_of(&self, place: Option<u32>) -> Answer {
        match place.and_then(|i| self.refs.get(i as usize)) {
            Some(r) => Answer::Owned(r.clone()),
            None => Answer::Unpackaged,
        }
    }

    /// What is known of `p` (an exec in container `container`) now.
    fn lookup(&mut self, p: &Process, container: &str, now: Instant) -> Answer {
        // an rpm image would look all unpackaged
        if self.index.databases().is_empty() {
            return Answer::Unknown;
        }
        if self.recent.len() >= RECENT {
            self.recent.remove(0);
        }
        self.recent.push((p.pid, container.to_owned()));
        if let Some(pkg) = self.index.owner(&p.exe) {
            return self.answer_of(Some(place(self.index.packages(), pkg)));
        }
        if let Some((found, until)) = self.resolved.get(p.exe.as_ref()) {
            if *until > now {
                return self.answer_of(*found);
            }
        }
        if self.pending.len() >= MAX_PENDING || !self.pending.insert(p.exe.as_ref().into()) {
            return Answer::Unknown;
        }
        let mut roots: Vec<Proc> = self.recent.iter().rev().cloned().collect();
        roots.push(self.anchor.clone());
        Answer::Resolve(roots)
    }

    /// The worker's answer for `exe`.
    fn resolved(
        &mut self,
        exe: &str,
        owner: Option<Option<u32>>,
        root: Option<Proc>,
        now: Instant,
    ) {
        self.pending.remove(exe);
        if let Some(root) = root {
            self.anchor = root;
        }
        let Some(owner) = owner else { return };
        if self.resolved.len() >= MAX_RESOLVED {
            self.resolved.retain(|_, (_, until)| *until > now);
            if self.resolved.len() >= MAX_RESOLVED {
                self.resolved.clear();
            }
        }
        self.resolved
            .insert(exe.into(), (owner, now + RESOLVED_FOR));
    }
}

/// Build an index of `image` from the root of `proc`, which must run in
/// its container before and after the read.
fn build(proc: &Proc) -> Result<PackageIndex, BuildError> {
    let (pid, id) = proc;
    if !in_container(*pid, id) {
        return Err(BuildError::Gone);
    }
    let index = PackageIndex::read(&PathBuf::from(format!("/proc/{pid}/root")));
    if !in_container(*pid, id) {
        return Err(BuildError::Gone);
    }
    index.map_err(|e| BuildError::Read(e.to_string()))
}

/// Resolve `exe` in the first root of `roots` that opens.
fn resolve(exe: &str, index: &PackageIndex, roots: &[Proc]) -> (Option<Option<u32>>, Option<Proc>) {
    for (pid, id) in roots {
        let Some(root) = root_of(*pid, id) else {
            continue;
        };
        let owner = index
            .owner_resolving(&root, exe)
            .map(|p| place(index.packages(), p));
        return (Some(owner), Some((*pid, id.clone())));
    }
    (None, None)
}

/// Do the jobs asked, until the stage is dropped.
fn worker(jobs: &Receiver<Job>, done: &SyncSender<Done>) {
    while let Ok(job) = jobs.recv() {
        let out = match job {
            Job::Build { image, proc } => {
                let start = Instant::now();
                let index = build(&proc).map(Box::new);
                Done::Built {
                    image,
                    proc,
                    index,
                    ms: start.elapsed().as_millis(),
                }
            }
            Job::Resolve {
                image,
                exe,
                index,
                roots,
            } => {
                let (owner, root) = resolve(&exe, &index, &roots);
                Done::Resolved {
                    image,
                    exe,
                    owner,
                    root,
                }
            }
        };
        if done.send(out).is_err() {
            return;
        }
    }
}

enum Slot {
    Building {
        tries: u8,
    },
    /// The last build failed: the next exec asks again.
    Retry {
        tries: u8,
    },
    Ready(Box<Indexed>),
    /// Could not be read [`MAX_TRIES`] times, or too large.
    Failed,
}

pub struct Ownership {
    images: HashMap<String, Slot>,
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
}

impl Ownership {
    /// The stage, with its worker thread.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, todo) = mpsc::sync_channel(QUEUE);
        let (finished, done) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("package-index".into())
            .spawn(move || worker(&todo, &finished))?;
        Ok(Ownership {
            images: HashMap::new(),
            jobs,
            done,
        })
    }

    /// Mark each container exec of `events` with the package owning its
    /// file, or `unpackaged`, where that is known now.
    pub fn mark(&mut self, events: &mut [Event]) {
        self.take_done();
        let now = Instant::now();
        for ev in events.iter_mut().filter(|e| e.kind == Kind::Exec) {
            let Some((image, container)) = ev
                .container
                .as_ref()
                .and_then(|c| {
                    c.meta
                        .as_ref()
                        .map(|m| (m.image.config_digest.as_str(), c.id.as_str()))
                })
                .filter(|(d, _)| !d.is_empty())
            else {
                continue;
            };
            let Some(p) = ev.process.as_mut() else {
                continue;
            };
            if !plain_path(p) {
                continue;
            }
            let proc = (p.pid, container.to_owned());
            let answer = match self.images.get_mut(image) {
                Some(Slot::Ready(ix)) => ix.lookup(p, container, now),
                Some(Slot::Building { .. } | Slot::Failed) => Answer::Unknown,
                Some(Slot::Retry { tries }) => {
                    let tries = *tries;
                    self.build(image.to_owned(), proc, tries);
                    Answer::Unknown
                }
                None => {
                    self.build(image.to_owned(), proc, 0);
                    Answer::Unknown
                }
            };
            match answer {
                Answer::Owned(pkg) => p.package = Some(pkg),
                Answer::Unpackaged => p.unpackaged = true,
                Answer::Resolve(roots) => self.resolve(image, &p.exe, roots),
                Answer::Unknown => {}
            }
        }
    }

    /// Ask the worker to resolve `exe` in a root of `image`.
    fn resolve(&mut self, image: &str, exe: &str, roots: Vec<Proc>) {
        let Some(Slot::Ready(ix)) = self.images.get_mut(image) else {
            return;
        };
        let job = Job::Resolve {
            image: image.to_owned(),
            exe: exe.to_owned(),
            index: ix.index.clone(),
            roots,
        };
        if self.jobs.try_send(job).is_err() {
            // the worker is behind: a later exec asks again
            ix.pending.remove(exe);
        }
    }

    /// Ask the worker to index `image` from `proc` (`tries` so far).
    fn build(&mut self, image: String, proc: Proc, tries: u8) {
        if self.images.len() >= MAX_IMAGES && !self.images.contains_key(&image) {
            let other = self
                .images
                .iter()
                .find(|(_, s)| !matches!(s, Slot::Building { .. }))
                .map(|(k, _)| k.clone());
            match other {
                Some(k) => {
                    self.images.remove(&k);
                }
                None => return,
            }
        }
        let job = Job::Build {
            image: image.clone(),
            proc,
        };
        if self.jobs.try_send(job).is_ok() {
            self.images.insert(image, Slot::Building { tries });
        }
    }

    /// Bytes the ready indexes hold.
    fn held(&self) -> usize {
        self.images
            .values()
            .map(|s| match s {
                Slot::Ready(ix) => ix.index.heap_bytes(),
                _ => 0,
            })
            .sum()
    }

    /// Keep `index` of `image` within the memory bounds, dropping other
    /// indexes first; false: it is too large to keep.
    fn make_room(&mut self, image: &str, bytes: usize) -> bool {
        if bytes > MAX_INDEX_BYTES {
            return false;
        }
        while self.held() + bytes > MAX_TOTAL_BYTES {
            let other = self
                .images
                .iter()
                .find(|(k, s)| k.as_str() != image && matches!(s, Slot::Ready(_)))
                .map(|(k, _)| k.clone());
            match other {
                Some(k) => {
                    self.images.remove(&k);
                }
                None => return false,
            }
        }
        true
    }

    /// What the worker finished.
    fn take_done(&mut self) {
        let now = Instant::now();
        while let Ok(done) = self.done.try_recv() {
            match done {
                Done::Built {
                    image,
                    proc,
                    index,
                    ms,
                } => self.built(image, proc, index, ms),
                Done::Resolved {
                    image,
                    exe,
                    owner,
                    root,
                } => {
                    if let Some(Slot::Ready(ix)) = self.images.get_mut(&image) {
                        ix.resolved(&exe, owner, root, now);
                    }
                }
            }
        }
    }

    fn built(
        &mut self,
        image: String,
        proc: Proc,
        index: Result<Box<PackageIndex>, BuildError>,
        ms: u128,
    ) {
        let tries = match self.images.get(&image) {
            Some(Slot::Building { tries }) => *tries,
            _ => return,
        };
        let slot = match index {
            Ok(index) => {
                let bytes = index.heap_bytes();
                if self.make_room(&image, bytes) {
                    info!(image = %image, packages = index.packages().len(), paths = index.path_count(), bytes, ms = ms as u64, "package index of an image built");
                    Slot::Ready(Box::new(Indexed::new(*index, proc)))
                } else {
                    warn!(image = %image, bytes, "package index of an image too large to keep: its execs carry no package");
                    Slot::Failed
                }
            }
            // not a try: the next exec of the image asks again
            Err(BuildError::Gone) => Slot::Retry { tries },
            Err(BuildError::Read(e)) if tries + 1 < MAX_TRIES => {
                debug!(image = %image, error = %e, "package index not built; the next exec tries again");
                Slot::Retry { tries: tries + 1 }
            }
            Err(BuildError::Read(e)) => {
                info!(image = %image, error = %e, "package index of an image cannot be built: its execs carry no package");
                Slot::Failed
            }
        };
        self.images.insert(image, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_path_is_looked_up() {
        let p = |exe: &str, truncated| Process {
            exe: exe.into(),
            exe_truncated: truncated,
            ..Process::default()
        };
        assert!(plain_path(&p("/usr/bin/ls", false)));
        assert!(!plain_path(&p("/tmp/l/../../usr/bin/ls", false)));
        assert!(!plain_path(&p("/usr/bin/..", false)));
        assert!(!plain_path(&p("./run", false)));
        assert!(!plain_path(&p("/usr/bin/verylong", true)));
        // `..` inside a name is a name
        assert!(plain_path(&p("/opt/a..b/run", false)));
    }
}
