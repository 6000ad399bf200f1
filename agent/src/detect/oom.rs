//! `container.oom_kill`: the kernel's OOM killer killed a container
//! process. Named by the `oom:mark_victim` tracepoint: the victim's exit
//! event carries `exit.oom` (pipeline/oom.rs) and is the evidence. Where
//! the tracepoint is not available, the container's cgroup `memory.events`
//! `oom_kill` counter, sampled in `resources` events, says how many of its
//! processes were killed, without naming them ([`on_resources`]).
use super::hit::{Ctx, Hit};
use crate::{event::Kind, policy::RuleId};

/// Bytes as MiB with one decimal (`31.5 MiB`).
fn mib(bytes: u64) -> String {
    let tenths = bytes.saturating_mul(10) / (1024 * 1024);
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

/// An exit event: a hit when the OOM killer chose the process. The
/// subject is the executable (repeats of one program fold into one
/// finding's count).
pub fn check(c: &Ctx) -> Option<Hit> {
    if c.ev.kind != Kind::Exit {
        return None;
    }
    let oom = c.ev.exit.as_ref()?.oom?;
    let p = c.ev.process.as_ref()?;
    let exe: &str = if p.exe.is_empty() { &p.comm } else { &p.exe };
    // busybox and multi-call binaries run applets as /proc/self/exe: the
    // command name says which
    let named = if p.comm.is_empty() || *p.comm == *exe {
        exe.to_owned()
    } else {
        format!("{}, {exe}", p.comm)
    };
    let rss = oom.rss_bytes.map_or_else(
        || "resident memory not reported by this kernel".to_owned(),
        |b| format!("resident memory {}", mib(b)),
    );
    let limit = oom.memory_limit_bytes.map_or_else(
        || "no container memory limit found".to_owned(),
        |b| format!("container memory limit {}", mib(b)),
    );
    Some(Hit::new(
        RuleId::ContainerOomKill,
        exe,
        format!(
            "the kernel's OOM killer killed process {} ({named}) in container {}: {rss}, {limit}",
            p.pid, c.meta.name
        ),
    ))
}

/// A container's `resources` event, where the `oom:mark_victim` probe is
/// not attached (`tracepoint_attached` false): a hit when the cgroup's
/// `oom_kill` counter rose since the container's previous reading.
/// `last` is the per-container state: the counter at the previous reading
/// (kept up to date whether or not the tracepoint is attached; the first
/// reading of a container only sets it). With the tracepoint attached the
/// exits name every victim, so the counter gives nothing more.
pub fn on_resources(c: &Ctx, last: &mut Option<u64>, tracepoint_attached: bool) -> Option<Hit> {
    let u = c.ev.resources.as_deref()?;
    let now = u.oom_kills?;
    let before = last.replace(now)?;
    if tracepoint_attached || now <= before {
        return None;
    }
    let n = now - before;
    let limit = u.memory_limit_bytes.map_or_else(
        || "no memory limit".to_owned(),
        |b| format!("memory limit {}", mib(b)),
    );
    Some(Hit::new(
        RuleId::ContainerOomKill,
        "",
        format!(
            "{n} process{} of container {} {} OOM-killed ({limit}); the kernel's \
             oom:mark_victim tracepoint is not available to name them",
            if n == 1 { "" } else { "es" },
            c.meta.name,
            if n == 1 { "was" } else { "were" },
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        container::meta::ContainerMeta,
        event::{Event, ExitInfo, OomKill, Process, Usage},
        policy::Policy,
    };
    use spyglass_proto::model::Timestamp;

    fn exit(oom: Option<OomKill>) -> Event {
        let mut ev = Event::new(Kind::Exit, Timestamp(0), "n".into());
        ev.process = Some(Process {
            pid: 4242,
            exe: "/bin/busybox".into(),
            comm: "sh".into(),
            ..Process::default()
        });
        ev.exit = Some(ExitInfo {
            code: None,
            signal: Some(9),
            raw: 9,
            oom,
        });
        ev
    }

    fn meta() -> ContainerMeta {
        ContainerMeta {
            name: "hog".into(),
            ..ContainerMeta::default()
        }
    }

    #[test]
    fn an_oom_killed_exit_is_a_finding_naming_process_memory_and_limit() {
        let (policy, meta) = (Policy::default(), meta());
        let ev = exit(Some(OomKill {
            rss_bytes: Some(31 * 1024 * 1024 + 512 * 1024),
            memory_limit_bytes: Some(32 * 1024 * 1024),
        }));
        let c = Ctx::bare(&ev, &meta, &policy);
        let h = check(&c).unwrap();
        assert_eq!(h.rule, RuleId::ContainerOomKill);
        assert_eq!(h.subject, "/bin/busybox");
        assert_eq!(
            h.summary,
            "the kernel's OOM killer killed process 4242 (sh, /bin/busybox) in container hog: \
             resident memory 31.5 MiB, container memory limit 32.0 MiB"
        );
        let ev = exit(Some(OomKill::default()));
        let c = Ctx::bare(&ev, &meta, &policy);
        assert!(check(&c).unwrap().summary.ends_with(
            "resident memory not reported by this kernel, no container memory limit found"
        ));
        // a SIGKILL that is not the OOM killer's, and other kinds: nothing
        let ev = exit(None);
        let c = Ctx::bare(&ev, &meta, &policy);
        assert_eq!(check(&c), None);
        let mut ev = exit(Some(OomKill::default()));
        ev.kind = Kind::Exec;
        let c = Ctx::bare(&ev, &meta, &policy);
        assert_eq!(check(&c), None);
    }

    fn reading(oom_kills: Option<u64>) -> Event {
        let mut ev = Event::new(Kind::Resources, Timestamp(0), "n".into());
        ev.resources = Some(Box::new(Usage {
            memory_limit_bytes: Some(32 * 1024 * 1024),
            oom_kills,
            ..Usage::default()
        }));
        ev
    }

    #[test]
    fn without_the_tracepoint_a_rising_counter_is_a_finding_without_process() {
        let (policy, meta) = (Policy::default(), meta());
        let mut last = None;
        let mut run = |kills: Option<u64>, attached: bool| {
            let ev = reading(kills);
            let c = Ctx::bare(&ev, &meta, &policy);
            on_resources(&c, &mut last, attached)
        };
        assert_eq!(
            run(Some(2), false),
            None,
            "the first reading is the baseline"
        );
        assert_eq!(run(Some(2), false), None);
        let h = run(Some(5), false).unwrap();
        assert_eq!((h.rule, h.subject.as_str()), (RuleId::ContainerOomKill, ""));
        assert_eq!(
            h.summary,
            "3 processes of container hog were OOM-killed (memory limit 32.0 MiB); the \
             kernel's oom:mark_victim tracepoint is not available to name them"
        );
        assert!(run(Some(6), false)
            .unwrap()
            .summary
            .starts_with("1 process of container hog was OOM-killed"));
        // the tracepoint names them: the counter is followed, no hit
        assert_eq!(run(Some(9), true), None);
        assert_eq!(run(Some(9), false), None, "9 was already seen");
        // no counter (cgroup v1 without memory.events): nothing, state kept
        assert_eq!(run(None, false), None);
        assert_eq!(
            run(Some(10), false).map(|h| h.summary.starts_with("1 process")),
            Some(true)
        );
    }
}
