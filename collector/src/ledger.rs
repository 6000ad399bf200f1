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
    #[error("cannot repair output file {path} after a crash: {source}")]
    Repair {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The dedupe key of a batch, as the state file writes it.
pub fn space(node_id: &str, stream_id: &str) -> String {
    format!("{node_id}/{stream_id}")
}

/// A key of the state file (or of [`scan`]) as node and stream: node ids
/// hold no `/`.
fn split_space(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}

/// What to do with an incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: write it.
    Write,
    /// Already written: acknowledge only.
    Duplicate,
}

/// Sequence spaces kept per node by default (`--dedupe-streams-per-node`).
/// An agent starts a new stream id only with a new spool (or one whose
/// counter it cannot trust): it uses one at a time.
pub const DEFAULT_STREAMS_PER_NODE: usize = 16;

/// The high-water mark of one stream of a node, and when it was last
/// written (a tick of the ledger's clock), for eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    stream: String,
    high: u64,
    used: u64,
}

#[derive(Debug)]
pub struct Ledger {
    /// Per node, its streams' marks (at most `per_node`).
    nodes: HashMap<String, Vec<Mark>>,
    /// Most streams kept per node: one more evicts the one written
    /// longest ago, so a node inventing stream ids cannot grow the state.
    per_node: usize,
    clock: u64,
    path: Option<PathBuf>,
    dirty: bool,
    /// Where the output file stood at the last save.
    saved_at: Option<OutputAt>,
}

/// An output file and its length at a save: the marks saved cover every
/// line before `len`, so a start only reads the file from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputAt {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

impl OutputAt {
    /// `file` (already open) of length `len`.
    pub fn of(file: &std::fs::File, len: u64) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ok()?;
        Some(OutputAt {
            dev: m.dev(),
            ino: m.ino(),
            len,
        })
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            nodes: HashMap::new(),
            per_node: DEFAULT_STREAMS_PER_NODE,
            clock: 0,
            path: None,
            dirty: false,
            saved_at: None,
        }
    }
}

/// The state file: every stream's mark, the one written longest ago first.
#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    version: u32,
    streams: Vec<(String, String, u64)>,
    /// The output file when saved (older collectors wrote none and
    /// ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<OutputAt>,
}

