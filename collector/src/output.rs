//! Where the collector writes: JSON lines or OCSF to a file with size-based
//! rotation (the default) or to stdout, and optionally syslog too.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::PermissionsExt,
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

/// One event appended as an output line (without its newline): the
/// agent's JSON (the shared renderer) plus `delivery`, or OCSF.
pub fn render_line(format: Format, ev: &Event, d: &Delivery<'_>, out: &mut Vec<u8>) {
    match format {
        Format::Json => render::write_with(ev, "delivery", d, out),
        Format::Ocsf => {
            // Serializing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &ocsf::event_ocsf(ev, d));
        }
    }
}

/// A batch rendered: every line in one buffer, each followed by `\n`,
/// written to the file with one call.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// End of each line (before its newline).
    ends: Vec<usize>,
}

impl Lines {
    /// All lines, newlines included.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Each line's end (before its newline).
    pub fn ends(&self) -> &[usize] {
        &self.ends
    }

    /// Line `i` with its newline.
    pub fn line(&self, i: usize) -> Option<&[u8]> {
        let start = match i {
            0 => 0,
            _ => self.ends.get(i - 1)? + 1,
        };
        let end = *self.ends.get(i)?;
        self.buf.get(start..=end)
    }

    /// Each line without its newline (serde_json writes UTF-8 only).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|e| e + 1));
        starts
            .zip(&self.ends)
            .map(|(s, &e)| std::str::from_utf8(&self.buf[s..e]).unwrap_or_default())
    }
}

/// A JSON-lines file with size rotation (`FILE` -> `FILE.1` -> ... ->
/// `FILE.<keep>`), or stdout when the path is `-`.
pub struct LineSink {
    path: Option<PathBuf>,
    out: Box<dyn Write + Send>,
    /// The open file, for fdatasync (None for stdout).
    file: Option<std::sync::Arc<File>>,
    size: u64,
    rotate_bytes: u64,
    keep: usize,
    /// The file was rotated away but its successor could not be opened:
    /// the next write opens it again, and does not rotate a second time
    /// (which would push every rotated file one further and drop the
    /// oldest at each retry).
    reopen: bool,
    /// The rotated files were shifted (`FILE.n` -> `FILE.n+1`) but `FILE`
    /// was not yet renamed: the next try renames only, and does not shift
    /// (and drop the oldest) again.
    shifted: bool,
}

fn open_append(path: &Path) -> Result<(File, u64), OutputError> {
    let f = spyglass_proto::files::append_private(path)
        .and_then(|f| {
            // one written by an older collector is narrowed too
            f.set_permissions(std::fs::Permissions::from_mode(
                spyglass_proto::files::FILE_MODE,
            ))?;
            Ok(f)
        })
        .map_err(|source| OutputError::Open {
            path: path.to_owned(),
            source,
        })?;
    let size = f.metadata().map_or(0, |m| m.len());
    Ok((f, size))
}

/// A file as a writer and a handle to sync it (the same file).
type Split = (Box<dyn Write + Send>, Option<std::sync::Arc<File>>);

fn split(f: File, path: &Path) -> Result<Split, OutputError> {
    // Its own open file description, not a dup: after a writeback error
    // Linux reports the error once per description, so the rotation's
    // sync (on the writer) and the syncer thread's each see it.
    let sync = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| OutputError::Open {
            path: path.to_owned(),
            source,
        })?;
    Ok((Box::new(f), Some(std::sync::Arc::new(sync))))
}

impl LineSink {
    /// No file: the lines go to Kafka only (`--kafka-brokers`).
    pub fn discard() -> Self {
        LineSink {
            path: None,
            out: Box::new(std::io::sink()),
            file: None,
            size: 0,
            rotate_bytes: u64::MAX,
            keep: 0,
            reopen: false,
            shifted: false,
        }
    }

    pub fn open(path: &str, rotate_bytes: u64, keep: usize) -> Result<Self, OutputError> {
        if path == "-" {
            return Ok(LineSink {
                path: None,
                out: Box::new(std::io::stdout()),
                file: None,
                size: 0,
                rotate_bytes: u64::MAX,
                keep,
                reopen: false,
                shifted: false,
            });
        }
        let p = PathBuf::from(path);
        let (f, size) = open_append(&p)?;
        let (out, file) = split(f, &p)?;
        crate::durable::sync_dir(p.parent().unwrap_or_else(|| Path::new("."))).map_err(
            |source| OutputError::Open {
                path: p.clone(),
                source,
            },
        )?;
        Ok(LineSink {
            path: Some(p),
            out,
            file,
            size,
            rotate_bytes,
            keep,
            reopen: false,
            shifted: false,
        })
    }

    fn err(&self, source: std::io::Error) -> OutputError {
        OutputError::Write {
            path: self.path.clone().unwrap_or_else(|| "-".into()),
            source,
        }
    }

    /// Whether writing `lines` will rotate the file first.
    pub fn would_rotate(&self, lines: &Lines) -> bool {
        let incoming = lines.bytes().len() as u64;
        self.shifted || (!self.reopen && self.size > 0 && self.size + incoming > self.rotate_bytes)
    }

