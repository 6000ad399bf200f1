//! Files only their owner may read: the agent's spool and state, the
//! collector's output and state hold every event of a node (argv,
//! addresses, container labels). Files are created 0600, directories
//! 0700; an existing directory is narrowed to 0700.
use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Mode of the files.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories.
pub const DIR_MODE: u32 = 0o700;

/// Create `dir` (and missing parents) 0700; an existing `dir` is set to
/// 0700 (its parents are left as they are).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Write `data` to a new or truncated file `path`, 0600 (an existing file
/// is narrowed to it).
pub fn write_private(path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // a file left from before (a stale temp file) keeps its mode otherwise
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    f.write_all(data.as_ref())
}

/// Create `dir` and missing parents 0700, leaving existing ones as they
/// are (for a directory that may be shared, such as a state file's).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Open `path` for appending, created 0600 when new.
pub fn append_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_dirs_are_the_owners_only() {
        let d = std::env::temp_dir().join(format!("private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700, "an existing directory is narrowed");
        private_dir(&d.join("a/b")).unwrap();
        assert_eq!(mode(&d.join("a/b")), 0o700);
        write_private(&d.join("f"), "x").unwrap();
        assert_eq!(mode(&d.join("f")), 0o600);
        std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&d.join("f"), "y").unwrap();
        assert_eq!(mode(&d.join("f")), 0o600, "a stale file is narrowed");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&d.join("c")).unwrap();
        assert_eq!(
            (mode(&d), mode(&d.join("c"))),
            (0o755, 0o700),
            "a shared parent is left"
        );
        drop(append_private(&d.join("g")).unwrap());
        assert_eq!(mode(&d.join("g")), 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
