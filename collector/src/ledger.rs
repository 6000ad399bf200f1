//! Deduplication: the highest batch sequence written per sequence space
//! (`node_id/stream_id`).
//!
//! Agents deliver at least once; a batch whose sequence is at or below its
//! space's high-water mark was already written and is only acknowledged.
//! The ledger survives restarts: it is saved to a state file (before every
//! rotation, every few seconds and at exit), and on start it is rebuilt
//! from the `delivery` field of the current output file too. A batch
//! counts as written only when its last line (`index == count - 1`) is in
//! the file; lines of a batch torn by a crash are cut off the file, so the
//! agent's resend writes that batch whole, once.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot write the dedupe state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dedupe state file {path} is corrupt ({message}); move it away to start fresh")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot repair output file {path} after a crash: {source}")]
    Repair {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The dedupe key of a batch.
pub fn space(node_id: &str, stream_id: &str) -> String {
    format!("{node_id}/{stream_id}")
}

/// What to do with an incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: write it.
    Write,
    /// Already written: acknowledge only.
    Duplicate,
}

#[derive(Debug, Default)]
pub struct Ledger {
    high: HashMap<String, u64>,
    path: Option<PathBuf>,
    dirty: bool,
}

impl Ledger {
    /// Load the state file (missing is fine), then raise marks from the
    /// output file's `delivery` fields.
    pub fn open(state: Option<&Path>, output: Option<&Path>) -> Result<Self, LedgerError> {
        let mut ledger = Ledger {
            path: state.map(Path::to_owned),
            ..Ledger::default()
        };
        if let Some(p) = state {
            if let Ok(text) = std::fs::read_to_string(p) {
                ledger.high = serde_json::from_str(&text).map_err(|e| LedgerError::Corrupt {
                    path: p.to_owned(),
                    message: e.to_string(),
                })?;
            }
        }
        if let Some(out) = output {
            if let Ok(bytes) = std::fs::read(out) {
                let (marks, clean_end) = scan(&bytes);
                for (key, seq) in marks {
                    ledger.observe(&key, seq);
                }
                if clean_end < bytes.len() {
                    tracing::warn!(
                        path = %out.display(),
                        cut_bytes = bytes.len() - clean_end,
                        "output ended in a torn batch (crash); cutting it off, the agent resends it"
                    );
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(out)
                        .and_then(|f| f.set_len(clean_end as u64))
                        .map_err(|source| LedgerError::Repair {
                            path: out.to_owned(),
                            source,
                        });
                    f?;
                }
            }
        }
        Ok(ledger)
    }

    fn observe(&mut self, node: &str, seq: u64) {
        let h = self.high.entry(node.to_owned()).or_insert(0);
        if seq > *h {
            *h = seq;
        }
    }

    /// Classify a batch (does not record it).
    pub fn check(&self, node: &str, seq: u64) -> Verdict {
        match self.high.get(node) {
            Some(&h) if seq <= h => Verdict::Duplicate,
            _ => Verdict::Write,
        }
    }

    /// Forget every sequence space of `node` (a node evicted from the
    /// agent table).
    pub fn forget_node(&mut self, node: &str) {
        let prefix = space(node, "");
        let before = self.high.len();
        self.high.retain(|k, _| !k.starts_with(&prefix));
        self.dirty |= self.high.len() != before;
    }

    /// The batch was written.
    pub fn record(&mut self, node: &str, seq: u64) {
        self.observe(node, seq);
        self.dirty = true;
    }

    #[cfg(test)]
    pub fn high_water(&self, node: &str) -> u64 {
        self.high.get(node).copied().unwrap_or(0)
    }

    /// Save if anything changed (write to a temp file, then rename).
    pub fn save(&mut self) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string(&self.high).expect("map of strings serializes");
        spyglass_proto::files::write_private(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| LedgerError::Write {
                path: path.clone(),
                source,
            })?;
        self.dirty = false;
        Ok(())
    }
}

