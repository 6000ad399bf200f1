//! Fork storms: more than `settings.max_forks_per_second` processes
//! created by one container in one second.
use std::time::{Duration, Instant};

use super::hit::{Hit, State};
use crate::{
    container::meta::ContainerMeta,
    policy::{Policy, RuleId},
};

/// Count one fork; a hit when the count first passes the limit in the
/// current window.
pub fn check(p: &Policy, meta: &ContainerMeta, state: &mut State, now: Instant) -> Option<Hit> {
    let max = p.settings.max_forks_per_second;
    match state.fork_window {
        Some(w) if now.duration_since(w) < Duration::from_secs(1) => state.forks += 1,
        _ => {
            state.fork_window = Some(now);
            state.forks = 1;
        }
    }
    (max > 0 && state.forks == max + 1).then(|| {
        Hit::new(
            RuleId::ProcessForkRate,
            "",
            format!(
                "container {} created more than {max} processes in one second",
                meta.name
            ),
        )
    })
}
