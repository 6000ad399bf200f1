//! The collector's Prometheus metrics and health endpoints
//! (`--metrics-listen`): what arrived, what was written, what was refused,
//! which agents are connected, findings by rule.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use spyglass_proto::{endpoints, model::Kind};

use crate::{delivery::Received, service::Agents};

#[derive(Default)]
pub struct Metrics {
    /// Events written, by kind (index in `Kind::ALL`).
    events: [AtomicU64; Kind::ALL.len()],
    /// Findings written, by (rule id, severity).
    findings: Mutex<BTreeMap<(String, String), u64>>,
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    /// Events the agents reported lost (their `loss` events).
    pub agent_reported_lost: AtomicU64,
    /// Streams ended with an error status (malformed, oversized, ...).
    pub bad_streams: AtomicU64,
    /// Streams refused for a limit (`--max-streams*`).
    pub refused_streams: AtomicU64,
    /// Sequence spaces (node, stream id) in the dedupe state.
    pub dedupe_streams: AtomicU64,
    pub output_errors: AtomicU64,
    /// The last output write failed (cleared by the next success).
    pub output_failing: AtomicBool,
    /// Messages syslog could not take (its queue was full).
    pub syslog_dropped: Option<Arc<AtomicU64>>,
    /// The housekeeping loop's last turn.
    pub heartbeat: endpoints::Heartbeat,
    /// The inventory store's counters (`--store`); `None`: no store.
    pub store: Option<Arc<crate::inventory::Health>>,
    /// The live event stream's clients (`--api-listen`); `None`: no API.
    pub live: Option<Arc<crate::live::Hub>>,
    /// The remote output (`--kafka-brokers`, `--webhook-url`); `None`:
    /// none.
    pub remote: Option<crate::remote::Remote>,
    /// The scanner report import (`--vuln-reports`); `None`: none.
    pub vuln_reports: Option<Arc<crate::inventory::report_dir::ImportHealth>>,
}

/// Most (rule, severity) series of `spyglass_collector_findings_total`:
/// rule ids come from agents, and one agent must not grow the collector's
/// memory or a Prometheus server's series without bound. Findings of
/// further series count under rule `other`.
const MAX_RULE_SERIES: usize = 256;
const OTHER_RULE: &str = "other";

/// A finding's rule id as a metric label: the id when it has the shape
/// of one (1 to 64 of `a-z 0-9 . _ -`), else `other`.
fn rule_label(rule: &str) -> String {
    let shaped = (1..=64).contains(&rule.len())
        && rule
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if shaped { rule } else { OTHER_RULE }.to_owned()
}

impl Metrics {
    /// Metrics that also report syslog's dropped counter.
    pub fn new(syslog_dropped: Option<Arc<AtomicU64>>) -> Self {
        Self {
            syslog_dropped,
            ..Self::default()
        }
    }

    /// Count a batch that was written (its ack clears `output_failing`
    /// once it is on disk).
    pub fn written(&self, batch: &Received, reported_lost: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.agent_reported_lost
            .fetch_add(reported_lost, Ordering::Relaxed);
        for ev in &batch.events {
            if let Some(i) = Kind::ALL.iter().position(|k| *k == ev.kind) {
                self.events[i].fetch_add(1, Ordering::Relaxed);
            }
            if let Some(f) = &ev.finding {
                let mut series = self.findings.lock().expect("findings lock");
                let mut key = (rule_label(&f.rule_id), f.severity.as_str().to_owned());
                if !series.contains_key(&key) && series.len() >= MAX_RULE_SERIES {
                    key.0 = OTHER_RULE.into();
                }
                *series.entry(key).or_default() += 1;
            }
        }
    }

    #[cfg(test)]
    fn rule_series(&self) -> usize {
        self.findings.lock().expect("findings lock").len()
    }

    pub fn turned(&self) {
        self.heartbeat.beat();
    }

