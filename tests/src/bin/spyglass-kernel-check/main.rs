//! `spyglass-kernel-check`: the end-to-end check of the kernel side of
//! Spyglass on the running kernel. `cargo xtask test-kernels` boots each
//! kernel of the matrix in a VM with this program and the static agent in
//! the initramfs and runs it there; it runs on the host the same way.
//!
//! It starts the agent, triggers each kind of event with a real process or
//! socket, and checks the exact event; it checks the kernel half of both
//! in-kernel actions (kill at exec, deny connect) by writing one entry into
//! the agent's own enforcement maps, and the ring buffer's loss path with a
//! second agent whose reader is stopped. The report is one JSON object:
//! the kernel, every probe of the probe table as the agent reported it,
//! and every check with its outcome (a failed check carries why).
//!
//! usage: spyglass-kernel-check run --agent PATH [--report FILE]
//!        spyglass-kernel-check helper threads|fork|connect ...   (internal)
// A test tool: its report goes to stdout or a file.
#![allow(clippy::print_stdout)]

mod checks;
mod helper;
mod maps;

use std::{
    io::Write,
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
};

use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("helper") => helper::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: spyglass-kernel-check run --agent PATH [--report FILE]\n\
                 (helper subcommands are internal)"
            );
            2
        }
    };
    std::process::exit(code);
}

/// Value of `--name VALUE` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run(args: &[String]) -> i32 {
    let Some(agent) = flag(args, "--agent").map(PathBuf::from) else {
        eprintln!("spyglass-kernel-check run: --agent PATH is required");
        return 2;
    };
    let report = checks::run_all(&agent);
    let ok = report["ok"] == true;
    let text = report.to_string();
    match flag(args, "--report") {
        Some(path) => {
            // A device (the VM's second serial port) or a file.
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(!path.starts_with("/dev/"))
                .open(&path)
                .and_then(|mut f| writeln!(f, "SPYGLASS-KERNEL-REPORT {text}"));
            if let Err(e) = written {
                eprintln!("spyglass-kernel-check: cannot write the report to {path}: {e}");
                return 2;
            }
        }
        None => println!("{text}"),
    }
    i32::from(!ok)
}

/// Run one check: Ok(detail) or the panic message of a failed assertion.
pub fn outcome(name: &str, check: impl FnOnce() -> String) -> Value {
    eprintln!("spyglass-kernel-check: {name} ...");
    match catch_unwind(AssertUnwindSafe(check)) {
        Ok(detail) => json!({"check": name, "ok": true, "detail": detail}),
        Err(payload) => {
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into());
            json!({"check": name, "ok": false, "detail": why})
        }
    }
}
