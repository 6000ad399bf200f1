//! Attribution: fills each event's container with what containerd knows,
//! holding an event briefly when its container is not known yet.
//!
//! Pure state machine (time is passed in), driven by the pipeline:
//! [`Attributor::admit`] for each event, [`Attributor::apply`] for each
//! [`Update`] from the containerd task, [`Attributor::expire`] on a timer.
//! Ids to look up collect in [`Attributor::take_lookups`].
//!
//! An event whose container is unknown waits in a pending queue (bounded
//! in time and in events) while containerd is asked; it is released with
//! metadata, or marked `unattributed` with the reason. Events of one
//! container keep their order; other containers' events do not wait.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    containerd::Update,
    lifecycle::{Change, Observer},
    meta::ContainerMeta,
};
use crate::event::{Event, Runtime, Unattributed};

/// Bounds of the caches and the pending queue.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Containers remembered at most; beyond it the least recently used
    /// (deleted ones first) are forgotten.
    pub max_containers: usize,
    /// Longest an event waits for its container's metadata.
    pub pending_timeout: Duration,
    /// Events waiting at most; beyond it the oldest container's events are
    /// released unattributed (`pending_full`).
    pub max_pending_events: usize,
    /// An id containerd does not know is not asked again for this long.
    pub not_found_ttl: Duration,
}

/// Why an event carries no container metadata.
pub mod reason {
    use crate::event::Unattributed;
    pub const DISABLED: Unattributed = Unattributed::ContainerdDisabled;
    pub const NOT_FOUND: Unattributed = Unattributed::NotFoundInContainerd;
    pub const TIMEOUT: Unattributed = Unattributed::LookupTimeout;
    pub const PENDING_FULL: Unattributed = Unattributed::PendingQueueFull;
    pub const RUNTIME: Unattributed = Unattributed::RuntimeNotSupported;
    pub const STOPPING: Unattributed = Unattributed::AgentStopping;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Not connected yet: wait (the first sync fills the cache).
    Connecting,
    Ready,
    Unavailable(Unattributed),
    Disabled,
}

struct Known {
    meta: Arc<ContainerMeta>,
    deleted: bool,
    used: Instant,
}

struct Waiting {
    since: Instant,
    events: Vec<Event>,
}

pub struct Attributor {
    limits: Limits,
    source: Source,
    known: HashMap<String, Known>,
    missing: HashMap<String, Instant>,
    pending: HashMap<String, Waiting>,
    pending_events: usize,
    lookups: Vec<String>,
}

/// Counts for the heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub containers: usize,
    pub pending_events: usize,
}

impl Attributor {
    /// `enabled`: whether a containerd task runs at all.
    pub fn new(limits: Limits, enabled: bool) -> Self {
        Attributor {
            limits,
            source: if enabled {
                Source::Connecting
            } else {
                Source::Disabled
            },
            known: HashMap::new(),
            missing: HashMap::new(),
            pending: HashMap::new(),
            pending_events: 0,
            lookups: Vec::new(),
        }
    }

    /// containerd is connected and synced.
    pub fn containerd_up(&self) -> bool {
        self.source == Source::Ready
    }

