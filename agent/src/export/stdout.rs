//! JSON lines on stdout: one event per line, flushed whenever the queue
//! runs dry so a reader sees events within one poll interval.
use std::io::Write;

use tokio::sync::mpsc;
use tracing::error;

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    #[error("writing events to stdout failed: {0} (is the reading end closed?)")]
    Write(#[from] std::io::Error),
    #[error("serializing an event failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// Write batches until the channel closes. Runs on its own thread: writes
/// block.
pub fn run(mut rx: mpsc::Receiver<Vec<Event>>, out: impl Write) -> Result<u64, StdoutError> {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
    let mut written = 0u64;
    while let Some(batch) = rx.blocking_recv() {
        for ev in &batch {
            serde_json::to_writer(&mut out, ev)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        if rx.is_empty() {
            if let Err(e) = out.flush() {
                error!(error = %e, "stdout flush failed");
                return Err(e.into());
            }
        }
    }
    out.flush()?;
    Ok(written)
}
