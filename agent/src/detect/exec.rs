//! Checks on an exec: killed by policy, listed executables, shells,
//! writable paths, fileless execution, files not in the image, and
//! executables new for the image's baseline.
//!
//! Reads /proc (`exe`, `mountinfo`) and the overlay's upper layer: runs
//! on the pipeline thread, never on the async runtime.
use super::{
    baseline::{Baselines, Seen, What},
    hit::{Ctx, Hit, State},
    proc, unix_now,
};
use crate::{
    event::{Outcome, Process},
    policy::{info_of, normal_path, path_matches, Action, RuleId},
};

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Every hit of one exec event.
pub fn check(c: &Ctx<'_>, state: &mut State, baselines: &mut Baselines) -> Vec<Hit> {
    let Some(pr) = &c.ev.process else {
        return Vec::new();
    };
    // Every rule judges the path given to execve as the kernel's kill
    // check does: normalised (`//`, `.`, `..` undone), and as given.
    let given = normal_path(&pr.exe);
    if c.ev.enforced.is_some() {
        return vec![killed(c, &given, &pr.exe)];
    }
    // A relative path, a descriptor path, one with `..` (undone lexically,
    // while the kernel walks symlinks), or one the kernel kept only the
    // start of, is resolved through /proc/PID/exe (which may already name
    // a later exec of the same pid: only a fallback). Rules also judge
    // the path as given, as the kernel's kill check does.
    let by_fd = [&*given, &*pr.exe]
        .iter()
        .any(|p| p.starts_with("/dev/fd/") || p.starts_with("/proc/self/fd/"));
    let plain = given.starts_with('/') && !by_fd && !pr.exe_truncated && !pr.exe.contains("/..");
    let real = if c.ev.snapshot || plain {
        None
    } else {
        proc::exe(pr.pid)
    };
    let path = real.as_deref().unwrap_or(&given);
    let mut hits: Vec<Hit> = [
        listed(c, pr, path),
        shell(c, pr, path),
        writable(c, pr, path),
    ]
    .into_iter()
    .flatten()
    .collect();
    let fileless = path.starts_with("/memfd:") || path.ends_with(" (deleted)") || by_fd;
    if fileless {
        hits.push(Hit::new(
            RuleId::ProcessMemfd,
            path,
            format!("fileless execution ({path}) in container {}", c.meta.name),
        ));
    } else if !c.ev.snapshot {
        hits.extend(not_in_image(c, pr, path, state));
    }
    hits.extend(new_for_baseline(c, &given, baselines));
    hits
}

/// The kernel killed the exec: which rule did (from the plan it
/// enforces), and for a custom rule the entry that covers the path.
fn killed(c: &Ctx<'_>, normal: &str, raw: &str) -> Hit {
    // the path the kernel matched: the normalised one, else the one given
    let matched = |p: &str| c.plan.and_then(|pl| pl.exec_rule(p));
    let (path, rule) = match matched(normal) {
        Some(r) => (normal, Some(r)),
        None => (raw, matched(raw)),
    };
    let rule = rule.unwrap_or(RuleId::ProcessExec);
    let entry = c
        .policy
        .custom(RuleId::ProcessExec, c.meta)
        .find(|e| {
            e.action == Action::Kill
                && e.executables
                    .iter()
                    .any(|x| path_matches(x, path) || path_matches(x, raw))
        })
        .filter(|_| rule == RuleId::ProcessExec)
        .map(|e| (e.severity.unwrap_or(info_of(rule).severity), e.action));
    Hit {
        outcome: Some(Outcome::Killed),
        entry,
        ..Hit::new(
            rule,
            path,
            format!(
                "killed at exec by policy: {path} in container {}",
                c.meta.name
            ),
        )
    }
}

/// A custom `process.exec` entry lists the executable (and does not
/// allow it).
fn listed(c: &Ctx<'_>, pr: &Process, path: &str) -> Option<Hit> {
    let e = c.policy.custom(RuleId::ProcessExec, c.meta).find(|e| {
        let hit_path = |x: &String| path_matches(x, path) || path_matches(x, &pr.exe);
        e.executables.iter().any(hit_path) && !e.allow.executables.iter().any(hit_path)
    })?;
    let sev = e.severity.unwrap_or(info_of(RuleId::ProcessExec).severity);
    Some(Hit {
        entry: Some((sev, e.action)),
        ..Hit::new(
            RuleId::ProcessExec,
            path,
            format!("{path} executed in container {}", c.meta.name),
        )
    })
}

/// A shell or interpreter that is not the container's entrypoint.
fn shell(c: &Ctx<'_>, pr: &Process, path: &str) -> Option<Hit> {
    let name = basename(path);
    let argv0 = pr.argv.first().map_or("", basename);
    let shells = &c.policy.settings.shells;
    let is_shell = shells.iter().any(|s| s == name || s == argv0);
    // The entrypoint itself; a script entrypoint runs as
    // [interpreter, script, args...] after the kernel reads #!.
    let entry = &c.meta.entrypoint;
    let entry_args = || entry.iter().map(String::as_str);
    let is_entry = !entry.is_empty()
        && (pr.argv.iter().eq(entry_args()) || pr.argv.iter().skip(1).eq(entry_args()));
    (is_shell && !is_entry).then(|| {
        Hit::new(
            RuleId::ProcessShell,
            pr.exe.to_string(),
            format!(
                "shell or interpreter {} started in container {} (not its entrypoint)",
                pr.exe, c.meta.name
            ),
        )
    })
}

/// Executed from a path listed as writable (`settings.writable_paths`).
fn writable(c: &Ctx<'_>, pr: &Process, path: &str) -> Option<Hit> {
    let w = &c.policy.settings.writable_paths;
    let under = |w: &String| path.starts_with(w.as_str()) || pr.exe.starts_with(w.as_str());
    w.iter().any(under).then(|| {
        Hit::new(
            RuleId::ProcessWritablePath,
            path,
            format!(
                "{path} executed from a writable path in container {}",
                c.meta.name
            ),
        )
    })
}

/// The file is in the overlay's upper layer: written after the container
/// started (the upper layer is read once per container).
fn not_in_image(c: &Ctx<'_>, pr: &Process, path: &str, state: &mut State) -> Option<Hit> {
    let upper = state.upper.get_or_insert_with(|| proc::upperdir(pr.pid));
    let upper = upper.as_ref()?;
    (path.starts_with('/') && proc::in_upper(upper, path)).then(|| {
        Hit::new(
            RuleId::ProcessNotInImage,
            path,
            format!(
                "{path} is not part of image {} (written after container {} started) and was executed",
                c.meta.image.reference, c.meta.name
            ),
        )
    })
}

/// An executable the image's baseline has not learnt. Judged by the path
/// the program was started by (what an operator recognises; the resolved
/// file may be a multi-call binary).
fn new_for_baseline(c: &Ctx<'_>, started: &str, baselines: &mut Baselines) -> Option<Hit> {
    (baselines.observe(c.digest, What::Executable, started, unix_now()) == Seen::New).then(|| {
        Hit::new(
            RuleId::BaselineExecutable,
            started,
            format!(
                "{started} executed in container {}: new for image {}",
                c.meta.name, c.meta.image.reference
            ),
        )
    })
}
