//! `cargo xtask image`: OCI image archives of the agent and the collector,
//! for nodes without a registry (`ctr -n k8s.io images import`) or to push
//! with any OCI tool.
//!
//! Each image is one layer: the statically linked binary (glibc with
//! `crt-static`, so one toolchain and no libc in the image), /etc/passwd
//! and the directories the manifests in deploy/ mount over. No shell, no
//! package manager. Reproducible: the same commit and toolchain give the
//! same digests (sorted tars, fixed owners and times, no build dates).
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{
    oci::{json_list, tar_of, Layout},
    sh,
};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// One image: binary, reference, user, default arguments, directories.
struct Spec {
    bin: &'static str,
    /// Repository; the tag is the workspace version.
    repo: &'static str,
    user: &'static str,
    cmd: &'static [&'static str],
    dirs: &'static [&'static str],
    title: &'static str,
}

const IMAGES: &[Spec] = &[
    Spec {
        bin: "spyglass-agent",
        repo: "docker.io/spyglass/agent",
        user: "0:0",
        cmd: &["run", "--config", "/etc/spyglass/agent.toml"],
        dirs: &["etc/spyglass", "var/lib/spyglass", "tmp"],
        title: "Spyglass node agent (eBPF runtime security)",
    },
    Spec {
        bin: "spyglass-collector",
        repo: "docker.io/spyglass/collector",
        user: "65532:65532",
        cmd: &[
            "--listen",
            "0.0.0.0:7070",
            "--output",
            "/data/events.jsonl",
            "--metrics-listen",
            "0.0.0.0:9465",
        ],
        dirs: &["etc/spyglass", "data", "tmp"],
        title: "Spyglass collector",
    },
];

pub fn dir() -> PathBuf {
    crate::root().join("target/images")
}

/// Statically linked builds of `bins` (package, binary), built for the
/// explicit target so host build scripts keep their own flags; returns
/// their directory. The image and the kernel matrix share this build (same
/// flags, so one set of compiled dependencies).
pub fn build_static(bins: &[(&str, &str)]) -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.args(["build", "--release", "--target", TARGET])
        .args(bins.iter().flat_map(|(package, _)| ["--package", package]))
        .args(bins.iter().flat_map(|(_, bin)| ["--bin", bin]))
        // The checkout's path would otherwise be embedded (panic
        // locations): mapped away, two clones build the same bytes.
        .env(
            "RUSTFLAGS",
            format!(
                "-C target-feature=+crt-static --remap-path-prefix={}=/spyglass",
                crate::root().display()
            ),
        );
    sh(&mut cmd).context("building the static binaries")?;
    let dir = crate::root().join("target").join(TARGET).join("release");
    for (_, bin) in bins {
        let elf = std::fs::read(dir.join(bin)).with_context(|| format!("reading {bin}"))?;
        if is_dynamic(&elf)? {
            bail!("{bin} was linked dynamically despite crt-static");
        }
    }
    Ok(dir)
}

/// Whether an ELF file asks for a dynamic loader (a PT_INTERP header).
pub fn is_dynamic(elf: &[u8]) -> Result<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(h) = elf.get(at..at + 4) else {
            bail!("program header {i} outside the file");
        };
        if u32::from_le_bytes(h.try_into()?) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(crate::root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn layer(work: &Path, spec: &Spec, bins: &Path) -> Result<PathBuf> {
    let root = work.join(spec.bin).join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in spec.dirs.iter().chain(&["usr/bin"]) {
        std::fs::create_dir_all(root.join(d))?;
    }
    let src = bins.join(spec.bin);
    let elf = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    if is_dynamic(&elf).with_context(|| src.display().to_string())? {
        bail!(
            "{} is dynamically linked; the image needs a static binary",
            src.display()
        );
    }
    std::fs::write(root.join("usr/bin").join(spec.bin), &elf)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("usr/bin").join(spec.bin),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/usr/sbin/nologin\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n")?;
    let top: Vec<&str> = ["etc", "usr", "var", "data", "tmp"]
        .into_iter()
        .filter(|d| root.join(d).exists())
        .collect();
    let tar = work.join(spec.bin).join("layer.tar");
    tar_of(&root, &top, &tar)?;
    Ok(tar)
}

/// Build both images: one archive each under target/images, and
/// target/images/images.json with their references and digests.
pub fn build() -> Result<()> {
    let bins = build_static(&IMAGES.iter().map(|s| (s.bin, s.bin)).collect::<Vec<_>>())?;
    let out = dir();
    std::fs::create_dir_all(&out)?;
    let version = env!("CARGO_PKG_VERSION");
    let revision = git_revision();
    let mut record = String::from("[\n");
    for (i, spec) in IMAGES.iter().enumerate() {
        let mut layout = Layout::create(&out.join(spec.bin).join("layout"))?;
        let layer = layout.layer(&layer(&out, spec, &bins)?)?;
        let reference = format!("{}:{version}", spec.repo);
        let entrypoint = format!("/usr/bin/{}", spec.bin);
        let config = format!(
            r#"{{"User":"{user}","Env":["PATH=/usr/bin"],"Entrypoint":{entry},"Cmd":{cmd},"WorkingDir":"/","Labels":{{"org.opencontainers.image.title":"{title}","org.opencontainers.image.version":"{version}","org.opencontainers.image.revision":"{revision}","org.opencontainers.image.licenses":"{license}"}}}}"#,
            user = spec.user,
            entry = json_list(&[&entrypoint]),
            cmd = json_list(spec.cmd),
            title = spec.title,
            license = "Apache-2.0",
        );
        let manifest = layout.manifest("amd64", &config, &[layer])?;
        layout.name(&reference, std::slice::from_ref(&manifest))?;
        let archive = out.join(format!("{}.tar", spec.bin));
        layout.finish(&archive)?;
        let _ = write!(
            record,
            r#"  {{"name":"{}","ref":"{reference}","digest":"{}","config_digest":"{}","archive":"{}"}}{}"#,
            spec.bin,
            manifest.blob.digest,
            manifest.config_digest,
            archive.display(),
            if i + 1 < IMAGES.len() { ",\n" } else { "\n" }
        );
        eprintln!(
            "xtask: {reference} {} -> {}",
            manifest.blob.digest,
            archive.display()
        );
    }
    record.push_str("]\n");
    std::fs::write(out.join("images.json"), record)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked unless built with crt-static.
        assert!(is_dynamic(&me).unwrap());
        assert!(
            is_dynamic(b"not an elf file at all, but long enough to be read as one .........")
                .is_err()
        );
    }
}