    /// Write lines with one write call, straight to the OS. Returns true if
    /// the file was rotated first. On failure the file is cut back to where
    /// it was, so a retried batch is never half there twice.
    pub fn write_lines(&mut self, lines: &Lines) -> Result<bool, OutputError> {
        let rotated = self.would_rotate(lines);
        if rotated {
            self.rotate()?;
        } else if self.reopen {
            self.open_successor()?;
        }
        let buf = lines.bytes();
        if let Err(e) = self.out.write_all(buf).and_then(|_| self.out.flush()) {
            if let Some(p) = &self.path {
                if let Ok(f) = OpenOptions::new().write(true).open(p) {
                    let _ = f.set_len(self.size);
                }
                if let Ok((f, size)) = open_append(p) {
                    if let Ok((out, file)) = split(f, p) {
                        (self.out, self.file, self.size) = (out, file, size);
                    }
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
        // what was acknowledged in FILE stays on disk as FILE.1
        if let Some(f) = &self.file {
            f.sync_data().map_err(|e| self.err(e))?;
        }
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        if !self.shifted {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            self.shifted = true;
        }
        if self.keep > 0 {
            std::fs::rename(&path, numbered(1)).map_err(|e| self.err(e))?;
        } else {
            std::fs::remove_file(&path).map_err(|e| self.err(e))?;
        }
        self.shifted = false;
        self.reopen = true;
        self.open_successor()
    }

    /// Open the file that follows a rotation.
    fn open_successor(&mut self) -> Result<(), OutputError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let (f, size) = open_append(&path)?;
        let (out, file) = split(f, &path)?;
        // the rename and the new name last
        crate::durable::sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
            .map_err(|e| self.err(e))?;
        (self.out, self.file, self.size) = (out, file, size);
        self.reopen = false;
        Ok(())
    }

    /// The file and its length now (None for stdout), for the dedupe
    /// state: called between batches, so at a batch boundary.
    pub fn at(&self) -> Option<crate::ledger::OutputAt> {
        crate::ledger::OutputAt::of(self.file.as_deref()?, self.size)
    }

    /// The open file, to fdatasync (None for stdout).
    pub fn sync_handle(&self) -> Option<std::sync::Arc<File>> {
        self.file.clone()
    }
}

/// All outputs of the collector.
pub struct Outputs {
    pub format: Format,
    pub file: LineSink,
    pub syslog: Option<SyslogHandle>,
    /// The rendered batch; its buffer is reused from batch to batch (a
    /// fresh megabyte per batch cost page faults on every one).
    lines: Lines,
}

/// Rendered bytes kept between batches at most; a bigger buffer is let go.
const KEEP_LINES_BYTES: usize = 8 << 20;

impl Outputs {
    pub fn new(format: Format, file: LineSink, syslog: Option<SyslogHandle>) -> Self {
        Outputs {
            format,
            file,
            syslog,
            lines: Lines::default(),
        }
    }

    /// Render a batch as output lines (kept until the next batch).
    pub fn render_batch(&mut self, batch: &Received) -> &Lines {
        let lines = &mut self.lines;
        if lines.buf.capacity() > KEEP_LINES_BYTES {
            *lines = Lines::default();
        }
        lines.buf.clear();
        lines.ends.clear();
        for (index, e) in batch.events.iter().enumerate() {
            render_line(self.format, e, &batch.delivery(index), &mut lines.buf);
            lines.ends.push(lines.buf.len());
            lines.buf.push(b'\n');
        }
        &self.lines
    }

    /// The rendered batch.
    pub fn lines(&self) -> &Lines {
        &self.lines
    }

    /// The rendered batch when its lines are the event JSON (`--format
    /// json`): the live stream sends them as they are.
    pub fn json_lines(&self) -> Option<&Lines> {
        (self.format == Format::Json).then_some(&self.lines)
    }

    /// Whether writing the rendered batch rotates the file first.
    pub fn would_rotate(&self) -> bool {
        self.file.would_rotate(&self.lines)
    }

    /// Write rendered lines to the file, then hand them to syslog (which
    /// never blocks the file). Returns true if the file rotated.
    pub fn write(&mut self, batch: &Received) -> Result<bool, OutputError> {
        let rotated = self.file.write_lines(&self.lines)?;
        if let Some(s) = &self.syslog {
            s.send(&batch.events, &self.lines);
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
        let lines = Lines {
            buf: format!("{line}\n").into_bytes(),
            ends: vec![39],
        };
        assert_eq!(lines.iter().collect::<Vec<_>>(), [line.as_str()]);
        let mut rotations = 0;
        for _ in 0..10 {
            if s.write_lines(&lines).unwrap() {
                rotations += 1;
            }
        }
        assert_eq!(rotations, 4);
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert_eq!(size(&path), 80);
        assert_eq!(size(&dir.join("out.jsonl.1")), 80);
        assert_eq!(size(&dir.join("out.jsonl.2")), 80);
        assert!(!dir.join("out.jsonl.3").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
