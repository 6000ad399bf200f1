//! Host checks before loading: privileges, BTF, kernel version, tracefs,
//! lockdown, cgroup v2. Each failure names the cause and the fix.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use super::probes::min_required_kernel;

/// Capabilities (bit numbers from linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "not enough privileges to load eBPF programs (effective capabilities {caps:#x}). \
         Run as root (sudo spyglass-agent), or grant CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE \
         and CAP_DAC_READ_SEARCH (Kubernetes: securityContext.capabilities.add)"
    )]
    NotPrivileged { caps: u64 },
    #[error(
        "no kernel BTF at {0}: this kernel was built without CONFIG_DEBUG_INFO_BTF. \
         Use a kernel with BTF (most distributions since 2020), or point `btf_path` at a \
         BTF file for this exact kernel"
    )]
    NoBtf(PathBuf),
    #[error("kernel {found} is too old: Spyglass needs {}.{} or newer", .need.0, .need.1)]
    KernelTooOld { found: String, need: (u32, u32) },
    #[error("cannot parse the kernel release `{0}`")]
    KernelRelease(String),
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}). \
         Mount it: `mount -t tracefs tracefs /sys/kernel/tracing` (in Kubernetes, mount the \
         host's /sys/kernel/tracing into the agent)"
    )]
    Tracefs(std::io::Error),
    #[error(
        "kernel lockdown is in `confidentiality` mode, which forbids eBPF programs that read \
         kernel memory. Boot with lockdown=integrity or none"
    )]
    Lockdown,
    #[error(
        "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified. Mount one \
         (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or set `cgroup_root` in the config"
    )]
    NoCgroup2,
}

/// What the checks found.
#[derive(Debug)]
pub struct Host {
    pub kernel: String,
}

/// Run every check; mount tracefs if it is missing.
pub fn check(btf_path: &Path) -> Result<Host, PreflightError> {
    let caps = effective_caps();
    if !has_bpf_privileges(caps) {
        return Err(PreflightError::NotPrivileged { caps });
    }
    if !btf_path.exists() {
        return Err(PreflightError::NoBtf(btf_path.to_owned()));
    }
    let kernel = kernel_release();
    let need = min_required_kernel();
    let found = parse_kernel_version(&kernel)
        .ok_or_else(|| PreflightError::KernelRelease(kernel.clone()))?;
    if found < need {
        return Err(PreflightError::KernelTooOld {
            found: kernel,
            need,
        });
    }
    if let Ok(mode) = std::fs::read_to_string("/sys/kernel/security/lockdown") {
        if mode.contains("[confidentiality]") {
            return Err(PreflightError::Lockdown);
        }
    }
    ensure_tracefs()?;
    raise_memlock(found);
    Ok(Host { kernel })
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

/// `CapEff:` from /proc/PID/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON (kernel 5.8+).
pub fn has_bpf_privileges(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `6.18.44-foo` -> (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Mount tracefs at /sys/kernel/tracing unless a tracefs is there (or at
/// the older debugfs path).
pub fn ensure_tracefs() -> Result<(), PreflightError> {
    if Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    let src = CString::new("tracefs").expect("no NUL");
    let dst = CString::new("/sys/kernel/tracing").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PreflightError::Tracefs(std::io::Error::last_os_error()));
    }
    info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones
/// use memory cgroup accounting and need nothing.
fn raise_memlock(kernel: (u32, u32)) {
    if kernel >= (5, 11) {
        return;
    }
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const rlim) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid v1/v2 hosts.
pub fn cgroup2_root() -> Result<PathBuf, PreflightError> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
        .ok_or(PreflightError::NoCgroup2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.8.0"), Some((5, 8)));
        assert_eq!(parse_kernel_version("4.19"), Some((4, 19)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!(parse_kernel_version("5.4.0").unwrap() < min_required_kernel());
    }

    #[test]
    fn capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).unwrap();
        assert!(has_bpf_privileges(caps));
        assert!(!has_bpf_privileges(0));
        assert!(has_bpf_privileges((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_bpf_privileges(1 << CAP_BPF));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
