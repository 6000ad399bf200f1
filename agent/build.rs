//! Builds the eBPF programs (crate `spyglass-ebpf`) for `bpfel-unknown-none`
//! and hands the object to the agent, which embeds it: users run one binary.
//!
//! The same stable toolchain builds it, with `-Z build-std=core` enabled by
//! `RUSTC_BOOTSTRAP=1` (needs the `rust-src` component and `bpf-linker`;
//! `cargo xtask setup` installs both). A separate target directory keeps the
//! nested cargo from waiting on the outer build's lock.
use std::{env, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("agent crate has no parent dir")?;
    let ebpf_dir = root.join("agent-ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");

    for dir in ["agent-ebpf/src", "agent-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("Cargo.toml").display()
    );

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args([
            "build",
            "--release",
            "--package",
            "spyglass-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "-Cdebuginfo=2".to_owned(),
                "-Clink-arg=--btf".to_owned(),
                "-Cpanic=abort".to_owned(),
                // BTF line info names source files: without the checkout's
                // path, two clones embed the same object.
                format!(
                    "--remap-path-prefix={}=/spyglass",
                    manifest.parent().unwrap_or(&manifest).display()
                ),
            ]
            .join("\x1f"),
        );
    // Settings of the outer (host) build must not leak into the BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PROFILE_RELEASE_LTO",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .context("running cargo to build the eBPF programs")?;
    if !status.success() {
        bail!(
            "building the eBPF programs failed ({status}). They need the rust-src \
             component and bpf-linker: run `cargo xtask setup`"
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/spyglass-ebpf");
    if !obj.exists() {
        bail!("eBPF build produced no object at {}", obj.display());
    }
    println!("cargo:rustc-env=SPYGLASS_EBPF_OBJ={}", obj.display());
    Ok(())
}