impl Ledger {
    /// Load the state file (missing is fine), then raise marks from the
    /// output file's `delivery` fields: only those after the length the
    /// state file recorded, if the output is still that file and at least
    /// that long (the marks saved cover the lines before), else all of
    /// them. At most `per_node` streams are kept per node.
    pub fn open(
        state: Option<&Path>,
        output: Option<&Path>,
        per_node: usize,
    ) -> Result<Self, LedgerError> {
        let mut ledger = Ledger {
            path: state.map(Path::to_owned),
            per_node: per_node.max(1),
            ..Ledger::default()
        };
        if let Some(p) = state {
            if let Ok(text) = std::fs::read(p) {
                let text = String::from_utf8_lossy(&text);
                if let Err(message) = ledger.load_state(&text) {
                    // A power cut can leave it empty or torn (it is saved
                    // durably, but an older collector did not): the
                    // output file still says what was written.
                    tracing::warn!(
                        path = %p.display(),
                        bytes = text.len(),
                        error = %message,
                        "dedupe state file is empty or corrupt; ignoring it and rebuilding \
                         from the output file (batches only in rotated files may be written \
                         again if resent)"
                    );
                    ledger.nodes.clear();
                    ledger.dirty = true;
                }
            }
        }
        if let Some(out) = output {
            let from = ledger.saved_at.take().and_then(|at| {
                let f = std::fs::File::open(out).ok()?;
                let now = OutputAt::of(&f, f.metadata().ok()?.len())?;
                (now.dev == at.dev && now.ino == at.ino && now.len >= at.len).then_some(at.len)
            });
            if let Ok(bytes) = read_from(out, from.unwrap_or(0)) {
                let start = from.unwrap_or(0);
                let (marks, clean_end) = scan(&bytes);
                for (key, seq) in marks {
                    let (node, stream) = split_space(&key);
                    ledger.observe(node, stream, seq);
                }
                if clean_end < bytes.len() {
                    let clean_end = start + clean_end as u64;
                    tracing::warn!(
                        path = %out.display(),
                        cut_bytes = start + bytes.len() as u64 - clean_end,
                        "output ended in a torn batch (crash); cutting it off, the agent resends it"
                    );
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(out)
                        .and_then(|f| f.set_len(clean_end))
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

    /// Take the marks of a state file: this version's, oldest first, or
    /// an older collector's map of `node/stream` to sequence.
    fn load_state(&mut self, text: &str) -> Result<(), String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v.get("version").is_some() {
            let f: StateFile = serde_json::from_value(v).map_err(|e| e.to_string())?;
            for (node, stream, seq) in f.streams {
                self.observe(&node, &stream, seq);
            }
            self.saved_at = f.output;
        } else {
            let old: HashMap<String, u64> = serde_json::from_value(v).map_err(|e| e.to_string())?;
            for (key, seq) in old {
                let (node, stream) = split_space(&key);
                self.observe(node, stream, seq);
            }
        }
        Ok(())
    }

    /// Raise the mark of `node`'s `stream` to `seq`, and make it the one
    /// used last; a stream new to a node with `per_node` streams takes the
    /// place of the one used longest ago.
    fn observe(&mut self, node: &str, stream: &str, seq: u64) {
        self.clock += 1;
        let used = self.clock;
        let marks = self.nodes.entry(node.to_owned()).or_default();
        if let Some(m) = marks.iter_mut().find(|m| m.stream == stream) {
            m.high = m.high.max(seq);
            m.used = used;
            return;
        }
        if marks.len() >= self.per_node {
            if let Some(oldest) = (0..marks.len()).min_by_key(|&i| marks[i].used) {
                marks.swap_remove(oldest);
            }
        }
        marks.push(Mark {
            stream: stream.to_owned(),
            high: seq,
            used,
        });
    }

    /// Classify a batch (does not record it).
    pub fn check(&self, node: &str, stream: &str, seq: u64) -> Verdict {
        let high = self
            .nodes
            .get(node)
            .and_then(|marks| marks.iter().find(|m| m.stream == stream))
            .map(|m| m.high);
        match high {
            Some(h) if seq <= h => Verdict::Duplicate,
            _ => Verdict::Write,
        }
    }

    /// Forget every sequence space of `node` (a node evicted from the
    /// agent table).
    pub fn forget_node(&mut self, node: &str) {
        self.dirty |= self.nodes.remove(node).is_some();
    }

    /// Forget `node`'s `stream` (a write whose fdatasync failed: the
    /// resend must be written again; a duplicate line beats a loss).
    pub fn forget_stream(&mut self, node: &str, stream: &str) {
        if let Some(marks) = self.nodes.get_mut(node) {
            marks.retain(|m| m.stream != stream);
            self.dirty = true;
        }
    }

    /// The batch was written.
    pub fn record(&mut self, node: &str, stream: &str, seq: u64) {
        self.observe(node, stream, seq);
        self.dirty = true;
    }

    /// Sequence spaces kept, all nodes together.
    pub fn len(&self) -> usize {
        self.nodes.values().map(Vec::len).sum()
    }

    #[cfg(test)]
    pub fn high_water(&self, node: &str, stream: &str) -> u64 {
        self.nodes
            .get(node)
            .and_then(|marks| marks.iter().find(|m| m.stream == stream))
            .map_or(0, |m| m.high)
    }

    /// The state file's text: every mark, the one used longest ago first.
    fn state_text(&self, output: Option<OutputAt>) -> String {
        let mut all: Vec<(&str, &Mark)> = self
            .nodes
            .iter()
            .flat_map(|(n, marks)| marks.iter().map(move |m| (n.as_str(), m)))
            .collect();
        all.sort_by_key(|(_, m)| m.used);
        let f = StateFile {
            version: 2,
            streams: all
                .into_iter()
                .map(|(n, m)| (n.to_owned(), m.stream.clone(), m.high))
                .collect(),
            output,
        };
        serde_json::to_string(&f).expect("strings and numbers serialize")
    }

    /// Save if anything changed, durably (a temp file, fsynced, renamed
    /// over the state file, the directory fsynced), with where the output
    /// file stands (`output`: between two batches, the marks cover every
    /// line before it).
    pub fn save(&mut self, output: Option<OutputAt>) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty && output == self.saved_at {
            return Ok(());
        }
        let text = self.state_text(output);
        crate::durable::replace_file(path, text.as_bytes()).map_err(|source| {
            LedgerError::Write {
                path: path.clone(),
                source,
            }
        })?;
        self.dirty = false;
        self.saved_at = output;
        Ok(())
    }
}

/// The bytes of `path` from offset `from` on.
fn read_from(path: &Path, from: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The `delivery` object as this collector writes it.
#[derive(serde::Deserialize)]
struct DeliveryTail<'a> {
    #[serde(borrow)]
    node_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    stream_id: std::borrow::Cow<'a, str>,
    sequence: u64,
    index: Option<u64>,
    count: Option<u64>,
}

/// The fast path of [`delivery_of`] for a JSON line, whose `delivery` is
/// its last top-level field: the line is checked to be one JSON value
/// without building it (no allocation), then only the object after the
/// last `,"delivery":` is read. That key cannot be inside a string (a
/// quote there is escaped), and the object must be followed by exactly
/// the line's closing brace, so it is a field of the top-level object
/// (the last of its name, as a full parse would keep). Anything else
/// (OCSF, foreign lines) takes the full parse.
fn delivery_tail(line: &[u8]) -> Option<(String, u64, bool)> {
    const KEY: &[u8] = b",\"delivery\":";
    let body = line.strip_suffix(b"}")?;
    let at = body.windows(KEY.len()).rposition(|w| w == KEY)?;
    let d: DeliveryTail<'_> = serde_json::from_slice(&body[at + KEY.len()..]).ok()?;
    serde_json::from_slice::<serde::de::IgnoredAny>(line).ok()?;
    let last = match (d.index, d.count) {
        (Some(i), Some(c)) => i + 1 == c,
        _ => true,
    };
    Some((space(&d.node_id, &d.stream_id), d.sequence, last))
}

/// `(space, sequence, last line of its batch)` from an output line:
/// `"delivery":{...}` at the top level (JSON) or under `unmapped` (OCSF).
pub fn delivery_of(line: &[u8]) -> Option<(String, u64, bool)> {
    delivery_tail(line).or_else(|| delivery_full(line))
}

/// [`delivery_of`] by a full parse of the line.
fn delivery_full(line: &[u8]) -> Option<(String, u64, bool)> {
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
        assert_eq!(l.check("a", "s", 1), Verdict::Write);
        l.record("a", "s", 1);
        l.record("a", "s", 2);
        assert_eq!(l.check("a", "s", 2), Verdict::Duplicate);
        assert_eq!(l.check("a", "s", 1), Verdict::Duplicate);
        assert_eq!(l.check("a", "s", 3), Verdict::Write);
        assert_eq!(
            l.check("b", "s", 1),
            Verdict::Write,
            "nodes are independent"
        );
        assert_eq!(
            l.check("a", "t", 1),
            Verdict::Write,
            "streams are independent"
        );
        // a gap (batches dropped by the agent's spool) is accepted
        assert_eq!(l.check("a", "s", 10), Verdict::Write);
    }

    #[test]
    fn the_fast_delivery_read_agrees_with_a_full_parse() {
        let d =
            r#""delivery":{"node_id":"n\u0031","stream_id":"s","sequence":9,"index":1,"count":2}"#;
        let lines = [
            format!(r#"{{"kind":"exec","process":{{"argv":["a"]}},{d}}}"#),
            // the key's text inside a string, after the real field
            format!(
                r#"{{"kind":"exec",{d},"x":",\"delivery\":{{\"node_id\":\"evil\",\"sequence\":99}}"}}"#
            ),
            format!(r#"{{"class_uid":1007,"unmapped":{{{d}}}}}"#),
            format!(r#"{{"kind":"exec","delivery":{{"node_id":"old","sequence":1}},{d}}}"#),
            format!(r#"{{"kind":"exec","delivery":{{"node_id":"n","sequence":3,{d}}}}}"#),
            format!(r#"{{"kind":"exec",{d},"delivery":null}}"#),
            format!(r#"{{"kind":"exec","a":[,{d}}}"#),
            r#"{"kind":"exec","delivery":{"node_id":"n","stream_id":null,"sequence":4}}"#.into(),
        ];
        for line in &lines {
            assert_eq!(
                delivery_of(line.as_bytes()),
                delivery_full(line.as_bytes()),
                "{line}"
            );
        }
        assert_eq!(
            delivery_tail(lines[0].as_bytes()),
            Some(("n1/s".into(), 9, true)),
            "the collector's own line takes the fast path"
        );
        assert_eq!(
            delivery_of(lines[1].as_bytes()),
            Some(("n1/s".into(), 9, true))
        );
        assert_eq!(delivery_of(lines[6].as_bytes()), None, "not JSON");
    }

    #[test]
    fn a_start_reads_the_output_only_after_the_saved_length() {
        let dir = std::env::temp_dir().join(format!("ledger-at-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (state, out) = (dir.join("state.json"), dir.join("out.jsonl"));
        let line = |stream: &str, seq: u64, count: u64| {
            format!(
                "{{\"kind\":\"exec\",\"delivery\":{{\"node_id\":\"n1\",\"stream_id\":\"{stream}\",\"sequence\":{seq},\"index\":0,\"count\":{count}}}}}\n"
            )
        };
        // before the save: a batch of stream h, which the state (made
        // here by hand) does not hold, so it shows whether it is read
        let head = line("h", 3, 1);
        std::fs::write(&out, &head).unwrap();
        let f = std::fs::File::open(&out).unwrap();
        let at = OutputAt::of(&f, f.metadata().unwrap().len()).unwrap();
        let mut l = Ledger::open(Some(&state), None, 4).unwrap();
        l.record("n1", "s", 2);
        l.save(Some(at)).unwrap();
        let saved = std::fs::read_to_string(&state).unwrap();
        let want = format!(
            "\"output\":{{\"dev\":{},\"ino\":{},\"len\":{}}}",
            at.dev, at.ino, at.len
        );
        assert!(saved.contains(&want), "{saved}");
        // after it: batch 5 whole, then batch 6 torn by a crash
        let tail = format!("{}{}{{\"deli", line("s", 5, 1), line("s", 6, 2));
        std::fs::write(&out, format!("{head}{tail}")).unwrap();
        let l = Ledger::open(Some(&state), Some(&out), 4).unwrap();
        assert_eq!(l.high_water("n1", "s"), 5, "the tail raised the mark");
        assert_eq!(l.high_water("n1", "h"), 0, "the head was not read");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{head}{}", line("s", 5, 1)),
            "the torn batch is cut at its place in the whole file"
        );
        // another file (another inode) or a shorter one is read whole
        for other in [
            OutputAt {
                ino: at.ino + 1,
                ..at
            },
            OutputAt { len: 1 << 40, ..at },
        ] {
            let mut l = Ledger::open(Some(&state), None, 4).unwrap();
            l.save(Some(other)).unwrap();
            let l = Ledger::open(Some(&state), Some(&out), 4).unwrap();
            assert_eq!(l.high_water("n1", "h"), 3, "{other:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rebuilt_from_state_and_output() {
        let dir = std::env::temp_dir().join(format!("ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.json");
        let out = dir.join("out.jsonl");
        let mut l = Ledger::open(Some(&state), None, 4).unwrap();
        l.record("n1", "", 5);
        l.save(None).unwrap();
        // the output got further than the saved state before a crash
        let good = "{\"kind\":\"exec\",\"delivery\":{\"node_id\":\"n1\",\"stream_id\":\"\",\"sequence\":7,\"index\":0,\"count\":1}}\n\
             {\"class_uid\":1007,\"unmapped\":{\"delivery\":{\"node_id\":\"n2\",\"stream_id\":\"s\",\"sequence\":3,\"index\":1,\"count\":2}}}\n\
             not json\n";
        // batch 8 of n1 was torn by a crash: one of two lines, then half a line
        let torn = "{\"delivery\":{\"node_id\":\"n1\",\"stream_id\":\"\",\"sequence\":8,\"index\":0,\"count\":2}}\n{\"deli";
        std::fs::write(&out, format!("{good}{torn}")).unwrap();
        let l = Ledger::open(Some(&state), Some(&out), 4).unwrap();
        assert_eq!(l.high_water("n1", ""), 7);
        assert_eq!(l.high_water("n2", "s"), 3);
        assert_eq!(l.check("n1", "", 7), Verdict::Duplicate);
        assert_eq!(
            l.check("n1", "", 8),
            Verdict::Write,
            "a torn batch is written again"
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            good,
            "the torn tail is cut off"
        );
        // a torn or empty state file is ignored: the output rebuilds it
        for torn in ["{garbage", ""] {
            std::fs::write(&state, torn).unwrap();
            let l = Ledger::open(Some(&state), Some(&out), 4).unwrap();
            assert_eq!(l.high_water("n1", ""), 7, "{torn:?}");
            assert_eq!(l.high_water("n2", "s"), 3, "{torn:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_node_keeps_its_most_recently_written_streams() {
        let mut l = Ledger {
            per_node: 3,
            ..Ledger::default()
        };
        for (i, s) in ["s1", "s2", "s3"].iter().enumerate() {
            l.record("n", s, 10 + i as u64);
        }
        l.record("other", "x", 1);
        l.record("n", "s1", 20); // s2 is now the one written longest ago
        l.record("n", "s4", 1);
        assert_eq!(l.len(), 4);
        assert_eq!(l.high_water("n", "s2"), 0, "s2 evicted");
        assert_eq!(l.check("n", "s1", 20), Verdict::Duplicate);
        assert_eq!(l.check("n", "s3", 12), Verdict::Duplicate);
        assert_eq!(
            l.check("other", "x", 1),
            Verdict::Duplicate,
            "other nodes keep theirs"
        );
        for i in 0..1000 {
            l.record("n", &format!("made-up-{i}"), 1);
        }
        assert_eq!(l.len(), 4, "1000 invented streams keep the node at 3");
        assert_eq!(l.high_water("n", "made-up-999"), 1);
    }

    #[test]
    fn the_state_file_keeps_the_order_of_use_and_reads_the_old_format() {
        let mut l = Ledger {
            per_node: 2,
            ..Ledger::default()
        };
        l.record("n", "a", 1);
        l.record("n", "b", 2);
        l.record("n", "a", 3);
        let mut back = Ledger {
            per_node: 2,
            ..Ledger::default()
        };
        back.load_state(&l.state_text(None)).unwrap();
        back.observe("n", "c", 1);
        assert_eq!(
            (back.high_water("n", "a"), back.high_water("n", "b")),
            (3, 0),
            "b was used longest ago"
        );
        let mut old = Ledger::default();
        old.load_state(r#"{"n1/":5,"n2/s":3}"#).unwrap();
        assert_eq!(
            (old.high_water("n1", ""), old.high_water("n2", "s")),
            (5, 3)
        );
    }
}
