//! Pushing generated content straight to the registry with the
//! distribution HTTP API (from the upstream namespace, never through the
//! gateway): `HEAD` a blob, else `POST` an upload and `PUT` it whole with
//! its digest; then `PUT` the manifest under its reference. Children of an
//! index go first, by digest. What is pushed is exactly the layout's bytes.

use anyhow::{Context as _, Result, ensure};

use super::{HOST, Registry};
use crate::oci::{Descriptor, Layout, MT_INDEX};

/// The distribution's name for a Docker manifest list (an index too).
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

impl Registry<'_> {
    /// Pushes `desc` (a manifest or an index) from `layout` with everything
    /// it references, and names it `reference` (a tag or its digest).
    pub fn push(
        &self,
        layout: &Layout,
        repo: &str,
        desc: &Descriptor,
        reference: &str,
    ) -> Result<()> {
        let doc = layout.manifest_json(desc)?;
        if desc.media_type == MT_INDEX || desc.media_type == MT_DOCKER_LIST {
            for child in doc["manifests"].as_array().into_iter().flatten() {
                let child = Descriptor::from_json(child)?;
                self.push(layout, repo, &child, &child.digest)?;
            }
        } else {
            let config = Descriptor::from_json(&doc["config"])?;
            self.push_blob(layout, repo, &config)?;
            for layer in doc["layers"].as_array().into_iter().flatten() {
                self.push_blob(layout, repo, &Descriptor::from_json(layer)?)?;
            }
        }
        self.put_manifest(layout, repo, desc, reference)
    }

    /// Uploads one blob unless the repository already has it.
    pub fn push_blob(&self, layout: &Layout, repo: &str, desc: &Descriptor) -> Result<()> {
        let base = format!("{}/v2/{repo}/blobs", self.url());
        let head = self.api(&["-I", &format!("{base}/{}", desc.digest)])?;
        if head.code == 200 {
            return Ok(());
        }
        let start = self.api(&["-X", "POST", &format!("{base}/uploads/")])?;
        ensure!(
            start.code == 202,
            "starting an upload to {repo}: {}",
            start.describe()
        );
        let location = start
            .header("location")
            .context("upload start without Location")?;
        let location = if location.starts_with('/') {
            format!("https://{HOST}{location}")
        } else {
            location.to_owned()
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", desc.digest);
        let data = format!("@{}", layout.blob_path(&desc.digest).display());
        let put = self.api(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
            &url,
        ])?;
        ensure!(
            put.code == 201,
            "uploading {} to {repo}: {}",
            desc.digest,
            put.describe()
        );
        Ok(())
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the layout's bytes of
    /// `desc`; checks the registry's `Docker-Content-Digest`.
    pub fn put_manifest(
        &self,
        layout: &Layout,
        repo: &str,
        desc: &Descriptor,
        reference: &str,
    ) -> Result<()> {
        let data = format!("@{}", layout.blob_path(&desc.digest).display());
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url());
        let put = self.api(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {}", desc.media_type),
            "--data-binary",
            &data,
            &url,
        ])?;
        ensure!(
            put.code == 201,
            "putting manifest {} as {repo}:{reference}: {}\nregistry log:\n{}",
            desc.digest,
            put.describe(),
            self.log_tail(10)
        );
        let digest = put.header("docker-content-digest").unwrap_or_default();
        ensure!(
            digest == desc.digest,
            "registry stored {repo}:{reference} as {digest}, pushed {}",
            desc.digest
        );
        Ok(())
    }
}