    /// Whether container `id`'s metadata is known now.
    pub fn is_known(&self, id: &str) -> bool {
        self.known.contains_key(id)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            containers: self.known.len(),
            pending_events: self.pending_events,
        }
    }

    /// Ids to ask containerd about (each once while pending).
    pub fn take_lookups(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lookups)
    }

    /// Attribute `ev`: pushed to `out` now, or held until its container is
    /// known (then released by `apply` or `expire`).
    pub fn admit(&mut self, mut ev: Event, now: Instant, out: &mut Vec<Event>) {
        let Some(c) = ev.container.as_mut() else {
            out.push(ev);
            return;
        };
        if c.meta.is_some() || c.unattributed.is_some() {
            out.push(ev);
            return;
        }
        if let Some(k) = self.known.get_mut(&c.id) {
            k.used = now;
            c.fill(&k.meta);
            out.push(ev);
            return;
        }
        if let Some(w) = self.pending.get_mut(&c.id) {
            w.events.push(ev);
            self.pending_events += 1;
            self.bound_pending(out);
            return;
        }
        let unattributed = match self.source {
            Source::Disabled => Some(reason::DISABLED),
            _ if matches!(c.runtime, Runtime::CriO | Runtime::Podman) => Some(reason::RUNTIME),
            _ if self.missing.contains_key(&c.id) => Some(reason::NOT_FOUND),
            // Unavailable too: the lookup makes the containerd task try to
            // connect at once; the event goes out marked after that attempt
            // fails, or attributed if containerd is back.
            Source::Connecting | Source::Ready | Source::Unavailable(_) => None,
        };
        if let Some(r) = unattributed {
            c.unattributed = Some(r);
            out.push(ev);
            return;
        }
        if self.source != Source::Connecting {
            self.lookups.push(c.id.clone());
        }
        let id = c.id.clone();
        self.pending.insert(
            id,
            Waiting {
                since: now,
                events: vec![ev],
            },
        );
        self.pending_events += 1;
        self.bound_pending(out);
    }

    fn release(
        &mut self,
        id: &str,
        meta: Result<&Arc<ContainerMeta>, Unattributed>,
        out: &mut Vec<Event>,
    ) {
        let Some(w) = self.pending.remove(id) else {
            return;
        };
        self.pending_events -= w.events.len();
        for mut ev in w.events {
            if let Some(c) = ev.container.as_mut() {
                match meta {
                    Ok(m) => c.fill(m),
                    Err(why) => c.unattributed = Some(why),
                }
            }
            out.push(ev);
        }
    }

    fn release_all(&mut self, why: Unattributed, out: &mut Vec<Event>) {
        let mut ids: Vec<(Instant, String)> = self
            .pending
            .iter()
            .map(|(id, w)| (w.since, id.clone()))
            .collect();
        ids.sort();
        for (_, id) in ids {
            self.release(&id, Err(why), out);
        }
    }

    fn bound_pending(&mut self, out: &mut Vec<Event>) {
        while self.pending_events > self.limits.max_pending_events {
            let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, w)| w.since)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.release(&oldest, Err(reason::PENDING_FULL), out);
        }
    }

    /// News from containerd; released events go to `out`.
    pub fn apply(&mut self, update: Update, now: Instant, out: &mut Vec<Event>) {
        match update {
            Update::Upsert(meta) | Update::Listed { meta, .. } => {
                let id = meta.id.clone();
                self.missing.remove(&id);
                self.release(&id, Ok(&meta), out);
                self.known.insert(
                    id,
                    Known {
                        meta,
                        deleted: false,
                        used: now,
                    },
                );
                self.bound_known();
            }
            // The lifecycle owns deletion; its changes come through
            // `on_container`.
            Update::Deleted(_) | Update::Exited { .. } => {}
            Update::NotFound(id) => {
                self.missing.insert(id.clone(), now);
                self.release(&id, Err(reason::NOT_FOUND), out);
            }
            Update::Synced => {
                self.source = Source::Ready;
                let ids: Vec<String> = self.pending.keys().cloned().collect();
                self.lookups.extend(ids);
            }
            Update::Unavailable(why) => {
                self.source = Source::Unavailable(why);
                self.release_all(why, out);
            }
        }
    }

    fn bound_known(&mut self) {
        let over = self.known.len().saturating_sub(self.limits.max_containers);
        if over == 0 {
            return;
        }
        let mut by_age: Vec<(bool, Instant, String)> = self
            .known
            .iter()
            .map(|(id, k)| (!k.deleted, k.used, id.clone()))
            .collect();
        by_age.sort();
        for (_, _, id) in by_age.into_iter().take(over) {
            self.known.remove(&id);
        }
    }

    /// Time passes: release events that waited too long, forget old
    /// misses.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Event>) {
        let timeout = self.limits.pending_timeout;
        let mut late: Vec<(Instant, String)> = self
            .pending
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= timeout)
            .map(|(id, w)| (w.since, id.clone()))
            .collect();
        late.sort();
        let why = match self.source {
            Source::Unavailable(r) => r,
            _ => reason::TIMEOUT,
        };
        for (_, id) in late {
            self.release(&id, Err(why), out);
        }
        let ttl = self.limits.not_found_ttl;
        self.missing.retain(|_, t| now.duration_since(*t) < ttl);
    }

    /// The agent stops: everything still waiting goes out as it is.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        self.release_all(reason::STOPPING, out);
    }
}

