//! `gateway cache seed`: pull an image or artifact, every platform of it,
//! into the cache through the same code that serves devices, and pin it so
//! that it is never evicted (a site about to go offline).

use futures::StreamExt as _;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;

use super::{OciSite, route};
use crate::cache::Digest;

/// What a seed pulled.
#[derive(Debug, Default, serde::Serialize)]
pub struct SeedReport {
    pub pin: String,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Bounds the walk of nested indexes (an index of indexes of ...).
const MAX_DEPTH: usize = 4;

/// `repo` and `reference` (a tag or a digest) on `site`; `progress` gets a
/// line per item.
pub async fn seed(
    site: &OciSite,
    repo: &str,
    reference: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> anyhow::Result<SeedReport> {
    if !route::is_name(repo) {
        anyhow::bail!("`{repo}` is not a repository name");
    }
    if !route::is_tag(reference) && !route::is_sha256_digest(reference) {
        anyhow::bail!("`{reference}` is neither a tag nor a sha256 digest");
    }
    let separator = if reference.starts_with("sha256:") {
        '@'
    } else {
        ':'
    };
    let mut report = SeedReport {
        pin: format!("{}/{repo}{separator}{reference}", site.host),
        ..SeedReport::default()
    };
    let mut digests = Vec::new();
    let mut pending = vec![(reference.to_owned(), 0usize)];
    while let Some((reference, depth)) = pending.pop() {
        let (digest, body) = get_manifest(site, repo, &reference).await?;
        report.manifests += 1;
        progress(format!("manifest {digest} ({} bytes)", body.len()));
        digests.push(Digest::parse(&digest)?);
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!("manifest {digest} is not JSON: {e}"))?;
        if let Some(children) = doc.get("manifests").and_then(|m| m.as_array()) {
            if depth >= MAX_DEPTH {
                anyhow::bail!("indexes nested deeper than {MAX_DEPTH} levels at {digest}");
            }
            for child in children {
                let d = descriptor_digest(child)?;
                pending.push((d, depth + 1));
            }
            continue;
        }
        let mut blobs = Vec::new();
        if let Some(config) = doc.get("config") {
            blobs.push(descriptor_digest(config)?);
        }
        for layer in doc
            .get("layers")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
        {
            blobs.push(descriptor_digest(layer)?);
        }
        for d in blobs {
            let size = get_blob(site, repo, &d).await?;
            report.blobs += 1;
            report.bytes += size;
            progress(format!("blob {d} ({size} bytes)"));
            digests.push(Digest::parse(&d)?);
        }
    }
    site.cache.pin(&report.pin, &digests).await?;
    progress(format!("pinned {} as {}", digests.len(), report.pin));
    Ok(report)
}

fn descriptor_digest(descriptor: &serde_json::Value) -> anyhow::Result<String> {
    let d = descriptor
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| anyhow::anyhow!("a descriptor has no digest"))?;
    if !route::is_sha256_digest(d) {
        anyhow::bail!("descriptor digest `{d}` is not a sha256 digest");
    }
    Ok(d.to_owned())
}

fn head(path: &str) -> anyhow::Result<http::request::Parts> {
    let (parts, ()) = Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(())?
        .into_parts();
    Ok(parts)
}

async fn get_manifest(
    site: &OciSite,
    repo: &str,
    reference: &str,
) -> anyhow::Result<(String, Vec<u8>)> {
    let outcome = site
        .route(head(&format!("/v2/{repo}/manifests/{reference}"))?)
        .await;
    let status = outcome.response.status();
    let digest = outcome
        .response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = outcome
        .response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading manifest {reference}: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        anyhow::bail!(
            "manifest {repo}:{reference}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let digest =
        digest.ok_or_else(|| anyhow::anyhow!("manifest {reference} came without a digest"))?;
    Ok((digest, body.to_vec()))
}

async fn get_blob(site: &OciSite, repo: &str, digest: &str) -> anyhow::Result<u64> {
    let outcome = site
        .route(head(&format!("/v2/{repo}/blobs/{digest}"))?)
        .await;
    let status = outcome.response.status();
    if status != StatusCode::OK {
        // An error body is a small JSON document saying why (upstream's
        // answer, or the cache's own bound: too large, no room).
        let body = outcome
            .response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        anyhow::bail!(
            "blob {digest}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let mut body = outcome.response.into_body().into_data_stream();
    let mut size = 0u64;
    // Reading to the end waits for the fill's verification.
    while let Some(chunk) = body.next().await {
        size += chunk
            .map_err(|e| anyhow::anyhow!("blob {digest}: {e}"))?
            .len() as u64;
    }
    Ok(size)
}
