//! Dedup and rate limits for findings. The first occurrence of a
//! (container, rule, subject) goes out at once; repeats within the window
//! are folded into one update with the count and first and last seen.
//! Past `per_minute` new findings in one container, further ones are only
//! counted, and reported as one summary per rule at the next flush, so a
//! noisy container cannot flood the collector. Pure: time is passed in.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::{clock::Timestamp, event::Event, policy::RuleId};

/// What a finding is about, for folding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Container id (`host` for host processes).
    pub container: String,
    pub rule: RuleId,
    pub subject: String,
    /// `killed`/`denied`: an enforcement is its own finding, never folded
    /// into an earlier alert of the same subject.
    pub outcome: Option<crate::event::Outcome>,
    /// The update closing a finding is never folded into the finding.
    pub resolved: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub window: Duration,
    pub per_minute: u32,
    /// Distinct keys kept; beyond, new findings count as rate limited.
    pub max_keys: usize,
}

struct Entry {
    count: u64,
    reported: u64,
    last_report: Instant,
    last_hit: Instant,
    last_seen: Timestamp,
    /// The finding as first reported: updates are copies with new counts.
    template: Event,
}

#[derive(Default)]
struct Bucket {
    started: Option<Instant>,
    reported: u32,
    /// Findings not reported this minute, by rule, with the latest one.
    suppressed: BTreeMap<RuleId, (u64, Event)>,
}

pub struct Dedup {
    limits: Limits,
    entries: HashMap<Key, Entry>,
    buckets: HashMap<String, Bucket>,
}

/// Set the fold fields of a finding event.
fn stamp(ev: &mut Event, count: u64, last_seen: Timestamp) {
    if let Some(f) = ev.finding.as_mut() {
        f.count = count;
        f.last_seen = last_seen;
    }
}

impl Dedup {
    pub fn new(limits: Limits) -> Self {
        Dedup {
            limits,
            entries: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// A finding happened; true when it goes out now (the caller emits
    /// `finding`), false when it was folded or rate limited.
    pub fn hit(&mut self, key: Key, finding: &Event, now: Instant) -> bool {
        let ts = finding.time;
        if let Some(e) = self.entries.get_mut(&key) {
            e.count += 1;
            e.last_hit = now;
            e.last_seen = ts;
            return false;
        }
        let bucket = self.buckets.entry(key.container.clone()).or_default();
        let fresh = bucket
            .started
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60));
        if fresh && bucket.suppressed.is_empty() {
            bucket.started = Some(now);
            bucket.reported = 0;
        }
        // Enforcements and high or critical findings skip the rate limit,
        // so cheap noise cannot hide them.
        let exempt = finding
            .finding
            .as_ref()
            .is_some_and(|f| f.outcome.is_some() || f.severity >= crate::policy::Severity::High);
        let over = bucket.reported >= self.limits.per_minute && !exempt;
        if over || self.entries.len() >= self.limits.max_keys {
            let slot = bucket
                .suppressed
                .entry(key.rule)
                .or_insert_with(|| (0, finding.clone()));
            slot.0 += 1;
            slot.1 = finding.clone();
            return false;
        }
        bucket.reported += 1;
        self.entries.insert(
            key,
            Entry {
                count: 1,
                reported: 1,
                last_report: now,
                last_hit: now,
                last_seen: ts,
                template: finding.clone(),
            },
        );
        true
    }