    /// Prometheus text format; `agents` gives the connected count.
    pub fn render(&self, agents: &Agents) -> String {
        let mut s = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        endpoints::family(
            &mut s,
            "spyglass_collector_events_total",
            "Events written, by kind.",
            "counter",
        );
        for (i, k) in Kind::ALL.iter().enumerate() {
            let _ = writeln!(
                s,
                "spyglass_collector_events_total{{kind=\"{}\"}} {}",
                k.as_str(),
                get(&self.events[i])
            );
        }
        endpoints::family(
            &mut s,
            "spyglass_collector_findings_total",
            "Findings written, by rule and severity.",
            "counter",
        );
        for ((rule, sev), n) in self.findings.lock().expect("findings lock").iter() {
            let _ = writeln!(
                s,
                "spyglass_collector_findings_total{{rule=\"{}\",severity=\"{sev}\"}} {n}",
                rule.replace(['"', '\\', '\n'], "_")
            );
        }
        let (known, connected) = {
            let a = agents.lock().expect("agents lock");
            (a.len(), a.values().filter(|a| a.connected).count())
        };
        for (name, help, kind, v) in [
            (
                "spyglass_collector_batches_total",
                "Batches written.",
                "counter",
                get(&self.batches),
            ),
            (
                "spyglass_collector_duplicate_batches_total",
                "Batches received again after a reconnect and not written twice.",
                "counter",
                get(&self.duplicate_batches),
            ),
            (
                "spyglass_collector_agent_reported_lost_total",
                "Events the agents reported lost (their loss events).",
                "counter",
                get(&self.agent_reported_lost),
            ),
            (
                "spyglass_collector_bad_streams_total",
                "Agent streams ended with an error (malformed or oversized messages, bad batches).",
                "counter",
                get(&self.bad_streams),
            ),
            (
                "spyglass_collector_decode_budget_refused_total",
                "Batches refused (RESOURCE_EXHAUSTED, resent by the agents) because the decoded batches of all streams held the --decode-budget-mib budget.",
                "counter",
                spyglass_proto::codec::DECODE_BUDGET.refused(),
            ),
            (
                "spyglass_collector_decode_budget_used_bytes",
                "Bytes of the decode budget the batches being written hold (estimated before decoding).",
                "gauge",
                spyglass_proto::codec::DECODE_BUDGET.used() as u64,
            ),
            (
                "spyglass_collector_refused_streams_total",
                "Agent streams refused because a limit on open streams was reached (--max-streams, --max-streams-per-ip, --max-streams-per-cert).",
                "counter",
                get(&self.refused_streams),
            ),
            (
                "spyglass_collector_output_errors_total",
                "Failed output writes (batches refused and left to the agents to resend).",
                "counter",
                get(&self.output_errors),
            ),
            (
                "spyglass_collector_syslog_dropped_total",
                "Lines syslog could not take (queue full).",
                "counter",
                self.syslog_dropped.as_ref().map_or(0, |d| get(d)),
            ),
            (
                "spyglass_collector_dedupe_streams",
                "Sequence spaces (node, stream id) kept in the dedupe state (at most --dedupe-streams-per-node per node).",
                "gauge",
                get(&self.dedupe_streams),
            ),
            (
                "spyglass_collector_agents_connected",
                "Agents with an open stream.",
                "gauge",
                connected as u64,
            ),
            (
                "spyglass_collector_agents_known",
                "Agents seen since the start.",
                "gauge",
                known as u64,
            ),
        ] {
            endpoints::single(&mut s, name, help, kind, v);
        }
        match &self.remote {
            Some(crate::remote::Remote::Kafka(k)) => {
                kafka_metrics(&mut s, &k.health, k.queue.waiting_bytes());
            }
            Some(crate::remote::Remote::Webhook(w)) => {
                webhook_metrics(&mut s, &w.health, w.queue.waiting_bytes());
            }
            None => {}
        }
        if let Some(h) = &self.store {
            store_metrics(&mut s, h);
        }
        if let Some(l) = &self.live {
            l.metrics(&mut s);
        }
        if let Some(r) = &self.vuln_reports {
            report_metrics(&mut s, r);
        }
        s
    }

