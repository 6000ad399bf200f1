//! What /proc says about a container process at exec: the resolved
//! executable (`/proc/PID/exe`) and the container's overlay upper layer
//! (`upperdir=` of the root mount in `/proc/PID/mountinfo`). Best effort:
//! a process that already exited gives None.
use std::path::{Path, PathBuf};

/// The executable the process runs, as the kernel names it (absolute,
/// symlinks resolved; `/memfd:NAME (deleted)` for memfd, ` (deleted)`
/// suffix for an unlinked file).
pub fn exe(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// `upperdir=` of the overlay mounted at `/` in the process's mount
/// namespace (`mountinfo` line: fields, ` - `, fstype, source, options).
pub fn upperdir_of_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if pre.split(' ').nth(4)? != "/" {
            return None;
        }
        let mut post = post.split(' ');
        if post.next()? != "overlay" {
            return None;
        }
        post.nth(1)?
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
    })
}

pub fn upperdir(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    upperdir_of_mountinfo(&text)
}

/// Whether `path` (absolute, in the container) exists in the upper layer:
/// written or changed after the container started. The upper directory is
/// a host path; from inside a container with the host's PID namespace it
/// is reached through `/proc/1/root`.
pub fn in_upper(upper: &Path, path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return false;
    }
    let direct = upper.join(rel);
    if direct.symlink_metadata().is_ok() {
        return true;
    }
    Path::new("/proc/1/root")
        .join(upper.strip_prefix("/").unwrap_or(upper))
        .join(rel)
        .symlink_metadata()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_root_overlay_upperdir() {
        let text = "\
1180 1100 0:321 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/c/snapshots/1/fs,upperdir=/var/lib/c/snapshots/9/fs,workdir=/var/lib/c/snapshots/9/work
1181 1180 0:322 / /proc rw,nosuid - proc proc rw
";
        assert_eq!(
            upperdir_of_mountinfo(text),
            Some(PathBuf::from("/var/lib/c/snapshots/9/fs"))
        );
        assert_eq!(
            upperdir_of_mountinfo("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
        assert_eq!(upperdir_of_mountinfo("garbage"), None);
    }
}
