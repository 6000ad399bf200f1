//! OCI image layout archives, written without a registry or a daemon:
//! blobs by sha256, manifests, an index naming each image, then one tar.
//! Everything is deterministic (sorted tars with fixed owners and times,
//! no timestamps in configs), so the same inputs give the same digests.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::sh;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A blob written to the layout.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// One platform's manifest of an image.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub arch: String,
    pub blob: Blob,
    pub config_digest: String,
}

/// An OCI image layout directory being filled.
pub struct Layout {
    dir: PathBuf,
    /// Top-level index entries: one per named image.
    entries: Vec<String>,
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

/// JSON array of strings.
pub fn json_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(","))
}

/// A reproducible tar of `entries` of `dir`: sorted, fixed owners and
/// times, no access or change times.
pub fn tar_of(dir: &Path, entries: &[&str], out: &Path) -> Result<()> {
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

impl Layout {
    /// Start an empty layout in `dir` (removed first).
    pub fn create(dir: &Path) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            entries: Vec::new(),
        })
    }

    /// Store `data` as a blob.
    pub fn blob(&self, data: &[u8]) -> Result<Blob> {
        let tmp = self.dir.join("blob.tmp");
        std::fs::write(&tmp, data)?;
        self.blob_file(&tmp)
    }

    /// Move the file at `path` into the layout as a blob.
    pub fn blob_file(&self, path: &Path) -> Result<Blob> {
        let hex = sha256(path)?;
        let size = std::fs::metadata(path)?.len();
        std::fs::rename(path, self.dir.join("blobs/sha256").join(&hex))?;
        Ok(Blob {
            digest: format!("sha256:{hex}"),
            size,
        })
    }

    /// A layer from the tar at `path` (uncompressed, so its digest is
    /// also its diff id).
    pub fn layer(&self, tar: &Path) -> Result<Blob> {
        self.blob_file(tar)
    }

    /// Config and manifest for one platform. `config` is the image
    /// config's `config` object (JSON), `labels` go into it as well.
    pub fn manifest(&self, arch: &str, config: &str, layers: &[Blob]) -> Result<Manifest> {
        self.manifest_annotated(arch, config, layers, &[])
    }

    /// [`Layout::manifest`] with manifest `annotations` (key, value).
    pub fn manifest_annotated(
        &self,
        arch: &str,
        config: &str,
        layers: &[Blob],
        annotations: &[(&str, &str)],
    ) -> Result<Manifest> {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let image_config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{config},"rootfs":{{"type":"layers","diff_ids":{}}},"history":[{{"created_by":"spyglass xtask"}}]}}"#,
            json_list(&diff_ids)
        );
        let cfg = self.blob(image_config.as_bytes())?;
        let layer_json: Vec<String> = layers
            .iter()
            .map(|l| {
                format!(
                    r#"{{"mediaType":"{MEDIA_LAYER}","digest":"{}","size":{}}}"#,
                    l.digest, l.size
                )
            })
            .collect();
        let annotations: Vec<String> = annotations
            .iter()
            .map(|(k, v)| format!("{k:?}:{v:?}"))
            .collect();
        // none: no member at all (the images' digests stay as they were)
        let annotations = if annotations.is_empty() {
            String::new()
        } else {
            format!(r#","annotations":{{{}}}"#, annotations.join(","))
        };
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{{"mediaType":"{MEDIA_CONFIG}","digest":"{}","size":{}}},"layers":[{}]{annotations}}}"#,
            cfg.digest,
            cfg.size,
            layer_json.join(",")
        );
        Ok(Manifest {
            arch: arch.to_owned(),
            blob: self.blob(manifest.as_bytes())?,
            config_digest: cfg.digest,
        })
    }

    /// Name an image: its single manifest, or an index over several.
    /// Returns the index digest when one was made.
    pub fn name(&mut self, name: &str, manifests: &[Manifest]) -> Result<Option<Blob>> {
        let (media, top, index) = match manifests {
            [one] => (MEDIA_MANIFEST, one.blob.clone(), None),
            many => {
                let entries: Vec<String> = many
                    .iter()
                    .map(|m| {
                        format!(
                            r#"{{"mediaType":"{MEDIA_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"{}","os":"linux"}}}}"#,
                            m.blob.digest, m.blob.size, m.arch
                        )
                    })
                    .collect();
                let index = format!(
                    r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{}]}}"#,
                    entries.join(",")
                );
                let b = self.blob(index.as_bytes())?;
                (MEDIA_INDEX, b.clone(), Some(b))
            }
        };
        self.entries.push(format!(
            r#"{{"mediaType":"{media}","digest":"{}","size":{},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"{name}"}}}}"#,
            top.digest, top.size
        ));
        Ok(index)
    }

    /// Write index.json and oci-layout, and tar the layout to `archive`.
    pub fn finish(self, archive: &Path) -> Result<()> {
        std::fs::write(
            self.dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{}]}}"#,
                self.entries.join(",")
            ),
        )?;
        std::fs::write(
            self.dir.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        tar_of(&self.dir, &["blobs", "index.json", "oci-layout"], archive)
    }
}