    /// While output writes fail, try a 64 KiB write in the output's
    /// directory; when it succeeds, the collector is ready again.
    pub fn recheck_output(&self, dir: &std::path::Path) {
        if !self.output_failing.load(Ordering::Relaxed) {
            return;
        }
        let probe = dir.join(".spyglass-space-check");
        let ok = std::fs::write(&probe, vec![0u8; 64 << 10]).is_ok();
        let _ = std::fs::remove_file(&probe);
        if ok {
            tracing::info!(dir = %dir.display(), "output writable again");
            self.output_failing.store(false, Ordering::Relaxed);
        }
    }

    /// Why the collector is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        self.output_failing
            .load(Ordering::Relaxed)
            .then_some("output failing: batches are refused until a write succeeds")
    }
}

/// The Kafka output's families.
fn kafka_metrics(s: &mut String, h: &crate::kafka::Health, waiting: u64) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (name, help, kind, v) in [
        (
            "spyglass_collector_kafka_up",
            "1 while the Kafka output commits (or has nothing to commit), 0 while it fails or starts (/readyz says why).",
            "gauge",
            u64::from(h.up()).to_string(),
        ),
        (
            "spyglass_collector_kafka_commits_total",
            "Kafka transactions committed (each carries every batch queued when it began).",
            "counter",
            get(&h.commits).to_string(),
        ),
        (
            "spyglass_collector_kafka_aborts_total",
            "Kafka transactions that failed and were aborted; the same batches are tried again (not acked meanwhile).",
            "counter",
            get(&h.aborts).to_string(),
        ),
        (
            "spyglass_collector_kafka_records_total",
            "Event records committed to Kafka (positions not counted).",
            "counter",
            get(&h.records).to_string(),
        ),
        (
            "spyglass_collector_kafka_batches_total",
            "Agent batches committed to Kafka.",
            "counter",
            get(&h.batches).to_string(),
        ),
        (
            "spyglass_collector_kafka_commit_seconds_total",
            "Time spent in Kafka transactions that committed, from their first record to the commit's answer.",
            "counter",
            format!("{:.6}", get(&h.commit_micros) as f64 / 1e6),
        ),
        (
            "spyglass_collector_kafka_waiting_bytes",
            "Rendered bytes written and waiting for a Kafka commit (at most --kafka-queue-mib, then streams wait).",
            "gauge",
            waiting.to_string(),
        ),
        (
            "spyglass_collector_kafka_producer_restarts_total",
            "Kafka producers made anew after a fatal error (a fenced or broken transactional producer).",
            "counter",
            get(&h.producer_restarts).to_string(),
        ),
        (
            "spyglass_collector_kafka_oversized_batches_total",
            "Batches refused because an event rendered over the record limit.",
            "counter",
            get(&h.oversized_batches).to_string(),
        ),
        (
            "spyglass_collector_kafka_fenced_batches_total",
            "Batches not committed because their node's agent reached another stream (another replica, or a reconnect) since they arrived: refused, and resent by the agent.",
            "counter",
            get(&h.fenced_batches).to_string(),
        ),
        (
            "spyglass_collector_kafka_record_limit_bytes",
            "Most bytes of one rendered event: --kafka-max-record-bytes, or less when a topic's max.message.bytes is smaller.",
            "gauge",
            get(&h.record_limit).to_string(),
        ),
    ] {
        endpoints::single(s, name, help, kind, v);
    }
}

