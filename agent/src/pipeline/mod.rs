//! The data path, one direction: reader (thread) -> pipeline (thread:
//! decode done by the reader, then enrich, attribute, detect) -> sinks
//! (stdout thread, gRPC task), joined by bounded channels.
//!
//! Everything the pipeline reacts to arrives as one [`Input`] on one
//! channel: kernel records from the reader, containerd news, and the
//! timers and signals the agent's runtime forwards. [`Pipeline::handle`]
//! is the one entry point, used alike while running and while draining at
//! stop, so the two cannot differ. The pipeline runs on its own thread:
//! its blocking reads of /proc, cgroupfs and policy files never stall the
//! async runtime that serves containerd and the collector.
pub mod attribute;
pub mod budget;
pub mod decode;
pub mod enrich;
pub mod inventory;
pub mod losses;
pub mod oom;
pub mod ownership;
pub mod reader;
pub mod sinks;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{error, info};

use self::{
    attribute::Attribute, budget::Metered, decode::RawEvent, enrich::Enricher,
    losses::LossReporter, sinks::Sinks,
};
use crate::{
    clock::Clock,
    container::{
        containerd::Update,
        lifecycle::{Change, Lifecycle, Observer},
    },
    detect::{Detector, Sampled},
    event::{AgentInfo, AgentState, ContainerState, Event, Kind, ProbeStatus, Tracked},
    export::filter::{ExportFilter, FilterSpec, Profile},
    metrics::Metrics,
    process::snapshot,
    resources::{self, ContainerSample, Sampler},
};

/// Startup-snapshot events per batch.
const SNAPSHOT_BATCH: usize = 1024;

/// What the pipeline reacts to, in the order it arrives.
#[derive(Debug)]
pub enum Input {
    /// Decoded kernel records, in ring-buffer order (counted against the
    /// reader's queue bound until handled).
    Records(Metered<Vec<RawEvent>>),
    /// News from the containerd task.
    Container(Update),
    /// Every 100 ms: forget what is gone, release events that waited too
    /// long, update the metrics (and the health heartbeat).
    Housekeeping,
    /// A `running` agent event.
    Heartbeat,
    /// Read the loss counters; a `loss` event when they moved.
    Losses,
    /// Every second: folded findings, baselines, enforcement metrics.
    DetectTick,
    /// Reload the policy file if it changed (`force`: SIGHUP, reload
    /// whatever its time stamp says).
    Policy { force: bool },
    /// Drain and stop: the reader has stopped and everything it sent is
    /// ahead of this in the channel.
    Stop,
}

impl From<Metered<Vec<RawEvent>>> for Input {
    fn from(batch: Metered<Vec<RawEvent>>) -> Self {
        Input::Records(batch)
    }
}

/// Why the pipeline stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "the stdout exporter stopped (see the error before this one); events cannot be reported"
    )]
    StdoutStopped,
    #[error("cannot start the pipeline thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Who the agent is, for its lifecycle events.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node: String,
    pub kernel: String,
    pub probes: Vec<ProbeStatus>,
}

/// What says a watched file changed: its modification time and size (a
/// file rewritten in place within one time-stamp tick still changes
/// size). Write a new file and rename it over the old to be sure.
pub type FileStamp = (SystemTime, u64);

/// The stamp of the file at `path` now, if it can be read.
pub fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A file watched for changes (the policy, the export filter).
struct WatchedFile {
    path: PathBuf,
    seen: Option<FileStamp>,
}

impl WatchedFile {
    fn new(path: PathBuf) -> Self {
        let seen = file_stamp(&path);
        WatchedFile { path, seen }
    }

    /// Whether it is to be read again (`force`: whatever its stamp
    /// says); notes the stamp seen.
    fn changed(&mut self, force: bool) -> bool {
        let now = file_stamp(&self.path);
        if !force && (now.is_none() || now == self.seen) {
            return false;
        }
        self.seen = now;
        true
    }
}

