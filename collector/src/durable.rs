//! Acknowledged means on disk: group commit of the output file.
//!
//! Every batch written to the output file takes the next generation
//! number ([`Durability::wrote`]). One syncer thread runs `fdatasync(2)`
//! whenever something was written since its last sync: each sync covers
//! every generation written before it started, by all streams together,
//! and what is written while it runs is covered by the next one (group
//! commit: one `fdatasync` per round, never one per batch or event).
//! A stream waits for the sync covering a generation before its ack
//! ([`Durability::wait`]), but it need not stop writing meanwhile: the
//! waits are cancel-safe and ordered, so a stream keeps writing its next
//! batches while earlier ones are being synced (see `inflight.rs`).
//!
//! A failed sync fails every generation it covered, for good: they are
//! never acked, even if a later sync of the same file succeeds (after a
//! writeback error Linux reports the error once and marks the pages
//! clean, so a later success says nothing about them). The output's
//! directory is synced when the file is created or rotated ([`sync_dir`]).
//!
//! With a remote output (`remote.rs`: Kafka, the webhook), a generation
//! is acknowledged only once that output took it as well: the Kafka
//! transaction that carries it committed, or the webhook's receiver
//! answered 2xx to every POST carrying its lines.
use std::{
    fs::File,
    io,
    path::Path,
    sync::{Arc, Condvar, Mutex},
};

use tokio::sync::watch;

use crate::remote::Remote;

/// Failed sync ranges kept; more are merged into one (conservatively
/// failing the generations between them too: a resend beats a loss).
const MAX_FAILED_RANGES: usize = 16;

/// Why a generation is not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Its sync (or commit) failed: written, perhaps not kept; the
    /// stream's resends are written again.
    Sync(String),
    /// Kafka: its node was claimed by a newer stream (another replica's,
    /// or a reconnect) before it committed, so it was left out
    /// (`kafka/gate.rs`): the agent resends it where it is now.
    Fenced(String),
}

/// What the syncer has done: every generation up to `covered` went
/// through a sync, and those in `failed` went through one that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    pub covered: u64,
    /// (first, last generation, error) of each failed sync, oldest first.
    pub failed: Vec<(u64, u64, String)>,
}

impl SyncState {
    /// Generation `gen`: `None` while no sync has covered it yet; then
    /// `Ok` (on disk) or the error of the sync that covered it.
    pub fn outcome(&self, gen: u64) -> Option<Result<(), String>> {
        if gen > self.covered {
            return None;
        }
        match self
            .failed
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&gen))
        {
            Some((_, _, e)) => Some(Err(e.clone())),
            None => Some(Ok(())),
        }
    }

    /// A sync of every generation up to `target` ended with `result`.
    pub fn cover(&mut self, target: u64, result: Result<(), String>) {
        if target <= self.covered {
            return;
        }
        if let Err(e) = result {
            self.failed.push((self.covered + 1, target, e));
            if self.failed.len() > MAX_FAILED_RANGES {
                let first = self.failed[0].0;
                self.failed.remove(0);
                self.failed[0].0 = first;
            }
        }
        self.covered = target;
    }
}

/// The last generation written, and the file it was written to.
#[derive(Default)]
struct Written {
    gen: u64,
    file: Option<Arc<File>>,
}

struct Inner {
    written: Mutex<Written>,
    dirty: Condvar,
    synced: watch::Sender<SyncState>,
}

/// Generations written and synced; the syncer thread.
pub struct Durability {
    inner: Arc<Inner>,
    /// The remote output, which takes every generation too.
    remote: Option<Remote>,
}

impl Durability {
    /// Start the syncer thread (it lives as long as the process).
    pub fn start(remote: Option<Remote>) -> io::Result<Self> {
        let inner = Arc::new(Inner {
            written: Mutex::default(),
            dirty: Condvar::new(),
            synced: watch::Sender::new(SyncState::default()),
        });
        let syncer = inner.clone();
        std::thread::Builder::new()
            .name("output-sync".into())
            .spawn(move || syncer.run())?;
        Ok(Durability { inner, remote })
    }

    /// A batch was written to `file` (`None`: stdout, nothing to sync):
    /// its generation. Call it in the order of the writes.
    pub fn wrote(&self, file: Option<Arc<File>>) -> u64 {
        let mut w = self.inner.written.lock().expect("durability lock");
        w.gen += 1;
        w.file = file;
        self.inner.dirty.notify_one();
        w.gen
    }

