//! `cargo xtask fuzz TARGET [--seconds N | --cases N]`: run one fuzz
//! target (a proptest property test) for longer than `cargo test` does.
//!
//! `cargo test` runs every target with a few hundred cases (seconds in
//! all). Here one target runs with `PROPTEST_CASES=N` once, or round after
//! round with fresh random inputs until N seconds have passed. A failing
//! case is shrunk and saved by proptest under the crate's
//! `proptest-regressions/` directory, and replayed first by every later
//! run: commit that file with the fix (docs/testing.md).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// One target: the tests (a name filter) of one crate's test binary.
struct Target {
    name: &'static str,
    package: &'static str,
    /// `--lib`, or `--bin NAME`.
    binary: &'static [&'static str],
    filter: &'static str,
    about: &'static str,
}

const AGENT: &str = "spyglass-agent";
const COLLECTOR: &str = "spyglass-collector";
const LIB: &[&str] = &["--lib"];
const COLLECTOR_BIN: &[&str] = &["--bin", "spyglass-collector"];

const TARGETS: &[Target] = &[
    Target {
        name: "decode",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::decode::",
        about: "ring-buffer records: garbage, every truncation, flipped bytes",
    },
    Target {
        name: "policy",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::policy::",
        about: "policy YAML: generated from the schema, mutated, garbage",
    },
    Target {
        name: "config",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::config::",
        about: "agent TOML: the default's keys with edge values, mutated, garbage",
    },
    Target {
        name: "spool",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::spool::",
        about: "spool directories: odd names, torn counters, corrupt batches",
    },
    Target {
        name: "proc-status",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::proc::status_",
        about: "/proc/PID/status and stat with any task name",
    },
    Target {
        name: "proc-cmdline",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::proc::cmdline_",
        about: "/proc/PID/cmdline and kernel argument blocks",
    },
    Target {
        name: "proc-mountinfo",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::proc::mountinfo_",
        about: "/proc/PID/mountinfo: the root overlay's upper layer",
    },
    Target {
        name: "proc-net-tcp",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::proc::net_tcp_",
        about: "/proc/PID/net/tcp, tcp6, udp tables",
    },
    Target {
        name: "proc-cgroup",
        package: AGENT,
        binary: LIB,
        filter: "fuzz::proc::cgroup_",
        about: "/proc/PID/cgroup: the cgroup v2 line",
    },
    Target {
        name: "batch",
        package: COLLECTOR,
        binary: COLLECTOR_BIN,
        filter: "fuzz::batch_",
        about: "collector: codec scan, decode and validation of hostile batches",
    },
    Target {
        name: "identity",
        package: COLLECTOR,
        binary: COLLECTOR_BIN,
        filter: "fuzz::identity_",
        about: "collector: the --node-identities file and certificate bindings",
    },
    Target {
        name: "render",
        package: COLLECTOR,
        binary: COLLECTOR_BIN,
        filter: "fuzz::render_",
        about: "collector: JSON lines, OCSF and syslog of accepted batches",
    },
];

/// How long to run.
#[derive(Debug, PartialEq, Eq)]
enum Budget {
    Seconds(u64),
    Cases(u64),
}

/// Default run: one minute.
const DEFAULT_SECONDS: u64 = 60;
/// Cases in the first timed round; later rounds grow toward ~10 s each.
const FIRST_ROUND: u64 = 1000;

fn list() -> String {
    let mut s = String::from("fuzz targets (cargo xtask fuzz TARGET [--seconds N | --cases N]):\n");
    for t in TARGETS {
        s.push_str(&format!("  {:<16}{}\n", t.name, t.about));
    }
    s
}

fn parse(args: &[String]) -> Result<(String, Budget)> {
    let mut target = None;
    let mut budget = Budget::Seconds(DEFAULT_SECONDS);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = |flag: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{flag} needs a number\n{}", list()))?
                .parse()
                .with_context(|| format!("{flag} needs a whole number"))
        };
        match a.as_str() {
            "--seconds" => budget = Budget::Seconds(number("--seconds")?),
            "--cases" => budget = Budget::Cases(number("--cases")?),
            flag if flag.starts_with('-') => bail!("unknown option `{flag}`\n{}", list()),
            name if target.is_none() => target = Some(name.to_owned()),
            extra => bail!("one target at a time (`{extra}`)\n{}", list()),
        }
    }
    let Some(target) = target else {
        bail!("which target?\n{}", list());
    };
    Ok((target, budget))
}