/// The stages, each owned here and driven only through [`Pipeline::handle`].
pub struct Pipeline {
    enricher: Enricher,
    attribute: Attribute,
    lifecycle: Lifecycle,
    /// None: `[policy] enabled = false`.
    detector: Option<Detector>,
    /// Container cgroups and busy containers' processes, sampled.
    sampler: Sampler,
    /// The package owning each container exec's file.
    ownership: Option<ownership::Ownership>,
    sinks: Sinks,
    losses: LossReporter,
    metrics: Arc<Metrics>,
    identity: Identity,
    policy_file: Option<WatchedFile>,
    /// The export filter file, and the configured profile it refines.
    export_file: Option<(WatchedFile, Profile)>,
    /// The startup snapshot while containerd's first listing is awaited
    /// (None before `start` and once `snapshot_complete` is sent).
    startup: Option<inventory::Startup>,
}

impl Pipeline {
    /// The stages, wired. `policy_file`: watched for changes (with a
    /// detector only).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        enricher: Enricher,
        attribute: Attribute,
        lifecycle: Lifecycle,
        detector: Option<Detector>,
        sampler: Sampler,
        sinks: Sinks,
        losses: LossReporter,
        metrics: Arc<Metrics>,
        identity: Identity,
        policy_file: Option<PathBuf>,
    ) -> Self {
        let mut detector = detector;
        if let Some(d) = &mut detector {
            let oom = identity
                .probes
                .iter()
                .any(|p| p.program == "mark_victim" && p.attached);
            d.set_oom_tracepoint(oom);
        }
        let policy_file = policy_file
            .filter(|_| detector.is_some())
            .map(WatchedFile::new);
        // containers' images are known only through containerd
        let ownership = attribute
            .containerd_enabled()
            .then(|| {
                ownership::Ownership::start()
                    .map_err(|e| tracing::warn!(error = %e, "no package index thread: execs carry no package"))
                    .ok()
            })
            .flatten();
        Pipeline {
            enricher,
            attribute,
            lifecycle,
            detector,
            sampler,
            ownership,
            sinks,
            losses,
            metrics,
            identity,
            policy_file,
            export_file: None,
            startup: None,
        }
    }

    /// Watch the export filter file `path` (the sinks hold the filter it
    /// gave at start, read after `seen` was taken: a change since is
    /// read at the first check); `base` is the configured profile.
    pub fn watch_export_filter(
        mut self,
        path: PathBuf,
        base: Profile,
        seen: Option<FileStamp>,
    ) -> Self {
        self.export_file = Some((WatchedFile { path, seen }, base));
        self
    }

    /// Startup: the /proc snapshot (probes are live before it, so nothing
    /// falls in between) when `cgroup_root` is given, then `started`.
    pub fn start(&mut self, snapshot_of: Option<&std::path::Path>) -> Result<(), PipelineError> {
        let mut counts = None;
        if let Some(root) = snapshot_of {
            let snap = snapshot::take(root);
            info!(
                processes = snap.processes.len(),
                sockets = snap.sockets.len(),
                "startup snapshot"
            );
            counts = Some((snap.processes.len() as u64, snap.sockets.len() as u64));
            let events = self.enricher.snapshot(&snap);
            let events = self.attribute.admit(events);
            for chunk in events.chunks(SNAPSHOT_BATCH) {
                self.emit(chunk.to_vec())?;
            }
        }
        let mut started = self.lifecycle_event(AgentState::Started, None);
        if let Some(a) = started.agent.as_mut() {
            a.probes = self.identity.probes.clone();
            a.snapshot_processes = counts.map(|c| c.0);
            a.snapshot_sockets = counts.map(|c| c.1);
        }
        self.emit(vec![started])?;
        let startup = inventory::Startup {
            processes: counts.map(|c| c.0),
            sockets: counts.map(|c| c.1),
            containers: 0,
        };
        if self.attribute.containerd_enabled() {
            // complete once containerd has listed its containers
            self.startup = Some(startup);
            Ok(())
        } else {
            self.snapshot_complete(startup, None)
        }
    }

    /// The `snapshot_complete` marker (`containers`: how many containerd
    /// listed, None when it could not be asked).
    fn snapshot_complete(
        &mut self,
        s: inventory::Startup,
        containers: Option<u64>,
    ) -> Result<(), PipelineError> {
        info!(?containers, "startup snapshot complete");
        let id = &self.identity;
        let ev = inventory::snapshot_complete(
            &id.node,
            env!("CARGO_PKG_VERSION"),
            &id.kernel,
            s,
            containers,
        );
        self.emit(vec![ev])
    }

    /// React to one input. Ok(false) once stopped.
    pub fn handle(&mut self, input: Input) -> Result<bool, PipelineError> {
        match input {
            Input::Records(mut metered) => {
                let events = std::mem::take(&mut *metered)
                    .into_iter()
                    .filter_map(|r| self.enricher.handle(r))
                    .collect();
                let events = self.attribute.admit(events);
                self.emit(events)?;
                // handled: its room in the reader's queue is free again
                drop(metered);
            }
            Input::Container(update) => self.container(update)?,
            Input::Housekeeping => self.housekeeping()?,
            Input::Heartbeat => {
                let ev = self.lifecycle_event(AgentState::Running, Some(self.tracked()));
                self.emit(vec![ev])?;
            }
            Input::Losses => self.report_losses()?,
            Input::DetectTick => self.detect_tick()?,
            Input::Policy { force } => {
                self.policy(force);
                self.export_filter(force)?;
            }
            Input::Stop => {
                self.stop()?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// containerd news: a deletion goes through the lifecycle to every
    /// holder of container state; the rest is metadata for attribution.
    /// Each step of a container's life is a `container` event; the first
    /// listing (or containerd's absence) completes the startup snapshot.
    fn container(&mut self, update: Update) -> Result<(), PipelineError> {
        let node = self.identity.node.clone();
        let mut out = Vec::new();
        match &update {
            Update::Deleted(id) => {
                self.container_deleted(id, &mut out);
                return self.emit(out);
            }
            Update::Exited { id, exit_code } => {
                let meta = self.lifecycle.exited(id, *exit_code);
                let step = inventory::step(ContainerState::Exited, Some(*exit_code));
                // before the first listing ends, an exit is one it listed
                let snapshot = self.startup.is_some();
                out.push(inventory::container_event(
                    &node,
                    id,
                    meta.as_ref(),
                    step,
                    snapshot,
                ));
                return self.emit(out);
            }
            Update::Upsert(meta) => {
                self.lifecycle.alive(&meta.id);
                self.sampler.rediscover();
                if self.lifecycle.seen(meta) {
                    let step = inventory::step(ContainerState::Created, None);
                    out.push(self.container_step(meta, step));
                }
            }
            Update::Listed { meta, exit_code } => {
                self.lifecycle.alive(&meta.id);
                self.sampler.rediscover();
                for (state, code) in self.lifecycle.listed(meta, *exit_code) {
                    out.push(self.container_step(meta, inventory::step(state, code)));
                }
            }
            Update::Synced => {
                // deleted while containerd could not be heard
                for id in self.lifecycle.synced() {
                    self.container_deleted(&id, &mut out);
                }
                if let Some(s) = self.startup.take() {
                    let listed = s.containers;
                    self.emit(out)?;
                    self.snapshot_complete(s, Some(listed))?;
                    out = Vec::new();
                }
            }
            Update::Unavailable(_) => {
                self.lifecycle.sync_lost();
                if let Some(s) = self.startup.take() {
                    self.snapshot_complete(s, None)?;
                }
            }
            Update::NotFound(_) => {}
        }
        out.extend(self.attribute.apply(update));
        self.emit(out)
    }

    /// A step of a listed or refreshed container: a snapshot event before
    /// the first listing ends (a `created` counted in the marker).
    fn container_step(
        &mut self,
        meta: &Arc<crate::container::meta::ContainerMeta>,
        step: crate::event::Lifecycle,
    ) -> Event {
        let snapshot = self.startup.is_some();
        if let Some(s) = self.startup.as_mut() {
            if step.state == ContainerState::Created {
                s.containers += 1;
            }
        }
        inventory::container_event(&self.identity.node, &meta.id, Some(meta), step, snapshot)
    }

    /// containerd deleted `id` (or no longer lists it): its `deleted`
    /// event, and the change to every holder of its state.
    fn container_deleted(&mut self, id: &str, out: &mut Vec<Event>) {
        if let Some(change) = self.lifecycle.deleted(id, Instant::now()) {
            let end = self.lifecycle.ended(id);
            let step = inventory::step(ContainerState::Deleted, end.exit_code);
            let node = &self.identity.node;
            out.push(inventory::container_event(
                node,
                id,
                end.meta.as_ref(),
                step,
                false,
            ));
            self.publish(&change);
        }
    }

    /// One lifecycle change to every holder of per-container state.
    fn publish(&mut self, change: &Change) {
        self.attribute.on_container(change);
        self.enricher.on_container(change);
        let (Change::Deleted(id) | Change::Forgotten(id)) = change;
        self.sampler.forget(id);
        if let Some(d) = &mut self.detector {
            d.on_container(change);
        }
    }

    fn housekeeping(&mut self) -> Result<(), PipelineError> {
        let now = Instant::now();
        self.enricher.expire(now);
        for change in self.lifecycle.expire(now) {
            self.publish(&change);
        }
        let tracked = self.tracked();
        self.metrics
            .set_tracked(&tracked, self.enricher.duplicate_exits());
        self.metrics.set_process_table(&self.enricher.table_stats());
        self.metrics
            .set_containerd_up(self.attribute.containerd_up());
        self.metrics.turned();
        let events = self.attribute.expire();
        self.emit(events)?;
        self.sinks.sweep(self.enricher.now(), false)?;
        let cfg = self.sample_config();
        if self.sampler.due(now, &cfg) {
            self.sample(now, &cfg)?;
        }
        Ok(())
    }

    /// What the sampler is asked, from the settings in force.
    fn sample_config(&self) -> resources::Config {
        // without a detector ([policy] enabled = false): the defaults,
        // built once (this runs every 100 ms)
        static DEFAULT: std::sync::LazyLock<crate::policy::Settings> =
            std::sync::LazyLock::new(crate::policy::Settings::default);
        let s = self.detector.as_ref().map_or(&*DEFAULT, |d| d.settings());
        resources::Config {
            interval: Duration::from_millis(s.resource_sample_interval_ms),
            busy_percent: s.cpu_runaway_percent,
            report_every: (s.resources_report_s > 0)
                .then(|| Duration::from_secs(s.resources_report_s)),
        }
    }

    /// Sample every container: `resources` events when due, and the
    /// findings of the sample.
    fn sample(&mut self, now: Instant, cfg: &resources::Config) -> Result<(), PipelineError> {
        let started = Instant::now();
        let samples = self.sampler.sample(now, cfg);
        let mut out = Vec::new();
        for s in samples {
            let report = s.report;
            let Some(sampled) = self.sampled(s) else {
                continue;
            };
            if report {
                out.push(sampled.container.clone());
            }
            if let Some(d) = &mut self.detector {
                out.extend(d.sampled(&sampled, now));
            }
        }
        self.metrics
            .sampled(self.sampler.tracked() as u64, started.elapsed());
        self.sinks.send(out)
    }

    /// One container's sample as events, attributed; None while its
    /// metadata is looked up (a report due waits, and goes out then; a
    /// sample not due is not kept).
    fn sampled(&mut self, s: ContainerSample) -> Option<Sampled> {
        if !s.report && !self.attribute.is_known(&s.container.id) {
            return None;
        }
        let c = crate::event::Container::from_cgroup(
            s.container.id.clone(),
            s.container.runtime,
            s.container.pod_uid.clone(),
        );
        let ev = self.enricher.resources(None, c, s.usage);
        let container = self.attribute.admit(vec![ev]).pop()?;
        let procs = s.procs.map(|procs| {
            procs
                .into_iter()
                .map(|p| {
                    let c = container.container.clone().expect("set above");
                    (
                        self.enricher.resources(Some(p.pid), c, p.usage),
                        p.start_ticks,
                    )
                })
                .collect()
        });
        Some(Sampled { container, procs })
    }

    fn report_losses(&mut self) -> Result<(), PipelineError> {
        match self.losses.poll(&self.metrics) {
            Some(l) => {
                let ev = self.enricher.loss(l);
                self.emit(vec![ev])
            }
            None => Ok(()),
        }
    }

    /// Findings updates and baseline saves (every second).
    fn detect_tick(&mut self) -> Result<(), PipelineError> {
        let Some(d) = &mut self.detector else {
            return Ok(());
        };
        let updates = d.tick(Instant::now());
        self.metrics.set_findings(&d.emitted);
        let (cgroups, failures) = d.enforcement();
        self.metrics.set_enforcement(cgroups, failures);
        self.sinks.send(updates)
    }

    /// Load the policy file again when it changed (or when forced); a bad
    /// one is rejected and the running policy stays.
    fn policy(&mut self, force: bool) {
        let (Some(file), Some(d)) = (&mut self.policy_file, &mut self.detector) else {
            return;
        };
        if !file.changed(force) {
            return;
        }
        let loaded = crate::policy::load(&file.path).map_err(|e| e.to_string());
        let checked =
            loaded.and_then(
                |p| match crate::policy::unenforceable(&p, &self.identity.probes) {
                    Some(why) => Err(format!("policy file {}: {why}", file.path.display())),
                    None => Ok(p),
                },
            );
        match checked {
            Ok(p) => {
                info!(file = %file.path.display(), entries = p.entries.len(), "policy reloaded");
                d.set_policy(p);
                self.metrics.policy_reload(true);
            }
            Err(e) => {
                error!(error = %e, "policy rejected; the running policy stays in force");
                self.metrics.policy_reload(false);
            }
        }
    }

    /// Load the export filter file again when it changed (or when
    /// forced); a bad one is rejected and the running filter stays.
    fn export_filter(&mut self, force: bool) -> Result<(), PipelineError> {
        let Some((file, base)) = &mut self.export_file else {
            return Ok(());
        };
        if !file.changed(force) {
            return Ok(());
        }
        match FilterSpec::load(&file.path) {
            Ok(spec) => {
                let filter = ExportFilter::new(*base, spec);
                info!(file = %file.path.display(), profile = filter.profile().as_str(), "export filter reloaded");
                self.metrics.export_reload(true);
                self.sinks.replace_filter(filter)
            }
            Err(e) => {
                error!(error = %e, "export filter rejected; the running filter stays in force");
                self.metrics.export_reload(false);
                Ok(())
            }
        }
    }

    /// The drain: what still waits for metadata goes as it is, the last
    /// losses (always a `loss` event: the probes are detached and the
    /// ring drained, so its totals are final) and findings, then
    /// `stopping`.
    fn stop(&mut self) -> Result<(), PipelineError> {
        let rest = self.attribute.close();
        self.emit(rest)?;
        let last = self.losses.poll_final(&self.metrics);
        let ev = self.enricher.loss(last);
        self.emit(vec![ev])?;
        self.detect_tick()?;
        if let Some(last) = self.detector.as_mut().map(Detector::close) {
            self.sinks.send(last)?;
        }
        // every repeat held for aggregation goes before the stop
        self.sinks.sweep(self.enricher.now(), true)?;
        let ev = self.lifecycle_event(AgentState::Stopping, Some(self.tracked()));
        self.emit(vec![ev])
    }

    /// Events to the sinks, their findings after them.
    fn emit(&mut self, mut events: Vec<Event>) -> Result<(), PipelineError> {
        if let Some(o) = &mut self.ownership {
            o.mark(&mut events);
        }
        if let Some(d) = &mut self.detector {
            let findings = d.observe(&events, Instant::now());
            events.extend(findings);
        }
        self.sinks.send(events)
    }

    fn tracked(&self) -> Tracked {
        let s = self.attribute.stats();
        Tracked {
            processes: self.enricher.processes_tracked() as u64,
            containers: s.containers as u64,
            pending_events: s.pending_events as u64,
            cgroups: self.enricher.cgroups_tracked() as u64,
        }
    }

    /// An `agent` lifecycle event.
    fn lifecycle_event(&self, state: AgentState, tracked: Option<Tracked>) -> Event {
        let mut ev = Event::new(Kind::Agent, Clock::now(), self.identity.node.clone());
        ev.agent = Some(Box::new(AgentInfo {
            state,
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: self.identity.kernel.clone(),
            probes: Vec::new(),
            snapshot_processes: None,
            snapshot_sockets: None,
            snapshot_containers: None,
            tracked,
        }));
        ev
    }
}

/// Run the pipeline on its own thread until [`Input::Stop`] (or until
/// every sender is gone). The thread's result says why it ended.
pub fn spawn(
    mut pipeline: Pipeline,
    mut inputs: mpsc::Receiver<Input>,
    snapshot_of: Option<PathBuf>,
) -> Result<std::thread::JoinHandle<Result<(), PipelineError>>, PipelineError> {
    std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let r = (|| {
                pipeline.start(snapshot_of.as_deref())?;
                while let Some(input) = inputs.blocking_recv() {
                    if !pipeline.handle(input)? {
                        break;
                    }
                }
                info!(
                    processes = pipeline.enricher.processes_tracked(),
                    "pipeline stopped"
                );
                Ok(())
            })();
            if let Err(e) = &r {
                error!(error = %e, "the event pipeline stopped");
            }
            r
        })
        .map_err(PipelineError::Spawn)
}
