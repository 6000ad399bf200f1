//! The on-disk spool: every batch bound for the collector is written here
//! first (one file per batch, named by its sequence) and deleted when the
//! collector acknowledges it. Unacknowledged batches survive collector
//! outages and agent restarts and are replayed in order.
//!
//! Bounded by `max_bytes`: when full, the oldest batches are dropped and
//! the number of events they held is returned so the caller can report it
//! as a loss. Sequence numbers are reserved in blocks: `next-seq` holds
//! the end of the block in use, so sequences never repeat across restarts
//! (a restart skips the rest of a block; the collector's dedupe needs
//! only increasing numbers) and a batch costs no write of the counter.
//!
//! Durability (what survives a power cut): a batch file is written under
//! a temporary name, fdatasync'ed, then renamed to its own name, so a
//! name never holds half a batch. The renames are made durable together
//! by one fsync of the directory ([`Spool::commit`]): a group commit that
//! the exporter runs every `batch_linger_ms` and after a few batches,
//! never per event. A batch is durable once committed; until then a power
//! cut can lose it (it was in memory too). `next-seq` and `stream-id` are
//! written the same way and the directory synced before the numbers they
//! give out are used, so a sequence never repeats after a power cut.
//! `loss-totals` is not synced: after a power cut it can be older.
//!
//! A stored batch is also kept in memory, as the same [`Bytes`] the gRPC
//! stream sends (up to [`MEMORY_BYTES`]), so sending never reads back a
//! file written a moment ago; batches beyond that, and those found at
//! start, are read from disk.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use crate::event::LossTotals;

/// Sequence numbers reserved per write of `next-seq`.
const SEQUENCE_BLOCK: u64 = 1024;

/// Highest sequence number a spool uses or trusts (2^62: over a million
/// years at a million batches a second). A `next-seq` or batch file above
/// it (corruption, or someone writing the spool directory) would make the
/// counter wrap to 0 past u64::MAX, and every later number repeat under
/// one stream id: such a counter is untrusted (a new stream id) and such
/// files are dropped at open and reported lost.
pub const MAX_SEQUENCE: u64 = 1 << 62;
/// Stored batches kept in memory at most (bytes), for sending.
pub const MEMORY_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}. Set collector.spool_dir to a writable directory")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A batch read back from the spool.
#[derive(Debug, Clone)]
pub struct Stored {
    pub data: Bytes,
    /// Read from its file (written by an earlier run, or past the memory
    /// bound): not known to be intact.
    pub from_disk: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    bytes: u64,
    events: u64,
    /// The batch itself, while the memory bound allows.
    data: Option<Bytes>,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: BTreeMap<u64, Entry>,
    total: u64,
    /// Bytes of batches held in memory.
    in_memory: u64,
    next_seq: u64,
    /// End of the reserved block (what `next-seq` says).
    reserved: u64,
    stream_id: String,
    /// The stream's loss totals as last saved.
    loss_totals: LossTotals,
    /// Batches renamed into place since the last directory sync.
    uncommitted: usize,
    /// Events in batch files dropped at open ([`Spool::take_dropped_at_open`]).
    dropped_at_open: u64,
}

/// A random id for a new sequence space (32 hex digits from the kernel's
/// random source).
fn new_stream_id() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The stream id and counter of the spool's sequence space, when both
/// can be trusted: `stream-id` a valid id and `next-seq` a number. A
/// counter that is missing, empty, torn or garbage could restart below
/// numbers the collector has already seen, which it would acknowledge as
/// duplicates and the agent then delete: such a space is not continued.
fn trusted_space(dir: &Path) -> Option<(String, u64)> {
    let id = std::fs::read_to_string(dir.join("stream-id")).ok()?;
    let id = id.trim();
    if id.is_empty() || spyglass_proto::limits::stream_id_problem(id).is_some() {
        return None;
    }
    let seq = std::fs::read_to_string(dir.join("next-seq")).ok()?;
    let seq: u64 = seq
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_SEQUENCE).contains(n))?;
    Some((id.to_owned(), seq))
}

