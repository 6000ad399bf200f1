//! One kernel in a VM: an initramfs holding busybox, the static agent and
//! `spyglass-kernel-check`, booted with qemu (2 vCPUs, 1 GiB, no network
//! device: loopback only). The guest's init runs the check and writes its
//! JSON report to the second serial port; the first is the console, whose
//! tail explains a VM that did not report.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Marks the report line on the report port.
pub const REPORT_MARK: &str = "SPYGLASS-KERNEL-REPORT ";

/// The guest's /init: mounts, loopback up, the check, power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
echo "spyglass-vm: booted $(uname -r)"
/spyglass-kernel-check run --agent /spyglass-agent --report /dev/ttyS1
echo "spyglass-vm: check exited with $?"
poweroff -f
"#;

/// A newc ("070701") cpio archive, the format the kernel unpacks as its
/// initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Build the initramfs from the static binaries in `bins`.
pub fn initramfs(bins: &Path, dest: &Path) -> Result<()> {
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "run", "etc", "root"] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    c.char_dev("dev/console", 5, 1);
    c.file("init", 0o755, INIT.as_bytes());
    let busybox =
        std::fs::read("/bin/busybox").context("reading /bin/busybox (package busybox-static)")?;
    if crate::image::is_dynamic(&busybox)? {
        anyhow::bail!(
            "/bin/busybox is linked dynamically: the initramfs needs Debian's busybox-static"
        );
    }
    c.file("bin/busybox", 0o755, &busybox);
    for bin in ["spyglass-agent", "spyglass-kernel-check"] {
        let data = std::fs::read(bins.join(bin)).with_context(|| format!("reading {bin}"))?;
        c.file(bin, 0o755, &data);
    }
    std::fs::write(dest, c.finish()).with_context(|| format!("writing {}", dest.display()))
}

/// How qemu runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation (TCG): slower, works everywhere.
    Tcg,
}

/// What one boot gave.
pub struct Boot {
    /// qemu itself ended with a failure status (not the guest powering
    /// off, not a timeout).
    pub qemu_failed: bool,
    /// The report line's JSON, when the guest wrote one.
    pub report: Option<String>,
    /// The last lines of the console.
    pub console_tail: String,
    pub timed_out: bool,
    pub took: Duration,
}

/// Boot `vmlinuz` with `initrd`; give up after `timeout`.
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    work: &Path,
    accel: Accel,
    timeout: Duration,
) -> Result<Boot> {
    std::fs::create_dir_all(work)?;
    let console = work.join("console.log");
    let qemu_log = work.join("qemu.log");
    let report = work.join("report.log");
    let _ = std::fs::remove_file(&report);
    let serial = |p: &PathBuf| format!("file:{}", p.display());
    let mut cmd = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.args(["-smp", "2", "-m", "1024", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-nic", "none"])
        .arg("-serial")
        .arg(serial(&console))
        .arg("-serial")
        .arg(serial(&report))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&qemu_log)?);
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(&qemu_log).unwrap_or_default();
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let mut console_tail = tail(&console_text, 40);
    if status.is_some_and(|s| !s.success()) || !stderr.trim().is_empty() {
        console_tail.push_str(&format!("\n[qemu {status:?}] {}", stderr.trim()));
    }
    let report = std::fs::read_to_string(&report).ok().and_then(|t| {
        t.lines().find_map(|l| {
            l.trim_start_matches('\0')
                .strip_prefix(REPORT_MARK)
                .map(str::to_owned)
        })
    });
    Ok(Boot {
        qemu_failed: status.is_some_and(|s| !s.success()),
        report,
        console_tail,
        timed_out,
        took: started.elapsed(),
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.char_dev("dev/console", 5, 1);
        let out = c.finish();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 4, 0);
        // first header: inode 1, mode 040755, name "bin" (4 with NUL)
        assert_eq!(&out[6..14], b"00000001");
        assert_eq!(&out[14..22], b"000041ed");
        assert_eq!(&out[6 + 11 * 8..6 + 12 * 8], b"00000004");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("#!/bin/sh\n"));
        assert!(
            text.contains("00000005") && text.ends_with("TRAILER!!!\0\0\0\0"),
            "{text}"
        );
    }

    /// Real qemu (installed by `cargo xtask test`) on a file that is no
    /// kernel: a failure with qemu's own words, not a pass or a hang.
    #[test]
    fn a_kernel_that_does_not_boot_is_reported_with_qemu_s_words() {
        let work = crate::root().join("target/kernels/test-bogus");
        std::fs::create_dir_all(&work).unwrap();
        let kernel = work.join("vmlinuz");
        std::fs::write(&kernel, b"this is not a kernel image").unwrap();
        let initrd = work.join("initrd");
        std::fs::write(&initrd, Cpio::default().finish()).unwrap();
        let b = boot(&kernel, &initrd, &work, Accel::Tcg, Duration::from_secs(60))
            .expect("qemu-system-x86_64 runs (cargo xtask test installs it)");
        assert!(b.report.is_none());
        assert!(b.qemu_failed && !b.timed_out, "{}", b.console_tail);
        assert!(b.console_tail.contains("[qemu"), "{}", b.console_tail);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
