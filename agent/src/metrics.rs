//! Prometheus metrics and health endpoints (`[metrics] listen`).
//!
//! The pipeline updates atomics through the methods below; `/metrics`
//! renders them in the Prometheus text format, `/healthz` says whether the
//! pipeline (the agent's main loop) is turning, `/readyz` whether the node
//! is observed (probes attached, containerd reachable when enabled); the
//! collector's reachability is a metric, not readiness.
use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use spyglass_proto::endpoints;

use crate::{
    event::Kind,
    export::filter::{Profile, Reason},
};

const KINDS: [(Kind, &str); 11] = [
    (Kind::Exec, "exec"),
    (Kind::Exit, "exit"),
    (Kind::Fork, "fork"),
    (Kind::Listen, "listen"),
    (Kind::Close, "close"),
    (Kind::Container, "container"),
    (Kind::Connect, "connect"),
    (Kind::Accept, "accept"),
    (Kind::Loss, "loss"),
    (Kind::Agent, "agent"),
    (Kind::Resources, "resources"),
];

/// The process table's figures (see [`Metrics::set_process_table`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct TableStats {
    pub bytes: u64,
    pub evicted: u64,
    pub argv_trimmed: u64,
}

/// Everything `/metrics` shows.
#[derive(Default)]
pub struct Metrics {
    events: [AtomicU64; KINDS.len()],
    /// Records lost, by stage and kind (kernel ring buffer, agent spool).
    lost_exec: AtomicU64,
    lost_exit: AtomicU64,
    lost_fork: AtomicU64,
    lost_network: AtomicU64,
    read_errors: AtomicU64,
    decode_errors: AtomicU64,
    /// Second exit records of one process (kernels whose exit record has no group_dead), dropped.
    duplicate_exits: AtomicU64,
    processes: AtomicU64,
    process_table: [AtomicU64; 3],
    containers: AtomicU64,
    pending_events: AtomicU64,
    cgroups: AtomicU64,
    /// Container cgroups sampled, and the time sampling took in all.
    sampled_containers: AtomicU64,
    sample_us: AtomicU64,
    containerd_up: AtomicBool,
    containerd_enabled: AtomicBool,
    probes_attached: AtomicU64,
    probes_total: AtomicU64,
    /// The pipeline's last turn (its housekeeping input, every 100 ms).
    heartbeat: endpoints::Heartbeat,
    collector_connected: AtomicBool,
    spool_batches: AtomicU64,
    spool_bytes: AtomicU64,
    /// Events in batches the spool dropped (full, unwritable, refused).
    spool_dropped: AtomicU64,
    /// containerd lookups answered, and their total time.
    lookups: AtomicU64,
    lookup_us: AtomicU64,
    /// Findings emitted, by rule (copied from the detector every second).
    findings: std::sync::Mutex<Vec<(crate::event::Name, u64)>>,
    policy_reloads: AtomicU64,
    enforced_cgroups: AtomicU64,
    enforcement_write_failures: AtomicU64,
    policy_reload_errors: AtomicU64,
    /// Events the export filter kept back, by reason and kind.
    filtered: [[AtomicU64; KINDS.len()]; Reason::ALL.len()],
    /// Events sent standing for aggregated repeats; windows open; events
    /// sent unaggregated for lack of room.
    aggregates_sent: AtomicU64,
    aggregate_windows: AtomicU64,
    aggregate_overflow: AtomicU64,
    /// The export profile in force (its place in `PROFILES`).
    profile: AtomicU64,
    export_reloads: AtomicU64,
    export_reload_errors: AtomicU64,
}

const PROFILES: [Profile; 3] = [Profile::Full, Profile::Security, Profile::Findings];