/// `(space, sequence, last line of its batch)` from an output line:
/// `"delivery":{...}` at the top level (JSON) or under `unmapped` (OCSF).
pub fn delivery_of(line: &[u8]) -> Option<(String, u64, bool)> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let d = v
        .get("delivery")
        .or_else(|| v.get("unmapped")?.get("delivery"))?;
    let key = space(
        d.get("node_id")?.as_str()?,
        d.get("stream_id").and_then(|s| s.as_str()).unwrap_or(""),
    );
    let index = d.get("index").and_then(serde_json::Value::as_u64);
    let count = d.get("count").and_then(serde_json::Value::as_u64);
    let last = match (index, count) {
        (Some(i), Some(c)) => i + 1 == c,
        _ => true,
    };
    Some((key, d.get("sequence")?.as_u64()?, last))
}

/// High-water marks of complete batches in an output file, and the byte
/// offset where its last complete batch ends (what follows is torn).
pub fn scan(bytes: &[u8]) -> (HashMap<String, u64>, usize) {
    let mut marks: HashMap<String, u64> = HashMap::new();
    let mut clean_end = 0;
    let mut pos = 0;
    let mut open_batch = false;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break; // a torn last line
        };
        let line = &bytes[pos..pos + nl];
        pos += nl + 1;
        match delivery_of(line) {
            Some((key, seq, true)) => {
                let m = marks.entry(key).or_insert(0);
                *m = (*m).max(seq);
                open_batch = false;
                clean_end = pos;
            }
            Some((_, _, false)) => open_batch = true,
            // a line without delivery (foreign or garbled) ends nothing
            None => {
                if !open_batch {
                    clean_end = pos;
                }
            }
        }
    }
    (marks, clean_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_at_or_below_the_high_water_mark() {
        let mut l = Ledger::default();
        assert_eq!(l.check("a", 1), Verdict::Write);
        l.record("a", 1);
        l.record("a", 2);
        assert_eq!(l.check("a", 2), Verdict::Duplicate);
        assert_eq!(l.check("a", 1), Verdict::Duplicate);
        assert_eq!(l.check("a", 3), Verdict::Write);
        assert_eq!(l.check("b", 1), Verdict::Write, "nodes are independent");
        // a gap (batches dropped by the agent's spool) is accepted
        assert_eq!(l.check("a", 10), Verdict::Write);
    }

    #[test]
    fn rebuilt_from_state_and_output() {
        let dir = std::env::temp_dir().join(format!("ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.json");
        let out = dir.join("out.jsonl");
        let mut l = Ledger::open(Some(&state), None).unwrap();
        l.record("n1", 5);
        l.save().unwrap();
        // the output got further than the saved state before a crash
        let good = "{\"kind\":\"exec\",\"delivery\":{\"node_id\":\"n1\",\"stream_id\":\"\",\"sequence\":7,\"index\":0,\"count\":1}}\n\
             {\"class_uid\":1007,\"unmapped\":{\"delivery\":{\"node_id\":\"n2\",\"stream_id\":\"s\",\"sequence\":3,\"index\":1,\"count\":2}}}\n\
             not json\n";
        // batch 8 of n1 was torn by a crash: one of two lines, then half a line
        let torn = "{\"delivery\":{\"node_id\":\"n1\",\"stream_id\":\"\",\"sequence\":8,\"index\":0,\"count\":2}}\n{\"deli";
        std::fs::write(&out, format!("{good}{torn}")).unwrap();
        let l = Ledger::open(Some(&state), Some(&out)).unwrap();
        assert_eq!(l.high_water("n1/"), 7);
        assert_eq!(l.high_water("n2/s"), 3);
        assert_eq!(l.check("n1/", 7), Verdict::Duplicate);
        assert_eq!(
            l.check("n1/", 8),
            Verdict::Write,
            "a torn batch is written again"
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            good,
            "the torn tail is cut off"
        );
        std::fs::write(&state, "{garbage").unwrap();
        let e = Ledger::open(Some(&state), None).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