/// The webhook output's families.
fn webhook_metrics(s: &mut String, h: &crate::webhook::Health, waiting: u64) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    endpoints::family(
        s,
        "spyglass_collector_webhook_posts_total",
        "POSTs to the webhook receiver, by its answer's status (error: none came: connection, TLS, timeout).",
        "counter",
    );
    for (status, n) in h.posts() {
        let _ = writeln!(
            s,
            "spyglass_collector_webhook_posts_total{{status=\"{status}\"}} {n}"
        );
    }
    for (name, help, kind, v) in [
        (
            "spyglass_collector_webhook_up",
            "1 while the webhook receiver takes the POSTs (or none has failed since the last one it took), 0 while they fail (/readyz says why).",
            "gauge",
            u64::from(h.up()),
        ),
        (
            "spyglass_collector_webhook_retries_total",
            "POSTs tried again after a failure (5xx, 408, 429, 401, 407, a redirect, no answer) and tries of lines a receiver refused every one of; their batches are not acked meanwhile.",
            "counter",
            get(&h.retries),
        ),
        (
            "spyglass_collector_webhook_bytes_total",
            "Body bytes the webhook receiver took (2xx).",
            "counter",
            get(&h.bytes),
        ),
        (
            "spyglass_collector_webhook_lines_total",
            "Events (lines) the webhook receiver took (2xx).",
            "counter",
            get(&h.lines),
        ),
        (
            "spyglass_collector_webhook_waiting_bytes",
            "Rendered bytes written and waiting for the webhook receiver (at most --webhook-queue-mib, then streams wait).",
            "gauge",
            waiting,
        ),
    ] {
        endpoints::single(s, name, help, kind, v);
    }
    endpoints::family(
        s,
        "spyglass_collector_webhook_refused_lines_total",
        "Events dropped from the webhook output because the receiver refused them alone (4xx, by status) while it took the others; the rest of their batches was delivered.",
        "counter",
    );
    for (status, n) in h.refused_lines() {
        let _ = writeln!(
            s,
            "spyglass_collector_webhook_refused_lines_total{{status=\"{status}\"}} {n}"
        );
    }
}

/// The inventory store's families.
fn store_metrics(s: &mut String, h: &crate::inventory::Health) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (name, help, kind, v) in [
        (
            "spyglass_collector_store_dropped_updates_total",
            "Inventory updates (batches, agent connections) dropped because the store task was behind; the store is stale.",
            "counter",
            get(&h.dropped),
        ),
        (
            "spyglass_collector_store_dropped_events_total",
            "Events of the dropped updates (those the inventory keeps of a batch: one plain event per container, every network, agent, finding and lifecycle event).",
            "counter",
            get(&h.dropped_events),
        ),
        (
            "spyglass_collector_store_flushes_total",
            "Inventory transactions committed.",
            "counter",
            get(&h.flushes),
        ),
        (
            "spyglass_collector_store_rows_total",
            "Inventory rows written (state changes, not events).",
            "counter",
            get(&h.rows),
        ),
        (
            "spyglass_collector_store_errors_total",
            "Inventory transactions that failed (their changes are lost to the store).",
            "counter",
            get(&h.errors),
        ),
        (
            "spyglass_collector_store_up",
            "1 while the inventory store answers, 0 while it is unreachable (the API answers 503; /readyz/queries says why).",
            "gauge",
            u64::from(h.reach.down().is_none()),
        ),
        (
            "spyglass_collector_store_outages_total",
            "Times the inventory store became unreachable.",
            "counter",
            get(&h.reach.outages),
        ),
        (
            "spyglass_collector_store_pending_rows",
            "Inventory rows waiting for an unreachable store (written when it answers again).",
            "gauge",
            get(&h.reach.pending_rows),
        ),
        (
            "spyglass_collector_store_dropped_rows_total",
            "Inventory rows dropped because too many waited for an unreachable store; the store is stale.",
            "counter",
            get(&h.reach.dropped_rows),
        ),
        (
            "spyglass_collector_store_stale",
            "1 once an update was dropped or a write failed: the inventory may miss state.",
            "gauge",
            u64::from(h.stale.load(Ordering::Relaxed)),
        ),
    ] {
        endpoints::single(s, name, help, kind, v);
    }
}

pub fn answer(m: &Metrics, agents: &Agents, path: &str) -> endpoints::Answer {
    let stalled = m
        .heartbeat
        .stalled(Duration::from_secs(5))
        .then_some("housekeeping loop stalled");
    let remote = m.remote.as_ref().and_then(crate::remote::Remote::not_ready);
    let not_ready = m.not_ready().map(str::to_owned).or(remote);
    endpoints::answer(path, || m.render(agents), stalled, not_ready.as_deref())
}