impl Observer for Attributor {
    /// A deleted container's metadata stays for events still in flight
    /// (and goes first when the cache is full), until it is forgotten.
    fn on_container(&mut self, change: &Change) {
        match change {
            Change::Deleted(id) => {
                if let Some(k) = self.known.get_mut(id) {
                    k.deleted = true;
                }
            }
            Change::Forgotten(id) => {
                self.known.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Container, Kind};

    fn limits() -> Limits {
        Limits {
            max_containers: 3,
            pending_timeout: Duration::from_secs(1),
            max_pending_events: 4,
            not_found_ttl: Duration::from_secs(5),
        }
    }

    fn ev(container: Option<&str>, pid: u32) -> Event {
        let mut e = Event::new(Kind::Exec, crate::clock::Timestamp(0), "n".into());
        e.process = Some(crate::event::Process {
            pid,
            ..Default::default()
        });
        e.container =
            container.map(|id| Container::from_cgroup(id.into(), Runtime::Containerd, None));
        e
    }

    fn meta(id: &str) -> Arc<ContainerMeta> {
        Arc::new(ContainerMeta {
            id: id.into(),
            name: format!("name-{id}"),
            ..Default::default()
        })
    }

    /// (pid, container name or unattributed reason) of each event.
    fn view(out: &[Event]) -> Vec<(u32, String)> {
        out.iter()
            .map(|e| {
                let c = e.container.as_ref();
                let what = match c {
                    None => "host".to_string(),
                    Some(c) => match (&c.meta, c.unattributed) {
                        (Some(m), None) => m.name.clone(),
                        (None, Some(r)) => r.to_string(),
                        other => panic!("inconsistent container {other:?}"),
                    },
                };
                (e.process.as_ref().unwrap().pid, what)
            })
            .collect()
    }

    #[test]
    fn waits_for_a_new_container_then_releases_in_order() {
        let t = Instant::now();
        let mut a = Attributor::new(limits(), true);
        let mut out = Vec::new();
        a.apply(Update::Synced, t, &mut out);
        a.admit(ev(Some("c1"), 1), t, &mut out);
        a.admit(ev(None, 2), t, &mut out); // host events do not wait
        a.admit(ev(Some("c1"), 3), t, &mut out);
        assert_eq!(view(&out), [(2, "host".into())]);
        assert_eq!(a.take_lookups(), ["c1"], "one lookup per container");
        assert_eq!(a.stats().pending_events, 2);
        a.apply(Update::Upsert(meta("c1")), t, &mut out);
        assert_eq!(
            view(&out)[1..],
            [(1, "name-c1".into()), (3, "name-c1".into())]
        );
        // known now: no wait
        a.admit(ev(Some("c1"), 4), t, &mut out);
        assert_eq!(view(&out)[3..], [(4, "name-c1".into())]);
        assert_eq!(
            a.stats(),
            Stats {
                containers: 1,
                pending_events: 0
            }
        );
    }

    #[test]
    fn unknown_ids_time_out_or_are_not_found_and_remembered() {
        let t = Instant::now();
        let mut a = Attributor::new(limits(), true);
        let mut out = Vec::new();
        a.admit(ev(Some("early"), 1), t, &mut out);
        assert!(
            a.take_lookups().is_empty(),
            "the first sync answers, no lookup while connecting"
        );
        a.apply(Update::Synced, t, &mut out);
        assert_eq!(a.take_lookups(), ["early"], "asked once synced");
        a.admit(ev(Some("ghost"), 2), t, &mut out);
        a.apply(Update::NotFound("ghost".into()), t, &mut out);
        a.admit(ev(Some("ghost"), 3), t, &mut out);
        assert!(
            a.take_lookups().len() == 1,
            "a miss is not asked again at once"
        );
        a.expire(t + Duration::from_millis(999), &mut out);
        a.expire(t + Duration::from_secs(1), &mut out);
        assert_eq!(
            view(&out),
            [
                (2, reason::NOT_FOUND.as_str().into()),
                (3, reason::NOT_FOUND.as_str().into()),
                (1, reason::TIMEOUT.as_str().into())
            ]
        );
        // after the miss ttl it is asked again
        a.expire(t + Duration::from_secs(6), &mut out);
        a.admit(ev(Some("ghost"), 4), t + Duration::from_secs(6), &mut out);
        assert_eq!(a.take_lookups(), ["ghost"]);
    }

    #[test]
    fn containerd_away_releases_and_marks_then_recovers() {
        let t = Instant::now();
        let away = Unattributed::ContainerdSocketMissing;
        let mut a = Attributor::new(limits(), true);
        let mut out = Vec::new();
        a.admit(ev(Some("c1"), 1), t, &mut out);
        a.apply(Update::Unavailable(away), t, &mut out);
        assert_eq!(view(&out), [(1, away.as_str().into())]);
        // while away, an unknown container's events still ask (the ask
        // makes the containerd task retry at once) and wait for the answer
        a.admit(ev(Some("c2"), 2), t, &mut out);
        a.admit(ev(Some("x"), 3), t, &mut out);
        assert_eq!(a.take_lookups(), ["c2", "x"]);
        assert_eq!(out.len(), 1);
        a.apply(Update::Unavailable(away), t, &mut out);
        assert_eq!(
            view(&out)[1..],
            [(2, away.as_str().into()), (3, away.as_str().into())]
        );
        // containerd is back: a container created meanwhile is attributed
        a.admit(ev(Some("c2"), 4), t, &mut out);
        a.apply(Update::Upsert(meta("c2")), t, &mut out);
        a.apply(Update::Synced, t, &mut out);
        assert_eq!(view(&out)[3..], [(4, "name-c2".into())]);
        // a wait that ends while containerd is away carries its reason
        a.apply(
            Update::Unavailable(Unattributed::ContainerdUnreachable),
            t,
            &mut out,
        );
        a.admit(ev(Some("c3"), 6), t, &mut out);
        a.expire(t + Duration::from_secs(2), &mut out);
        assert_eq!(view(&out)[4..], [(6, "containerd_unreachable".into())]);
        let mut d = Attributor::new(limits(), false);
        d.admit(ev(Some("c1"), 5), t, &mut out);
        assert_eq!(view(&out)[5..], [(5, reason::DISABLED.as_str().into())]);
    }

    #[test]
    fn pending_and_cache_are_bounded() {
        let t = Instant::now();
        let mut a = Attributor::new(limits(), true);
        let mut out = Vec::new();
        a.apply(Update::Synced, t, &mut out);
        for (i, id) in ["a", "a", "b", "c", "c"].iter().enumerate() {
            a.admit(
                ev(Some(id), i as u32),
                t + Duration::from_millis(i as u64),
                &mut out,
            );
        }
        // 5 > 4 waiting: the oldest container's events ("a") go out
        assert_eq!(
            view(&out),
            [
                (0, reason::PENDING_FULL.as_str().into()),
                (1, reason::PENDING_FULL.as_str().into())
            ]
        );
        assert_eq!(a.stats().pending_events, 3);
        a.flush(&mut out);
        assert_eq!(a.stats().pending_events, 0);
        assert_eq!(out.len(), 5);
        // cache: 3 at most; deleted ones go first, then least recently used
        for id in ["a", "b", "c"] {
            a.apply(Update::Upsert(meta(id)), t, &mut out);
        }
        a.on_container(&Change::Deleted("b".into()));
        a.apply(Update::Upsert(meta("d")), t, &mut out);
        assert_eq!(a.stats().containers, 3);
        assert!(!a.known.contains_key("b"));
        // a deleted container is kept until the lifecycle forgets it
        a.on_container(&Change::Deleted("a".into()));
        a.expire(t + Duration::from_secs(60), &mut out);
        assert!(a.known.contains_key("a"));
        a.on_container(&Change::Forgotten("a".into()));
        assert!(!a.known.contains_key("a"));
        assert_eq!(a.stats().containers, 2);
    }

    #[test]
    fn other_runtimes_are_marked_at_once() {
        let t = Instant::now();
        let mut a = Attributor::new(limits(), true);
        let mut out = Vec::new();
        a.apply(Update::Synced, t, &mut out);
        let mut e = ev(None, 1);
        e.container = Some(Container::from_cgroup("x".into(), Runtime::CriO, None));
        a.admit(e, t, &mut out);
        assert_eq!(view(&out), [(1, reason::RUNTIME.as_str().into())]);
    }
}
