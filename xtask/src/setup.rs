//! Idempotent machine setup: Debian packages, the rust-src component,
//! bpf-linker, a running containerd, and the test images. Each step checks first and does nothing when satisfied.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sh;

/// Debian packages the build and tests need.
/// - llvm-22-dev, libzstd-dev: bpf-linker links LLVM 22 (the LLVM of the
///   Rust toolchain) and needs zstd;
/// - protobuf-compiler: `protoc` for the spyglass.v1 gRPC API;
/// - iproute2: tests create their own network namespaces;
/// - openssl: tests make throwaway certificates for TLS and mTLS;
/// - rsyslog: the syslog output is tested against a real rsyslog;
/// - containerd, runc: the container runtime the agent attributes events
///   with (and the tests run real containers under);
/// - busybox-static: the one binary in the test images;
/// - strace: a test checks the order of the spool's syncs and renames.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libzstd-dev",
    "protobuf-compiler",
    "iproute2",
    "openssl",
    "rsyslog",
    "containerd",
    "runc",
    "busybox-static",
    "strace",
];

/// containerd's API socket (the agent's default).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

fn containerd_up() -> bool {
    Command::new("ctr")
        .args(["--timeout", "2s", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// containerd's configuration for this workspace: Debian's defaults plus
/// `restrict_oom_score_adj`, without which the CRI plugin asks runc for an
/// oom_score_adj below containerd's own, which an unprivileged-resource
/// sandbox (no CAP_SYS_RESOURCE, as on these machines) refuses: every pod
/// sandbox would fail with "can't get final child's PID from pipe".
const CONTAINERD_CONFIG: &str = r#"version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
"#;

/// Where that configuration is written (the tests restart containerd with
/// it too).
pub fn containerd_config() -> std::path::PathBuf {
    crate::root().join("target/containerd.toml")
}

/// Start containerd unless it answers (no systemd on these machines: it
/// runs detached, logging to target/containerd.log).
fn containerd() -> Result<()> {
    // Written even when containerd already runs (started from another
    // checkout): the tests restart it with this file.
    std::fs::create_dir_all(crate::root().join("target"))?;
    std::fs::write(containerd_config(), CONTAINERD_CONFIG)?;
    if containerd_up() {
        return Ok(());
    }
    let log = crate::root().join("target/containerd.log");
    eprintln!("xtask setup: starting containerd (log {})", log.display());
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    Command::new("setsid")
        .arg("containerd")
        .arg("--config")
        .arg(containerd_config())
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .context("starting containerd")?;
    for _ in 0..100 {
        if containerd_up() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!(
        "containerd did not answer on {CONTAINERD_SOCKET} within 10 s; see {}",
        log.display()
    )
}

const BPF_LINKER_VERSION: &str = "0.13";

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Install the missing Debian packages from `pkgs`.
pub fn apt(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; run as root or `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("xtask setup: installing {missing:?}");
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

fn rust_src() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let src = std::path::Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok(());
    }
    eprintln!("xtask setup: adding the rust-src component");
    sh(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn bpf_linker() -> Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!(" {BPF_LINKER_VERSION}."))
        });
    if ok {
        return Ok(());
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
    );
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

/// Python tools the tests use as independent checkers, pinned:
/// grpcio/grpcio-tools (a second gRPC implementation speaking our .proto),
/// ocsf-json-schema + jsonschema (OCSF 1.x schemas shipped in the package,
/// validated offline), kubernetes-validate (Kubernetes schemas, offline,
/// for deploy/).
const PY_PACKAGES: &[&str] = &[
    "grpcio==1.85.3",
    "grpcio-tools==1.85.1",
    "ocsf-json-schema==1.2.0",
    "jsonschema==4.26.0",
    "kubernetes-validate==1.37.0",
];

/// kustomize itself for rendering the overlays documented in
/// docs/deploy.md: pykustomize ships the kustomize Go library
/// (sigs.k8s.io/kustomize/api v0.21.3, the library of the kustomize CLI
/// and of `kubectl kustomize`) as a shared object, called through cffi.
/// It declares Python >= 3.14 but is Python-version independent (a
/// py3-none-any wheel: cffi and a .so), so it is installed past that
/// check; tests/deploy/overlays.py imports it on the venv's Python.
/// Debian's kubernetes-client (kubectl 1.20, kustomize 2.0.3) predates
/// the `patches:` field the overlays use.
const PY_KUSTOMIZE: &str = "pykustomize==0.1.4";

/// The test virtualenv (target/pyenv).
pub fn pyenv() -> std::path::PathBuf {
    crate::root().join("target/pyenv")
}

fn python_tools() -> Result<()> {
    let py = pyenv().join("bin/python");
    let ready = Command::new(&py)
        .args([
            "-c",
            "import grpc_tools, ocsf_json_schema, jsonschema, kubernetes_validate, pykustomize",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(());
    }
    eprintln!(
        "xtask setup: creating the test Python environment {}",
        pyenv().display()
    );
    sh(Command::new("python3").args(["-m", "venv"]).arg(pyenv()))?;
    sh(Command::new(&py)
        .args(["-m", "pip", "install", "-q", "--only-binary=:all:"])
        .args(PY_PACKAGES))?;
    sh(Command::new(&py).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--only-binary=:all:",
        "--ignore-requires-python",
        PY_KUSTOMIZE,
    ]))
}

/// Everything `build` needs.
pub fn run() -> Result<()> {
    apt(PACKAGES)?;
    rust_src()?;
    bpf_linker()?;
    containerd()
}

/// The peers `bench --compare` measures against: auditd (the kernel audit
/// subsystem's daemon) and bpftrace.
pub fn bench_tools() -> Result<()> {
    apt(&["auditd", "bpftrace"])
}

/// Everything `test` needs on top of `run`: the Python checkers, the test
/// images, qemu for the kernel matrix, chromium (headless) for the
/// fleet web page's browser test (tests/tests/fleet_web.rs), and
/// PostgreSQL, whose initdb and pg_ctl the harness runs to give the
/// collectors of tests/tests/fleet_postgres.rs a shared store
/// (tests/src/postgres.rs; no cluster of the package is used).
pub fn test_tools() -> Result<()> {
    apt(&["qemu-system-x86", "chromium", "postgresql"])?;
    python_tools()?;
    crate::images::import()
}
