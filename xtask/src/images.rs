//! Test images, built here (no registry can be reached) as OCI image
//! layout archives and imported into containerd's `k8s.io` and `default`
//! namespaces. One layer: Debian's static busybox and its applet links;
//! `app:1` adds a second on busybox:1's and names it as its base in its
//! manifest's annotations.
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

use anyhow::{Context, Result};

use crate::{
    oci::{json_list, tar_of, Layout},
    sh,
};

const BUSYBOX: &str = "/bin/busybox";
/// Applets linked in /bin (what the tests and entrypoints use).
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "true", "false", "ls", "cp", "chmod", "id", "nc", "wget", "ps",
    "env", "touch", "mkdir", "rm", "head", "seq", "hostname", "kill", "timeout", "uname",
];

/// One test image: reference, user, command, ports, platforms.
struct Spec {
    name: &'static str,
    user: &'static str,
    cmd: &'static [&'static str],
    ports: &'static [&'static str],
    /// Extra platforms beside linux/amd64 (makes an index).
    extra_arch: &'static [&'static str],
    /// Built on this image (listed before it): its layers plus one of its
    /// own, and manifest annotations naming it as the base.
    base: Option<&'static str>,
    /// A layer with a dpkg database saying busybox-static (this host's
    /// stanza and file list) owns /bin/busybox.
    dpkg: bool,
}

const IMAGES: &[Spec] = &[
    Spec {
        name: "spyglass.test/busybox:1",
        user: "",
        cmd: &["/bin/sh"],
        ports: &["8080/tcp"],
        extra_arch: &[],
        base: None,
        dpkg: false,
    },
    Spec {
        name: "spyglass.test/busybox-multi:1",
        user: "",
        cmd: &["/bin/sh"],
        ports: &[],
        extra_arch: &["arm64"],
        base: None,
        dpkg: false,
    },
    Spec {
        name: "spyglass.test/nonroot:1",
        user: "1000:1000",
        cmd: &["/bin/sh"],
        ports: &[],
        extra_arch: &[],
        base: None,
        dpkg: false,
    },
    // Built on busybox:1 (the image hierarchy: docs/vulnerabilities.md).
    Spec {
        name: "spyglass.test/app:1",
        user: "",
        cmd: &["/bin/sh"],
        ports: &[],
        extra_arch: &[],
        base: Some("spyglass.test/busybox:1"),
        dpkg: false,
    },
    // busybox with the dpkg database of the Debian package it comes from
    // (package ownership of execs: docs/vulnerabilities.md).
    Spec {
        name: "spyglass.test/busybox-deb:1",
        user: "",
        cmd: &["/bin/sh"],
        ports: &[],
        extra_arch: &[],
        base: None,
        dpkg: true,
    },
    // The CRI plugin's default sandbox image, so pods start offline.
    Spec {
        name: "registry.k8s.io/pause:3.6",
        user: "",
        cmd: &["/bin/sleep", "2147483647"],
        ports: &[],
        extra_arch: &[],
        base: None,
        dpkg: false,
    },
];

pub fn dir() -> PathBuf {
    crate::root().join("target/test-images")
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

/// The layer an image adds on its base: `/app/built-on` naming the base.
fn app_layer(work: &Path, base: &str) -> Result<PathBuf> {
    let root = work.join("app-rootfs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("app"))?;
    std::fs::write(root.join("app/built-on"), format!("{base}\n"))?;
    let tar = work.join("app-layer.tar");
    tar_of(&root, &["app"], &tar)?;
    Ok(tar)
}

/// The layer of a dpkg database: this host's busybox-static stanza and
/// file list, and its os-release.
fn dpkg_layer(work: &Path) -> Result<PathBuf> {
    let root = work.join("dpkg-rootfs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("var/lib/dpkg/info"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    let stanza = Command::new("dpkg-query")
        .args(["-s", "busybox-static"])
        .output()
        .context("dpkg-query -s busybox-static")?;
    anyhow::ensure!(
        stanza.status.success(),
        "dpkg-query -s busybox-static failed (package busybox-static; `cargo xtask setup` installs it)"
    );
    let mut status = stanza.stdout;
    status.push(b'\n');
    std::fs::write(root.join("var/lib/dpkg/status"), status)?;
    std::fs::copy(
        "/var/lib/dpkg/info/busybox-static.list",
        root.join("var/lib/dpkg/info/busybox-static.list"),
    )
    .context("copying /var/lib/dpkg/info/busybox-static.list")?;
    std::fs::copy("/usr/lib/os-release", root.join("etc/os-release"))
        .context("copying /usr/lib/os-release")?;
    let tar = work.join("dpkg-layer.tar");
    tar_of(&root, &["etc", "var"], &tar)?;
    Ok(tar)
}

/// Build every test image; write the archive and the digests record.
pub fn build() -> Result<PathBuf> {
    let out = dir();
    std::fs::create_dir_all(&out)?;
    let mut layout = Layout::create(&out.join("layout"))?;
    let layer = layout.layer(&layer(&out)?)?;
    let mut record = String::from("[\n");
    // manifest digests of the images built so far, by name
    let mut built: Vec<(&str, String)> = Vec::new();
    for (i, img) in IMAGES.iter().enumerate() {
        let mut platforms = vec!["amd64"];
        platforms.extend(img.extra_arch);
        let ports: Vec<String> = img.ports.iter().map(|p| format!("{p:?}:{{}}")).collect();
        let config = format!(
            r#"{{"User":"{user}","Env":["PATH=/bin"],"Cmd":{cmd},"WorkingDir":"/","ExposedPorts":{{{ports}}}}}"#,
            user = img.user,
            cmd = json_list(img.cmd),
            ports = ports.join(","),
        );
        let mut layers = vec![layer.clone()];
        let mut annotations = Vec::new();
        if let Some(base) = img.base {
            let digest = built
                .iter()
                .find(|(n, _)| *n == base)
                .map(|(_, d)| d.clone())
                .with_context(|| format!("{}: base {base} is not built before it", img.name))?;
            layers.push(layout.layer(&app_layer(&out, base)?)?);
            annotations.push(("org.opencontainers.image.base.digest", digest));
            annotations.push(("org.opencontainers.image.base.name", base.to_owned()));
        }
        if img.dpkg {
            layers.push(layout.layer(&dpkg_layer(&out)?)?);
        }
        let annotations: Vec<(&str, &str)> =
            annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let manifests = platforms
            .iter()
            .map(|arch| layout.manifest_annotated(arch, &config, &layers, &annotations))
            .collect::<Result<Vec<_>>>()?;
        let index_digest = layout
            .name(img.name, &manifests)?
            .map(|b| b.digest)
            .unwrap_or_default();
        let amd = &manifests[0];
        built.push((img.name, amd.blob.digest.clone()));
        let _ = write!(
            record,
            r#"  {{"ref":"{}","digest":"{}","index_digest":"{index_digest}","config_digest":"{}","user":"{}"}}{}"#,
            img.name,
            amd.blob.digest,
            amd.config_digest,
            img.user,
            if i + 1 < IMAGES.len() { ",\n" } else { "\n" }
        );
    }
    record.push_str("]\n");
    let archive = out.join("images.tar");
    layout.finish(&archive)?;
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
