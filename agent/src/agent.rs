//! The running agent: [`Agent::start`] loads the probes and starts every
//! stage, [`Agent::run`] forwards timers and signals to the pipeline until
//! SIGINT/SIGTERM, [`Agent::shutdown`] drains what is in flight and stops
//! each stage in data-path order.
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc,
    time::{interval, Interval, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    bpf::{preflight, LoadOptions, Probes},
    config::Config,
    container::{
        attribution::{self, Attributor},
        containerd,
        lifecycle::Lifecycle,
    },
    detect::{enforce::Enforcer, Detector},
    event::Event,
    export::filter::{ExportFilter, FilterSpec},
    export::{
        grpc::GrpcError,
        stdout::{Format, StdoutError},
    },
    metrics::Metrics,
    pipeline::{
        self,
        attribute::Attribute,
        budget::{Budget, RECORDS_BYTES},
        enrich::Enricher,
        losses::LossReporter,
        reader::ReaderStats,
        sinks::{SinkQueue, Sinks},
        Identity, Input, Pipeline, PipelineError,
    },
    process::table::Limits,
};

/// Why the agent could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Filter(#[from] crate::export::filter::FilterError),
    #[error(transparent)]
    Preflight(#[from] crate::bpf::preflight::PreflightError),
    #[error(transparent)]
    Probes(#[from] crate::bpf::BpfError),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("policy file {file}: {why}")]
    Unenforceable { file: String, why: String },
    #[error(
        "node name {name:?} {why}: a collector would refuse every batch; set node_name \
         (--node-name) to the host or Kubernetes node name"
    )]
    Node { name: String, why: String },
    #[error("collector {url}: {source}")]
    Collector { url: String, source: GrpcError },
    #[error("metrics.listen `{0}` must be ADDR:PORT")]
    MetricsAddr(String),
    #[error("cannot listen on {addr} for metrics (metrics.listen): {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Stdout(#[from] StdoutError),
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Inputs (record batches, timer ticks, containerd news) queued for the
/// pipeline at most; record batches are also bounded by bytes
/// (`pipeline::budget::RECORDS_BYTES`).
const QUEUE_INPUTS: usize = 64;
/// Batches queued for each sink at most; also bounded by bytes
/// (`pipeline::budget::SINK_BYTES`).
const QUEUE_BATCHES: usize = 64;

/// The signals the agent answers.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// The timers whose ticks the pipeline reacts to.
struct Timers {
    housekeeping: Interval,
    heartbeat: Option<Interval>,
    losses: Interval,
    detect: Interval,
    policy: Interval,
}