/// Write `data` to `tmp`, flush it to disk (fdatasync), and rename it to
/// `path`. The new name is durable once the directory is synced.
fn write_synced(tmp: &Path, path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    spyglass_proto::files::write_private(tmp, data)?;
    std::fs::File::open(tmp)?.sync_data()?;
    std::fs::rename(tmp, path)
}

/// fsync a directory: the names created, renamed and removed in it are
/// on disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The file holding the stream's loss totals.
const TOTALS_FILE: &str = "loss-totals";

/// The loss totals as saved: the counters in their field order, one
/// line, space-separated.
fn totals_text(t: &LossTotals) -> String {
    let v = [
        t.exec,
        t.exit,
        t.fork,
        t.network,
        t.read_errors,
        t.connect_untracked,
        t.decode_errors,
        t.spool_dropped,
    ];
    let mut s = v.map(|n| n.to_string()).join(" ");
    s.push('\n');
    s
}

/// Saved loss totals, or None when the text is not 8 numbers.
fn parse_totals(text: &str) -> Option<LossTotals> {
    let v: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [exec, exit, fork, network, read_errors, connect_untracked, decode_errors, spool_dropped] =
        v[..]
    else {
        return None;
    };
    Some(LossTotals {
        exec,
        exit,
        fork,
        network,
        read_errors,
        connect_untracked,
        decode_errors,
        spool_dropped,
    })
}

/// The loss totals saved for the stream in `dir`: none saved yet is
/// zero; an unreadable file is zero too, said in the log (the totals then
/// under-count what the stream lost before).
fn saved_totals(dir: &Path) -> LossTotals {
    let path = dir.join(TOTALS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_totals(&text).unwrap_or_else(|| {
            tracing::warn!(file = %path.display(), "loss totals unreadable; counting from zero");
            LossTotals::default()
        }),
        Err(_) => LossTotals::default(),
    }
}

/// Start a new sequence space: a fresh stream id, saved.
fn new_space(dir: &Path) -> Result<String, SpoolError> {
    let had_one = dir.join("stream-id").exists() || dir.join("next-seq").exists();
    // a new stream counts its losses from zero
    let _ = std::fs::remove_file(dir.join(TOTALS_FILE));
    let id = new_stream_id();
    let id_path = dir.join("stream-id");
    let tmp = dir.join("stream-id.tmp");
    write_synced(&tmp, &id_path, &id)
        .and_then(|()| sync_dir(dir))
        .map_err(|source| SpoolError::File {
            path: id_path.clone(),
            source,
        })?;
    if had_one {
        tracing::warn!(spool = %dir.display(), stream_id = %id, "spool sequence counter or stream id unreadable; starting a new stream id so no new batch is taken for a duplicate");
    }
    Ok(id)
}

fn file_name(seq: u64, events: u64) -> String {
    format!("{seq:020}-{events}.batch")
}

/// (sequence, events) of a batch file's name. The event count is capped
/// at the most a batch can hold: a name is not to be trusted further
/// (losses are summed from it).
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".batch")?;
    let (seq, events) = stem.split_once('-')?;
    let events: u64 = events.parse().ok()?;
    let most = spyglass_proto::limits::MAX_BATCH_EVENTS as u64;
    Some((seq.parse().ok()?, events.min(most)))
}