/// The scanner report import's families.
fn report_metrics(s: &mut String, h: &crate::inventory::report_dir::ImportHealth) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rejecting = h.rejects.lock().map_or(0, |r| r.len()) as u64;
    for (name, help, kind, v) in [
        (
            "spyglass_collector_vuln_reports_imported_total",
            "Scanner reports saved into the inventory (a changed file is saved again).",
            "counter",
            get(&h.imported),
        ),
        (
            "spyglass_collector_vuln_reports_rejected_total",
            "Scanner report files refused (unreadable, too large, or not a report; the log names the file and why).",
            "counter",
            get(&h.rejected),
        ),
        (
            "spyglass_collector_vuln_reports_removed_total",
            "Scanner reports removed from the inventory because their file went.",
            "counter",
            get(&h.removed),
        ),
        (
            "spyglass_collector_vuln_reports_rejecting",
            "Report files refused in their current version.",
            "gauge",
            rejecting,
        ),
    ] {
        endpoints::single(s, name, help, kind, v);
    }
}

#[cfg(test)]
mod tests {
    use spyglass_proto::v1::{event::Detail, Batch, Event, EventKind, Finding, Severity};

    use super::*;

    #[test]
    fn rule_labels_from_agents_are_bounded() {
        let m = Metrics::default();
        let finding = |rule: String| Event {
            kind: EventKind::Finding as i32,
            detail: Some(Detail::Finding(Finding {
                rule_id: rule,
                severity: Severity::High as i32,
                ..Finding::default()
            })),
            ..Event::default()
        };
        let mut events: Vec<Event> = (0..1000).map(|i| finding(format!("made.up.{i}"))).collect();
        events.push(finding("Bad \"label\"\n".into()));
        let batch = Received::from_batch(Batch {
            node_id: "n1".into(),
            sequence: 1,
            events,
            ..Batch::default()
        })
        .unwrap();
        m.written(&batch, 0);
        assert_eq!(m.rule_series(), MAX_RULE_SERIES + 1);
        let text = m.render(&Agents::default());
        let other = "spyglass_collector_findings_total{rule=\"other\",severity=\"high\"} ";
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(other))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, 1001 - MAX_RULE_SERIES as u64);
    }

    #[test]
    fn counts_events_findings_and_readiness() {
        let m = Metrics::default();
        let agents = Agents::default();
        let finding = Event {
            kind: EventKind::Finding as i32,
            detail: Some(Detail::Finding(Finding {
                rule_id: "container.root".into(),
                severity: Severity::High as i32,
                ..Finding::default()
            })),
            ..Event::default()
        };
        let exec = Event {
            kind: EventKind::Exec as i32,
            ..Event::default()
        };
        let batch = Received::from_batch(Batch {
            node_id: "n1".into(),
            sequence: 1,
            events: vec![exec.clone(), exec, finding],
            ..Batch::default()
        })
        .unwrap();
        m.written(&batch, 2);
        let text = m.render(&agents);
        assert!(
            text.contains("spyglass_collector_events_total{kind=\"exec\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("spyglass_collector_events_total{kind=\"finding\"} 1\n"));
        assert!(text.contains(
            "spyglass_collector_findings_total{rule=\"container.root\",severity=\"high\"} 1\n"
        ));
        assert!(text.contains("spyglass_collector_agent_reported_lost_total 2\n"));
        assert!(text.contains("spyglass_collector_agents_connected 0\n"));
        assert_eq!(answer(&m, &agents, "/healthz").0, 503);
        m.turned();
        assert_eq!(answer(&m, &agents, "/healthz").0, 200);
        assert_eq!(answer(&m, &agents, "/readyz").0, 200);
        m.output_failing.store(true, Ordering::Relaxed);
        let (code, body) = answer(&m, &agents, "/readyz");
        assert_eq!(code, 503);
        assert!(body.contains("output failing"));
        assert_eq!(answer(&m, &agents, "/nope").0, 404);
    }
}
