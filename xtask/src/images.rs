//! Test images, built here (no registry can be reached) as OCI image
//! layout archives and imported into containerd's `k8s.io` and `default`
//! namespaces. One layer: Debian's static busybox and its applet links.
//!
//! Reproducible: the layer tar is sorted with fixed owners and times, so
//! the same busybox gives the same digests. `target/test-images/images.json`
//! records each image's reference, manifest, index and config digests for
//! the tests (which check them against containerd's own listing too).
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::sh;

const BUSYBOX: &str = "/bin/busybox";
/// Applets linked in /bin (what the tests and entrypoints use).
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "true", "false", "ls", "cp", "chmod", "id", "nc", "wget", "ps",
    "env", "touch", "mkdir", "rm", "head", "seq", "hostname", "kill", "timeout", "uname",
];

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// One test image: reference, user, command, ports, platforms.
struct Spec {
    name: &'static str,
    user: &'static str,
    cmd: &'static [&'static str],
    ports: &'static [&'static str],
    /// Extra platforms beside linux/amd64 (makes an index).
    extra_arch: &'static [&'static str],
}

const IMAGES: &[Spec] = &[
    Spec {
        name: "spyglass.test/busybox:1",
        user: "",
        cmd: &["/bin/sh"],
        ports: &["8080/tcp"],
        extra_arch: &[],
    },
    Spec {
        name: "spyglass.test/busybox-multi:1",
        user: "",
        cmd: &["/bin/sh"],
        ports: &[],
        extra_arch: &["arm64"],
    },
    Spec {
        name: "spyglass.test/nonroot:1",
        user: "1000:1000",
        cmd: &["/bin/sh"],
        ports: &[],
        extra_arch: &[],
    },
    // The CRI plugin's default sandbox image, so pods start offline.
    Spec {
        name: "registry.k8s.io/pause:3.6",
        user: "",
        cmd: &["/bin/sleep", "2147483647"],
        ports: &[],
        extra_arch: &[],
    },
];

pub fn dir() -> PathBuf {
    crate::root().join("target/test-images")
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    let s = String::from_utf8_lossy(&out.stdout);
    let hex = s.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 {
        bail!("sha256sum {}: unexpected output {s:?}", path.display());
    }
    Ok(hex.to_owned())
}

/// Write `data` as a blob; its digest and size.
fn blob(layout: &Path, data: &[u8]) -> Result<(String, usize)> {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, data)?;
    let hex = sha256(&tmp)?;
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), data.len()))
}

fn json_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(","))
}

/// A reproducible tar of `entries` of `dir`: sorted, fixed owners and
/// times, no access or change times.
fn tar_of(dir: &Path, entries: &[&str], out: &Path) -> Result<()> {
    sh(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "-cf",
        ])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .args(entries))
}

/// The layer: busybox, applet links, /tmp, /etc/passwd.
fn layer(work: &Path) -> Result<PathBuf> {
    let root = work.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).with_context(|| {
        format!(
            "copying {BUSYBOX} (Debian package busybox-static; `cargo xtask setup` installs it)"
        )
    })?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n")?;
    let tar = work.join("layer.tar");
    tar_of(
        &root,
        &["bin", "dev", "etc", "proc", "run", "sys", "tmp"],
        &tar,
    )?;
    Ok(tar)
}

/// Build every test image; write the archive and the digests record.
pub fn build() -> Result<PathBuf> {
    let out = dir();
    std::fs::create_dir_all(&out)?;
    let layout = out.join("layout");
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    let tar = layer(&out)?;
    let layer_hex = sha256(&tar)?;
    let layer_size = std::fs::metadata(&tar)?.len();
    std::fs::rename(&tar, layout.join("blobs/sha256").join(&layer_hex))?;
    let layer_digest = format!("sha256:{layer_hex}");

    let mut index_entries = Vec::new();
    let mut record = String::from("[\n");
    for (i, img) in IMAGES.iter().enumerate() {
        let mut platforms = vec!["amd64"];
        platforms.extend(img.extra_arch);
        let mut manifests = Vec::new(); // (arch, digest, size, config)
        for arch in &platforms {
            let ports: Vec<String> = img.ports.iter().map(|p| format!("{p:?}:{{}}")).collect();
            let config = format!(
                r#"{{"architecture":"{arch}","os":"linux","config":{{"User":"{user}","Env":["PATH=/bin"],"Cmd":{cmd},"WorkingDir":"/","ExposedPorts":{{{ports}}}}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}},"history":[{{"created_by":"spyglass xtask images"}}]}}"#,
                user = img.user,
                cmd = json_list(img.cmd),
                ports = ports.join(","),
            );
            let (config_digest, config_size) = blob(&layout, config.as_bytes())?;
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{{"mediaType":"{MEDIA_CONFIG}","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"{MEDIA_LAYER}","digest":"{layer_digest}","size":{layer_size}}}]}}"#
            );
            let (digest, size) = blob(&layout, manifest.as_bytes())?;
            manifests.push((*arch, digest, size, config_digest));
        }
        let (top_media, top_digest, top_size, index_digest) = if manifests.len() == 1 {
            let (_, d, s, _) = &manifests[0];
            (MEDIA_MANIFEST, d.clone(), *s, String::new())
        } else {
            let entries: Vec<String> = manifests
                .iter()
                .map(|(arch, d, s, _)| {
                    format!(
                        r#"{{"mediaType":"{MEDIA_MANIFEST}","digest":"{d}","size":{s},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#
                    )
                })
                .collect();
            let index = format!(
                r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{}]}}"#,
                entries.join(",")
            );
            let (d, s) = blob(&layout, index.as_bytes())?;
            (MEDIA_INDEX, d.clone(), s, d)
        };
        index_entries.push(format!(
            r#"{{"mediaType":"{top_media}","digest":"{top_digest}","size":{top_size},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"{name}"}}}}"#,
            name = img.name
        ));
        let (_, amd_digest, _, amd_config) = &manifests[0];
        let _ = write!(
            record,
            r#"  {{"ref":"{}","digest":"{amd_digest}","index_digest":"{index_digest}","config_digest":"{amd_config}","user":"{}"}}{}"#,
            img.name,
            img.user,
            if i + 1 < IMAGES.len() { ",\n" } else { "\n" }
        );
    }
    record.push_str("]\n");
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{}]}}"#,
            index_entries.join(",")
        ),
    )?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = out.join("images.tar");
    tar_of(&layout, &["blobs", "index.json", "oci-layout"], &archive)?;
    std::fs::write(out.join("images.json"), record)?;
    Ok(archive)
}

/// Build and import into containerd (namespaces `k8s.io` and `default`).
pub fn import() -> Result<()> {
    let archive = build()?;
    for ns in ["k8s.io", "default"] {
        sh(Command::new("ctr")
            .args(["-n", ns, "images", "import", "--all-platforms"])
            .arg(&archive)
            .stdout(std::process::Stdio::null()))
        .with_context(|| format!("importing the test images into containerd namespace {ns}"))?;
    }
    eprintln!(
        "xtask: test images imported ({} images, record in {})",
        IMAGES.len(),
        dir().join("images.json").display()
    );
    Ok(())
}
