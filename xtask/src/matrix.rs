//! `cargo xtask test-kernels [LABEL...]`: every kernel of the matrix in a
//! VM, plus the host kernel natively, each running `spyglass-kernel-check`;
//! one table of kernel x probe x check. Any kernel that fails a check,
//! does not boot, hangs or cannot be fetched fails the command, with its
//! reason and console tail.
use std::{
    fmt::Write as _, os::unix::process::CommandExt, path::Path, process::Command, time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    kernels::{self, Kernel},
    vm::{self, Accel},
};

/// The result of one kernel.
struct Row {
    /// `host` or a matrix label.
    label: String,
    /// What the kernel stands for, or how it ran.
    about: String,
    /// The check's report, when there is one.
    report: Option<Value>,
    /// Why there is no report, or none passed.
    failure: Option<String>,
    seconds: u64,
}

impl Row {
    fn ok(&self) -> bool {
        self.failure.is_none() && self.report.as_ref().is_some_and(|r| r["ok"] == true)
    }
}

/// Run the matrix (`labels` empty: every kernel) and the host.
pub fn run(labels: &[String], write_docs: bool) -> Result<()> {
    let selected = kernels::select(labels)?;
    crate::setup::apt(&["qemu-system-x86"])?;
    let bins = crate::image::build_static(&[
        ("spyglass-agent", "spyglass-agent"),
        ("spyglass-e2e", "spyglass-kernel-check"),
    ])?;
    let dir = kernels::dir();
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initramfs.cpio");
    vm::initramfs(&bins, &initrd)?;

    let mut rows = vec![host_row(&bins)];
    let mut accel = accel_choice();
    for k in &selected {
        let row = match accel {
            Some(a) => kernel_row(k, &initrd, a).0,
            None => {
                let (row, boot) = kernel_row(k, &initrd, Accel::Kvm);
                if kvm_unusable(boot.as_ref()) {
                    eprintln!(
                        "xtask: qemu cannot run a KVM guest here ({}); software emulation from here on",
                        vm::tail(row.failure.as_deref().unwrap_or(""), 2).replace('\n', " / ")
                    );
                    accel = Some(Accel::Tcg);
                    kernel_row(k, &initrd, Accel::Tcg).0
                } else {
                    accel = Some(Accel::Kvm);
                    row
                }
            }
        };
        rows.push(row);
    }
    let table = render(&rows);
    println!("{table}");
    std::fs::write(dir.join("matrix.md"), &table)?;
    if write_docs {
        write_docs_files(&rows, &table)?;
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "kernel matrix: {failed:?} failed (table above, also in {}/matrix.md)",
            dir.display()
        );
    }
    Ok(())
}

/// About the check's worst case, every wait of every check timing out
/// (agent start 60 s, 15 event checks of one or two 20 s waits, the loss
/// and degraded checks' own agents): about 520 s. A passing run takes
/// seconds. A VM gets this plus its boot.
const CHECK_BUDGET: Duration = Duration::from_secs(600);

/// How the VMs run: `SPYGLASS_VM_ACCEL=kvm` or `tcg` forces one; by
/// default KVM is tried first (where `/dev/kvm` exists) and software
/// emulation takes over for good only when qemu itself fails within
/// seconds (on these machines it aborts at once with "failed to set MSR
/// 0x10a"), see [`kvm_unusable`].
fn accel_choice() -> Option<Accel> {
    match std::env::var("SPYGLASS_VM_ACCEL").as_deref() {
        Ok("kvm") => Some(Accel::Kvm),
        Ok("tcg") => Some(Accel::Tcg),
        _ if !Path::new("/dev/kvm").exists() => Some(Accel::Tcg),
        _ => None,
    }
}

/// The same check on this machine's kernel, natively, bounded like a VM.
fn host_row(bins: &Path) -> Row {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("xtask: kernel check on the host ({})", release.trim());
    let mut row = Row {
        label: "host".into(),
        about: "this machine, natively".into(),
        report: None,
        failure: None,
        seconds: 0,
    };
    let report_file = kernels::dir().join("host-report.log");
    let _ = std::fs::remove_file(&report_file);
    let started = std::time::Instant::now();
    // Its own process group: a timeout ends the check with its agents and
    // helpers.
    let child = Command::new(bins.join("spyglass-kernel-check"))
        .process_group(0)
        .arg("run")
        .arg("--agent")
        .arg(bins.join("spyglass-agent"))
        .arg("--report")
        .arg(&report_file)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            row.failure = Some(format!("cannot run spyglass-kernel-check: {e}"));
            return row;
        }
    };
    let timeout = CHECK_BUDGET;
    let timed_out = loop {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            break false;
        }
        if started.elapsed() > timeout {
            // SAFETY: signalling the process group this function created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(&report_file).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix(vm::REPORT_MARK).map(str::to_owned))
    });
    let boot = vm::Boot {
        qemu_failed: false,
        report,
        console_tail: "(the check's output is above)".into(),
        timed_out,
        took: started.elapsed(),
    };
    judge(&mut row, &boot, timeout);
    row
}

