//! Events on stdout, one per line: JSON (the stable contract, for machines),
//! text (a compact summary, for people), or findings (the text lines of
//! findings, agent start and stop, and losses only: a container log a
//! person can read). Flushed whenever the queue runs dry so a reader sees
//! events within one poll interval.
use std::io::Write;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use spyglass_proto::model::render;

use crate::{
    event::{Action, AgentState, Event, Kind},
    pipeline::budget::EventBatch,
};

/// Output format (`[output] format`, `--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line (docs/events.md).
    #[default]
    Json,
    /// One human-readable line per event.
    Text,
    /// The `text` line of each finding, of the agent starting and
    /// stopping, and of each loss; nothing for other events (for a
    /// container log, next to a collector).
    Findings,
    /// Nothing on stdout (use with a collector).
    None,
}

/// Whether format `findings` shows `ev`: a finding, the agent starting or
/// stopping (not its heartbeat), or a loss.
pub fn is_notable(ev: &Event) -> bool {
    match ev.kind {
        Kind::Finding | Kind::Loss => true,
        Kind::Agent => ev
            .agent
            .as_ref()
            .is_some_and(|a| matches!(a.state, AgentState::Started | AgentState::Stopping)),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    #[error("writing events to stdout failed: {0} (is the reading end closed?)")]
    Write(#[from] std::io::Error),
}

/// Shell-like quoting of one argument, for text output.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// One-line summary of an event.
/// ` [container NAME image REF@sha256:12hex pod NS/NAME]`, or the id and
/// why it is not attributed.
fn container_text(c: &crate::event::Container) -> String {
    let short = |d: &str| d.get(..19).unwrap_or(d).to_owned(); // sha256: + 12
    let mut s = match (&c.meta, c.unattributed) {
        (Some(m), _) => format!(
            " [container {} image {}@{}",
            m.name,
            m.image.reference,
            short(&m.image.digest)
        ),
        (None, Some(why)) => format!(
            " [container {} unattributed: {why}",
            c.id.get(..12).unwrap_or(&c.id)
        ),
        (None, None) => format!(" [container {}", c.id.get(..12).unwrap_or(&c.id)),
    };
    if let Some(p) = c.pod.as_ref().filter(|p| !p.name.is_empty()) {
        s.push_str(&format!(" pod {}/{}", p.namespace, p.name));
    }
    s.push(']');
    s
}

/// Sampled resource use, for text output.
fn usage_text(u: &crate::event::Usage) -> String {
    let mib = |b: u64| b / (1024 * 1024);
    let mut s = format!(" cpu={}%", u.cpu_percent);
    if let Some(m) = u.memory_bytes {
        s.push_str(&format!(" mem={}MiB", mib(m)));
    }
    if let Some(l) = u.memory_limit_bytes {
        s.push_str(&format!("/{}MiB", mib(l)));
    }
    if let Some(p) = u.pids {
        s.push_str(&format!(" pids={p}"));
    }
    s
}

pub fn text_line(ev: &Event) -> String {
    let time = ev.time.to_string();
    let time = time.get(11..23).unwrap_or(&time);
    let kind = ev.kind.as_str();
    let mut line = format!("{time} {kind:<7}");
    if let Some(f) = &ev.finding {
        let sev = f.severity.as_str().to_uppercase();
        line.push_str(&format!(" {sev} {} {}", f.rule_id, f.summary));
        if f.action != Action::Alert || f.outcome.is_some() {
            line.push_str(&format!(" action={}", f.action));
        }
        if let Some(o) = f.outcome {
            line.push_str(&format!(" outcome={o}"));
        }
        if f.count > 1 {
            line.push_str(&format!(" count={}", f.count));
        }
        if f.resolved {
            line.push_str(" RESOLVED");
        }
        if let Some(c) = &ev.container {
            line.push_str(&container_text(c));
        }
        return line;
    }
    if ev.snapshot {
        line.push_str(" [snapshot]");
    }
    if let Some(p) = &ev.process {
        line.push_str(&format!(" pid={} uid={} {}", p.pid, p.uid, p.comm));
        if ev.kind == Kind::Exec {
            let args: Vec<String> = p.argv.iter().map(quote).collect();
            line.push_str(&format!(" exe={} argv=[{}]", p.exe, args.join(" ")));
            if p.argv_truncated {
                line.push_str(" (argv truncated)");
            }
            if ev.enforced.is_some() {
                line.push_str(" KILLED by policy");
            }
        }
    }
    if let Some(x) = &ev.exit {
        match (x.code, x.signal) {
            (_, Some(sig)) => line.push_str(&format!(" signal={sig}")),
            (Some(code), _) => line.push_str(&format!(" code={code}")),
            _ => {}
        }
        if x.oom.is_some() {
            line.push_str(" OOM-killed");
        }
    }
    if let Some(u) = &ev.resources {
        line.push_str(&usage_text(u));
    }
    if let Some(l) = &ev.lifecycle {
        line.push_str(&format!(" {}", l.state));
        if let Some(code) = l.exit_code {
            line.push_str(&format!(" code={code}"));
        }
    }
    if let Some(f) = &ev.fork {
        line.push_str(&format!(" child={}", f.child_pid));
    }
    if let Some(n) = &ev.network {
        line.push_str(&format!(
            " {}/{} {} {}:{}",
            n.protocol, n.family, n.op, n.local.addr, n.local.port
        ));
        if let Some(r) = &n.remote {
            line.push_str(&format!(" -> {}:{}", r.addr, r.port));
        }
        if let Some(o) = n.outcome {
            line.push_str(&format!(" {o}"));
        }
        if n.wildcard == Some(true) {
            line.push_str(" (all interfaces)");
        }
    }
    if let Some(parent) = &ev.parent {
        line.push_str(&format!(" parent={}:{}", parent.pid, parent.exe));
    }
    if let Some(c) = &ev.container {
        line.push_str(&container_text(c));
    }
    if let Some(l) = &ev.loss {
        line.push_str(&format!(
            " LOST {} stage={} exec={} exit={} fork={} network={} decode={} spool_dropped={} \
             (delivered: read_errors={} connect_untracked={})",
            l.total(),
            l.stage,
            l.exec,
            l.exit,
            l.fork,
            l.network,
            l.decode_errors,
            l.spool_dropped,
            l.read_errors,
            l.connect_untracked
        ));
        if let Some(t) = &l.totals {
            line.push_str(&format!(" total_lost={}", t.lost()));
        }
    }
    if let Some(a) = &ev.agent {
        line.push_str(&format!(" {} v{} kernel={}", a.state, a.version, a.kernel));
        let down: Vec<&str> = a
            .probes
            .iter()
            .filter(|p| !p.attached)
            .map(|p| p.program.as_ref())
            .collect();
        if !down.is_empty() {
            line.push_str(&format!(" probes-not-attached={down:?}"));
        }
    }
    line
}

/// Write batches until the channel closes. Runs on its own thread: writes
/// block.
pub fn run(
    mut rx: mpsc::Receiver<EventBatch>,
    out: impl Write,
    format: Format,
) -> Result<u64, StdoutError> {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
    let mut written = 0u64;
    while let Some(batch) = rx.blocking_recv() {
        for ev in batch.iter() {
            match format {
                Format::Json => render::write_io(ev, &mut out)?,
                Format::Findings if !is_notable(ev) => continue,
                Format::Text | Format::Findings => out.write_all(text_line(ev).as_bytes())?,
                Format::None => continue,
            }
            out.write_all(b"\n")?;
            written += 1;
        }
        if rx.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::event::{Ancestor, Endpoint, Network, Process};

    #[test]
    fn text_lines_read_like_a_log() {
        let mut ev = Event::new(Kind::Exec, Timestamp(1_795_549_718_856_200_274), "n".into());
        ev.process = Some(Process {
            pid: 5,
            uid: 1000,
            comm: "echo".into(),
            exe: "/bin/echo".into(),
            argv: vec!["/bin/echo".to_string(), "a b".into(), "it's".into()].into(),
            ..Process::default()
        });
        ev.parent = Some(Ancestor {
            pid: 1,
            exe: "/bin/bash".into(),
            comm: "bash".into(),
        });
        assert_eq!(
            text_line(&ev),
            r"19:48:38.856 exec    pid=5 uid=1000 echo exe=/bin/echo argv=[/bin/echo 'a b' 'it'\''s'] parent=1:/bin/bash"
        );
        let mut c = crate::event::Container::from_cgroup(
            "0123456789abcdef".into(),
            crate::event::Runtime::Cri,
            None,
        );
        c.fill(&std::sync::Arc::new(spyglass_proto::model::ContainerMeta {
            id: "0123456789abcdef".into(),
            name: "app".into(),
            image: crate::container::meta::Image {
                reference: "shop/app:1".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                ..Default::default()
            },
            pod: Some(spyglass_proto::model::Pod {
                name: "web-0".into(),
                namespace: "shop".into(),
                uid: "u".into(),
                ..Default::default()
            }),
            ..Default::default()
        }));
        ev.container = Some(c.clone());
        assert!(text_line(&ev)
            .ends_with(" [container app image shop/app:1@sha256:abababababab pod shop/web-0]"));
        c.meta = None;
        c.pod = None;
        c.unattributed = Some(crate::event::Unattributed::LookupTimeout);
        ev.container = Some(c);
        assert!(text_line(&ev).ends_with(" [container 0123456789ab unattributed: lookup_timeout]"));
        let mut ev = Event::new(
            Kind::Connect,
            Timestamp(1_795_549_718_856_200_274),
            "n".into(),
        );
        ev.network = Some(Network {
            protocol: crate::event::Protocol::Tcp,
            family: crate::event::Family::Ipv4,
            op: crate::event::NetOp::Connect,
            local: Endpoint {
                addr: "127.0.0.1".parse().unwrap(),
                port: 4000,
            },
            remote: Some(Endpoint {
                addr: "127.0.0.1".parse().unwrap(),
                port: 80,
            }),
            outcome: Some(crate::event::ConnectOutcome::Failed),
            wildcard: None,
        });
        assert_eq!(
            text_line(&ev),
            "19:48:38.856 connect tcp/ipv4 connect 127.0.0.1:4000 -> 127.0.0.1:80 failed"
        );
    }

    #[test]
    fn json_is_one_object_per_line() {
        let (tx, rx) = mpsc::channel(4);
        let ev = Event::new(Kind::Agent, Timestamp(0), "n".into());
        tx.blocking_send(EventBatch::unbounded(vec![ev.clone(), ev]))
            .unwrap();
        drop(tx);
        let mut buf = Vec::new();
        assert_eq!(run(rx, &mut buf, Format::Json).unwrap(), 2);
        let text = String::from_utf8(buf).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["kind"], "agent");
        }
        assert_eq!(text.lines().count(), 2);
    }

    /// Format `findings` on the shared sample events: the finding's text
    /// line and nothing for the exec and connect; the agent's start and
    /// stop and a loss, not its heartbeat nor other process events.
    #[test]
    fn findings_format_shows_findings_lifecycle_and_losses() {
        use spyglass_proto::model::samples;
        let lines = |batch: Vec<Event>| {
            let (tx, rx) = mpsc::channel(1);
            tx.blocking_send(EventBatch::unbounded(batch)).unwrap();
            drop(tx);
            let mut buf = Vec::new();
            let n = run(rx, &mut buf, Format::Findings).unwrap();
            let text = String::from_utf8(buf).unwrap();
            assert_eq!(text.lines().count() as u64, n);
            text
        };
        let finding = samples::finding();
        assert_eq!(
            lines(vec![samples::exec(), finding.clone(), samples::connect()]),
            format!("{}\n", text_line(&finding))
        );
        assert_eq!(
            text_line(&finding),
            "19:48:38.856 finding HIGH process.shell shell in web action=kill outcome=killed \
             count=2 [container web image docker.io/library/nginx:1.27@sha256:aa pod prod/web-0]"
        );

        let agent = |state| {
            let mut ev = samples::agent();
            ev.agent.as_mut().unwrap().state = state;
            ev
        };
        let (started, stopping) = (agent(AgentState::Started), agent(AgentState::Stopping));
        let text = lines(vec![
            started.clone(),
            agent(AgentState::Running),
            samples::fork(),
            samples::exit(),
            samples::listen(),
            samples::loss(),
            stopping.clone(),
        ]);
        let want = [
            text_line(&started),
            text_line(&samples::loss()),
            text_line(&stopping),
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
        assert!(
            want[0].contains(" started v0.1.0 kernel=6.1.0"),
            "{}",
            want[0]
        );
        assert_eq!(
            want[1],
            "19:48:38.856 loss    LOST 25 stage=kernel exec=1 exit=2 fork=3 network=4 decode=7 \
             spool_dropped=8 (delivered: read_errors=5 connect_untracked=6) total_lost=85"
        );
    }
}