fn ticker(period: Duration) -> Interval {
    let mut i = interval(period.max(Duration::from_millis(1)));
    // A pipeline that is behind gets one tick, not a burst.
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

impl Timers {
    fn new(cfg: &Config) -> Self {
        let hb = cfg.output.heartbeat_interval_ms;
        let mut heartbeat = (hb > 0).then(|| ticker(Duration::from_millis(hb)));
        if let Some(h) = heartbeat.as_mut() {
            // the first `running` one period after `started`
            h.reset();
        }
        Timers {
            housekeeping: ticker(Duration::from_millis(100)),
            heartbeat,
            losses: ticker(Duration::from_millis(cfg.losses.report_interval_ms)),
            detect: ticker(Duration::from_secs(1)),
            policy: ticker(Duration::from_millis(cfg.policy.reload_check_ms.max(100))),
        }
    }
}

async fn tick_opt(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The sink tasks and threads, to join at shutdown.
struct SinkHandles {
    /// None: format `none`.
    stdout: Option<JoinHandle<Result<u64, StdoutError>>>,
    grpc: Option<tokio::task::JoinHandle<Result<(), GrpcError>>>,
}

/// A running agent.
pub struct Agent {
    inputs: mpsc::Sender<Input>,
    pipeline: JoinHandle<Result<(), PipelineError>>,
    reader: JoinHandle<()>,
    stop_reader: Arc<AtomicBool>,
    reader_stats: Arc<ReaderStats>,
    sinks: SinkHandles,
    /// The containerd task, and how to tell its forwarder to stop.
    containerd: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
    signals: Signals,
    timers: Timers,
    /// The loaded programs; detached first at shutdown.
    probes: Probes,
    /// The exporter's delivery time at shutdown (`collector.shutdown_grace_ms`).
    shutdown_grace: Duration,
}

impl Agent {
    /// Load the policy and the probes, start every stage. Returns once the
    /// pipeline thread is started; it takes the startup snapshot and sends
    /// `started` before it handles any input.
    pub async fn start(cfg: Config) -> Result<Agent> {
        // Handlers first: a SIGTERM right after `started` must stop cleanly
        // (draining what is in flight), not kill the process.
        let signals = Signals {
            term: signal(SignalKind::terminate()).map_err(AgentError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(AgentError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(AgentError::Signals)?,
        };
        // Only a collector refuses node names (stdout takes any).
        let node = cfg.node();
        let problem = spyglass_proto::limits::node_id_problem(&node);
        if let (Some(why), false) = (problem, cfg.collector.url.is_empty()) {
            return Err(AgentError::Node { name: node, why });
        }
        // The policy is checked before anything loads: a bad file stops here.
        let policy = if cfg.policy.file.is_empty() {
            crate::policy::Policy::default()
        } else {
            crate::policy::load(Path::new(&cfg.policy.file))?
        };
        let (filter, filter_seen) = export_filter(&cfg)?;
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
        if let Some(why) = crate::policy::unenforceable(&policy, &probes.status) {
            return Err(AgentError::Unenforceable {
                file: cfg.policy.file.clone(),
                why,
            });
        }
        let metrics = Arc::new(Metrics::default());
        let attached = probes.status.iter().filter(|p| p.attached).count();
        info!(attached, total = probes.status.len(), "probes attached");
        metrics.set_started(attached, probes.status.len(), cfg.containerd.enabled);
        metrics.turned();
        let (inputs, inputs_rx) = mpsc::channel::<Input>(QUEUE_INPUTS);
        let reader_stats = Arc::new(ReaderStats::default());
        let stop_reader = Arc::new(AtomicBool::new(false));
        let reader = spawn_reader(&cfg, &mut probes, &inputs, &reader_stats, &stop_reader)?;
        let (sinks, sink_handles) = start_sinks(&cfg, &metrics, filter)?;
        serve_metrics(&cfg, &metrics).await?;
        let (lookups, containerd) = match start_containerd(&cfg, &inputs, &metrics) {
            Some(c) => (Some(c.lookups), Some((c.task, c.stop))),
            None => (None, None),
        };
        let enforcer = Enforcer::new(probes.take_enforcement()?);
        let detector = cfg
            .policy
            .enabled
            .then(|| Detector::new(policy, Some(enforcer)));
        let pipeline = Pipeline::new(
            enricher(&cfg, &cgroup_root),
            Attribute::new(attributor(&cfg), lookups),
            Lifecycle::new(Duration::from_millis(cfg.containerd.delete_grace_ms)),
            detector,
            crate::resources::Sampler::new(&cgroup_root),
            sinks,
            LossReporter::new(probes.take_counters()?, reader_stats.clone()),
            metrics,
            Identity {
                node: cfg.node(),
                kernel: kernel_release(),
                probes: probes.status.clone(),
            },
            (!cfg.policy.file.is_empty()).then(|| PathBuf::from(&cfg.policy.file)),
        );
        let pipeline = match cfg.export.filter_file.as_str() {
            "" => pipeline,
            f => pipeline.watch_export_filter(PathBuf::from(f), cfg.export.profile, filter_seen),
        };
        let snapshot_of = cfg.snapshot.enabled.then_some(cgroup_root);
        let pipeline = pipeline::spawn(pipeline, inputs_rx, snapshot_of)?;
        Ok(Agent {
            inputs,
            pipeline,
            reader,
            stop_reader,
            reader_stats,
            sinks: sink_handles,
            containerd,
            signals,
            timers: Timers::new(&cfg),
            probes,
            shutdown_grace: Duration::from_millis(cfg.collector.shutdown_grace_ms),
        })
    }

    /// Forward timer ticks and SIGHUP to the pipeline until SIGINT or
    /// SIGTERM, or until the pipeline stops on its own (an error, logged).
    pub async fn run(&mut self) {
        let (t, s) = (&mut self.timers, &mut self.signals);
        loop {
            let input = tokio::select! {
                _ = t.housekeeping.tick() => Input::Housekeeping,
                _ = tick_opt(&mut t.heartbeat) => Input::Heartbeat,
                _ = t.losses.tick() => Input::Losses,
                _ = t.detect.tick() => Input::DetectTick,
                _ = t.policy.tick() => Input::Policy { force: false },
                _ = s.hup.recv() => Input::Policy { force: true },
                _ = s.term.recv() => break,
                _ = s.int.recv() => break,
                _ = self.inputs.closed() => break,
            };
            if self.inputs.send(input).await.is_err() {
                break;
            }
        }
    }

    /// Stop in data-path order: the probes are detached (nothing new
    /// reaches the ring buffer or the loss counters), the reader drains
    /// the ring to its end, the pipeline handles it and everything queued
    /// and reads the loss counters a last time (a final `loss` event
    /// before `stopping`), then the sinks deliver what they hold.
    pub async fn shutdown(self) -> Result<()> {
        info!(
            records = self.reader_stats.records.load(Ordering::Relaxed),
            "stopping"
        );
        // The ring buffer and the counters are maps taken out of the
        // object: they outlive the programs.
        self.probes.detach();
        self.stop_reader.store(true, Ordering::Relaxed);
        let reader = self.reader;
        bounded(
            STAGE_LIMIT,
            "ring buffer reader",
            join_thread(reader, "ring buffer reader"),
        )
        .await
        .transpose()?;
        // Everything the reader sent is ahead of the stop. containerd's news
        // goes through its forwarder, which sends the stop after it.
        let inputs = self.inputs;
        let stop_pipeline = || bounded(STAGE_LIMIT, "pipeline input", inputs.send(Input::Stop));
        let containerd = match self.containerd {
            Some((task, stop)) => {
                if stop.send(()).is_err() {
                    let _ = stop_pipeline().await;
                }
                Some(task)
            }
            None => {
                let _ = stop_pipeline().await;
                None
            }
        };
        drop(inputs);
        let pipeline = bounded(
            PIPELINE_LIMIT,
            "pipeline",
            join_thread(self.pipeline, "pipeline"),
        )
        .await;
        if let Some(task) = containerd {
            let abort = task.abort_handle();
            if bounded(STAGE_LIMIT, "containerd client", task)
                .await
                .is_none()
            {
                abort.abort();
            }
        }
        if let Some(task) = self.sinks.grpc {
            let limit = self.shutdown_grace + STAGE_LIMIT;
            match bounded(limit, "collector exporter", task).await {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => warn!(error = %e, "collector exporter failed"),
                Some(Err(e)) => warn!(error = %e, "collector exporter task panicked"),
            }
        }
        if let Some(stdout) = self.sinks.stdout {
            let joined = join_thread(stdout, "stdout exporter");
            if let Some(written) = bounded(STAGE_LIMIT, "stdout exporter", joined).await {
                let written = written??;
                info!(events = written, "events written to stdout");
            }
        }
        if let Some(p) = pipeline {
            p??;
        }
        info!("stopped");
        Ok(())
    }
}

/// How long a stopping stage (reader, containerd client, stdout writer,
/// on top of its own grace for the exporter) may take before the agent
/// stops without it, saying which.
const STAGE_LIMIT: Duration = Duration::from_secs(5);
/// The pipeline drains its queue first: more time.
const PIPELINE_LIMIT: Duration = Duration::from_secs(20);

/// `fut`, or `None` with a warning naming `stage` when it takes longer
/// than `limit`: a stuck stage must not keep the agent from exiting (a
/// DaemonSet pod that ignores SIGTERM is killed later, with less said).
async fn bounded<T>(
    limit: Duration,
    stage: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let r = tokio::time::timeout(limit, fut).await.ok();
    if r.is_none() {
        warn!(
            stage,
            limit_ms = limit.as_millis() as u64,
            "a stage did not stop in time; stopping without it"
        );
    }
    r
}

/// Join a thread without blocking the runtime.
async fn join_thread<T: Send + 'static>(h: JoinHandle<T>, what: &'static str) -> Result<T> {
    tokio::task::spawn_blocking(move || h.join())
        .await
        .map_err(|_| AgentError::Panicked(what))?
        .map_err(|_| AgentError::Panicked(what))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The ring buffer reader thread, feeding the pipeline's input.
fn spawn_reader(
    cfg: &Config,
    probes: &mut Probes,
    inputs: &mpsc::Sender<Input>,
    stats: &Arc<ReaderStats>,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let ring = probes.take_events()?;
    let (tx, stats, stop) = (inputs.clone(), stats.clone(), stop.clone());
    let poll = Duration::from_millis(cfg.kernel.poll_interval_ms);
    let budget = Arc::new(Budget::new(RECORDS_BYTES));
    std::thread::Builder::new()
        .name("ringbuf-reader".into())
        .spawn(move || pipeline::reader::run(ring, tx, budget, poll, stats, stop))
        .map_err(|source| AgentError::Thread {
            what: "ring buffer reader",
            source,
        })
}

/// The export filter at start: the file's when one is set (a bad file
/// stops the start, as a bad policy does), else `[export.filter]`; and
/// the file's stamp from before it was read.
fn export_filter(cfg: &Config) -> Result<(ExportFilter, Option<pipeline::FileStamp>)> {
    let (spec, seen) = match cfg.export.filter_file.as_str() {
        "" => (cfg.export.filter.clone(), None),
        f => {
            if cfg.export.filter != FilterSpec::default() {
                tracing::warn!(
                    file = f,
                    "[export.filter] is ignored: export.filter_file replaces it"
                );
            }
            let seen = pipeline::file_stamp(Path::new(f));
            (FilterSpec::load(Path::new(f))?, seen)
        }
    };
    let filter = ExportFilter::new(cfg.export.profile, spec);
    info!(profile = filter.profile().as_str(), file = %cfg.export.filter_file, "export filter");
    Ok((filter, seen))
}

/// stdout (a thread: writes block) unless its format is `none`, and,
/// when configured, the collector.
fn start_sinks(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    filter: ExportFilter,
) -> Result<(Sinks, SinkHandles)> {
    let format = cfg.output.format;
    let (out_tx, stdout) = if format == Format::None {
        (None, None)
    } else {
        let (tx, rx) = SinkQueue::new(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("stdout-export".into())
            .spawn(move || crate::export::stdout::run(rx, std::io::stdout().lock(), format))
            .map_err(|source| AgentError::Thread {
                what: "stdout exporter",
                source,
            })?;
        (Some(tx), Some(thread))
    };
    let (grpc_tx, grpc) = if cfg.collector.url.is_empty() {
        (None, None)
    } else {
        let prepared = crate::export::grpc::prepare(&cfg.collector).map_err(|source| {
            AgentError::Collector {
                url: cfg.collector.url.clone(),
                source,
            }
        })?;
        let (tx, rx) = SinkQueue::new(QUEUE_BATCHES);
        let run = crate::export::grpc::run(
            rx,
            prepared,
            cfg.collector.clone(),
            cfg.node(),
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
    let keeps = (format == Format::Findings)
        .then_some(crate::export::stdout::is_notable as fn(&Event) -> bool);
    let sinks = Sinks::new(out_tx, keeps, grpc_tx, filter, metrics.clone());
    Ok((sinks, SinkHandles { stdout, grpc }))
}

/// `/metrics`, `/healthz` and `/readyz` when `[metrics] listen` is set.
async fn serve_metrics(cfg: &Config, metrics: &Arc<Metrics>) -> Result<()> {
    if cfg.metrics.listen.is_empty() {
        return Ok(());
    }
    let addr: std::net::SocketAddr = cfg
        .metrics
        .listen
        .parse()
        .map_err(|_| AgentError::MetricsAddr(cfg.metrics.listen.clone()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::MetricsListen { addr, source })?;
    let m = metrics.clone();
    tokio::spawn(spyglass_proto::endpoints::serve(listener, move |path| {
        crate::metrics::answer(&m, path)
    }));
    Ok(())
}

/// The containerd task, when enabled.
struct ContainerdTask {
    /// Ids for the attribute stage to ask about.
    lookups: mpsc::Sender<String>,
    task: tokio::task::JoinHandle<()>,
    /// Tells the forwarder to pass on what containerd said, then `Stop`.
    stop: tokio::sync::oneshot::Sender<()>,
}

/// The containerd client (lookups in, news out) and the forwarder that
/// puts its news on the pipeline's input. At stop the forwarder sends
/// [`Input::Stop`] itself, after every update it holds, so containerd's
/// last news is never behind the stop.
fn start_containerd(
    cfg: &Config,
    inputs: &mpsc::Sender<Input>,
    metrics: &Arc<Metrics>,
) -> Option<ContainerdTask> {
    let d = &cfg.containerd;
    if !d.enabled {
        return None;
    }
    let (lookups, lookups_rx) = mpsc::channel::<String>(4096);
    let (updates, mut updates_rx) = mpsc::channel(1024);
    let opts = containerd::Options {
        socket: d.socket.clone(),
        retry: Duration::from_millis(d.retry_interval_ms),
        lookup_attempts: d.lookup_attempts,
        lookup_spacing: Duration::from_millis(d.lookup_spacing_ms),
    };
    let run = containerd::run(opts, lookups_rx, updates, metrics.clone());
    let inputs = inputs.clone();
    let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let forward = async move {
            loop {
                tokio::select! {
                    biased;
                    // (a dropped sender means stop too)
                    _ = &mut stop_rx => break,
                    u = updates_rx.recv() => match u {
                        Some(u) => {
                            if inputs.send(Input::Container(u)).await.is_err() {
                                return;
                            }
                        }
                        // the client ended: the stop still comes from the agent
                        None => {
                            let _ = (&mut stop_rx).await;
                            break;
                        }
                    },
                }
            }
            while let Ok(u) = updates_rx.try_recv() {
                let _ = inputs.send(Input::Container(u)).await;
            }
            let _ = inputs.send(Input::Stop).await;
            // dropping updates_rx here ends the client's session
        };
        tokio::join!(run, forward);
    });
    Some(ContainerdTask {
        lookups,
        task,
        stop,
    })
}

fn enricher(cfg: &Config, cgroup_root: &Path) -> Enricher {
    Enricher::new(
        Limits {
            max_entries: cfg.process.max_entries,
            exited_retained: cfg.process.exited_retained,
            exited_ttl: Duration::from_millis(cfg.process.exited_ttl_ms),
            max_bytes: cfg.process.max_bytes,
        },
        cfg.process.ancestors,
        cfg.node(),
        cgroup_root,
    )
}

fn attributor(cfg: &Config) -> Attributor {
    let d = &cfg.containerd;
    Attributor::new(
        attribution::Limits {
            max_containers: d.max_containers,
            pending_timeout: Duration::from_millis(d.pending_timeout_ms),
            max_pending_events: d.max_pending_events,
            not_found_ttl: Duration::from_secs(5),
        },
        d.enabled,
    )
}
