//! The ownership stage: the OS package that owns the file each container
//! exec runs, from the container's image's own package database
//! ([`crate::packages::PackageIndex`]: dpkg or apk).
//!
//! An image's index is built once, by its config digest, on a thread of
//! its own (70 ms for a 780-package Debian root here), from
//! `/proc/PID/root` of the first exec of a container of it seen; execs
//! before it is ready carry no answer (neither `package` nor
//! `unpackaged`). A lookup is a hash probe on the path as execve got it
//! (~150 ns). A path no package lists is resolved inside the container's
//! root (symlinks such as `/bin/sh -> busybox`, alternatives) and the
//! answer remembered per image and path, so the walk (~30 us) is paid
//! once. A relative path (`./run`) gets no answer: the process's working
//! directory is not known here. An image with no dpkg or apk database
//! (scratch, distroless static, rpm-based: rpm is not read yet) gets no
//! answer either, rather than every exec `unpackaged`.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        mpsc::{self, Receiver, SyncSender},
        Arc,
    },
    time::Instant,
};

use tracing::{debug, info};

use crate::{
    event::{Event, Kind, PackageRef},
    packages::{Package, PackageIndex, RootFs},
};

/// Most images whose index is held (a node runs tens).
const MAX_IMAGES: usize = 64;
/// Most resolved paths remembered per image.
const MAX_RESOLVED: usize = 4096;
/// Tries to index an image before it is given up (its process may have
/// gone before its root was read).
const MAX_TRIES: u8 = 3;
/// Index requests waiting for the builder thread.
const QUEUE: usize = 16;

/// One image's index and the answers handed out from it.
struct Indexed {
    index: PackageIndex,
    /// Each package's shared answer, by its place in `index.packages()`.
    refs: Vec<Arc<PackageRef>>,
    /// Paths a plain lookup missed, resolved in the root: their package.
    resolved: HashMap<Box<str>, Option<u32>>,
    /// Recent execs of the image (pid, container id), newest last: a
    /// root to resolve in when an exec's own process is already gone.
    recent: Vec<(u32, String)>,
    /// The last process whose root could be opened (first: the one the
    /// index was read from, often a container's long-lived init).
    anchor: (u32, String),
}

/// Most recent execs remembered per image.
const RECENT: usize = 8;

/// `/proc/PID/root` of `pid` while it still runs in container `id`
/// (a pid reused by another process is not taken).
fn root_of(pid: u32, id: &str) -> Option<RootFs> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    if !cgroup.contains(id) {
        return None;
    }
    RootFs::open(&PathBuf::from(format!("/proc/{pid}/root"))).ok()
}

enum Slot {
    Building {
        tries: u8,
    },
    /// The last build failed (its process gone?): the next exec asks again.
    Retry {
        tries: u8,
    },
    Ready(Box<Indexed>),
    /// Could not be read [`MAX_TRIES`] times.
    Failed,
}

/// An index to build: the image, and a process of it (pid, container).
type Request = (String, u32, String);
/// A built index: the request, what the build gave, how long it took.
type Built = (Request, Result<PackageIndex, String>, u128);

pub struct Ownership {
    images: HashMap<String, Slot>,
    requests: SyncSender<Request>,
    built: Receiver<Built>,
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

impl Indexed {
    /// `anchor`: the process the index was read from.
    fn new(index: PackageIndex, anchor: (u32, String)) -> Self {
        let refs = index.packages().iter().map(package_ref).collect();
        Indexed {
            index,
            refs,
            resolved: HashMap::new(),
            recent: Vec::new(),
            anchor,
        }
    }

    /// Mark `p` (an exec of `exe` in the root of `p.pid`) with its
    /// package, or unpackaged; nothing when the image has no package
    /// database this reads (an rpm image would look all unpackaged).
    fn mark(&mut self, p: &mut crate::event::Process, container: &str) {
        if self.index.databases().is_empty() {
            return;
        }
        if self.recent.len() >= RECENT {
            self.recent.remove(0);
        }
        self.recent.push((p.pid, container.to_owned()));
        // None: no root of the image could be opened (its processes gone)
        match self.owner(&p.exe) {
            Some(Some(pkg)) => p.package = Some(pkg),
            Some(None) => p.unpackaged = true,
            None => {}
        }
    }

