//! Property tests ("fuzz targets") for every parser of input the agent does
//! not control: ring-buffer records, the policy and config files, the
//! spool directory, and the /proc files the snapshot reads. Each feeds its
//! parser garbage and mutations of valid input, and asserts that it never
//! panics and that what it accepts is within bounds (docs/testing.md).
//!
//! `cargo test` runs each with a small case count; `cargo xtask fuzz
//! TARGET` runs one for longer. A failing case is saved under
//! `agent/proptest-regressions/` and replayed first by every later run:
//! commit that file with the fix.
mod config;
mod decode;
mod policy;
mod proc;
mod spool;

use proptest::{prelude::*, test_runner::FileFailurePersistence};

/// Cases per property: `PROPTEST_CASES` when set (`cargo xtask fuzz`),
/// else `default` (sized so every target together adds seconds, not
/// minutes, to `cargo test --release`).
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// One change to a byte string: the structure-aware half of every target
/// starts from valid input and applies a few of these.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// XOR the byte at (index mod len) with a non-zero value.
    Flip(usize, u8),
    /// Set the byte at (index mod len).
    Set(usize, u8),
    /// Insert bytes at (index mod len+1).
    Insert(usize, Vec<u8>),
    /// Remove up to n bytes at (index mod len).
    Remove(usize, usize),
    /// Keep only the first (index mod len+1) bytes.
    Truncate(usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<usize>(), interesting_byte()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<usize>(), prop::collection::vec(interesting_byte(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1..16usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// Bytes parsers treat specially, more often than chance would give them.
pub fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(vec![
            0u8, 0xff, 0x7f, 0x80, b'\n', b' ', b'\t', b':', b'/', b'.', b'-', b'"', b'\'',
            b'#', b'[', b']', b'{', b'}', b'=', b',', b'\\', b'*', b'&', b'!', b'|', b'>',
        ]),
    ]
}

/// Apply `muts` to `bytes`, in order.
pub fn mutate(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, x) if len > 0 => bytes[i % len] ^= x,
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = *b,
            Mutation::Insert(i, b) => {
                let at = i % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let at = i % len;
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Text mutated as bytes, read back lossily (the parsers take `&str`).
pub fn mutate_text(text: &str, muts: &[Mutation]) -> String {
    String::from_utf8_lossy(&mutate(text.as_bytes().to_vec(), muts)).into_owned()
}

/// A temporary directory removed on drop (each case gets its own).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spyglass-fuzz-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
