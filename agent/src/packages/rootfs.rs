//! Reading files of a container's root filesystem without leaving it.
//!
//! The root (`/proc/PID/root` or a test directory) is opened once; every
//! file under it is opened with `openat2(2)` and `RESOLVE_IN_ROOT`, so the
//! kernel resolves `..` and symlinks (absolute ones too) as if the root
//! were `/`: a symlink such as `var/lib/dpkg -> /etc` planted by an image
//! stays inside the image, and no race between checking and opening can
//! escape it. `RESOLVE_NO_MAGICLINKS` refuses `/proc/self/...`-style links.
//! `openat2` needs Linux 5.6 (the agent supports 5.10 and later).
//!
//! Package database files (`status`, `*.list`, `installed`) are opened with
//! `O_NOFOLLOW`: a symlinked database file is refused with an error, as is
//! anything that is not a regular file (`O_NONBLOCK` keeps a FIFO from
//! blocking the open). Configuration files such as `etc/os-release`, which
//! are symlinks on most distributions, follow symlinks (inside the root).
//! Every read is bounded: the size is checked before reading and the read
//! stops one byte past the limit, so a file growing meanwhile is caught.
use super::PackagesError;
use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

/// Most entries read from one directory (`status.d`).
const MAX_DIR_ENTRIES: usize = 100_000;

/// The kernel's `struct open_how` (linux/openat2.h); libc's is
/// `#[non_exhaustive]`, so it cannot be built outside libc.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// An opened root filesystem (`/proc/PID/root` or a directory).
pub struct RootFs {
    path: PathBuf,
    fd: OwnedFd,
}

