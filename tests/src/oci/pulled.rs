//! What a client wrote into an OCI layout, checked against what was pushed.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::{Descriptor, Image, REF_NAME, blob_path, sha256_file};

/// What a client wrote into an OCI layout (`skopeo copy … oci:<dir>:<tag>`).
pub struct PulledLayout {
    pub dir: PathBuf,
}

impl PulledLayout {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The descriptor `index.json` names `tag`.
    pub fn tagged(&self, tag: &str) -> Result<Descriptor> {
        let path = self.dir.join("index.json");
        let index: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        let entry = entries
            .iter()
            .find(|m| m["annotations"][REF_NAME] == tag)
            .with_context(|| format!("no manifest named {tag} in {}: {index}", path.display()))?;
        Descriptor::from_json(entry)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = blob_path(&self.dir, digest);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    pub fn manifest_json(&self, digest: &str) -> Result<Value> {
        Ok(serde_json::from_slice(&self.read_blob(digest)?)?)
    }

    /// Every blob's content hashes to its name.
    pub fn verify_blobs(&self) -> Result<usize> {
        let dir = self.dir.join("blobs/sha256");
        let mut n = 0;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let got = sha256_file(&path)?;
            ensure!(
                got == format!("sha256:{name}"),
                "blob {} hashes to {got}",
                path.display()
            );
            n += 1;
        }
        Ok(n)
    }

    /// Asserts that this layout holds `image` exactly: the manifest, the
    /// config and every layer, byte for byte (by digest, and each file
    /// hashing to its digest).
    pub fn check_image(&self, image: &Image) -> Result<()> {
        let manifest = self.manifest_json(&image.manifest.digest)?;
        let config = Descriptor::from_json(&manifest["config"])?;
        ensure!(
            config == image.config,
            "config {config:?} != pushed {:?}",
            image.config
        );
        let layers = manifest["layers"]
            .as_array()
            .context("manifest without layers")?
            .iter()
            .map(Descriptor::from_json)
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            layers == image.layers,
            "layers {layers:?} != pushed {:?}",
            image.layers
        );
        for digest in std::iter::once(&image.manifest.digest).chain(image.blob_digests().iter()) {
            let path = blob_path(&self.dir, digest);
            let got = sha256_file(&path)?;
            if &got != digest {
                bail!("{} hashes to {got}, not {digest}", path.display());
            }
        }
        Ok(())
    }
}
