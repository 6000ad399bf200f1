//! `container.memory_near_limit`: a container's cgroup memory above
//! `settings.memory_near_limit_percent` of its limit for
//! `settings.memory_near_limit_seconds`; one finding, with the growth
//! rate over that time, and a resolved update when it drops below.
use std::time::{Duration, Instant};

use super::hit::{Ctx, Hit, Over, State};
use crate::{
    event::{Event, Usage},
    policy::RuleId,
};

const MIB: u64 = 1024 * 1024;

/// One reading of the container (a `resources` event without process).
pub fn check(c: &Ctx, state: &mut State, now: Instant) -> Option<Hit> {
    let s = &c.policy.settings;
    let u = c.ev.resources.as_deref().copied().unwrap_or_default();
    let over_now = u
        .memory_percent
        .is_some_and(|p| p >= s.memory_near_limit_percent);
    if !over_now {
        let over = state.memory.take()?;
        return over.reported.then(|| {
            let mut h = Hit::new(
                RuleId::ContainerMemoryNearLimit,
                "",
                format!(
                    "container {} memory is back under {}% of its limit",
                    c.meta.name, s.memory_near_limit_percent
                ),
            );
            h.resolved = true;
            h
        });
    }
    let mem = u.memory_bytes.unwrap_or(0);
    let over = state.memory.get_or_insert(Over {
        since: now,
        start: mem,
        reported: false,
        last: None,
    });
    let lasted = now.saturating_duration_since(over.since);
    if over.reported || lasted < Duration::from_secs(s.memory_near_limit_seconds) {
        return None;
    }
    over.reported = true;
    let window_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX).max(1);
    let growth = (i128::from(mem) - i128::from(over.start)) * 1000 / i128::from(window_ms);
    let mut evidence: Event = c.ev.clone();
    evidence.resources = Some(Box::new(Usage {
        window_ms,
        memory_growth_bytes_per_s: i64::try_from(growth).ok(),
        ..u
    }));
    let mut h = Hit::new(
        RuleId::ContainerMemoryNearLimit,
        "",
        format!(
            "container {} has used over {}% of its {} MiB memory limit for {} s \
             ({} MiB now, {:+} KiB/s)",
            c.meta.name,
            s.memory_near_limit_percent,
            u.memory_limit_bytes.unwrap_or(0) / MIB,
            lasted.as_secs(),
            mem / MIB,
            growth / 1024
        ),
    );
    h.evidence = Some(evidence);
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{container::meta::ContainerMeta, event::Kind, policy::Policy};
    use spyglass_proto::model::Timestamp;

    fn reading(mem: u64, limit: Option<u64>) -> Event {
        let mut ev = Event::new(Kind::Resources, Timestamp(0), "n".into());
        ev.resources = Some(Box::new(Usage {
            memory_bytes: Some(mem),
            memory_limit_bytes: limit,
            memory_percent: limit.map(|l| u32::try_from(mem * 100 / l).unwrap()),
            ..Usage::default()
        }));
        ev
    }

    #[test]
    fn near_the_limit_long_enough_once_with_growth_then_resolved() {
        let mut policy = Policy::default();
        policy.settings.memory_near_limit_seconds = 4;
        let meta = ContainerMeta {
            name: "cache".into(),
            ..ContainerMeta::default()
        };
        let mut state = State::default();
        let t0 = Instant::now();
        let limit = Some(100 * MIB);
        let mut hits = Vec::new();
        for i in 0..5u64 {
            let ev = reading((91 + i) * MIB, limit);
            let c = Ctx::bare(&ev, &meta, &policy);
            hits.extend(check(&c, &mut state, t0 + Duration::from_secs(2 * i)));
        }
        assert_eq!(hits.len(), 1);
        let u = hits[0]
            .evidence
            .as_ref()
            .unwrap()
            .resources
            .as_deref()
            .copied()
            .unwrap();
        // 91 -> 93 MiB in 4 s
        assert_eq!(u.window_ms, 4000);
        assert_eq!(u.memory_growth_bytes_per_s, Some((MIB / 2) as i64));
        assert!(
            hits[0]
                .summary
                .contains("over 90% of its 100 MiB memory limit for 4 s"),
            "{}",
            hits[0].summary
        );
        // no limit: not near it; the finding closes
        let ev = reading(95 * MIB, None);
        let c = Ctx::bare(&ev, &meta, &policy);
        let h = check(&c, &mut state, t0 + Duration::from_secs(12)).unwrap();
        assert!(h.resolved);
        assert!(check(&c, &mut state, t0 + Duration::from_secs(14)).is_none());
        // a short spike over the limit gives nothing
        let ev = reading(99 * MIB, limit);
        let c = Ctx::bare(&ev, &meta, &policy);
        assert!(check(&c, &mut state, t0 + Duration::from_secs(16)).is_none());
        let ev = reading(10 * MIB, limit);
        let c = Ctx::bare(&ev, &meta, &policy);
        assert!(check(&c, &mut state, t0 + Duration::from_secs(18)).is_none());
    }
}