/// Fetch, boot, read the report.
fn kernel_row(k: &Kernel, initrd: &Path, accel: Accel) -> (Row, Option<vm::Boot>) {
    let mut row = Row {
        label: k.label.into(),
        about: k.stands_for.into(),
        report: None,
        failure: None,
        seconds: 0,
    };
    let fetched = match kernels::fetch(k) {
        Ok(f) => f,
        Err(e) => {
            row.failure = Some(format!("not fetched: {e:#}"));
            return (row, None);
        }
    };
    row.about = format!("{} ({}, {accel:?})", k.stands_for, fetched.package);
    let timeout = match accel {
        Accel::Kvm => CHECK_BUDGET + Duration::from_secs(30),
        Accel::Tcg => CHECK_BUDGET + Duration::from_secs(120),
    };
    eprintln!(
        "xtask: booting {} ({accel:?}, up to {}s)",
        fetched.package,
        timeout.as_secs()
    );
    let work = kernels::dir().join(k.label).join("run");
    match vm::boot(&fetched.vmlinuz, initrd, &work, accel, timeout) {
        Ok(boot) => {
            judge(&mut row, &boot, timeout);
            (row, Some(boot))
        }
        Err(e) => {
            row.failure = Some(format!("qemu: {e:#}"));
            (row, None)
        }
    }
}

/// A boot's outcome into the row: the report, or why there is none.
fn judge(row: &mut Row, boot: &vm::Boot, timeout: Duration) {
    row.seconds = boot.took.as_secs();
    match boot.report.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(report)) => row.report = Some(report),
        Some(Err(e)) => row.failure = Some(format!("unreadable report: {e}")),
        None => {
            let why = if boot.timed_out {
                format!("the VM did not finish in {} s (hung)", timeout.as_secs())
            } else if boot.qemu_failed {
                "qemu failed".to_owned()
            } else {
                "the VM stopped without a report (did not boot, or the check crashed)".to_owned()
            };
            row.failure = Some(format!("{why}; console tail:\n{}", boot.console_tail));
        }
    }
}

/// KVM is given up for software emulation only when qemu itself failed
/// within seconds (a host that cannot run the guest), never after a guest
/// that ran and failed or hung: that is a result.
fn kvm_unusable(boot: Option<&vm::Boot>) -> bool {
    boot.is_some_and(|b| b.report.is_none() && b.qemu_failed && b.took < Duration::from_secs(15))
}

fn release(r: &Row) -> String {
    r.report
        .as_ref()
        .and_then(|v| v["kernel"].as_str())
        .unwrap_or("-")
        .to_owned()
}

impl Row {
    /// The report's `list` ("probes" or "checks"); empty without a report.
    fn items(&self, list: &str) -> &[Value] {
        self.report
            .as_ref()
            .and_then(|v| v[list].as_array())
            .map_or(&[], Vec::as_slice)
    }
}

/// Probe programs and check names in first-seen order across rows.
fn names(rows: &[Row], list: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        for item in r.items(list) {
            if let Some(n) = item[key].as_str() {
                if !out.iter().any(|o| o == n) {
                    out.push(n.to_owned());
                }
            }
        }
    }
    out
}

fn find<'a>(r: &'a Row, list: &str, key: &str, name: &str) -> Option<&'a Value> {
    r.items(list).iter().find(|i| i[key] == name)
}

fn probe_cell(r: &Row, name: &str) -> String {
    match find(r, "probes", "program", name) {
        None => "-".into(),
        Some(p) if p["attached"] == true => match p["note"].as_str() {
            Some(note) if note.contains("signal->live") => "yes (signal->live)".into(),
            Some(note) if note.contains("group_dead") => "yes (group_dead)".into(),
            _ => "yes".into(),
        },
        Some(_) => "**no**".into(),
    }
}

fn check_cell(r: &Row, name: &str) -> String {
    match find(r, "checks", "check", name) {
        None => "-".into(),
        Some(c) if c["ok"] == true => "pass".into(),
        Some(_) => "**FAIL**".into(),
    }
}

