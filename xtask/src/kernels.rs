//! The kernel matrix: which kernels the suite boots, and fetching them.
//!
//! Kernels come from Debian's archive as the packages users install
//! (generic and `-cloud` flavours), fetched with apt and a private sources
//! list, lists and cache under `target/kernels/apt/SUITE/` (the machine's
//! own apt configuration is not touched). Only the `vmlinuz` is kept,
//! under `target/kernels/LABEL/`; a second run uses it without network.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// One kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// What the table calls it (and `cargo xtask test-kernels LABEL`).
    pub label: &'static str,
    /// Debian suite whose kernel this is.
    pub suite: &'static str,
    /// Meta package naming the suite's current kernel of a flavour.
    pub package: &'static str,
    /// Who runs this kernel (or its line).
    pub stands_for: &'static str,
}

/// The kernels `cargo xtask test` boots, oldest first. Each is a long-term
/// line that production nodes run.
pub const MATRIX: &[Kernel] = &[
    Kernel {
        label: "5.10",
        suite: "bullseye",
        package: "linux-image-amd64",
        stands_for: "5.10 LTS: Debian 11, Amazon Linux 2 (EKS AMIs)",
    },
    Kernel {
        label: "5.10-cloud",
        suite: "bullseye",
        package: "linux-image-cloud-amd64",
        stands_for: "the cloud flavour (fewer drivers, the same BPF): Debian cloud images",
    },
    Kernel {
        label: "6.1",
        suite: "bookworm",
        package: "linux-image-amd64",
        stands_for: "6.1 LTS: Debian 12, Amazon Linux 2023 (EKS AMIs)",
    },
    Kernel {
        label: "6.12",
        suite: "trixie",
        package: "linux-image-amd64",
        stands_for: "6.12 LTS: Debian 13, RHEL 10 (a 6.12 base)",
    },
];

/// The kernels named on the command line (all when none).
pub fn select(labels: &[String]) -> Result<Vec<Kernel>> {
    if labels.is_empty() {
        return Ok(MATRIX.to_vec());
    }
    labels
        .iter()
        .map(|l| {
            MATRIX
                .iter()
                .copied()
                .find(|k| k.label == l)
                .with_context(|| {
                    let known: Vec<&str> = MATRIX.iter().map(|k| k.label).collect();
                    format!("no kernel `{l}` in the matrix; known: {known:?}")
                })
        })
        .collect()
}

/// Where the matrix keeps kernels, initramfs and results.
pub fn dir() -> PathBuf {
    crate::root().join("target/kernels")
}

/// A fetched kernel: its image and its package's full name.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub vmlinuz: PathBuf,
    pub package: String,
}

/// The kernel image of `k`, fetched once and then kept.
pub fn fetch(k: &Kernel) -> Result<Fetched> {
    let home = dir().join(k.label);
    let vmlinuz = home.join("vmlinuz");
    let name_file = home.join("package");
    if let (true, Ok(package)) = (vmlinuz.exists(), std::fs::read_to_string(&name_file)) {
        return Ok(Fetched {
            vmlinuz,
            package: package.trim().to_owned(),
        });
    }
    std::fs::create_dir_all(&home)?;
    let apt = Apt::for_suite(k.suite)?;
    apt.update()?;
    let package = apt.depends_on_image(k.package)?;
    let deb = apt.download(&package, &home)?;
    extract_vmlinuz(&deb, &vmlinuz)?;
    std::fs::remove_file(&deb)?;
    std::fs::write(&name_file, &package)?;
    Ok(Fetched { vmlinuz, package })
}

/// apt with a private sources list, lists and cache for one suite.
struct Apt {
    home: PathBuf,
    suite: &'static str,
}

impl Apt {
    fn for_suite(suite: &'static str) -> Result<Self> {
        let home = dir().join("apt").join(suite);
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(home.join(d))?;
        }
        std::fs::write(
            home.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ),
        )?;
        Ok(Apt { home, suite })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        c.arg("-q")
            .arg("-o")
            .arg(opt("Dir::Etc::SourceList", &self.home.join("sources.list")))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(opt("Dir::State::Lists", &self.home.join("lists")))
            .arg("-o")
            .arg(opt("Dir::Cache", &self.home.join("cache")))
            .args(["-o", "APT::Sandbox::User=root"])
            .args(["-o", "Acquire::Languages=none"]);
        c
    }

    fn update(&self) -> Result<()> {
        eprintln!("xtask: fetching Debian {} package lists", self.suite);
        crate::sh(self.command("apt-get").arg("update")).with_context(|| {
            format!(
                "cannot read Debian's {} package lists from deb.debian.org: the kernel matrix \
                 needs the archive once per kernel (kernels are kept in target/kernels/)",
                self.suite
            )
        })
    }

    /// The versioned image package a meta package depends on
    /// (`linux-image-amd64` -> `linux-image-6.1.0-40-amd64`).
    fn depends_on_image(&self, meta: &str) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["depends", meta])
            .output()
            .context("running apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_image_dependency(&text).with_context(|| {
            format!(
                "package {meta} of Debian {} names no kernel image package \
                 (apt-cache depends said: {text:?} {})",
                self.suite,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        eprintln!("xtask: downloading {package} (Debian {})", self.suite);
        crate::sh(
            self.command("apt-get")
                .current_dir(into)
                .args(["download", package]),
        )
        .with_context(|| format!("downloading {package} from Debian {}", self.suite))?;
        std::fs::read_dir(into)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(package) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {package}*.deb"))
    }
}

/// `Depends: linux-image-...` of `apt-cache depends` output.
pub fn parse_image_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .map(str::to_owned)
}

/// The package's `./boot/vmlinuz-*` into `dest`.
fn extract_vmlinuz(deb: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("extract");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let script = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*'",
        deb.display(),
        tmp.display()
    );
    crate::sh(Command::new("sh").args(["-c", &script]))
        .with_context(|| format!("no kernel image (./boot/vmlinuz-*) in {}", deb.display()))?;
    let found = std::fs::read_dir(tmp.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next();
    let Some(found) = found else {
        bail!("no kernel image in {}", deb.display());
    };
    std::fs::rename(found, dest)?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_image_package() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-5.10.0-32-cloud-amd64\n";
        assert_eq!(
            parse_image_dependency(out).as_deref(),
            Some("linux-image-5.10.0-32-cloud-amd64")
        );
        let meta_first = "linux-image-amd64\n  Depends: linux-image-amd64-signed-template\n  Depends: linux-image-6.1.0-40-amd64\n";
        assert_eq!(
            parse_image_dependency(meta_first).as_deref(),
            Some("linux-image-6.1.0-40-amd64")
        );
        assert_eq!(
            parse_image_dependency("N: Unable to locate package x\n"),
            None
        );
    }

    #[test]
    fn labels_select_kernels_and_unknown_ones_are_named() {
        assert_eq!(select(&[]).unwrap().len(), MATRIX.len());
        assert_eq!(select(&["6.1".into()]).unwrap()[0].suite, "bookworm");
        let err = select(&["4.19".into()]).unwrap_err().to_string();
        assert!(
            err.contains("no kernel `4.19`") && err.contains("5.10"),
            "{err}"
        );
    }
}