impl Spool {
    /// Open (creating) the spool directory and index what is in it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let derr = |source| SpoolError::Dir {
            path: dir.to_owned(),
            source,
        };
        spyglass_proto::files::private_dir(dir).map_err(derr)?;
        let mut entries = BTreeMap::new();
        let mut total = 0;
        let mut out_of_range = 0;
        for f in std::fs::read_dir(dir).map_err(derr)?.flatten() {
            let name = f.file_name();
            if let Some((seq, events)) = parse_name(&name.to_string_lossy()) {
                if !(1..=MAX_SEQUENCE).contains(&seq) {
                    tracing::warn!(file = %f.path().display(), events, "spool batch numbered outside 1..=2^62; dropped and reported lost");
                    let _ = std::fs::remove_file(f.path());
                    out_of_range = u64::saturating_add(out_of_range, events);
                    continue;
                }
                let bytes = f.metadata().map_or(0, |m| m.len());
                total += bytes;
                entries.insert(
                    seq,
                    Entry {
                        bytes,
                        events,
                        data: None,
                    },
                );
            }
        }
        let after_files = entries.keys().next_back().map_or(1, |s| s + 1);
        let (stream_id, next_seq) = match trusted_space(dir) {
            Some((id, stored)) => (id, stored.max(after_files)),
            None => (new_space(dir)?, after_files),
        };
        let loss_totals = saved_totals(dir);
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            entries,
            total,
            in_memory: 0,
            next_seq,
            reserved: 0,
            stream_id,
            loss_totals,
            uncommitted: 0,
            dropped_at_open: out_of_range,
        })
    }

    /// Events in batch files dropped at open (numbered out of range);
    /// returned once, for the exporter to report as a loss.
    pub fn take_dropped_at_open(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_at_open)
    }

    /// The id of this spool's sequence space.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The stream's loss totals as last saved (zero for a new stream).
    pub fn loss_totals(&self) -> LossTotals {
        self.loss_totals
    }

    /// Save the stream's loss totals (write then rename: a crash leaves
    /// the old or the new totals, never half of them).
    pub fn save_loss_totals(&mut self, t: &LossTotals) -> Result<(), SpoolError> {
        if *t == self.loss_totals {
            return Ok(());
        }
        let p = self.dir.join(TOTALS_FILE);
        let tmp = self.dir.join("loss-totals.tmp");
        spyglass_proto::files::write_private(&tmp, totals_text(t))
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|source| SpoolError::File { path: p, source })?;
        self.loss_totals = *t;
        Ok(())
    }

    /// Events in the stored batch `seq`.
    pub fn events_in(&self, seq: u64) -> u64 {
        self.entries.get(&seq).map_or(0, |e| e.events)
    }

    fn path(&self, seq: u64) -> Option<PathBuf> {
        self.entries
            .get(&seq)
            .map(|e| self.dir.join(file_name(seq, e.events)))
    }

    /// The next sequence number. Its block is persisted before use.
    pub fn next_sequence(&mut self) -> Result<u64, SpoolError> {
        if self.next_seq >= self.reserved {
            let end = self.next_seq + SEQUENCE_BLOCK;
            let p = self.dir.join("next-seq");
            let tmp = self.dir.join("next-seq.tmp");
            // durable before any number of the block is used
            write_synced(&tmp, &p, end.to_string())
                .and_then(|()| sync_dir(&self.dir))
                .map_err(|source| SpoolError::File { path: p, source })?;
            self.reserved = end;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Store an encoded batch. Returns the events of older batches dropped
    /// to stay within the bound.
    pub fn push(&mut self, seq: u64, events: u64, data: Bytes) -> Result<u64, SpoolError> {
        let mut dropped = 0;
        while self.total + data.len() as u64 > self.max_bytes {
            let Some((&old, _)) = self.entries.iter().next() else {
                break;
            };
            dropped += self.remove(old).map_or(0, |e| e.events);
        }
        // written and synced, then renamed: a crash or a power cut never
        // leaves a half batch under its name
        let p = self.dir.join(file_name(seq, events));
        let tmp = self.dir.join("batch.tmp");
        write_synced(&tmp, &p, &data).map_err(|source| SpoolError::File { path: p, source })?;
        self.uncommitted += 1;
        let bytes = data.len() as u64;
        self.total += bytes;
        let keep = self.in_memory + bytes <= MEMORY_BYTES;
        if keep {
            self.in_memory += bytes;
        }
        self.entries.insert(
            seq,
            Entry {
                bytes,
                events,
                data: keep.then_some(data),
            },
        );
        Ok(dropped)
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let path = self.path(seq)?;
        let e = self.entries.remove(&seq)?;
        let _ = std::fs::remove_file(path);
        self.total -= e.bytes;
        if e.data.is_some() {
            self.in_memory -= e.bytes;
        }
        Some(e)
    }

    /// Batches stored since the last [`Spool::commit`].
    pub fn uncommitted(&self) -> usize {
        self.uncommitted
    }

    /// Group commit: one fsync of the directory makes every batch stored
    /// since the last commit durable (their data was synced before their
    /// rename). Nothing to do when nothing was stored.
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        if self.uncommitted == 0 {
            return Ok(());
        }
        sync_dir(&self.dir).map_err(|source| SpoolError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        self.uncommitted = 0;
        Ok(())
    }

    /// The collector acknowledged `seq`.
    pub fn ack(&mut self, seq: u64) {
        self.remove(seq);
    }

    /// The first stored sequence at or after `from`.
    pub fn next_after(&self, from: u64) -> Option<u64> {
        self.entries.range(from..).next().map(|(&s, _)| s)
    }

    /// A stored batch: the bytes held in memory (shared, not copied), or
    /// read from its file.
    pub fn read(&self, seq: u64) -> Result<Option<Stored>, SpoolError> {
        let Some(e) = self.entries.get(&seq) else {
            return Ok(None);
        };
        if let Some(data) = &e.data {
            return Ok(Some(Stored {
                data: data.clone(),
                from_disk: false,
            }));
        }
        let p = self.dir.join(file_name(seq, e.events));
        std::fs::read(&p)
            .map(|v| {
                Some(Stored {
                    data: Bytes::from(v),
                    from_disk: true,
                })
            })
            .map_err(|source| SpoolError::File { path: p, source })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn survives_reopen_and_keeps_sequences_increasing() {
        let d = dir("reopen");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        let a = s.next_sequence().unwrap();
        s.push(a, 3, Bytes::from_static(b"aaa")).unwrap();
        let b = s.next_sequence().unwrap();
        s.push(b, 1, Bytes::from_static(b"b")).unwrap();
        s.ack(a);
        assert_eq!((a, b), (1, 2));
        let id = s.stream_id().to_owned();
        assert_eq!(id.len(), 32);
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.stream_id(), id, "the sequence space survives a restart");
        assert_eq!(s.len(), 1);
        assert_eq!(s.next_after(0), Some(2));
        let b2 = s.read(2).unwrap().unwrap();
        assert_eq!((&b2.data[..], b2.from_disk), (&b"b"[..], true));
        s.ack(2);
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.len(), 0);
        let c = s.next_sequence().unwrap();
        assert!(c > b, "sequence survives an empty spool: {c}");
        // a restart in the middle of a block skips its rest, never repeats
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        assert!(s.next_sequence().unwrap() > c);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_untrusted_counter_starts_a_new_stream_id() {
        let d = dir("untrusted");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        let seq = s.next_sequence().unwrap();
        s.push(seq, 1, Bytes::from_static(b"a")).unwrap();
        let first = s.stream_id().to_owned();
        assert_eq!(Spool::open(&d, 1 << 20).unwrap().stream_id(), first);
        let mut seen = vec![first];
        for bad in ["", "12x", "0", "\0\0\0"] {
            std::fs::write(d.join("next-seq"), bad).unwrap();
            let mut s = Spool::open(&d, 1 << 20).unwrap();
            assert!(
                !seen.contains(&s.stream_id().to_owned()),
                "next-seq {bad:?}"
            );
            seen.push(s.stream_id().to_owned());
            // numbers still never collide with the batch files kept
            assert!(s.next_sequence().unwrap() > seq);
        }
        std::fs::write(d.join("stream-id"), "").unwrap();
        assert!(!seen.contains(&Spool::open(&d, 1 << 20).unwrap().stream_id().to_owned()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn spool_files_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("modes");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        let seq = s.next_sequence().unwrap();
        s.push(seq, 1, Bytes::from_static(b"a")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        for f in std::fs::read_dir(&d).unwrap().flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            3,
            "batch, next-seq, stream-id"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn loss_totals_continue_with_the_stream_and_restart_with_a_new_one() {
        let d = dir("totals");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.loss_totals(), LossTotals::default());
        s.next_sequence().unwrap(); // the stream's counter is saved
        let t = LossTotals {
            exec: 1,
            exit: 2,
            fork: 3,
            network: 4,
            read_errors: 5,
            connect_untracked: 6,
            decode_errors: 7,
            spool_dropped: 8,
        };
        s.save_loss_totals(&t).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join(TOTALS_FILE)).unwrap(),
            "1 2 3 4 5 6 7 8\n"
        );
        assert_eq!(parse_totals(&totals_text(&t)), Some(t));
        for bad in ["", "1 2 3", "1 2 3 4 5 6 7 8 9", "1 2 3 4 5 6 7 x"] {
            assert_eq!(parse_totals(bad), None, "{bad:?}");
        }
        assert_eq!(Spool::open(&d, 1 << 20).unwrap().loss_totals(), t);
        // a torn file counts from zero (and says so)
        std::fs::write(d.join(TOTALS_FILE), "1 2").unwrap();
        assert_eq!(
            Spool::open(&d, 1 << 20).unwrap().loss_totals(),
            LossTotals::default()
        );
        // a new stream id starts from zero
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        s.next_sequence().unwrap();
        s.save_loss_totals(&t).unwrap();
        assert_eq!(Spool::open(&d, 1 << 20).unwrap().loss_totals(), t);
        std::fs::write(d.join("next-seq"), "").unwrap();
        assert_eq!(
            Spool::open(&d, 1 << 20).unwrap().loss_totals(),
            LossTotals::default()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stored_batches_wait_for_one_group_commit() {
        let d = dir("commit");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.uncommitted(), 0);
        for _ in 0..3 {
            let seq = s.next_sequence().unwrap();
            s.push(seq, 1, Bytes::from_static(b"a")).unwrap();
        }
        assert_eq!(s.uncommitted(), 3);
        // every batch is under its name, whole, and no temp file is left
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        assert_eq!(names.iter().filter(|n| n.ends_with(".batch")).count(), 3);
        s.commit().unwrap();
        assert_eq!(s.uncommitted(), 0);
        // a commit of nothing is free, and a spool directory that is gone
        // is an error naming it
        s.commit().unwrap();
        let seq = s.next_sequence().unwrap();
        s.push(seq, 1, Bytes::from_static(b"b")).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        let e = s.commit().unwrap_err().to_string();
        assert!(e.contains(&d.display().to_string()), "{e}");
    }

    #[test]
    fn full_spool_drops_oldest_and_counts_events() {
        let d = dir("full");
        let mut s = Spool::open(&d, 10).unwrap();
        let x = |n| Bytes::from(vec![b'x'; n]);
        assert_eq!(s.push(1, 100, x(4)).unwrap(), 0);
        assert_eq!(s.push(2, 100, x(4)).unwrap(), 0);
        // 3 x 4 bytes > 10: batch 1 and its 100 events are dropped
        assert_eq!(s.push(3, 100, x(4)).unwrap(), 100);
        assert_eq!(s.next_after(0), Some(2));
        assert_eq!(s.push(4, 7, x(6)).unwrap(), 100);
        assert_eq!(s.next_after(0), Some(3));
        assert_eq!(s.bytes(), 10);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn batches_are_sent_from_memory_up_to_its_bound_then_read_from_disk() {
        let d = dir("memory");
        let mut s = Spool::open(&d, 4 * MEMORY_BYTES).unwrap();
        let big = Bytes::from(vec![7u8; (MEMORY_BYTES / 2) as usize]);
        for seq in 1..=3 {
            s.push(seq, 1, big.clone()).unwrap();
        }
        // the first two are the very bytes pushed (shared, not copied)
        let first = s.read(1).unwrap().unwrap();
        assert!(!first.from_disk);
        assert_eq!(first.data.as_ptr(), big.as_ptr());
        assert_eq!(s.in_memory, MEMORY_BYTES);
        // the third is over the bound: same content, from its file
        let third = s.read(3).unwrap().unwrap();
        assert!(third.from_disk);
        assert_eq!(third.data, big);
        assert_ne!(third.data.as_ptr(), big.as_ptr());
        s.ack(1);
        assert_eq!(s.in_memory, MEMORY_BYTES / 2);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
