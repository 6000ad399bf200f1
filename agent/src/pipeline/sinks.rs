//! The sinks at the end of the pipeline: stdout unless its format is
//! `none`, the collector when configured. Both get every batch, in
//! order. Called from the pipeline thread: sends block when a sink is
//! behind (back-pressure reaches the ring buffer, where loss is counted).
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::PipelineError;
use crate::{event::Event, metrics::Metrics};

pub struct Sinks {
    stdout: Option<mpsc::Sender<Vec<Event>>>,
    grpc: Option<mpsc::Sender<Vec<Event>>>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    pub fn new(
        stdout: Option<mpsc::Sender<Vec<Event>>>,
        grpc: Option<mpsc::Sender<Vec<Event>>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sinks {
            stdout,
            grpc,
            metrics,
        }
    }

    /// One batch to every sink (nothing for an empty one).
    pub fn send(&mut self, events: Vec<Event>) -> Result<(), PipelineError> {
        if events.is_empty() {
            return Ok(());
        }
        self.metrics.count(&events);
        if self.stdout.is_none() {
            self.send_collector(events);
            return Ok(());
        }
        self.send_collector(events.clone());
        let stdout = self.stdout.as_ref().expect("checked above");
        stdout
            .blocking_send(events)
            .map_err(|_| PipelineError::StdoutStopped)
    }

    fn send_collector(&mut self, events: Vec<Event>) {
        if let Some(g) = &self.grpc {
            if g.blocking_send(events).is_err() {
                // The exporter ended (it logged why); keep stdout going.
                warn!("collector exporter stopped; events go to stdout only");
                self.grpc = None;
            }
        }
    }
}