impl RootFs {
    /// Open the root; it stays valid (the same mount) while held.
    pub fn open(root: &Path) -> Result<Self, PackagesError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)
            .map_err(|source| PackagesError::OpenRoot {
                root: root.to_path_buf(),
                source,
            })?;
        Ok(RootFs {
            path: root.to_path_buf(),
            fd: file.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `openat2(root, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
    fn openat2(&self, rel: &str, flags: i32) -> io::Result<OwnedFd> {
        let c = CString::new(rel).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        // RESOLVE_IN_ROOT may answer EAGAIN when a rename raced the walk.
        for _ in 0..8 {
            // SAFETY: `c` is a NUL-terminated string and `how` a properly
            // laid out open_how, both alive for the call; the size passed is
            // the struct's own. The returned fd, when >= 0, is new and owned
            // by nobody else.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    std::ptr::from_ref(&how),
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh descriptor returned by the kernel.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EAGAIN) {
                return Err(err);
            }
        }
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }

    fn read_err(&self, file: &str, source: io::Error) -> PackagesError {
        PackagesError::Read {
            root: self.path.clone(),
            file: file.to_string(),
            source,
        }
    }

    /// A package database file: a regular file, not a symlink, at most
    /// `limit` bytes. `Ok(None)` when it does not exist.
    pub fn read_db_file(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, PackagesError> {
        self.read_bounded(rel, limit, libc::O_NOFOLLOW)
    }

    /// A configuration file (symlinks followed inside the root).
    pub fn read_config_file(
        &self,
        rel: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, PackagesError> {
        self.read_bounded(rel, limit, 0)
    }

    fn read_bounded(
        &self,
        rel: &str,
        limit: u64,
        extra: i32,
    ) -> Result<Option<Vec<u8>>, PackagesError> {
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | extra;
        let fd = match self.openat2(rel, flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) && extra & libc::O_NOFOLLOW != 0 => {
                return Err(self.not_regular(rel, "a symlink"));
            }
            Err(e) => return Err(self.read_err(rel, e)),
        };
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(|e| self.read_err(rel, e))?;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(self.not_regular(rel, what));
        }
        let too_large = |size| PackagesError::TooLarge {
            root: self.path.clone(),
            file: rel.to_string(),
            size,
            limit,
        };
        if meta.len() > limit {
            return Err(too_large(meta.len()));
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        (&mut file)
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.read_err(rel, e))?;
        if buf.len() as u64 > limit {
            return Err(too_large(buf.len() as u64));
        }
        Ok(Some(buf))
    }

    fn not_regular(&self, rel: &str, what: &'static str) -> PackagesError {
        PackagesError::NotRegular {
            root: self.path.clone(),
            file: rel.to_string(),
            what,
        }
    }

    /// The names in a directory (symlinks followed inside the root), sorted;
    /// `Ok(None)` when it does not exist.
    pub fn list_dir(&self, rel: &str) -> Result<Option<Vec<String>>, PackagesError> {
        let fd = match self.openat2(rel, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(self.read_err(rel, e)),
        };
        // Our own descriptor, reached through procfs: listing it reveals
        // names only; each file is then opened through openat2 again.
        let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&via).map_err(|e| self.read_err(rel, e))? {
            let entry = entry.map_err(|e| self.read_err(rel, e))?;
            if names.len() == MAX_DIR_ENTRIES {
                return Err(PackagesError::TooManyEntries {
                    root: self.path.clone(),
                    dir: rel.to_string(),
                    limit: MAX_DIR_ENTRIES,
                });
            }
            // Non-UTF-8 names cannot be package names: skipped.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        drop(fd);
        names.sort_unstable();
        Ok(Some(names))
    }

    /// Resolve the symlinks of an absolute `path` as the kernel would with
    /// this root as `/` (`/bin/sh` -> `/usr/bin/dash`, `/usr/bin/awk` ->
    /// `/usr/bin/mawk` through `/etc/alternatives`), for an exec path
    /// reported as the program asked for it. The walk holds a descriptor
    /// per resolved directory and opens one plain name at a time under it
    /// (`O_PATH | O_NOFOLLOW`), reading a symlink's target from its own
    /// descriptor; `..` pops a descriptor and stops at the root, and an
    /// absolute target restarts at the root: no race can lead the walk out
    /// of the root. At most 40 links (the kernel's limit).
    pub fn resolve(&self, path: &str) -> Result<String, PackagesError> {
        let err = |source| self.read_err(path, source);
        if !path.starts_with('/') || path.len() > super::paths::PATH_MAX {
            return Err(err(io::Error::from(io::ErrorKind::InvalidInput)));
        }
        let mut done: Vec<(String, OwnedFd)> = Vec::new();
        let mut todo: Vec<String> = path.rsplit('/').map(str::to_string).collect();
        let mut links = 0;
        while let Some(comp) = todo.pop() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            let dir = done
                .last()
                .map_or(self.fd.as_raw_fd(), |(_, fd)| fd.as_raw_fd());
            let fd = open_name(dir, &comp).map_err(err)?;
            let Some(target) = link_target(&fd).map_err(err)? else {
                done.push((comp, fd));
                continue;
            };
            links += 1;
            if links > 40 {
                return Err(err(io::Error::from_raw_os_error(libc::ELOOP)));
            }
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(target.rsplit('/').map(str::to_string));
        }
        let mut out = String::with_capacity(path.len());
        for (name, _) in &done {
            out.push('/');
            out.push_str(name);
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(out)
    }

    /// The target of a symlink directly under the root (`bin`, `lib`...),
    /// or None when it is not a symlink (or missing).
    pub fn top_level_link(&self, name: &str) -> Option<String> {
        let c = CString::new(name).ok()?;
        let mut buf = [0u8; 256];
        // SAFETY: `c` is NUL-terminated, `buf` is writable for its length,
        // and the root descriptor is open for the call.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n <= 0 || n as usize >= buf.len() {
            return None;
        }
        String::from_utf8(buf[..n as usize].to_vec()).ok()
    }
}

/// The target of the symlink `fd` (an `O_PATH | O_NOFOLLOW` descriptor),
/// or None when it is not a symlink.
fn link_target(fd: &OwnedFd) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; super::paths::PATH_MAX];
    // SAFETY: `fd` is open for the call, the empty path is NUL-terminated
    // and `buf` is writable for its length. readlinkat with an empty path
    // reads the link `fd` itself refers to (Linux 2.6.39+).
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        // ENOENT/EINVAL: not a symlink.
        return match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)` of one plain name (no `/`,
/// not `.` or `..`): a lookup in that directory only.
fn open_name(dir: i32, name: &str) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is NUL-terminated and alive for the call; `dir` is a
    // descriptor the caller holds open.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