    /// The package owning `exe` in the image: `Some(None)` when none
    /// does, `None` when that cannot be told (no root of the image open).
    fn owner(&mut self, exe: &str) -> Option<Option<Arc<PackageRef>>> {
        if let Some(p) = self.index.owner(exe) {
            let i = place(self.index.packages(), p) as usize;
            return Some(self.refs.get(i).cloned());
        }
        let found = match self.resolved.get(exe) {
            Some(found) => *found,
            None => {
                // the exec's own process first (a short one may be gone),
                // then the newest others, then the last that worked
                let (root, used) = self
                    .recent
                    .iter()
                    .rev()
                    .chain(std::iter::once(&self.anchor))
                    .find_map(|(pid, id)| root_of(*pid, id).map(|r| (r, (*pid, id.clone()))))?;
                self.anchor = used;
                let found = self
                    .index
                    .owner_resolving(&root, exe)
                    .map(|p| place(self.index.packages(), p));
                if self.resolved.len() >= MAX_RESOLVED {
                    self.resolved.clear();
                }
                self.resolved.insert(exe.into(), found);
                found
            }
        };
        Some(found.and_then(|i| self.refs.get(i as usize).cloned()))
    }
}

/// Build indexes as asked, until the stage is dropped.
fn builder(requests: &Receiver<Request>, built: &SyncSender<Built>) {
    while let Ok(request) = requests.recv() {
        let pid = request.1;
        let start = Instant::now();
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let index = PackageIndex::read(&root).map_err(|e| e.to_string());
        if built
            .send((request, index, start.elapsed().as_millis()))
            .is_err()
        {
            return;
        }
    }
}

impl Ownership {
    /// The stage, with its builder thread.
    pub fn start() -> std::io::Result<Self> {
        let (requests, todo) = mpsc::sync_channel(QUEUE);
        let (done, built) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("package-index".into())
            .spawn(move || builder(&todo, &done))?;
        Ok(Ownership {
            images: HashMap::new(),
            requests,
            built,
        })
    }

    /// Mark each container exec of `events` with the package owning its
    /// file, or `unpackaged`.
    pub fn mark(&mut self, events: &mut [Event]) {
        self.take_built();
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
            if !p.exe.starts_with('/') {
                continue;
            }
            match self.images.get_mut(image) {
                Some(Slot::Ready(ix)) => ix.mark(p, container),
                Some(Slot::Building { .. } | Slot::Failed) => {}
                Some(Slot::Retry { tries }) => {
                    let (image, tries) = (image.to_owned(), *tries + 1);
                    self.request((image, p.pid, container.to_owned()), tries);
                }
                None => {
                    let image = image.to_owned();
                    self.request((image, p.pid, container.to_owned()), 1);
                }
            }
        }
    }

    fn request(&mut self, request: Request, tries: u8) {
        let image = request.0.clone();
        if self.images.len() >= MAX_IMAGES && !self.images.contains_key(&image) {
            let ready = self
                .images
                .iter()
                .find(|(_, s)| matches!(s, Slot::Ready(_) | Slot::Failed))
                .map(|(k, _)| k.clone());
            match ready {
                Some(k) => {
                    self.images.remove(&k);
                }
                None => return,
            }
        }
        if self.requests.try_send(request).is_ok() {
            self.images.insert(image, Slot::Building { tries });
        }
    }

    /// Indexes the builder finished.
    fn take_built(&mut self) {
        while let Ok(((image, pid, container), index, ms)) = self.built.try_recv() {
            let tries = match self.images.get(&image) {
                Some(Slot::Building { tries }) => *tries,
                _ => continue,
            };
            match index {
                Ok(index) => {
                    info!(
                        image = %image,
                        packages = index.packages().len(),
                        paths = index.path_count(),
                        ms = ms as u64,
                        "package index of an image built"
                    );
                    self.images.insert(
                        image,
                        Slot::Ready(Box::new(Indexed::new(index, (pid, container)))),
                    );
                }
                Err(e) if tries < MAX_TRIES => {
                    debug!(image = %image, error = %e, tries, "package index not built; the next exec tries again");
                    self.images.insert(image, Slot::Retry { tries });
                }
                Err(e) => {
                    info!(image = %image, error = %e, "package index of an image cannot be built: its execs carry no package");
                    self.images.insert(image, Slot::Failed);
                }
            }
        }
    }
}