/// The whole table, then each failure's details.
fn render(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| | {} |",
        rows.iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(t, "|---|{}", "---|".repeat(rows.len()));
    let row = |t: &mut String, head: &str, cells: Vec<String>| {
        let _ = writeln!(t, "| {head} | {} |", cells.join(" | "));
    };
    row(&mut t, "kernel", rows.iter().map(release).collect());
    row(
        &mut t,
        "result",
        rows.iter()
            .map(|r| {
                if r.ok() {
                    "pass".into()
                } else {
                    "**FAIL**".into()
                }
            })
            .collect(),
    );
    row(
        &mut t,
        "seconds",
        rows.iter().map(|r| r.seconds.to_string()).collect(),
    );
    for p in names(rows, "probes", "program") {
        row(
            &mut t,
            &format!("probe `{p}`"),
            rows.iter().map(|r| probe_cell(r, &p)).collect(),
        );
    }
    for c in names(rows, "checks", "check") {
        row(&mut t, &c, rows.iter().map(|r| check_cell(r, &c)).collect());
    }
    for r in rows {
        let _ = writeln!(t, "\n- `{}`: {}", r.label, r.about);
        if let Some(f) = &r.failure {
            let _ = writeln!(t, "  - **failed**: {}", f.replace('\n', "\n    "));
        }
        for c in r.items("checks") {
            if c["ok"] != true {
                let _ = writeln!(
                    t,
                    "  - **{}**: {}",
                    c["check"].as_str().unwrap_or("?"),
                    c["detail"].as_str().unwrap_or("")
                );
            }
        }
        for p in r.items("probes") {
            if p["attached"] != true {
                let _ = writeln!(
                    t,
                    "  - probe `{}` not attached: {}",
                    p["program"].as_str().unwrap_or("?"),
                    p["error"].as_str().unwrap_or("")
                );
            }
        }
    }
    t
}

/// docs/kernels.md (the whole table) and the README's kernel section.
fn write_docs_files(rows: &[Row], table: &str) -> Result<()> {
    let root = crate::root();
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let doc = format!(
        "# Kernel matrix\n\nGenerated by `cargo xtask test-kernels --write-docs` on {date}: \
         each kernel booted in qemu (2 vCPUs, 1 GiB, loopback only; KVM or software \
         emulation, as each row says) with the static agent and `spyglass-kernel-check`; \
         `host` is the build machine's own kernel, checked natively. `cargo xtask test` runs \
         the same matrix.\n\n{table}"
    );
    std::fs::write(root.join("docs/kernels.md"), doc)?;
    let mut summary = String::from(
        "| kernel | release | result | differs from the newest kernels |\n|---|---|---|---|\n",
    );
    for r in rows {
        let checks = r.items("checks").len();
        let passed = r.items("checks").iter().filter(|c| c["ok"] == true).count();
        let differs = if probe_cell(r, "sched_process_exit").contains("signal->live") {
            "exit: last thread found by `signal->live` (no `group_dead` in the record)"
        } else {
            "-"
        };
        let _ = writeln!(
            summary,
            "| {} | {} | {} ({passed}/{checks} checks) | {differs} |",
            r.label,
            release(r),
            if r.ok() { "pass" } else { "FAIL" }
        );
    }
    let readme = root.join("README.md");
    let text = std::fs::read_to_string(&readme)?;
    let (begin, end) = ("<!-- kernel-matrix -->", "<!-- /kernel-matrix -->");
    let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
        bail!("README.md has no {begin} ... {end} section to fill");
    };
    let new = format!("{}{begin}\n{summary}{}", &text[..a], &text[b..]);
    std::fs::write(&readme, new).context("writing README.md")?;
    eprintln!("xtask: wrote docs/kernels.md and the README's kernel table");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(report: Option<&str>, qemu_failed: bool, timed_out: bool, secs: u64) -> vm::Boot {
        vm::Boot {
            qemu_failed,
            report: report.map(str::to_owned),
            console_tail: "last console line".into(),
            timed_out,
            took: Duration::from_secs(secs),
        }
    }

    fn judged(b: &vm::Boot) -> Row {
        let mut row = Row {
            label: "k".into(),
            about: String::new(),
            report: None,
            failure: None,
            seconds: 0,
        };
        judge(&mut row, b, Duration::from_secs(600));
        row
    }

    #[test]
    fn no_report_is_never_a_pass_and_says_why() {
        let hung = judged(&boot(None, false, true, 600));
        assert!(!hung.ok());
        assert!(hung
            .failure
            .as_deref()
            .unwrap()
            .contains("did not finish in 600 s (hung)"));
        assert!(hung
            .failure
            .as_deref()
            .unwrap()
            .contains("last console line"));
        let crashed = judged(&boot(None, false, false, 9));
        assert!(crashed
            .failure
            .as_deref()
            .unwrap()
            .contains("without a report"));
        let garbled = judged(&boot(Some("{not json"), false, false, 9));
        assert!(!garbled.ok() && garbled.failure.unwrap().contains("unreadable report"));
        let failed_check = judged(&boot(Some(r#"{"ok":false,"checks":[]}"#), false, false, 9));
        assert!(!failed_check.ok());
        let passed = judged(&boot(Some(r#"{"ok":true,"checks":[]}"#), false, false, 9));
        assert!(passed.ok());
    }

    #[test]
    fn kvm_is_given_up_only_when_qemu_cannot_start_it() {
        assert!(kvm_unusable(Some(&boot(None, true, false, 1))));
        assert!(
            !kvm_unusable(Some(&boot(None, false, true, 300))),
            "a hang is a result"
        );
        assert!(
            !kvm_unusable(Some(&boot(None, true, false, 60))),
            "it ran a while"
        );
        assert!(!kvm_unusable(Some(&boot(Some("{}"), false, false, 5))));
        assert!(!kvm_unusable(None), "not fetched: not a KVM problem");
    }
}
