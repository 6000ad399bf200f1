//! `cargo xtask`: set up the machine, build, run, test and benchmark.
//!
//! Every command that needs tools installs what is missing first, and
//! only what is missing: running it twice does nothing the second time.
// A command-line tool: its reports go to stdout.
#![allow(clippy::print_stdout)]
mod bench;
mod bench_fleet;
mod bench_memory;
mod bench_profiles;
mod bench_resources;
mod child;
mod compare;
mod fuzz;
mod image;
mod images;
mod kernels;
mod matrix;
mod oci;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  setup          install what is missing (Debian packages, rust-src, bpf-linker,
                 containerd started, test images imported)
  images         build the OCI test images and import them into containerd
  image          build the agent and collector images (static binaries) as
                 OCI archives in target/images/ (import with
                 `ctr -n k8s.io images import`, or push with any OCI tool)
  build          setup, then build target/release/spyglass-agent (eBPF embedded)
                 and target/release/spyglass-collector
  run [ARGS]     build, then run a local collector and the agent streaming to
                 it, with readable events on the terminal (ARGS go to
                 `spyglass-agent run`; try --format json)
  test [ARGS]    build, then run every test: unit, and privileged end-to-end
                 tests that load the real probes (ARGS go to cargo test);
                 without ARGS also lint (first), the kernel matrix and a
                 tiny comparison
  test-kernels [--write-docs] [LABEL...]
                 the kernel matrix: boot each kernel (5.10, 5.10-cloud, 6.1,
                 6.12; fetched from Debian's archive once, kept in
                 target/kernels/) in qemu with the static agent and
                 spyglass-kernel-check, and run the same check on the host;
                 prints kernel x probe x check (target/kernels/matrix.md);
                 --write-docs also rewrites docs/kernels.md and the README's
                 kernel table
  lint           rustfmt --check, and clippy with warnings as errors: the host
                 crates and the eBPF programs (built for bpfel-unknown-none);
                 `test` runs it
  bench [--quick] exec storm and loopback connect storm, agent off vs on;
                 collector ingest; the fleet view (--fleet, below); agent
                 memory under long and many arguments
                 (5000 execs of 4000 empty arguments; 65,536 live processes of
                 4 KiB of arguments: pid_max is raised for the run)
  bench --memory [--quick]
                 only the memory part
  bench --resources [--quick]
                 the resource sampler's cost: 200 containers of 25 processes,
                 the agent's CPU at the default sampling interval vs
                 practically off (bench-results/resources.md)
  bench --delivery [--quick]
                 only agent -> collector: end-to-end latency and collector
                 ingest (durable spool and acks included)
                 SPYGLASS_BENCH_AGENT=PATH / SPYGLASS_BENCH_COLLECTOR=PATH
                 make any bench run other binaries (a before figure)
  bench --profiles [--quick]
                 bytes per exec and per connect reaching the SIEM (the
                 collector's JSON lines) with each export profile: full,
                 security, findings (bench-results/profiles.md)
  bench --fleet [--quick]
                 a synthetic fleet of 1,000 nodes x 100 containers (--quick:
                 50) through the collector's gRPC ingest; the fleet view's
                 questions timed on its store (bench-results/fleet.md)
  bench --compare [--tiny]
                 Spyglass vs auditd vs bpftrace vs nothing on exec, connect,
                 unrelated-syscall and mixed workloads, plus a zero-loss ramp;
                 writes bench-results/compare.{md,svg}
  fuzz TARGET [--seconds N | --cases N]
                 run one fuzz target (a property test over hostile input) for
                 N seconds (default 60) or N cases; `cargo xtask fuzz list`
                 lists them (decode, policy, config, spool, proc-*, batch,
                 render). `test` runs each with a few hundred cases; a failure
                 is saved under CRATE/proptest-regressions/: commit it
  ci             what .ci/run does: test, then a tiny bench to check it runs
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "setup" => {
            setup::run()?;
            setup::test_tools()
        }
        "build" => build(),
        "lint" => {
            setup::run()?;
            lint()
        }
        "images" => images::import(),
        "image" => {
            setup::run()?;
            image::build()
        }
        "run" => {
            build()?;
            run_agent(&rest)
        }
        "test" => {
            build()?;
            // The agent image test runs the image under containerd.
            image::build()?;
            setup::test_tools()?;
            test(&rest)
        }
        "test-kernels" => {
            setup::run()?;
            let write_docs = rest.iter().any(|a| a == "--write-docs");
            let labels: Vec<String> = rest
                .iter()
                .filter(|a| !a.starts_with("--"))
                .cloned()
                .collect();
            matrix::run(&labels, write_docs)
        }
        "bench" if rest.iter().any(|a| a == "--compare") => {
            build()?;
            setup::bench_tools()?;
            let tiny = rest.iter().any(|a| a == "--tiny");
            compare::run(if tiny {
                compare::Size::Tiny
            } else {
                compare::Size::Full
            })
        }
        "bench" if rest.iter().any(|a| a == "--delivery") => {
            build()?;
            print!(
                "{}",
                bench::collector_bench(rest.iter().any(|a| a == "--quick"))?
            );
            Ok(())
        }
        "bench" if rest.iter().any(|a| a == "--profiles") => {
            build()?;
            print!(
                "{}",
                bench_profiles::run(rest.iter().any(|a| a == "--quick"))?
            );
            Ok(())
        }
        "bench" if rest.iter().any(|a| a == "--fleet") => {
            build()?;
            print!("{}", bench_fleet::run(rest.iter().any(|a| a == "--quick"))?);
            Ok(())
        }
        "bench" if rest.iter().any(|a| a == "--resources") => {
            build()?;
            bench_resources::main(rest.iter().any(|a| a == "--quick"))
        }
        "bench" if rest.iter().any(|a| a == "--memory") => {
            build()?;
            let sizes = bench_memory::Sizes::new(rest.iter().any(|a| a == "--quick"));
            print!("{}", bench_memory::run(&sizes)?);
            Ok(())
        }
        "bench" => {
            build()?;
            bench::run(rest.iter().any(|a| a == "--quick"))
        }
        "fuzz" => fuzz::run(&rest),
        // internal: the benchmark's load generator (a separate process)
        "loadgen" => bench::loadgen(&rest),
        "ci" => {
            build()?;
            setup::test_tools()?;
            test(&[])?;
            bench::run(true)
        }
        "" | "help" | "-h" | "--help" => {
            eprint!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

/// Workspace root (the parent of xtask/).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Run a command, failing with its command line when it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build() -> Result<()> {
    setup::run()?;
    sh(cargo().args([
        "build",
        "--release",
        "--package",
        "spyglass-agent",
        "--package",
        "spyglass-collector",
        "--package",
        "spyglass-cli",
    ]))
}

pub fn agent_bin() -> PathBuf {
    root().join("target/release/spyglass-agent")
}

/// The agent streaming to a local collector, readable events on the
/// terminal; the collector's JSON lines go to target/spyglass-run/.
fn run_agent(args: &[String]) -> Result<()> {
    let dir = root().join("target/spyglass-run");
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let events = dir.join("events.jsonl");
    // the fleet API on the CLI's default address when it is free
    let api = std::net::TcpListener::bind("127.0.0.1:7072")
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))?
        .local_addr()?;
    let mut collector = Command::new(root().join("target/release/spyglass-collector"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--api-listen", &api.to_string()])
        .arg("--output")
        .arg(&events)
        .spawn()
        .context("starting spyglass-collector")?;
    let cli = root().join("target/release/spyglass");
    eprintln!(
        "xtask: fleet API on http://{api}; in another terminal: {} --collector http://{api} containers --root",
        cli.display()
    );
    let mut cmd = Command::new(agent_bin());
    cmd.arg("run")
        .args(["--collector", &format!("http://127.0.0.1:{port}")])
        .arg("--spool-dir")
        .arg(dir.join("spool"));
    if !args.iter().any(|a| a.starts_with("--format")) {
        cmd.args(["--format", "text"]);
    }
    cmd.args(args);
    eprintln!(
        "xtask: collector on 127.0.0.1:{port} writing {}\nxtask: starting the agent (Ctrl-C stops both): {cmd:?}",
        events.display()
    );
    let result = sh(&mut cmd);
    let _ = collector.kill();
    let _ = collector.wait();
    result
}

/// clippy on every crate, warnings as errors. The eBPF crate is checked
/// for its own target, as agent/build.rs builds it, in a target directory
/// of its own (so it never waits on the host build's lock).
fn lint() -> Result<()> {
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh(cargo()
        .args([
            "clippy",
            "--release",
            "--package",
            "spyglass-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root().join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cpanic=abort"))
}

fn test(args: &[String]) -> Result<()> {
    if args.is_empty() {
        lint()?;
    }
    // Release profile: the agent binary the end-to-end tests drive is the
    // one `build` just made, and no second (debug) build is needed.
    sh(cargo().args(["test", "--release"]).args(args))?;
    if args.is_empty() {
        matrix::run(&[], false)?;
        // The comparative bench is a tool; the suite checks that it runs,
        // on a tiny workload (no timing is asserted).
        setup::bench_tools()?;
        compare::run(compare::Size::Tiny)?;
    }
    Ok(())
}
