//! Container lifecycle: the one owner of when a container ends.
//!
//! containerd says a container was deleted; this module turns that into
//! the changes every holder of per-container state follows, in one order:
//! [`Change::Deleted`] at once (its processes are gone: kernel entries and
//! detection state go), then [`Change::Forgotten`] after the grace, when no
//! event of it can still be in flight (metadata and cgroup names go).
//! Holders implement [`Observer`]; the pipeline publishes each change to
//! all of them from one place. It also knows which containers are present
//! (first seen, exited with what status) for the `container` events.
//! Pure state machine: time is passed in.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::warn;

use super::meta::ContainerMeta;

/// Containers remembered as present at most (a node runs a few hundred;
/// the bound only guards against containerd deleting containers while
/// the agent cannot hear it).
const MAX_PRESENT: usize = 65_536;

/// A container the agent has reported, until its deletion.
#[derive(Debug)]
struct Present {
    meta: Arc<ContainerMeta>,
    exit_code: Option<i32>,
}

/// What the agent knew of a container when it ended.
#[derive(Debug, Default)]
pub struct Ended {
    pub meta: Option<Arc<ContainerMeta>>,
    pub exit_code: Option<i32>,
}

/// A step in a container's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// containerd deleted the container.
    Deleted(String),
    /// The grace after deletion has passed: forget everything about it.
    Forgotten(String),
}

/// Anything that keeps state per container.
pub trait Observer {
    fn on_container(&mut self, change: &Change);
}

/// Deleted containers waiting out their grace, oldest first.
#[derive(Debug)]
pub struct Lifecycle {
    grace: Duration,
    deleted: VecDeque<(Instant, String)>,
    pending: HashSet<String>,
    present: HashMap<String, Present>,
}

impl Lifecycle {
    /// `grace`: how long a deleted container is remembered for events
    /// still in flight (`[containerd] delete_grace_ms`).
    pub fn new(grace: Duration) -> Self {
        Lifecycle {
            grace,
            deleted: VecDeque::new(),
            pending: HashSet::new(),
            present: HashMap::new(),
        }
    }

    /// containerd knows `meta` (created, listed, looked up): whether this
    /// is the first time (the container is to be reported `created`).
    /// Its metadata is kept up to date either way.
    pub fn seen(&mut self, meta: &Arc<ContainerMeta>) -> bool {
        if let Some(p) = self.present.get_mut(&meta.id) {
            p.meta = meta.clone();
            return false;
        }
        if self.present.len() >= MAX_PRESENT {
            warn!(container = %meta.id, max = MAX_PRESENT,
                "too many containers remembered: its exit and deletion will lack metadata");
            return true;
        }
        let present = Present {
            meta: meta.clone(),
            exit_code: None,
        };
        self.present.insert(meta.id.clone(), present);
        true
    }

    /// `id`'s init process exited with `exit_code`: its metadata, if known.
    pub fn exited(&mut self, id: &str, exit_code: i32) -> Option<Arc<ContainerMeta>> {
        let p = self.present.get_mut(id)?;
        p.exit_code = Some(exit_code);
        Some(p.meta.clone())
    }

    /// What was known of `id`, forgotten: containerd deleted it (a new
    /// container under the same id is first seen again).
    pub fn ended(&mut self, id: &str) -> Ended {
        self.present
            .remove(id)
            .map(|p| Ended {
                meta: Some(p.meta),
                exit_code: p.exit_code,
            })
            .unwrap_or_default()
    }

    /// containerd deleted `id`: the change to publish now (None when it
    /// was already reported deleted).
    pub fn deleted(&mut self, id: &str, now: Instant) -> Option<Change> {
        if !self.pending.insert(id.to_owned()) {
            return None;
        }
        self.deleted.push_back((now, id.to_owned()));
        Some(Change::Deleted(id.to_owned()))
    }

    /// containerd reports `id` alive again (a new container under a reused
    /// id): it is no longer due to be forgotten.
    pub fn alive(&mut self, id: &str) {
        if self.pending.remove(id) {
            self.deleted.retain(|(_, d)| d != id);
        }
    }

    /// Containers whose grace has passed by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.deleted.front() {
            if now.saturating_duration_since(*at) < self.grace {
                break;
            }
            let (_, id) = self.deleted.pop_front().expect("front exists");
            self.pending.remove(&id);
            out.push(Change::Forgotten(id));
        }
        out
    }

    /// Containers deleted and not yet forgotten.
    #[cfg(test)]
    fn in_grace(&self) -> usize {
        self.deleted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_then_forgotten_after_the_grace() {
        let t = Instant::now();
        let mut l = Lifecycle::new(Duration::from_secs(10));
        assert_eq!(l.deleted("a", t), Some(Change::Deleted("a".into())));
        assert_eq!(l.deleted("a", t), None, "one deletion, one change");
        assert_eq!(
            l.deleted("b", t + Duration::from_secs(5)),
            Some(Change::Deleted("b".into()))
        );
        assert!(l.expire(t + Duration::from_secs(9)).is_empty());
        assert_eq!(
            l.expire(t + Duration::from_secs(10)),
            [Change::Forgotten("a".into())]
        );
        assert_eq!(l.in_grace(), 1);
        assert_eq!(
            l.expire(t + Duration::from_secs(15)),
            [Change::Forgotten("b".into())]
        );
        assert_eq!(l.in_grace(), 0);
    }

    #[test]
    fn first_seen_once_then_exit_code_kept_until_deleted() {
        let mut l = Lifecycle::new(Duration::from_secs(1));
        let meta = Arc::new(ContainerMeta {
            id: "c".into(),
            ..ContainerMeta::default()
        });
        assert!(l.seen(&meta), "first seen");
        assert!(!l.seen(&meta), "a task start refreshes, no second report");
        assert!(l.exited("other", 1).is_none());
        assert_eq!(l.exited("c", 137).map(|m| m.id.clone()), Some("c".into()));
        let end = l.ended("c");
        assert_eq!((end.meta.is_some(), end.exit_code), (true, Some(137)));
        let again = l.ended("c");
        assert_eq!((again.meta.is_none(), again.exit_code), (true, None));
        assert!(l.seen(&meta), "a new container under the id");
    }

    #[test]
    fn a_reused_id_is_not_forgotten() {
        let t = Instant::now();
        let mut l = Lifecycle::new(Duration::from_secs(1));
        l.deleted("a", t);
        l.alive("a");
        assert!(l.expire(t + Duration::from_secs(5)).is_empty());
        assert_eq!(l.deleted("a", t), Some(Change::Deleted("a".into())));
    }
}
