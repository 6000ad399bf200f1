//! `spyglass-agent run`: load probes, start the pipeline, report the
//! snapshot, then stream events until SIGINT/SIGTERM.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    bpf::{preflight, LoadOptions, Probes},
    config::Config,
    container::{
        attribution::{self, Attributor},
        containerd::{self, Update},
    },
    detect::{enforce::Enforcer, Detector},
    event::{AgentInfo, AgentState, Event, Kind, Tracked},
    metrics::Metrics,
    pipeline::{
        enrich::Enricher,
        losses::{self, Totals},
        reader::{self, ReaderStats},
    },
    process::{snapshot, table::Limits},
};

/// Batches in flight between stages.
const QUEUE_BATCHES: usize = 64;

fn read_counters(map: &PerCpuArray<MapData, u64>) -> Totals {
    let mut totals: Totals = Default::default();
    for (i, t) in totals.iter_mut().enumerate() {
        if let Ok(values) = map.get(&(i as u32), 0) {
            *t = values.iter().sum();
        }
    }
    totals
}

/// The output sinks: stdout always (possibly format `none`), the
/// collector when configured. Both get every batch, in order.
struct Sinks {
    stdout: mpsc::Sender<Vec<Event>>,
    grpc: Option<mpsc::Sender<Vec<Event>>>,
    metrics: Arc<Metrics>,
    /// The detect stage (None: `[policy] enabled = false`); its findings
    /// follow the batch that caused them.
    detector: Option<Detector>,
}

impl Sinks {
    async fn send(&mut self, mut events: Vec<Event>) -> Result<()> {
        if let Some(d) = &mut self.detector {
            let findings = d.observe(&events, Instant::now());
            events.extend(findings);
        }
        self.send_out(events).await
    }

    /// Findings updates and baseline saves (every second).
    async fn detect_tick(&mut self) -> Result<()> {
        let Some(d) = &mut self.detector else {
            return Ok(());
        };
        let updates = d.tick(Instant::now());
        self.metrics.set_findings(&d.emitted);
        let (cgroups, failures) = d.enforcement();
        self.metrics
            .enforced_cgroups
            .store(cgroups as u64, Ordering::Relaxed);
        self.metrics
            .enforcement_write_failures
            .store(failures, Ordering::Relaxed);
        if updates.is_empty() {
            return Ok(());
        }
        self.send_out(updates).await
    }

    /// Load the policy file again; a bad one is rejected and the running
    /// policy stays.
    fn reload_policy(&mut self, path: &str) {
        let Some(d) = &mut self.detector else { return };
        match crate::policy::load(std::path::Path::new(path)) {
            Ok(p) => {
                info!(file = path, entries = p.entries.len(), "policy reloaded");
                d.set_policy(p);
                self.metrics.policy_reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "policy rejected; the running policy stays in force");
                self.metrics
                    .policy_reload_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn send_out(&mut self, events: Vec<Event>) -> Result<()> {
        self.metrics.count(&events);
        if let Some(g) = &self.grpc {
            if g.send(events.clone()).await.is_err() {
                // The exporter ended (it logged why); keep stdout going.
                warn!("collector exporter stopped; events go to stdout only");
                self.grpc = None;
            }
        }
        self.stdout
            .send(events)
            .await
            .map_err(|_| anyhow::anyhow!("stdout exporter stopped"))
    }
}

/// Events on their way from the enricher to the sinks: container metadata
/// attached (or the event held until it is known), lookups sent to the
/// containerd task.
struct Attribute {
    attributor: Attributor,
    lookups: Option<mpsc::Sender<String>>,
}

impl Attribute {
    fn admit(&mut self, events: Vec<Event>) -> Vec<Event> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            self.attributor.admit(ev, now, &mut out);
        }
        self.ask();
        out
    }

    fn apply(&mut self, update: Update) -> Vec<Event> {
        let mut out = Vec::new();
        self.attributor.apply(update, Instant::now(), &mut out);
        self.ask();
        out
    }

    fn expire(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.attributor.expire(Instant::now(), &mut out);
        out
    }

    fn ask(&mut self) {
        let Some(tx) = &self.lookups else { return };
        for id in self.attributor.take_lookups() {
            if let Err(mpsc::error::TrySendError::Full(id)) = tx.try_send(id) {
                // the containerd task is behind; the event times out marked
                warn!(container = %id, "containerd lookup queue full");
            }
        }
    }
}

fn tracked(enricher: &Enricher, attr: &Attribute) -> Tracked {
    let s = attr.attributor.stats();
    Tracked {
        processes: enricher.processes_tracked() as u64,
        containers: s.containers as u64,
        pending_events: s.pending_events as u64,
        cgroups: enricher.cgroups_tracked() as u64,
    }
}

