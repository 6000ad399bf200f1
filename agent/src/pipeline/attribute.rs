//! The attribute stage: container metadata attached to each event (or
//! the event held until it is known), lookups sent to the containerd task.
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    container::{
        attribution::{Attributor, Stats},
        containerd::Update,
        lifecycle::{Change, Observer},
    },
    event::Event,
};

pub struct Attribute {
    attributor: Attributor,
    /// Ids for the containerd task to look up (None: containerd disabled).
    lookups: Option<mpsc::Sender<String>>,
}

impl Attribute {
    pub fn new(attributor: Attributor, lookups: Option<mpsc::Sender<String>>) -> Self {
        Attribute {
            attributor,
            lookups,
        }
    }

    /// Events from the enricher, in order: those ready now come back.
    pub fn admit(&mut self, events: Vec<Event>) -> Vec<Event> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            self.attributor.admit(ev, now, &mut out);
        }
        self.ask();
        out
    }

    /// News from containerd: the events it releases.
    pub fn apply(&mut self, update: Update) -> Vec<Event> {
        let mut out = Vec::new();
        self.attributor.apply(update, Instant::now(), &mut out);
        self.ask();
        out
    }

    /// Events that waited too long, released marked.
    pub fn expire(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.attributor.expire(Instant::now(), &mut out);
        out
    }

    /// The agent stops: what still waits goes as it is, and the containerd
    /// task is told to end (its lookup queue closes).
    pub fn close(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.attributor.flush(&mut out);
        self.lookups = None;
        out
    }

    /// Whether container `id`'s metadata is known now.
    pub fn is_known(&self, id: &str) -> bool {
        self.attributor.is_known(id)
    }

    pub fn stats(&self) -> Stats {
        self.attributor.stats()
    }

    /// Whether a containerd client runs (`[containerd] enabled`).
    pub fn containerd_enabled(&self) -> bool {
        self.lookups.is_some()
    }

    pub fn containerd_up(&self) -> bool {
        self.attributor.containerd_up()
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

impl Observer for Attribute {
    fn on_container(&mut self, change: &Change) {
        self.attributor.on_container(change);
    }
}
