//! Where the collector writes: JSON lines or OCSF to a file with size-based
//! rotation (the default) or to stdout, and optionally syslog too.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use spyglass_proto::model::{render, Event};

use crate::{
    delivery::{Delivery, Received},
    ocsf,
    syslog::SyslogHandle,
};

/// Output format (`--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The Spyglass event JSON of docs/events.md, plus `delivery`.
    #[default]
    Json,
    /// OCSF 1.8.0 (Process Activity, Network Activity, Detection Finding).
    Ocsf,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open output file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing output {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One event as an output line: the agent's JSON (the shared renderer)
/// plus `delivery`, or OCSF.
pub fn render_line(format: Format, ev: &Event, d: &Delivery) -> String {
    match format {
        Format::Json => {
            let mut out = Vec::with_capacity(1024);
            render::write_with(ev, "delivery", d, &mut out);
            // serde_json writes UTF-8 only.
            String::from_utf8(out).unwrap_or_default()
        }
        Format::Ocsf => ocsf::event_ocsf(ev, d).to_string(),
    }
}

/// A JSON-lines file with size rotation (`FILE` -> `FILE.1` -> ... ->
/// `FILE.<keep>`), or stdout when the path is `-`.
pub struct LineSink {
    path: Option<PathBuf>,
    out: Box<dyn Write + Send>,
    size: u64,
    rotate_bytes: u64,
    keep: usize,
}

fn open_append(path: &Path) -> Result<(File, u64), OutputError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| OutputError::Open {
            path: path.to_owned(),
            source,
        })?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((f, size))
}

impl LineSink {
    pub fn open(path: &str, rotate_bytes: u64, keep: usize) -> Result<Self, OutputError> {
        if path == "-" {
            return Ok(LineSink {
                path: None,
                out: Box::new(std::io::stdout()),
                size: 0,
                rotate_bytes: u64::MAX,
                keep,
            });
        }
        let p = PathBuf::from(path);
        let (f, size) = open_append(&p)?;
        Ok(LineSink {
            path: Some(p),
            out: Box::new(f),
            size,
            rotate_bytes,
            keep,
        })
    }

    fn err(&self, source: std::io::Error) -> OutputError {
        OutputError::Write {
            path: self.path.clone().unwrap_or_else(|| "-".into()),
            source,
        }
    }

    /// Whether writing `lines` will rotate the file first.
    pub fn would_rotate(&self, lines: &[String]) -> bool {
        let incoming: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        self.size > 0 && self.size + incoming > self.rotate_bytes
    }

    /// Write lines with one write call, straight to the OS. Returns true if
    /// the file was rotated first. On failure the file is cut back to where
    /// it was, so a retried batch is never half there twice.
    pub fn write_lines(&mut self, lines: &[String]) -> Result<bool, OutputError> {
        let rotated = self.would_rotate(lines);
        if rotated {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        if let Err(e) = self.out.write_all(&buf).and_then(|_| self.out.flush()) {
            if let Some(p) = &self.path {
                if let Ok(f) = OpenOptions::new().write(true).open(p) {
                    let _ = f.set_len(self.size);
                }
                if let Ok((f, size)) = open_append(p) {
                    self.out = Box::new(f);
                    self.size = size;
                }
            }
            return Err(self.err(e));
        }
        self.size += buf.len() as u64;
        Ok(rotated)
    }

    fn rotate(&mut self) -> Result<(), OutputError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        self.out.flush().map_err(|e| self.err(e))?;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.keep > 0 {
            std::fs::rename(&path, numbered(1)).map_err(|e| self.err(e))?;
        } else {
            std::fs::remove_file(&path).map_err(|e| self.err(e))?;
        }
        let (f, size) = open_append(&path)?;
        self.out = Box::new(f);
        self.size = size;
        Ok(())
    }
}

/// All outputs of the collector.
pub struct Outputs {
    pub format: Format,
    pub file: LineSink,
    pub syslog: Option<SyslogHandle>,
}

impl Outputs {
    /// A batch as output lines.
    pub fn render_batch(&self, batch: &Received) -> Vec<String> {
        batch
            .events
            .iter()
            .enumerate()
            .map(|(index, e)| render_line(self.format, e, &batch.delivery(index)))
            .collect()
    }

    /// Write rendered lines to the file, then hand them to syslog (which
    /// never blocks the file). Returns true if the file rotated.
    pub fn write(&mut self, batch: &Received, lines: &[String]) -> Result<bool, OutputError> {
        let rotated = self.file.write_lines(lines)?;
        if let Some(s) = &self.syslog {
            s.send(&batch.events, lines);
        }
        Ok(rotated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let mut s = LineSink::open(path.to_str().unwrap(), 100, 2).unwrap();
        let line = "x".repeat(39); // 40 bytes with newline
        let mut rotations = 0;
        for _ in 0..10 {
            if s.write_lines(std::slice::from_ref(&line)).unwrap() {
                rotations += 1;
            }
        }
        assert_eq!(rotations, 4);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size(&path), 80);
        assert_eq!(size(&dir.join("out.jsonl.1")), 80);
        assert_eq!(size(&dir.join("out.jsonl.2")), 80);
        assert!(!dir.join("out.jsonl.3").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
