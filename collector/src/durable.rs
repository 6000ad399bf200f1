//! Acknowledged means on disk: group commit of the output file.
//!
//! Every batch written to the output file takes the next generation
//! number. Before its ack is sent, the stream waits until a
//! `fdatasync(2)` of the file has covered its generation. One stream at
//! a time syncs (the leader); those that wrote meanwhile find their
//! generation covered by the leader's sync, or sync together next: one
//! `fdatasync` for every batch written by all streams while the last
//! one ran, never one per event. The output's directory is synced when
//! the file is created or rotated ([`sync_dir`]).
use std::{
    fs::File,
    io,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

/// Generations written and synced, and the file to sync.
#[derive(Default)]
pub struct Durability {
    /// (last generation written, the file it was written to)
    written: Mutex<(u64, Option<Arc<File>>)>,
    synced: AtomicU64,
    /// Held by the stream that syncs.
    leader: tokio::sync::Mutex<()>,
}

impl Durability {
    /// A batch was written to `file` (`None`: stdout, nothing to sync):
    /// its generation. Call it in the order of the writes.
    pub fn wrote(&self, file: Option<Arc<File>>) -> u64 {
        let mut w = self.written.lock().expect("durability lock");
        w.0 += 1;
        w.1 = file;
        w.0
    }

    /// The last generation written (what a duplicate's ack waits for).
    pub fn written(&self) -> u64 {
        self.written.lock().expect("durability lock").0
    }

    /// Wait until generation `gen` is on disk.
    pub async fn wait(&self, gen: u64) -> io::Result<()> {
        if self.synced.load(Ordering::Acquire) >= gen {
            return Ok(());
        }
        let _leader = self.leader.lock().await;
        if self.synced.load(Ordering::Acquire) >= gen {
            return Ok(());
        }
        let (target, file) = self.written.lock().expect("durability lock").clone();
        if let Some(f) = file {
            tokio::task::spawn_blocking(move || f.sync_data())
                .await
                .map_err(io::Error::other)??;
        }
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
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
        let d = Durability::default();
        let dir = std::env::temp_dir().join(format!("durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Arc::new(File::create(dir.join("f")).unwrap());
        let g1 = d.wrote(Some(f.clone()));
        let g2 = d.wrote(Some(f));
        d.wait(g1).await.unwrap();
        assert_eq!(d.synced.load(Ordering::Acquire), g2, "one sync for both");
        d.wait(g2).await.unwrap();
        replace_file(&dir.join("state"), b"x").unwrap();
        assert_eq!(std::fs::read(dir.join("state")).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