    /// The remote output, when there is one.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// The last generation written (what a duplicate's ack waits for).
    pub fn written(&self) -> u64 {
        self.inner.written.lock().expect("durability lock").gen
    }

    /// Generation `gen`'s sync: `None` while none has covered it, then
    /// `Ok` (on disk, and taken by the remote output), the sync's error,
    /// or the remote receiver's refusal.
    pub fn outcome(&self, gen: u64) -> Option<Result<(), Failure>> {
        let file = self.inner.synced.borrow().outcome(gen)?;
        match (&self.remote, file) {
            (Some(r), Ok(())) => r.outcome(gen),
            (_, file) => Some(file.map_err(Failure::Sync)),
        }
    }

    /// Wait until a sync has covered generation `gen`: `Ok` once it is on
    /// disk, the sync's error if that sync failed. Cancel-safe.
    pub async fn wait(&self, gen: u64) -> io::Result<()> {
        let file = {
            let mut rx = self.inner.synced.subscribe();
            let state = rx
                .wait_for(|s| s.covered >= gen)
                .await
                .map_err(|_| io::Error::other("the output's syncer thread ended"))?;
            state.outcome(gen)
        };
        match file {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(io::Error::other(e)),
            None => unreachable!("waited until covered"),
        }
        match &self.remote {
            Some(r) => r.wait(gen).await.map_err(io::Error::other),
            None => Ok(()),
        }
    }
}

impl Inner {
    /// Sync whatever was written since the last sync, forever.
    fn run(&self) {
        let mut covered = 0;
        loop {
            let (target, file) = {
                let mut w = self.written.lock().expect("durability lock");
                while w.gen == covered {
                    w = self.dirty.wait(w).expect("durability lock");
                }
                (w.gen, w.file.clone())
            };
            let result = match file {
                Some(f) => f.sync_data().map_err(|e| format!("fdatasync: {e}")),
                None => Ok(()),
            };
            if let Err(e) = &result {
                tracing::warn!(error = %e, first_generation = covered + 1, last_generation = target,
                    "fdatasync of the output failed; the batches it covered are not acked");
            }
            self.synced.send_modify(|s| s.cover(target, result));
            covered = target;
        }
    }
}

/// fsync a directory, so the names created or renamed in it last.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Write `data` to `path` durably: a temporary file, fsynced, renamed
/// over `path`, then the directory fsynced. A crash leaves the old file
/// or the new one, never a torn one.
pub fn replace_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    spyglass_proto::files::write_private(&tmp, data)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sync_covers_every_generation_written_before_it() {
        let d = Durability::start(None).unwrap();
        let dir = std::env::temp_dir().join(format!("durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Arc::new(File::create(dir.join("f")).unwrap());
        let g1 = d.wrote(Some(f.clone()));
        let g2 = d.wrote(Some(f));
        d.wait(g2).await.unwrap();
        d.wait(g1).await.unwrap();
        assert!(d.inner.synced.borrow().covered >= g2);
        assert!(d.inner.synced.borrow().failed.is_empty());
        replace_file(&dir.join("state"), b"x").unwrap();
        assert_eq!(std::fs::read(dir.join("state")).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_sync_fails_what_it_covered_for_good() {
        let mut s = SyncState::default();
        assert_eq!(s.outcome(1), None);
        s.cover(2, Ok(()));
        s.cover(5, Err("EIO".into()));
        // a later success (the error was reported once) clears nothing
        s.cover(7, Ok(()));
        s.cover(6, Ok(()));
        let outcomes: Vec<_> = (1..=8).map(|g| s.outcome(g)).collect();
        let err = Some(Err("EIO".to_owned()));
        assert_eq!(
            outcomes,
            [
                Some(Ok(())),
                Some(Ok(())),
                err.clone(),
                err.clone(),
                err,
                Some(Ok(())),
                Some(Ok(())),
                None
            ]
        );
    }

    #[test]
    fn failed_ranges_are_bounded_and_merged_conservatively() {
        let mut s = SyncState::default();
        for i in 0..40u64 {
            s.cover(2 * i + 1, Err(format!("e{i}")));
            s.cover(2 * i + 2, Ok(()));
        }
        assert_eq!(s.failed.len(), MAX_FAILED_RANGES);
        // the first failure is still failed, if under a later error
        assert!(s.outcome(1).unwrap().is_err());
        assert_eq!(s.outcome(80), Some(Ok(())));
        assert_eq!(s.outcome(79), Some(Err("e39".into())));
    }
}