/// An `agent` lifecycle event.
fn lifecycle(state: AgentState, node: &str, kernel: &str, tracked: Option<Tracked>) -> Event {
    let mut ev = Event::new(Kind::Agent, crate::clock::Clock::now(), node.to_owned());
    ev.agent = Some(AgentInfo {
        state,
        version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel.to_owned(),
        probes: Vec::new(),
        snapshot_processes: None,
        snapshot_sockets: None,
        tracked,
    });
    ev
}

pub async fn run(cfg: Config) -> Result<()> {
    // Handlers first: a SIGTERM right after `started` must stop cleanly
    // (draining what is in flight), not kill the process.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let node = cfg.node();
    // The policy is checked before anything loads: a bad file stops here.
    let policy = if cfg.policy.file.is_empty() {
        crate::policy::Policy::default()
    } else {
        crate::policy::load(std::path::Path::new(&cfg.policy.file))?
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cgroup_root = match &cfg.kernel.cgroup_root {
        Some(p) => p.clone(),
        None => preflight::cgroup2_root()?,
    };
    let mut probes = Probes::load(&LoadOptions {
        ring_buffer_bytes: cfg.kernel.ring_buffer_bytes,
        btf_path: cfg.kernel.btf_path.clone(),
        cgroup_root: Some(cgroup_root.clone()),
        debug_log: cfg.kernel.debug_log,
    })?;
    let ring = probes.take_events()?;
    let counters = probes.take_counters()?;
    let enforcer = Enforcer::new(probes.take_enforcement()?);
    let attached = probes.status.iter().filter(|p| p.attached).count();
    info!(attached, total = probes.status.len(), "probes attached");
    let metrics = Arc::new(Metrics::default());
    metrics
        .probes_attached
        .store(attached as u64, Ordering::Relaxed);
    metrics
        .probes_total
        .store(probes.status.len() as u64, Ordering::Relaxed);
    metrics
        .containerd_enabled
        .store(cfg.containerd.enabled, Ordering::Relaxed);
    metrics.turned();
    metrics
        .collector_enabled
        .store(!cfg.collector.url.is_empty(), Ordering::Relaxed);

    // reader thread -> enrich (this task)
    let (raw_tx, mut raw_rx) = mpsc::channel(QUEUE_BATCHES);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ReaderStats::default());
    let reader = {
        let (stop, stats) = (stop.clone(), stats.clone());
        let poll = Duration::from_millis(cfg.kernel.poll_interval_ms);
        std::thread::Builder::new()
            .name("ringbuf-reader".into())
            .spawn(move || reader::run(ring, raw_tx, poll, stats, stop))
            .context("spawning the ring buffer reader thread")?
    };
    // enrich -> exporter thread
    let (out_tx, out_rx) = mpsc::channel::<Vec<Event>>(QUEUE_BATCHES);
    let format = cfg.output.format;
    let exporter = std::thread::Builder::new()
        .name("stdout-export".into())
        .spawn(move || crate::export::stdout::run(out_rx, std::io::stdout().lock(), format))
        .context("spawning the stdout exporter thread")?;
    // Optional second sink: the collector.
    let (grpc_tx, grpc_task) = if cfg.collector.url.is_empty() {
        (None, None)
    } else {
        let prepared = crate::export::grpc::prepare(&cfg.collector)
            .with_context(|| format!("collector {}", cfg.collector.url))?;
        let (tx, rx) = mpsc::channel::<Vec<Event>>(QUEUE_BATCHES);
        let run = crate::export::grpc::run(
            rx,
            prepared,
            cfg.collector.clone(),
            node.clone(),
            metrics.clone(),
        );
        let task = tokio::spawn(async move {
            let r = run.await;
            if let Err(e) = &r {
                // Said now, not at shutdown: from here on events reach
                // only stdout.
                tracing::error!(error = %e, "collector exporter failed; events are no longer delivered to the collector");
            }
            r
        });
        info!(url = %cfg.collector.url, spool = %cfg.collector.spool_dir.display(), "streaming to collector");
        (Some(tx), Some(task))
    };
    if !cfg.metrics.listen.is_empty() {
        let addr: std::net::SocketAddr = cfg
            .metrics
            .listen
            .parse()
            .context("metrics.listen must be ADDR:PORT")?;
        let m = metrics.clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics (metrics.listen)"))?;
        tokio::spawn(spyglass_proto::endpoints::serve(listener, move |path| {
            crate::metrics::answer(&m, path)
        }));
    }
    let policy_mtime = |path: &str| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut policy_seen = policy_mtime(&cfg.policy.file);
    let mut policy_check =
        tokio::time::interval(Duration::from_millis(cfg.policy.reload_check_ms.max(100)));
    let watch_policy = cfg.policy.enabled && !cfg.policy.file.is_empty();
    let mut out = Sinks {
        stdout: out_tx,
        grpc: grpc_tx,
        metrics: metrics.clone(),
        detector: cfg
            .policy
            .enabled
            .then(|| Detector::new(policy, Some(enforcer))),
    };
    let mut detect_tick = tokio::time::interval(Duration::from_secs(1));

    let mut enricher = Enricher::new(
        Limits {
            max_entries: cfg.process.max_entries,
            exited_retained: cfg.process.exited_retained,
            exited_ttl: Duration::from_millis(cfg.process.exited_ttl_ms),
        },
        cfg.process.ancestors,
        node.clone(),
        &cgroup_root,
    );

    // containerd: metadata for container events.
    let d = &cfg.containerd;
    let (updates_tx, mut updates_rx) = mpsc::channel::<Update>(1024);
    let mut attr = Attribute {
        attributor: Attributor::new(
            attribution::Limits {
                max_containers: d.max_containers,
                delete_grace: Duration::from_millis(d.delete_grace_ms),
                pending_timeout: Duration::from_millis(d.pending_timeout_ms),
                max_pending_events: d.max_pending_events,
                not_found_ttl: Duration::from_secs(5),
            },
            d.enabled,
        ),
        lookups: None,
    };
    let containerd_task = if d.enabled {
        let (tx, rx) = mpsc::channel::<String>(4096);
        attr.lookups = Some(tx);
        let opts = containerd::Options {
            socket: d.socket.clone(),
            retry: Duration::from_millis(d.retry_interval_ms),
            lookup_attempts: d.lookup_attempts,
            lookup_spacing: Duration::from_millis(d.lookup_spacing_ms),
        };
        Some(tokio::spawn(containerd::run(
            opts,
            rx,
            updates_tx,
            metrics.clone(),
        )))
    } else {
        drop(updates_tx);
        None
    };

    // Probes are live before the snapshot, so nothing falls in between.
    let (mut snap_procs, mut snap_socks) = (None, None);
    if cfg.snapshot.enabled {
        let root = cgroup_root.clone();
        let snap = tokio::task::spawn_blocking(move || snapshot::take(&root))
            .await
            .context("startup snapshot task")?;
        snap_procs = Some(snap.processes.len());
        snap_socks = Some(snap.sockets.len());
        info!(
            processes = snap.processes.len(),
            sockets = snap.sockets.len(),
            "startup snapshot"
        );
        let events = attr.admit(enricher.snapshot(snap));
        for chunk in events.chunks(1024) {
            out.send(chunk.to_vec()).await?;
        }
    }
    let mut started = lifecycle(AgentState::Started, &node, &kernel, None);
    if let Some(a) = started.agent.as_mut() {
        a.probes = probes.status.clone();
        a.snapshot_processes = snap_procs.map(|n| n as u64);
        a.snapshot_sockets = snap_socks.map(|n| n as u64);
    }
    out.send(vec![started]).await?;
    let heartbeat_ms = cfg.output.heartbeat_interval_ms;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(1)));
    heartbeat.tick().await;
    let mut expiry = tokio::time::interval(Duration::from_millis(100));
    let mut containerd_open = containerd_task.is_some();

    let mut tick = tokio::time::interval(Duration::from_millis(cfg.losses.report_interval_ms));
    // The counters are fresh maps created at load: zero is the baseline
    // (reading them here would hide drops made before this point).
    let mut prev_counters: Totals = Totals::default();
    let mut prev_decode = 0u64;
    let mut report_losses = |enricher: &Enricher| {
        let cur = read_counters(&counters);
        let decode = stats.decode_errors.load(Ordering::Relaxed);
        let loss = losses::delta(&prev_counters, &cur, decode - prev_decode);
        prev_counters = cur;
        prev_decode = decode;
        let m = &metrics;
        loss.map(|l| {
            m.lost_exec.fetch_add(l.exec, Ordering::Relaxed);
            m.lost_exit.fetch_add(l.exit, Ordering::Relaxed);
            m.lost_fork.fetch_add(l.fork, Ordering::Relaxed);
            m.lost_network.fetch_add(l.network, Ordering::Relaxed);
            m.read_errors.fetch_add(l.read_errors, Ordering::Relaxed);
            m.decode_errors
                .fetch_add(l.decode_errors, Ordering::Relaxed);
            warn!(
                exec = l.exec,
                exit = l.exit,
                fork = l.fork,
                network = l.network,
                read_errors = l.read_errors,
                decode_errors = l.decode_errors,
                "events lost or incomplete"
            );
            enricher.loss(l)
        })
    };
    loop {
        tokio::select! {
            batch = raw_rx.recv() => {
                let Some(batch) = batch else { break };
                let events: Vec<Event> = batch.into_iter().filter_map(|r| enricher.handle(r)).collect();
                let events = attr.admit(events);
                if !events.is_empty() {
                    out.send(events).await?;
                }
            }
            update = updates_rx.recv(), if containerd_open => {
                let Some(update) = update else {
                    containerd_open = false;
                    continue;
                };
                if let (Update::Deleted(id), Some(d)) = (&update, out.detector.as_mut()) {
                    // Its processes are gone: so go its kernel entries.
                    d.container_deleted(id);
                }
                let events = attr.apply(update);
                if !events.is_empty() {
                    out.send(events).await?;
                }
            }
            _ = expiry.tick() => {
                enricher.expire(Instant::now());
                let t = tracked(&enricher, &attr);
                metrics.processes.store(t.processes, Ordering::Relaxed);
                metrics
                    .duplicate_exits
                    .store(enricher.duplicate_exits(), Ordering::Relaxed);
                metrics.containers.store(t.containers, Ordering::Relaxed);
                metrics.pending_events.store(t.pending_events, Ordering::Relaxed);
                metrics.cgroups.store(t.cgroups, Ordering::Relaxed);
                metrics.containerd_up.store(attr.attributor.containerd_up(), Ordering::Relaxed);
                metrics.turned();
                let events = attr.expire();
                if !events.is_empty() {
                    out.send(events).await?;
                }
            }
            _ = heartbeat.tick(), if heartbeat_ms > 0 => {
                let ev = lifecycle(AgentState::Running, &node, &kernel, Some(tracked(&enricher, &attr)));
                out.send(vec![ev]).await?;
            }
            _ = tick.tick() => {
                if let Some(ev) = report_losses(&enricher) {
                    out.send(vec![ev]).await?;
                }
            }
            _ = detect_tick.tick() => out.detect_tick().await?,
            _ = sighup.recv() => {
                if watch_policy {
                    policy_seen = policy_mtime(&cfg.policy.file);
                    out.reload_policy(&cfg.policy.file);
                }
            }
            _ = policy_check.tick(), if watch_policy => {
                let now = policy_mtime(&cfg.policy.file);
                if now.is_some() && now != policy_seen {
                    policy_seen = now;
                    out.reload_policy(&cfg.policy.file);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!(
        processes = enricher.processes_tracked(),
        records = stats.records.load(Ordering::Relaxed),
        "stopping"
    );
    // Drain what the reader already has, then report final losses.
    stop.store(true, Ordering::Relaxed);
    // Until the reader hangs up: it finishes what it already took from the
    // kernel, sees `stop`, and drops its sender.
    while let Some(batch) = raw_rx.recv().await {
        let events: Vec<Event> = batch
            .into_iter()
            .filter_map(|r| enricher.handle(r))
            .collect();
        let events = attr.admit(events);
        out.send(events).await?;
    }
    let _ = reader.join();
    // Metadata that arrived meanwhile, then what still waits goes as is.
    while let Ok(update) = updates_rx.try_recv() {
        let events = attr.apply(update);
        out.send(events).await?;
    }
    let mut rest = Vec::new();
    attr.attributor.flush(&mut rest);
    out.send(rest).await?;
    let final_tracked = tracked(&enricher, &attr);
    attr.lookups = None; // ends the containerd task
    drop(updates_rx);
    if let Some(task) = containerd_task {
        let _ = task.await;
    }
    if let Some(ev) = report_losses(&enricher) {
        out.send(vec![ev]).await?;
    }
    out.detect_tick().await?;
    if let Some(last) = out.detector.as_mut().map(Detector::close) {
        if !last.is_empty() {
            out.send_out(last).await?;
        }
    }
    let stopping = lifecycle(AgentState::Stopping, &node, &kernel, Some(final_tracked));
    out.send(vec![stopping]).await?;
    let Sinks { stdout, grpc, .. } = out;
    drop(stdout);
    drop(grpc);
    if let Some(task) = grpc_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "collector exporter failed"),
            Err(e) => warn!(error = %e, "collector exporter task panicked"),
        }
    }
    let written = exporter
        .join()
        .map_err(|_| anyhow::anyhow!("stdout exporter thread panicked"))??;
    info!(events = written, "stopped");
    drop(probes);
    Ok(())
}
