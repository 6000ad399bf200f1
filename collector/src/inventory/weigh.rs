//! What an event the inventory keeps holds in memory while it waits for
//! the store task: the parts [`super::changes`] never reads are dropped
//! first ([`strip`]), and the rest is weighed from the model, entry by
//! entry ([`bytes`]), so the queue's bound holds whatever an agent
//! sends (an empty list entry is 2 bytes on the wire and a whole
//! struct in memory).
use std::{collections::BTreeMap, mem::size_of};

use spyglass_proto::model::{
    AgentInfo, Args, Container, ContainerMeta, Event, FindingInfo, ImageLineage, Loss, Pod,
    Posture, Process, Usage,
};

/// Drop what no state change reads: a finding's evidence, the process's
/// arguments and unread fields, its ancestry, an agent's probe list.
pub fn strip(ev: &mut Event) {
    ev.parent = None;
    ev.ancestors = Vec::new();
    if let Some(p) = ev.process.as_mut() {
        p.argv = Args::default();
        p.unread = Vec::new();
    }
    if let Some(f) = ev.finding.as_mut() {
        f.evidence = Vec::new();
    }
    if let Some(a) = ev.agent.as_mut() {
        a.probes = Vec::new();
    }
}

/// A heap string: its bytes and its header.
fn text(s: &str) -> usize {
    s.len() + size_of::<String>()
}

/// A list of strings, entry by entry.
fn texts(v: &[String]) -> usize {
    v.iter().map(|s| text(s)).sum()
}

/// A string map, entry by entry (a B-tree entry is about two headers
/// and a share of its node).
fn map(m: &BTreeMap<String, String>) -> usize {
    m.iter().map(|(k, v)| text(k) + text(v) + 16).sum()
}

fn pod(p: &Pod) -> usize {
    size_of::<Pod>() + text(&p.name) + text(&p.namespace) + text(&p.uid) + map(&p.labels)
}

fn meta(m: &ContainerMeta) -> usize {
    let posture = m.posture.as_ref().map_or(0, |p: &Posture| {
        size_of::<Posture>() + texts(&p.capabilities)
    });
    size_of::<ContainerMeta>()
        + text(&m.id)
        + text(&m.name)
        + text(&m.namespace)
        + text(&m.oci_runtime)
        + text(&m.image.reference)
        + text(&m.image.digest)
        + text(&m.image.index_digest)
        + text(&m.image.config_digest)
        + texts(&m.image.exposed_ports)
        + m.pod.as_ref().map_or(0, pod)
        + map(&m.labels)
        + posture
        + texts(&m.entrypoint)
}

fn container(c: &Container) -> usize {
    text(&c.id) + c.pod.as_ref().map_or(0, pod) + c.meta.as_deref().map_or(0, meta)
}

fn process(p: &Process) -> usize {
    size_of::<Process>() + text(&p.exe) + text(&p.comm) + p.argv.byte_len()
}

fn finding(f: &FindingInfo) -> usize {
    size_of::<FindingInfo>() + text(&f.rule_id) + text(&f.summary) + text(&f.subject)
}

fn agent(a: &AgentInfo) -> usize {
    size_of::<AgentInfo>() + text(&a.version) + text(&a.kernel)
}

/// What `ev` holds, bytes: its struct and everything it owns. Shared
/// container metadata is counted in every event holding it (an upper
/// bound).
pub fn bytes(ev: &Event) -> usize {
    size_of::<Event>()
        + text(&ev.node)
        + ev.process.as_ref().map_or(0, process)
        + ev.container.as_ref().map_or(0, container)
        + ev.finding.as_deref().map_or(0, finding)
        + ev.agent.as_deref().map_or(0, agent)
        + ev.loss.as_ref().map_or(0, |_| size_of::<Loss>())
        + ev.resources.as_ref().map_or(0, |_| size_of::<Usage>())
        + ev.lifecycle
            .as_ref()
            .and_then(|l| l.image.as_deref())
            .map_or(0, |i| {
                size_of::<ImageLineage>()
                    + text(&i.base_digest)
                    + text(&i.base_name)
                    + texts(&i.diff_ids)
            })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spyglass_proto::model::samples;

    use super::*;

    #[test]
    fn an_empty_entry_weighs_what_it_holds_in_memory() {
        let mut ev = samples::exec();
        let c = ev.container.as_mut().unwrap();
        let mut m = (**c.meta.as_ref().unwrap()).clone();
        m.posture.as_mut().unwrap().capabilities = vec![String::new(); 100_000];
        c.meta = Some(Arc::new(m));
        assert!(bytes(&ev) >= 100_000 * size_of::<String>());
    }

    #[test]
    fn what_no_change_reads_is_stripped() {
        let mut f = samples::finding();
        let evidence = f.finding.as_ref().unwrap().evidence.len();
        assert!(evidence > 0, "the sample finding has evidence");
        f.finding.as_mut().unwrap().evidence = vec![samples::exec(); 1000];
        strip(&mut f);
        assert!(f.finding.as_ref().unwrap().evidence.is_empty());
        let mut exec = samples::exec();
        assert!(!exec.process.as_ref().unwrap().argv.is_empty());
        strip(&mut exec);
        assert!(exec.process.as_ref().unwrap().argv.is_empty());
        assert!(exec.parent.is_none() && exec.ancestors.is_empty());
        // what changes read stays
        assert_eq!(exec.process.as_ref().unwrap().exe.as_ref(), "/usr/bin/curl");
    }
}
