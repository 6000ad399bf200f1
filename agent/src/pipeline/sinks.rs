//! The sinks at the end of the pipeline: stdout unless its format is
//! `none`, the collector when configured. Both get every batch, in
//! order. Called from the pipeline thread: sends block when a sink is
//! behind (back-pressure reaches the ring buffer, where loss is counted).
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::{
    budget::{events_bytes, Budget, EventBatch, Metered, SINK_BYTES},
    PipelineError,
};
use crate::{
    event::Event,
    export::filter::{ExportFilter, Reason},
    metrics::Metrics,
};
use spyglass_proto::time::Timestamp;

/// One sink's queue: the channel and its byte bound.
pub struct SinkQueue {
    tx: mpsc::Sender<EventBatch>,
    budget: Arc<Budget>,
}

impl SinkQueue {
    /// A queue of at most `batches` batches and [`SINK_BYTES`] bytes.
    pub fn new(batches: usize) -> (Self, mpsc::Receiver<EventBatch>) {
        let (tx, rx) = mpsc::channel(batches);
        let budget = Arc::new(Budget::new(SINK_BYTES));
        (SinkQueue { tx, budget }, rx)
    }

    /// Err when the receiver is gone.
    fn send(&self, events: Vec<Event>, bytes: usize) -> Result<(), ()> {
        let batch = Metered::new(events, bytes, &self.budget);
        self.tx.blocking_send(batch).map_err(|_| ())
    }
}

pub struct Sinks {
    stdout: Option<SinkQueue>,
    /// The events stdout prints, when its format prints only some
    /// (`findings`): the others are not queued for it at all.
    stdout_keeps: Option<fn(&Event) -> bool>,
    grpc: Option<SinkQueue>,
    /// What of the stream leaves (the detections saw all of it).
    filter: ExportFilter,
    metrics: Arc<Metrics>,
}

impl Sinks {
    pub fn new(
        stdout: Option<SinkQueue>,
        stdout_keeps: Option<fn(&Event) -> bool>,
        grpc: Option<SinkQueue>,
        filter: ExportFilter,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.set_profile(filter.profile());
        Sinks {
            stdout,
            stdout_keeps,
            grpc,
            filter,
            metrics,
        }
    }

    /// One batch through the export filter to every sink.
    pub fn send(&mut self, events: Vec<Event>) -> Result<(), PipelineError> {
        if events.is_empty() {
            return Ok(());
        }
        self.metrics.count(&events);
        if self.filter.is_pass() {
            return self.deliver(events);
        }
        let m = &self.metrics;
        let kept = self
            .filter
            .apply(events, &mut |reason: Reason, kind| m.filtered(reason, kind));
        self.count_aggregation();
        self.deliver(kept)
    }

    fn count_aggregation(&mut self) {
        let (sent, overflowed) = self.filter.take_counts();
        self.metrics
            .aggregated(sent, overflowed, self.filter.windows() as u64);
    }

    /// The events of aggregation windows closed by `now` (all of them
    /// with `all`, at stop).
    pub fn sweep(&mut self, now: Timestamp, all: bool) -> Result<(), PipelineError> {
        let out = self.filter.sweep(now, all);
        self.count_aggregation();
        self.deliver(out)
    }

    /// Put a new filter in force: the old one's open windows are sent
    /// first, and what it knew of sent execs carries over.
    pub fn replace_filter(&mut self, mut filter: ExportFilter) -> Result<(), PipelineError> {
        self.sweep(Timestamp(i64::MAX), true)?;
        filter.inherit(&mut self.filter);
        self.metrics.set_profile(filter.profile());
        self.filter = filter;
        Ok(())
    }

    /// Events past the filter to every sink (nothing for none).
    fn deliver(&mut self, events: Vec<Event>) -> Result<(), PipelineError> {
        if events.is_empty() {
            return Ok(());
        }
        let bytes = events_bytes(&events);
        let Some(stdout) = &self.stdout else {
            self.send_collector(events, bytes);
            return Ok(());
        };
        let (out, out_bytes) = match self.stdout_keeps {
            Some(keep) => {
                let picked: Vec<Event> = events.iter().filter(|e| keep(e)).cloned().collect();
                let b = events_bytes(&picked);
                (picked, b)
            }
            None => (events.clone(), bytes),
        };
        let sent = out.is_empty() || stdout.send(out, out_bytes).is_ok();
        self.send_collector(events, bytes);
        if sent {
            Ok(())
        } else {
            Err(PipelineError::StdoutStopped)
        }
    }

    fn send_collector(&mut self, events: Vec<Event>, bytes: usize) {
        if let Some(g) = &self.grpc {
            if g.send(events, bytes).is_err() {
                // The exporter ended (it logged why); keep stdout going.
                warn!("collector exporter stopped; events go to stdout only");
                self.grpc = None;
            }
        }
    }
}
