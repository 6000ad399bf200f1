//! Baselines per image digest: during a learning window from the first
//! container of an image, the executables it runs, the ports it listens
//! on and the internet destinations it reaches are recorded; after it,
//! anything new is reported. Baselines persist in a JSON file, so a
//! restart neither forgets them nor restarts the window.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Items kept per set and images kept (oldest dropped first).
const MAX_ITEMS: usize = 1024;
const MAX_IMAGES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Executable,
    Port,
    Destination,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ImageBaseline {
    /// Unix seconds of the first container event of this image.
    first_seen: u64,
    executables: BTreeSet<String>,
    ports: BTreeSet<String>,
    destinations: BTreeSet<String>,
}

impl ImageBaseline {
    fn set(&mut self, what: What) -> &mut BTreeSet<String> {
        match what {
            What::Executable => &mut self.executables,
            What::Port => &mut self.ports,
            What::Destination => &mut self.destinations,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    images: BTreeMap<String, ImageBaseline>,
}

pub struct Baselines {
    learn_s: u64,
    path: Option<PathBuf>,
    images: BTreeMap<String, ImageBaseline>,
    dirty: bool,
}

/// Verdict on one observation.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Learning (recorded), or already known.
    Known,
    /// Not seen while learning: report it (it is recorded now, so it is
    /// reported once).
    New,
}

impl Baselines {
    /// Load from `path` (missing file: empty); `learn_s` 0 turns it off.
    pub fn open(learn_s: u64, path: Option<&Path>) -> Self {
        let mut images = BTreeMap::new();
        if let Some(p) = path.filter(|_| learn_s > 0) {
            match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                    Ok(f) => {
                        info!(path = %p.display(), images = f.images.len(), "baselines loaded");
                        images = f.images;
                    }
                    Err(e) => {
                        warn!(path = %p.display(), error = %e, "baseline file unreadable; starting empty");
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %p.display(), error = %e, "cannot read the baseline file; starting empty");
                }
            }
        }
        Baselines {
            learn_s,
            path: path.map(Path::to_owned),
            images,
            dirty: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.learn_s > 0
    }

    /// Record or judge `item` for the image `digest` at unix time `now`.
    pub fn observe(&mut self, digest: &str, what: What, item: &str, now: u64) -> Seen {
        if !self.enabled() || digest.is_empty() {
            return Seen::Known;
        }
        if !self.images.contains_key(digest) && self.images.len() >= MAX_IMAGES {
            if let Some(oldest) = self
                .images
                .iter()
                .min_by_key(|(_, b)| b.first_seen)
                .map(|(k, _)| k.clone())
            {
                self.images.remove(&oldest);
            }
        }
        let b = self.images.entry(digest.to_owned()).or_insert_with(|| {
            self.dirty = true;
            ImageBaseline {
                first_seen: now,
                ..Default::default()
            }
        });
        let learning = now < b.first_seen + self.learn_s;
        let set = b.set(what);
        if set.contains(item) {
            return Seen::Known;
        }
        if !learning {
            // Not learnt, and never learnt later: what a container does
            // after the window cannot widen the baseline (repeats are
            // folded by the findings' dedup).
            return Seen::New;
        }
        if set.len() < MAX_ITEMS {
            set.insert(item.to_owned());
            self.dirty = true;
        }
        Seen::Known
    }

    /// Write the file if anything changed (temp file, then rename).
    pub fn save(&mut self) {
        let Some(path) = &self.path else { return };
        if !self.dirty || !self.enabled() {
            return;
        }
        let file = File {
            version: 1,
            images: self.images.clone(),
        };
        let tmp = path.with_extension("tmp");
        let res = serde_json::to_vec(&file)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                if let Some(dir) = path.parent() {
                    spyglass_proto::files::create_private_dir(dir)?;
                }
                spyglass_proto::files::write_private(&tmp, b)
            })
            .and_then(|_| std::fs::rename(&tmp, path));
        match res {
            Ok(()) => self.dirty = false,
            Err(e) => warn!(path = %path.display(), error = %e, "cannot save baselines"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_then_reports_new_items_once_and_persists() {
        let dir = std::env::temp_dir().join(format!("sg-baseline-{}", std::process::id()));
        let path = dir.join("b.json");
        let mut b = Baselines::open(10, Some(&path));
        assert_eq!(
            b.observe("sha256:a", What::Executable, "/bin/app", 100),
            Seen::Known
        );
        assert_eq!(
            b.observe("sha256:a", What::Port, "tcp/8080", 105),
            Seen::Known
        );
        // After the window: known items stay quiet, new ones are reported once.
        assert_eq!(
            b.observe("sha256:a", What::Executable, "/bin/app", 200),
            Seen::Known
        );
        assert_eq!(
            b.observe("sha256:a", What::Executable, "/bin/nc", 200),
            Seen::New
        );
        // Still new: nothing is learnt after the window (so a container
        // cannot fill the baseline with junk and silence it).
        assert_eq!(
            b.observe("sha256:a", What::Executable, "/bin/nc", 201),
            Seen::New
        );
        // Another image learns on its own clock.
        assert_eq!(
            b.observe("sha256:b", What::Executable, "/bin/nc", 200),
            Seen::Known
        );
        b.save();
        let mut again = Baselines::open(10, Some(&path));
        assert_eq!(
            again.observe("sha256:a", What::Port, "tcp/9090", 300),
            Seen::New
        );
        assert_eq!(
            again.observe("sha256:b", What::Destination, "1.1.1.1", 205),
            Seen::Known
        );
        let off = &mut Baselines::open(0, Some(&path));
        assert_eq!(
            off.observe("sha256:a", What::Port, "tcp/1", 999),
            Seen::Known
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
