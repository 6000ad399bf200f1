//! `spyglass events --follow`: the collector's live event stream
//! (`/api/v1/events?follow=1`), one line per event for people, or the
//! collector's JSON lines as they come (`--output json`).
use std::io::{BufRead, Write};

use serde_json::Value;

use crate::{
    api::{ApiError, Client},
    line,
};

/// Filters of the stream; every given one must match.
#[derive(clap::Args)]
pub struct Events {
    /// Follow the stream (required: the collector keeps no event history
    /// to list; its output file is the record).
    #[arg(long, short)]
    pub follow: bool,
    #[arg(long)]
    node: Option<String>,
    /// containerd namespace or Kubernetes pod namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Kubernetes pod name.
    #[arg(long)]
    pod: Option<String>,
    /// Event kinds, comma-separated or repeated: exec, exit, fork, listen,
    /// connect, accept, close, container, finding, resources, agent, loss.
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// A finding rule id (only findings of that rule).
    #[arg(long)]
    rule: Option<String>,
}

impl Events {
    fn filters(self) -> Vec<(&'static str, String)> {
        let kind = (!self.kind.is_empty()).then(|| self.kind.join(","));
        [
            ("node", self.node),
            ("namespace", self.namespace),
            ("pod", self.pod),
            ("kind", kind),
            ("rule", self.rule),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// Print the stream until it ends (an error: the collector stopped) or
/// stdout closes (`| head`: done).
pub fn run(client: &Client, events: Events, json: bool) -> Result<bool, ApiError> {
    let (url, reader) = client.follow(&events.filters())?;
    eprintln!("spyglass: following {url}");
    let mut out = std::io::stdout().lock();
    for text in reader.lines() {
        let text = text.map_err(|source| ApiError::Stream {
            url: url.clone(),
            source,
        })?;
        if text.is_empty() {
            continue; // keepalive
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| ApiError::Answer {
            url: url.clone(),
            why: format!("a stream line: {e}"),
        })?;
        if let Some(n) = v["missed"].as_u64() {
            eprintln!("spyglass: warning: {n} events were dropped for this client: it read too slowly; narrow the filters");
            if !json {
                continue;
            }
        }
        let shown = if json { text } else { line::format(&v) };
        if writeln!(out, "{shown}").is_err() {
            return Ok(true);
        }
    }
    Err(ApiError::Ended { url })
}
