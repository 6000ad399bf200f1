//! Deduplication: the highest batch sequence written per node.
//!
//! Agents deliver at least once; a batch whose sequence is at or below its
//! node's high-water mark was already written and is only acknowledged.
//! The ledger survives restarts: it is saved to a state file after writes,
//! and on start it is also rebuilt from the `delivery` field of every line
//! of the current output file, so a crash between writing a batch and
//! saving the state cannot cause a duplicate.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
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
            if let Ok(f) = std::fs::File::open(out) {
                for line in BufReader::new(f).lines().map_while(Result::ok) {
                    if let Some((node, seq)) = delivery_of(&line) {
                        ledger.observe(&node, seq);
                    }
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
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| LedgerError::Write {
                path: path.clone(),
                source,
            })?;
        self.dirty = false;
        Ok(())
    }
}

/// `(node_id, sequence)` from an output line: `"delivery":{...}` at the top
/// level (JSON output) or under `unmapped` (OCSF output).
pub fn delivery_of(line: &str) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let d = v
        .get("delivery")
        .or_else(|| v.get("unmapped")?.get("delivery"))?;
    Some((
        d.get("node_id")?.as_str()?.to_owned(),
        d.get("sequence")?.as_u64()?,
    ))
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
        std::fs::write(
            &out,
            "{\"kind\":\"exec\",\"delivery\":{\"node_id\":\"n1\",\"sequence\":7}}\n\
             {\"class_uid\":1007,\"unmapped\":{\"delivery\":{\"node_id\":\"n2\",\"sequence\":3}}}\n\
             not json\n",
        )
        .unwrap();
        let l = Ledger::open(Some(&state), Some(&out)).unwrap();
        assert_eq!(l.high_water("n1"), 7);
        assert_eq!(l.high_water("n2"), 3);
        assert_eq!(l.check("n1", 7), Verdict::Duplicate);
        std::fs::write(&state, "{garbage").unwrap();
        let e = Ledger::open(Some(&state), None).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