impl Metrics {
    /// Count events going out.
    pub fn count(&self, events: &[crate::event::Event]) {
        for ev in events {
            if let Some(i) = KINDS.iter().position(|(k, _)| *k == ev.kind) {
                self.events[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An event the export filter kept back.
    pub fn filtered(&self, reason: Reason, kind: Kind) {
        let r = Reason::ALL.iter().position(|x| *x == reason);
        let k = KINDS.iter().position(|(x, _)| *x == kind);
        if let (Some(r), Some(k)) = (r, k) {
            self.filtered[r][k].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Aggregation: `sent` more window events, `overflowed` more events
    /// let through for lack of room, `windows` open now.
    pub fn aggregated(&self, sent: u64, overflowed: u64, windows: u64) {
        self.aggregates_sent.fetch_add(sent, Ordering::Relaxed);
        self.aggregate_overflow
            .fetch_add(overflowed, Ordering::Relaxed);
        self.aggregate_windows.store(windows, Ordering::Relaxed);
    }

    pub fn set_profile(&self, p: Profile) {
        let i = PROFILES.iter().position(|x| *x == p).unwrap_or(0);
        self.profile.store(i as u64, Ordering::Relaxed);
    }

    pub fn export_reload(&self, accepted: bool) {
        if accepted {
            &self.export_reloads
        } else {
            &self.export_reload_errors
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_findings(&self, by_rule: &std::collections::HashMap<crate::event::Name, u64>) {
        let mut v: Vec<(crate::event::Name, u64)> =
            by_rule.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        *self.findings.lock().expect("findings lock") = v;
    }

    /// Loss reported by a `loss` event, added to the totals.
    pub fn add_loss(&self, l: &crate::event::Loss) {
        let add = |a: &AtomicU64, v: u64| a.fetch_add(v, Ordering::Relaxed);
        add(&self.lost_exec, l.exec);
        add(&self.lost_exit, l.exit);
        add(&self.lost_fork, l.fork);
        add(&self.lost_network, l.network);
        add(&self.read_errors, l.read_errors);
        add(&self.decode_errors, l.decode_errors);
    }

    /// What the pipeline holds now, and the second exit records dropped.
    pub fn set_tracked(&self, t: &crate::event::Tracked, duplicate_exits: u64) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.processes, t.processes);
        set(&self.containers, t.containers);
        set(&self.pending_events, t.pending_events);
        set(&self.cgroups, t.cgroups);
        set(&self.duplicate_exits, duplicate_exits);
    }

    /// One round of resource sampling: containers sampled, time taken.
    pub fn sampled(&self, containers: u64, took: Duration) {
        self.sampled_containers.store(containers, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sample_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The process table's bytes and what its bounds cost.
    pub fn set_process_table(&self, t: &TableStats) {
        for (a, v) in self
            .process_table
            .iter()
            .zip([t.bytes, t.evicted, t.argv_trimmed])
        {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub fn set_containerd_up(&self, up: bool) {
        self.containerd_up.store(up, Ordering::Relaxed);
    }

    /// At start: probes attached of all, and which sources are configured.
    pub fn set_started(&self, attached: usize, total: usize, containerd: bool) {
        self.probes_attached
            .store(attached as u64, Ordering::Relaxed);
        self.probes_total.store(total as u64, Ordering::Relaxed);
        self.containerd_enabled.store(containerd, Ordering::Relaxed);
    }

    /// The collector exporter's state: connected, and the spool's size.
    pub fn set_collector(&self, connected: bool, spool_batches: usize, spool_bytes: u64) {
        self.collector_connected.store(connected, Ordering::Relaxed);
        self.spool_batches
            .store(spool_batches as u64, Ordering::Relaxed);
        self.spool_bytes.store(spool_bytes, Ordering::Relaxed);
    }

    /// The collector exporter dropped `events` events from its spool.
    pub fn spool_dropped(&self, events: u64) {
        self.spool_dropped.fetch_add(events, Ordering::Relaxed);
    }

    /// A containerd lookup answered after `took_us` microseconds.
    pub fn lookup_answered(&self, took_us: u64) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.lookup_us.fetch_add(took_us, Ordering::Relaxed);
    }

    /// A policy reload: accepted or rejected.
    pub fn policy_reload(&self, accepted: bool) {
        let counter = if accepted {
            &self.policy_reloads
        } else {
            &self.policy_reload_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Cgroups with kernel enforcement entries, and plans not written.
    pub fn set_enforcement(&self, cgroups: usize, write_failures: u64) {
        self.enforced_cgroups
            .store(cgroups as u64, Ordering::Relaxed);
        self.enforcement_write_failures
            .store(write_failures, Ordering::Relaxed);
    }

    pub fn turned(&self) {
        self.heartbeat.beat();
    }

    /// The main loop turned within `limit`.
    pub fn healthy(&self, limit: Duration) -> bool {
        !self.heartbeat.stalled(limit)
    }

    /// Why the agent is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        let (attached, total) = (
            self.probes_attached.load(Ordering::Relaxed),
            self.probes_total.load(Ordering::Relaxed),
        );
        if total == 0 || attached < total {
            return Some("probes not all attached");
        }
        if self.containerd_enabled.load(Ordering::Relaxed)
            && !self.containerd_up.load(Ordering::Relaxed)
        {
            return Some("containerd unreachable: container events are unattributed");
        }
        // The collector is not part of readiness: readiness says the node
        // is observed, and a collector restart must not turn every agent
        // NotReady. Its stream is `spyglass_collector_connected` and a
        // warning in the log.
        None
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        endpoints::family(
            &mut s,
            "spyglass_resource_sample_seconds_total",
            "Time spent sampling container cgroups and busy containers' processes (wall clock, on the pipeline thread).",
            "counter",
        );
        let _ = writeln!(
            s,
            "spyglass_resource_sample_seconds_total {}",
            get(&self.sample_us) as f64 / 1e6
        );
        endpoints::family(
            &mut s,
            "spyglass_events_total",
            "Events the agent produced, by kind (before the export filter; spyglass_export_filtered_total counts what it kept back).",
            "counter",
        );
        for (i, (_, name)) in KINDS.iter().enumerate() {
            let _ = writeln!(
                s,
                "spyglass_events_total{{kind=\"{name}\"}} {}",
                get(&self.events[i])
            );
        }
        endpoints::family(
            &mut s,
            "spyglass_lost_records_total",
            "Kernel records lost (ring buffer full), by kind.",
            "counter",
        );
        for (name, a) in [
            ("exec", &self.lost_exec),
            ("exit", &self.lost_exit),
            ("fork", &self.lost_fork),
            ("network", &self.lost_network),
        ] {
            let _ = writeln!(
                s,
                "spyglass_lost_records_total{{kind=\"{name}\"}} {}",
                get(a)
            );
        }
        endpoints::family(
            &mut s,
            "spyglass_findings_total",
            "Findings emitted (first reports and folded updates), by rule.",
            "counter",
        );
        for (rule, n) in self.findings.lock().expect("findings lock").iter() {
            let _ = writeln!(s, "spyglass_findings_total{{rule=\"{rule}\"}} {n}");
        }
        for (name, help, kind, v) in [
            (
                "spyglass_read_errors_total",
                "Records with fields the kernel could not read.",
                "counter",
                get(&self.read_errors),
            ),
            (
                "spyglass_decode_errors_total",
                "Records the agent could not decode.",
                "counter",
                get(&self.decode_errors),
            ),
            (
                "spyglass_duplicate_exit_records_total",
                "Second exit records of one process, dropped (kernels whose exit record has no group_dead; should stay 0).",
                "counter",
                get(&self.duplicate_exits),
            ),
            (
                "spyglass_processes_tracked",
                "Processes in the process table.",
                "gauge",
                get(&self.processes),
            ),
            (
                "spyglass_process_table_bytes",
                "Approximate memory the process table holds ([process] max_bytes bounds it).",
                "gauge",
                get(&self.process_table[0]),
            ),
            (
                "spyglass_process_table_evicted_total",
                "Live processes forgotten because the table was full (entries or bytes); their later events lack exe and parents.",
                "counter",
                get(&self.process_table[1]),
            ),
            (
                "spyglass_process_argv_trimmed_total",
                "Processes whose arguments the table cut to 256 bytes because it was over [process] max_bytes.",
                "counter",
                get(&self.process_table[2]),
            ),
            (
                "spyglass_sampled_containers",
                "Container cgroups the resource sampler reads (settings.resource_sample_interval_ms).",
                "gauge",
                get(&self.sampled_containers),
            ),
            (
                "spyglass_containers_tracked",
                "Containers in the metadata cache.",
                "gauge",
                get(&self.containers),
            ),
            (
                "spyglass_pending_events",
                "Events waiting for their container's metadata.",
                "gauge",
                get(&self.pending_events),
            ),
            (
                "spyglass_cgroups_tracked",
                "cgroup ids resolved to a container or the host.",
                "gauge",
                get(&self.cgroups),
            ),
            (
                "spyglass_containerd_up",
                "1 when containerd is connected and synced.",
                "gauge",
                u64::from(self.containerd_up.load(Ordering::Relaxed)),
            ),
            (
                "spyglass_probes_attached",
                "Probes attached.",
                "gauge",
                get(&self.probes_attached),
            ),
            (
                "spyglass_collector_connected",
                "1 when the gRPC stream to the collector is up.",
                "gauge",
                u64::from(self.collector_connected.load(Ordering::Relaxed)),
            ),
            (
                "spyglass_spool_batches",
                "Batches spooled and not yet acknowledged by the collector.",
                "gauge",
                get(&self.spool_batches),
            ),
            (
                "spyglass_spool_bytes",
                "Bytes of the spooled batches.",
                "gauge",
                get(&self.spool_bytes),
            ),
            (
                "spyglass_spool_dropped_events_total",
                "Events in batches the collector spool dropped (spool full, batch not writable, or refused by the collector for good); each drop is also a loss event.",
                "counter",
                get(&self.spool_dropped),
            ),
            (
                "spyglass_enforced_cgroups",
                "Container cgroups with kill or deny-connect entries in the kernel.",
                "gauge",
                get(&self.enforced_cgroups),
            ),
            (
                "spyglass_enforcement_write_failures_total",
                "Container policies not enforced because the kernel tables were full.",
                "counter",
                get(&self.enforcement_write_failures),
            ),
            (
                "spyglass_policy_reloads_total",
                "Policy files loaded after the start (SIGHUP or a changed file).",
                "counter",
                get(&self.policy_reloads),
            ),
            (
                "spyglass_policy_reload_errors_total",
                "Policy files rejected on reload (the running policy stayed).",
                "counter",
                get(&self.policy_reload_errors),
            ),
            (
                "spyglass_containerd_lookup_seconds_count",
                "containerd lookups answered.",
                "counter",
                get(&self.lookups),
            ),
        ] {
            endpoints::single(&mut s, name, help, kind, v);
        }
        endpoints::single(
            &mut s,
            "spyglass_containerd_lookup_seconds_sum",
            "Time spent in containerd lookups.",
            "counter",
            format_args!("{:.6}", get(&self.lookup_us) as f64 / 1e6),
        );
        self.render_export(&mut s);
        s
    }

    /// The export filter's figures.
    fn render_export(&self, s: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        endpoints::family(
            s,
            "spyglass_export_filtered_total",
            "Events the export filter kept back from the sinks, by reason (kind, deny, allow, sampled, aggregated: counted in a later event's aggregate, folded) and kind.",
            "counter",
        );
        for (r, reason) in Reason::ALL.iter().enumerate() {
            for (k, (kind, name)) in KINDS.iter().enumerate() {
                if crate::export::filter::protected(*kind) {
                    continue;
                }
                let _ = writeln!(
                    s,
                    "spyglass_export_filtered_total{{reason=\"{}\",kind=\"{name}\"}} {}",
                    reason.as_str(),
                    get(&self.filtered[r][k])
                );
            }
        }
        endpoints::family(
            s,
            "spyglass_export_profile",
            "The export profile in force (1 for it).",
            "gauge",
        );
        let current = get(&self.profile) as usize;
        for (i, p) in PROFILES.iter().enumerate() {
            let _ = writeln!(
                s,
                "spyglass_export_profile{{profile=\"{}\"}} {}",
                p.as_str(),
                u8::from(i == current)
            );
        }
        for (name, help, kind, v) in [
            (
                "spyglass_export_aggregates_total",
                "Events sent standing for repeats the export filter aggregated.",
                "counter",
                get(&self.aggregates_sent),
            ),
            (
                "spyglass_export_aggregate_windows",
                "Aggregation windows open (destinations holding repeats).",
                "gauge",
                get(&self.aggregate_windows),
            ),
            (
                "spyglass_export_aggregate_overflow_total",
                "Events sent unaggregated because the aggregation windows were full (aggregate.max_keys).",
                "counter",
                get(&self.aggregate_overflow),
            ),
            (
                "spyglass_export_filter_reloads_total",
                "Export filter files loaded after the start.",
                "counter",
                get(&self.export_reloads),
            ),
            (
                "spyglass_export_filter_reload_errors_total",
                "Export filter files rejected on reload (the running filter stayed).",
                "counter",
                get(&self.export_reload_errors),
            ),
        ] {
            endpoints::single(s, name, help, kind, v);
        }
    }
}

/// What `path` answers (`/metrics`, `/healthz`, `/readyz`).
pub fn answer(m: &Metrics, path: &str) -> endpoints::Answer {
    let stalled = (!m.healthy(Duration::from_secs(5))).then_some("main loop stalled");
    endpoints::answer(path, || m.render(), stalled, m.not_ready())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_readiness() {
        let m = Metrics::default();
        let mut ev = crate::event::Event::new(Kind::Exec, crate::clock::Timestamp(0), "n".into());
        m.count(&[ev.clone(), ev.clone()]);
        ev.kind = Kind::Connect;
        m.count(&[ev]);
        m.lost_exec.store(3, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("spyglass_events_total{kind=\"exec\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("spyglass_events_total{kind=\"connect\"} 1\n"));
        assert!(text.contains("spyglass_lost_records_total{kind=\"exec\"} 3\n"));
        m.spool_dropped(40);
        m.spool_dropped(2);
        assert!(m
            .render()
            .contains("# TYPE spyglass_spool_dropped_events_total counter\nspyglass_spool_dropped_events_total 42\n"));
        assert!(text.contains("# TYPE spyglass_containerd_up gauge\nspyglass_containerd_up 0\n"));
        assert_eq!(m.not_ready(), Some("probes not all attached"));
        m.probes_total.store(10, Ordering::Relaxed);
        m.probes_attached.store(10, Ordering::Relaxed);
        m.containerd_enabled.store(true, Ordering::Relaxed);
        assert!(m.not_ready().unwrap().contains("containerd"));
        m.containerd_up.store(true, Ordering::Relaxed);
        assert_eq!(m.not_ready(), None);
        m.set_collector(false, 0, 0);
        assert_eq!(
            m.not_ready(),
            None,
            "a collector away does not make the node unobserved"
        );
        m.lookups.store(2, Ordering::Relaxed);
        m.lookup_us.store(1500, Ordering::Relaxed);
        assert!(m
            .render()
            .contains("spyglass_containerd_lookup_seconds_sum 0.001500\n"));
        assert!(!m.healthy(Duration::from_secs(5)));
        m.turned();
        assert!(m.healthy(Duration::from_secs(5)));
        assert_eq!(answer(&m, "/nope").0, 404);
        assert_eq!(answer(&m, "/readyz").0, 200);
    }
}