/// Build the target's test binary; its path.
fn build(t: &Target) -> Result<PathBuf> {
    let out = crate::cargo()
        .args([
            "test",
            "--release",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--package", t.package])
        .args(t.binary)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !out.status.success() {
        bail!("building the tests of {} failed", t.package);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo named no test binary for {}", t.package))
}

/// Run the target's tests once with `cases` cases per property, from the
/// crate's directory (where proptest keeps `proptest-regressions/`).
fn round(t: &Target, exe: &Path, cases: u64) -> Result<()> {
    let dir = crate::root().join(t.package.trim_start_matches("spyglass-"));
    let out = Command::new(exe)
        .args([t.filter, "--test-threads=2"])
        .current_dir(dir)
        .env("PROPTEST_CASES", cases.to_string())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{} {} failed: {}", exe.display(), t.filter, out.status);
    }
    // libtest passes a filter that matches nothing: a renamed test must
    // not turn its target into a no-op
    if stdout.contains("running 0 tests") || !stdout.contains("test result: ok") {
        bail!(
            "fuzz target `{}`: no test matches `{}` in {} (renamed?): fix the table in xtask/src/fuzz.rs",
            t.name,
            t.filter,
            t.package
        );
    }
    Ok(())
}

/// Run `cargo xtask fuzz ARGS`.
pub fn run(args: &[String]) -> Result<()> {
    let (name, budget) = parse(args)?;
    if name == "list" {
        print!("{}", list());
        return Ok(());
    }
    let Some(t) = TARGETS.iter().find(|t| t.name == name) else {
        bail!("unknown fuzz target `{name}`\n{}", list());
    };
    let failed = |cases: u64| {
        format!(
            "fuzz target `{}` failed after about {cases} cases: the shrunk input is printed above \
             and saved under {}/proptest-regressions/; fix the bug, add a test, and commit that file",
            t.name,
            t.package.trim_start_matches("spyglass-")
        )
    };
    match budget {
        Budget::Cases(n) => {
            round(t, &build(t)?, n).with_context(|| failed(n))?;
            println!("fuzz {}: {n} cases per property passed", t.name);
        }
        Budget::Seconds(secs) => {
            // build first: the clock counts fuzzing, not compiling
            let exe = build(t)?;
            let end = Instant::now() + Duration::from_secs(secs);
            let (mut cases, mut total) = (FIRST_ROUND, 0u64);
            while Instant::now() < end {
                let started = Instant::now();
                round(t, &exe, cases).with_context(|| failed(total + cases))?;
                total += cases;
                // aim for rounds of ~10 s, never past the end by much
                let took = started.elapsed().as_secs_f64().max(0.01);
                let left = end.saturating_duration_since(Instant::now()).as_secs_f64();
                let aim = left.min(10.0);
                cases = ((cases as f64) * aim / took).clamp(100.0, 1e7) as u64;
            }
            println!(
                "fuzz {}: {total} cases per property passed in {secs} s",
                t.name
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_a_target_and_a_budget() {
        assert_eq!(
            parse(&args(&["decode"])).unwrap(),
            ("decode".into(), Budget::Seconds(60))
        );
        assert_eq!(
            parse(&args(&["policy", "--cases", "5000"])).unwrap(),
            ("policy".into(), Budget::Cases(5000))
        );
        assert_eq!(
            parse(&args(&["--seconds", "600", "spool"])).unwrap(),
            ("spool".into(), Budget::Seconds(600))
        );
        let e = parse(&args(&[])).unwrap_err().to_string();
        assert!(
            e.contains("which target") && e.contains("proc-net-tcp"),
            "{e}"
        );
        assert!(parse(&args(&["decode", "--cases"])).is_err());
        assert!(parse(&args(&["decode", "policy"])).is_err());
    }

    #[test]
    fn target_names_are_unique_and_filters_name_fuzz_modules() {
        let mut names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGETS.len());
        assert!(TARGETS.iter().all(|t| t.filter.starts_with("fuzz::")));
    }
}
