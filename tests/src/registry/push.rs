//! Pushing generated content straight to the registry with the
//! distribution HTTP API (from the upstream namespace, never through the
//! gateway): `HEAD` a blob, else `POST` an upload and `PUT` it whole with
//! its digest; then `PUT` the manifest under its reference. Children of an
//! index go first, by digest. What is pushed is exactly the layout's bytes.
//!
//! The requests go in-process over one keep-alive TLS connection
//! ([`super::http1`]) on a thread inside the upstream namespace.

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;

use super::{
    ADDR_V4, HOST, PORT, Registry,
    http1::{Body, Conn},
};
use crate::{
    netns,
    oci::{Descriptor, Layout, MT_INDEX},
};

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
        self.with_conn(|conn| self.push_on(conn, layout, repo, desc, reference))
    }

    /// Uploads one blob unless the repository already has it.
    pub fn push_blob(&self, layout: &Layout, repo: &str, desc: &Descriptor) -> Result<()> {
        self.with_conn(|conn| self.push_blob_on(conn, layout, repo, &desc.digest))
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
        self.with_conn(|conn| self.put_manifest_on(conn, layout, repo, desc, reference))
    }

    /// Runs `f` with a connection from the upstream namespace, trusting the
    /// registry's CA and sending its credentials, if any.
    pub(super) fn with_conn<T: Send>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T> + Send,
    ) -> Result<T> {
        let auth = self.credentials.as_ref().map(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        let mut conn = Conn::new((ADDR_V4, PORT).into(), HOST, &self.ca_pem, auth)?;
        netns::in_ns(&self.site.up_ns, || f(&mut conn))?
    }

    fn push_on(
        &self,
        conn: &mut Conn,
        layout: &Layout,
        repo: &str,
        desc: &Descriptor,
        reference: &str,
    ) -> Result<()> {
        let doc = layout.manifest_json(desc)?;
        if desc.media_type == MT_INDEX || desc.media_type == MT_DOCKER_LIST {
            for child in doc["manifests"].as_array().into_iter().flatten() {
                let child = Descriptor::from_json(child)?;
                self.push_on(conn, layout, repo, &child, &child.digest)?;
            }
        } else {
            let config = Descriptor::from_json(&doc["config"])?;
            self.push_blob_on(conn, layout, repo, &config.digest)?;
            for layer in doc["layers"].as_array().into_iter().flatten() {
                let layer = Descriptor::from_json(layer)?;
                self.push_blob_on(conn, layout, repo, &layer.digest)?;
            }
        }
        self.put_manifest_on(conn, layout, repo, desc, reference)
    }

    fn push_blob_on(
        &self,
        conn: &mut Conn,
        layout: &Layout,
        repo: &str,
        digest: &str,
    ) -> Result<()> {
        let base = format!("/v2/{repo}/blobs");
        let head = conn.send("HEAD", &format!("{base}/{digest}"), &[], Body::None)?;
        if head.code == 200 {
            return Ok(());
        }
        let start = conn.send("POST", &format!("{base}/uploads/"), &[], Body::None)?;
        ensure!(
            start.code == 202,
            "starting an upload to {repo}: {}",
            start.describe()
        );
        let location = start
            .header("location")
            .context("upload start without Location")?;
        // The registry answers with an absolute URL or a path; the request
        // needs the path and query.
        let target = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => location,
        };
        let sep = if target.contains('?') { '&' } else { '?' };
        let put = conn.send(
            "PUT",
            &format!("{target}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            Body::File(&layout.blob_path(digest)),
        )?;
        ensure!(
            put.code == 201,
            "uploading {digest} to {repo}: {}",
            put.describe()
        );
        Ok(())
    }

    fn put_manifest_on(
        &self,
        conn: &mut Conn,
        layout: &Layout,
        repo: &str,
        desc: &Descriptor,
        reference: &str,
    ) -> Result<()> {
        let bytes = layout.read_blob(&desc.digest)?;
        let put = conn.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", &desc.media_type)],
            Body::Bytes(&bytes),
        )?;
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