    /// Updates due now: folded repeats whose window passed, rate-limit
    /// summaries for finished minutes. Forgets quiet keys.
    pub fn flush(&mut self, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        let window = self.limits.window;
        for e in self.entries.values_mut() {
            if e.count > e.reported && now.duration_since(e.last_report) >= window {
                let mut ev = e.template.clone();
                stamp(&mut ev, e.count, e.last_seen);
                out.push(ev);
                e.reported = e.count;
                e.last_report = now;
            }
        }
        self.entries
            .retain(|_, e| e.count > e.reported || now.duration_since(e.last_hit) < window * 2);
        let per_minute = self.limits.per_minute;
        for bucket in self.buckets.values_mut() {
            let done = bucket
                .started
                .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60));
            if !done {
                continue;
            }
            for (_, (n, mut ev)) in std::mem::take(&mut bucket.suppressed) {
                if let Some(f) = ev.finding.as_mut() {
                    f.summary = format!(
                        "{n} more findings of {} in this container were not reported one by one \
                         (rate limit {per_minute} per minute); latest: {}",
                        f.rule_id, f.summary
                    );
                    f.subject.clear();
                    f.count = n;
                    f.last_seen = ev.time;
                }
                out.push(ev);
            }
            bucket.started = None;
        }
        self.buckets
            .retain(|_, b| b.started.is_some() || !b.suppressed.is_empty());
        out
    }

    /// Every fold not yet reported, at once (the agent is stopping).
    pub fn flush_all(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for e in self.entries.values_mut() {
            if e.count > e.reported {
                let mut ev = e.template.clone();
                stamp(&mut ev, e.count, e.last_seen);
                out.push(ev);
                e.reported = e.count;
            }
        }
        out
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FindingInfo, Kind};

    fn finding(rule: &'static str, t: i64) -> Event {
        let mut ev = Event::new(Kind::Finding, Timestamp(t), "n".into());
        ev.finding = Some(Box::new(FindingInfo {
            rule_id: rule.into(),
            severity: crate::policy::Severity::Medium,
            mitre: None,
            summary: "s".into(),
            subject: "x".into(),
            action: crate::event::Action::Alert,
            outcome: None,
            count: 1,
            resolved: false,
            restarts: None,
            first_seen: Timestamp(t),
            last_seen: Timestamp(t),
            evidence: Vec::new(),
        }));
        ev
    }

    fn key(c: &str, subject: &str) -> Key {
        Key {
            container: c.into(),
            rule: RuleId::ProcessShell,
            subject: subject.into(),
            outcome: None,
            resolved: false,
        }
    }

    const LIMITS: Limits = Limits {
        window: Duration::from_secs(10),
        per_minute: 3,
        max_keys: 100,
    };

    #[test]
    fn repeats_fold_into_one_update_per_window() {
        let mut d = Dedup::new(LIMITS);
        let t0 = Instant::now();
        assert!(d.hit(key("c", "/bin/sh"), &finding("process.shell", 1), t0));
        for i in 2..=5 {
            assert!(!d.hit(key("c", "/bin/sh"), &finding("process.shell", i), t0));
        }
        assert!(
            d.flush(t0 + Duration::from_secs(5)).is_empty(),
            "window not over"
        );
        let up = d.flush(t0 + Duration::from_secs(10));
        assert_eq!(up.len(), 1);
        let f = up[0].finding.as_ref().unwrap();
        assert_eq!(
            (f.count, f.first_seen, f.last_seen),
            (5, Timestamp(1), Timestamp(5))
        );
        assert!(
            d.flush(t0 + Duration::from_secs(20)).is_empty(),
            "nothing new"
        );
        // Quiet keys are forgotten: the next one is new again.
        d.flush(t0 + Duration::from_secs(40));
        assert_eq!(d.len(), 0);
        assert!(d.hit(
            key("c", "/bin/sh"),
            &finding("process.shell", 9),
            t0 + Duration::from_secs(41)
        ));
    }

    #[test]
    fn a_noisy_container_is_rate_limited_and_summarised() {
        let mut d = Dedup::new(LIMITS);
        let t0 = Instant::now();
        let sent = (0..10)
            .filter(|i| {
                d.hit(
                    key("noisy", &format!("/x{i}")),
                    &finding("process.shell", *i),
                    t0,
                )
            })
            .count();
        assert_eq!(sent, 3);
        // Another container is not affected.
        assert!(d.hit(key("quiet", "/bin/sh"), &finding("process.shell", 1), t0));
        assert!(d.flush(t0 + Duration::from_secs(30)).is_empty());
        let up = d.flush(t0 + Duration::from_secs(60));
        assert_eq!(up.len(), 1);
        let f = up[0].finding.as_ref().unwrap();
        assert_eq!(f.count, 7);
        assert!(
            f.summary.starts_with("7 more findings of process.shell"),
            "{}",
            f.summary
        );
        // A new minute: findings go out again.
        assert!(d.hit(
            key("noisy", "/y"),
            &finding("process.shell", 99),
            t0 + Duration::from_secs(61)
        ));
    }

    #[test]
    fn the_key_table_is_bounded() {
        let mut d = Dedup::new(Limits {
            max_keys: 2,
            per_minute: 100,
            ..LIMITS
        });
        let t0 = Instant::now();
        assert!(d.hit(key("a", "1"), &finding("process.shell", 1), t0));
        assert!(d.hit(key("b", "1"), &finding("process.shell", 1), t0));
        assert!(!d.hit(key("c", "1"), &finding("process.shell", 1), t0));
        assert_eq!(d.len(), 2);
    }
}
