//! Where the collector writes: JSON lines or OCSF to a file with size-based
//! rotation (the default) or to stdout, and optionally syslog too.
use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spyglass_proto::v1::Event;

use crate::{convert, ocsf, syslog::SyslogSink};

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

/// One event as an output line.
pub fn render(format: Format, ev: &Event, node_id: &str, sequence: u64) -> Value {
    match format {
        Format::Json => {
            let mut v = convert::event_json(ev);
            v["delivery"] = convert::delivery(node_id, sequence);
            v
        }
        Format::Ocsf => ocsf::event_ocsf(ev, node_id, sequence),
    }
}

/// A JSON-lines file with size rotation (`FILE` -> `FILE.1` -> ... ->
/// `FILE.<keep>`), or stdout when the path is `-`.
pub struct LineSink {
    path: Option<PathBuf>,
    out: BufWriter<Box<dyn Write + Send>>,
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
                out: BufWriter::new(Box::new(std::io::stdout())),
                size: 0,
                rotate_bytes: u64::MAX,
                keep,
            });
        }
        let p = PathBuf::from(path);
        let (f, size) = open_append(&p)?;
        Ok(LineSink {
            path: Some(p),
            out: BufWriter::new(Box::new(f)),
            size,
            rotate_bytes,
            keep,
        })
    }

    /// The file written to (None for stdout).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn err(&self, source: std::io::Error) -> OutputError {
        OutputError::Write {
            path: self.path.clone().unwrap_or_else(|| "-".into()),
            source,
        }
    }

    /// Write lines and flush them to the OS. Returns true if the file was
    /// rotated before writing.
    pub fn write_lines(&mut self, lines: &[String]) -> Result<bool, OutputError> {
        let incoming: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let rotated = self.size > 0 && self.size + incoming > self.rotate_bytes;
        if rotated {
            self.rotate()?;
        }
        for l in lines {
            self.out
                .write_all(l.as_bytes())
                .and_then(|_| self.out.write_all(b"\n"))
                .map_err(|e| self.err(e))?;
        }
        self.out.flush().map_err(|e| self.err(e))?;
        self.size += incoming;
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
        self.out = BufWriter::new(Box::new(f));
        self.size = size;
        Ok(())
    }
}

/// All outputs of the collector.
pub struct Outputs {
    pub format: Format,
    pub file: LineSink,
    pub syslog: Option<SyslogSink>,
}

impl Outputs {
    /// Render and write one batch. Returns true if the file rotated.
    pub async fn write_batch(
        &mut self,
        node_id: &str,
        sequence: u64,
        events: &[Event],
    ) -> Result<bool, OutputError> {
        let lines: Vec<String> = events
            .iter()
            .map(|e| render(self.format, e, node_id, sequence).to_string())
            .collect();
        let rotated = self.file.write_lines(&lines)?;
        if let Some(s) = self.syslog.as_mut() {
            s.send(events, &lines).await;
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
