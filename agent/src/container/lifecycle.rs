//! Container lifecycle: the one owner of when a container ends.
//!
//! containerd says a container was deleted; this module turns that into
//! the changes every holder of per-container state follows, in one order:
//! [`Change::Deleted`] at once (its processes are gone: kernel entries and
//! detection state go), then [`Change::Forgotten`] after the grace, when no
//! event of it can still be in flight (metadata and cgroup names go).
//! Holders implement [`Observer`]; the pipeline publishes each change to
//! all of them from one place. It also knows which containers are present
//! (first seen, exited with what status) for the `container` events, and
//! at each containerd listing (every (re)connect) what changed while the
//! agent could not hear it: containers gone ([`Lifecycle::synced`]),
//! exited, or started again under the same id ([`Lifecycle::listed`]).
//! Pure state machine: time is passed in.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::warn;

use super::meta::ContainerMeta;
use crate::event::ContainerState;

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

/// A step of a container's life to report (a `container` event).
pub type Step = (ContainerState, Option<i32>);

/// Deleted containers waiting out their grace, oldest first.
#[derive(Debug)]
pub struct Lifecycle {
    grace: Duration,
    deleted: VecDeque<(Instant, String)>,
    pending: HashSet<String>,
    present: HashMap<String, Present>,
    /// Present containers containerd's listing under way has named.
    listing: HashSet<String>,
    /// Warned that [`MAX_PRESENT`] is reached (once until there is room).
    full: bool,
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
            listing: HashSet::new(),
            full: false,
        }
    }

    /// containerd knows `meta` (created, its task started, looked up):
    /// whether it is to be reported `created`: the first time, and when
    /// its task starts again after an exit (a restart under the same id).
    /// Its metadata is kept up to date either way. Past [`MAX_PRESENT`]
    /// a new container is not remembered and not reported (its events
    /// still carry it); reporting it at each update would repeat it.
    pub fn seen(&mut self, meta: &Arc<ContainerMeta>) -> bool {
        if let Some(p) = self.present.get_mut(&meta.id) {
            p.meta = meta.clone();
            return p.exit_code.take().is_some();
        }
        self.remember(meta)
    }

    /// Remember a new container; false when there is no room.
    fn remember(&mut self, meta: &Arc<ContainerMeta>) -> bool {
        if self.present.len() >= MAX_PRESENT {
            if !std::mem::replace(&mut self.full, true) {
                warn!(container = %meta.id, max = MAX_PRESENT,
                    "too many containers remembered: new ones are not reported as created \
                     (their events still name them) until some are deleted");
            }
            return false;
        }
        self.full = false;
        let present = Present {
            meta: meta.clone(),
            exit_code: None,
        };
        self.present.insert(meta.id.clone(), present);
        true
    }

    /// containerd's listing (at each (re)connect) names `meta`, whose init
    /// has exited with `exit_code` if it has: the steps to report, from
    /// what the agent knew before. A container first known is `created`
    /// (and `exited`); one that exited while the agent could not hear is
    /// `exited`; one that started again is `created` again.
    pub fn listed(&mut self, meta: &Arc<ContainerMeta>, exit_code: Option<i32>) -> Vec<Step> {
        let Some(p) = self.present.get_mut(&meta.id) else {
            if !self.remember(meta) {
                return Vec::new();
            }
            self.listing.insert(meta.id.clone());
            let mut steps = vec![(ContainerState::Created, None)];
            if let Some(code) = exit_code {
                self.exited(&meta.id, code);
                steps.push((ContainerState::Exited, Some(code)));
            }
            return steps;
        };
        p.meta = meta.clone();
        let was = std::mem::replace(&mut p.exit_code, exit_code);
        self.listing.insert(meta.id.clone());
        match (was, exit_code) {
            (Some(_), None) => vec![(ContainerState::Created, None)],
            (None, Some(code)) => vec![(ContainerState::Exited, Some(code))],
            (Some(a), Some(b)) if a != b => vec![
                (ContainerState::Created, None),
                (ContainerState::Exited, Some(b)),
            ],
            _ => Vec::new(),
        }
    }

    /// containerd's listing is complete: the containers present that it
    /// did not name, deleted while the agent could not hear (to be
    /// reported `deleted`, through [`Lifecycle::deleted`]).
    pub fn synced(&mut self) -> Vec<String> {
        let listing = std::mem::take(&mut self.listing);
        let mut gone: Vec<String> = self
            .present
            .keys()
            .filter(|id| !listing.contains(*id))
            .cloned()
            .collect();
        gone.sort();
        gone
    }

    /// The listing under way was cut off (containerd went away): the next
    /// one starts afresh.
    pub fn sync_lost(&mut self) {
        self.listing.clear();
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

    fn meta(id: &str) -> Arc<ContainerMeta> {
        Arc::new(ContainerMeta {
            id: id.into(),
            ..ContainerMeta::default()
        })
    }

    #[test]
    fn a_task_started_again_after_its_exit_is_created_again() {
        let mut l = Lifecycle::new(Duration::from_secs(1));
        let c = meta("c");
        assert!(l.seen(&c));
        assert!(l.exited("c", 3).is_some());
        assert!(l.seen(&c), "task start after the exit: a restart");
        assert!(!l.seen(&c), "running: a refresh");
        l.exited("c", 0);
        assert_eq!(l.ended("c").exit_code, Some(0));
    }

    #[test]
    fn a_listing_reports_what_changed_while_the_agent_could_not_hear() {
        use ContainerState::{Created, Exited};
        let mut l = Lifecycle::new(Duration::from_secs(1));
        // the first listing: one running, one exited
        assert_eq!(l.listed(&meta("run"), None), [(Created, None)]);
        assert_eq!(
            l.listed(&meta("done"), Some(3)),
            [(Created, None), (Exited, Some(3))]
        );
        assert!(l.synced().is_empty());
        // learned live: a third
        assert!(l.seen(&meta("new")));
        // containerd away; then listed again: `run` exited meanwhile,
        // `done` was started again, `new` was deleted
        assert_eq!(l.listed(&meta("run"), Some(137)), [(Exited, Some(137))]);
        assert_eq!(l.listed(&meta("done"), None), [(Created, None)]);
        assert_eq!(l.synced(), ["new"]);
        // the same listing again: nothing changed
        assert!(l.listed(&meta("run"), Some(137)).is_empty());
        assert!(l.listed(&meta("done"), None).is_empty());
        assert_eq!(l.synced(), ["new"], "not ended yet: the pipeline ends it");
        l.ended("new");
        // a listing cut off names nothing of the next one
        l.listed(&meta("run"), Some(137));
        l.sync_lost();
        l.listed(&meta("done"), None);
        assert_eq!(l.synced(), ["run"]);
    }

    #[test]
    fn past_the_bound_a_container_is_not_reported_at_each_update() {
        let mut l = Lifecycle::new(Duration::from_secs(1));
        for i in 0..MAX_PRESENT {
            assert!(l.seen(&meta(&i.to_string())));
        }
        let over = meta("over");
        assert!(!l.seen(&over));
        assert!(!l.seen(&over), "not again either");
        assert!(l.listed(&over, None).is_empty());
        l.ended("0");
        assert!(l.seen(&over), "room again");
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
