//! What a mirrored tag holds, fetched through the cache: its manifest,
//! the platforms kept of an index, every config and layer, and the
//! referrers (signatures, SBOMs) of each manifest. Manifests are verified
//! against their digests and recorded as devices' fetches are
//! (document.rs); blobs go through the fill path (registry/fill.rs), so a
//! device asking for one meanwhile follows the same fill. A dry run reads
//! the same documents from upstream but stores nothing.

use std::{collections::HashSet, sync::Arc};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;

use super::{
    OciSite,
    document::{self, Doc, Failure, Kind, MAX_DOCUMENT},
    referrers,
};
use crate::{
    cache::{Digest, Fill},
    config::Mirror,
    mirror::{Watch, rate::Pull},
    registry::fill::{lead_pulled, read_blob},
    upstream::UpstreamRequest,
};

/// Bounds the walk of nested indexes, as `cache seed` does.
const MAX_DEPTH: usize = 4;
/// Referrers of referrers (a signature of an SBOM) are followed this deep.
const MAX_REFERRER_DEPTH: usize = 2;

/// Everything a tag names, manifests first.
#[derive(Default)]
pub(super) struct Content {
    /// Manifests and blobs, each once: what the pin holds.
    pub digests: Vec<Digest>,
    pub manifests: usize,
    /// Config and layer blobs with their declared sizes.
    pub blobs: Vec<(Digest, u64)>,
}

/// Walks from manifest `top` of `repo`: nested indexes (keeping the
/// platforms `entry` asks for), images, referrers.
pub(super) async fn collect(
    site: &OciSite,
    repo: &str,
    top: &str,
    entry: &Mirror,
    dry_run: bool,
    pull: &Pull,
) -> anyhow::Result<Content> {
    let mut out = Content::default();
    let mut seen = HashSet::new();
    let mut blobs_seen = HashSet::new();
    // (digest, index depth, referrer depth)
    let mut pending = vec![(top.to_owned(), 0usize, 0usize)];
    while let Some((digest, depth, rdepth)) = pending.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        let doc = manifest(site, repo, &digest, dry_run, pull).await?;
        out.digests.push(Digest::parse(&digest)?);
        out.manifests += 1;
        let json: Value = serde_json::from_slice(&doc.bytes)
            .map_err(|e| anyhow::anyhow!("manifest {digest} is not JSON: {e}"))?;
        if let Some(children) = json.get("manifests").and_then(Value::as_array) {
            if depth >= MAX_DEPTH {
                anyhow::bail!("indexes nested deeper than {MAX_DEPTH} levels at {digest}");
            }
            for child in children.iter().filter(|c| platform_wanted(entry, c)) {
                pending.push((descriptor(child)?.0, depth + 1, rdepth));
            }
        } else {
            let config = json.get("config").into_iter();
            let layers = json
                .get("layers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for d in config.chain(layers) {
                let (d, size) = descriptor(d)?;
                let d = Digest::parse(&d)?;
                if blobs_seen.insert(d) {
                    out.blobs.push((d, size));
                }
            }
        }
        if rdepth < MAX_REFERRER_DEPTH {
            let (list, stored) = referrers_of(site, repo, &digest, dry_run).await?;
            // The list devices are served offline is pinned with the rest.
            out.digests.extend(stored);
            for r in list {
                pending.push((descriptor(&r)?.0, 0, rdepth + 1));
            }
        }
    }
    out.digests.extend(out.blobs.iter().map(|(d, _)| *d));
    Ok(out)
}

/// Whether an index entry is kept: every entry without `platforms`, else
/// those whose `os/architecture[/variant]` is listed.
fn platform_wanted(entry: &Mirror, descriptor: &Value) -> bool {
    if entry.platforms.is_empty() {
        return true;
    }
    let Some(p) = descriptor.get("platform") else {
        return false;
    };
    let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default();
    entry.platforms.iter().any(|want| {
        let mut parts = want.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(field("os"))
            && arch == Some(field("architecture"))
            && variant.is_none_or(|v| v == field("variant"))
    })
}

/// A descriptor's sha256 digest and declared size.
fn descriptor(d: &Value) -> anyhow::Result<(String, u64)> {
    let digest = d
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("a descriptor has no digest"))?;
    if Digest::parse(digest).is_err() {
        anyhow::bail!("descriptor digest `{digest}` is not a sha256 digest");
    }
    let size = d.get("size").and_then(Value::as_u64).unwrap_or(0);
    Ok((digest.to_owned(), size))
}

/// Manifest `digest` of `repo`: from the cache when held, else from
/// upstream, checked against its digest (and, unless a dry run, stored
/// and recorded for the repository as a device's fetch would be).
pub(super) async fn manifest(
    site: &OciSite,
    repo: &str,
    digest: &str,
    dry_run: bool,
    pull: &Pull,
) -> anyhow::Result<Doc> {
    let d = Digest::parse(digest)?;
    let key = format!("manifests/{digest}");
    if let Some(blob) = site.cache.get(&d).await? {
        let bytes = read_blob(&blob, MAX_DOCUMENT).await?;
        let known = site.cache.get_ref(&site.host, repo, &key).await?;
        let doc = Doc {
            media_type: known
                .as_ref()
                .map_or_else(|| document::media_type_of(&bytes), |e| e.media_type.clone()),
            digest: digest.to_owned(),
            bytes,
            note: None,
        };
        if known.is_none() && !dry_run {
            // Held for another repository: recorded for this one too, so
            // its devices are served it offline.
            document::remember(site, repo, &key, &doc, Kind::Manifest).await;
        }
        return Ok(doc);
    }
    let req = document::accept(
        UpstreamRequest::get(format!("/v2/{repo}/manifests/{digest}"))
            .with_scope(OciSite::scope(repo)),
    );
    let doc = document::fetch(site, req, Kind::Manifest)
        .await
        .map_err(|f| anyhow::anyhow!("manifest {repo}@{digest}: {}", f.describe()))?;
    if doc.digest != digest {
        anyhow::bail!(
            "upstream sent a manifest with digest {} for {repo}@{digest}",
            doc.digest
        );
    }
    pull.take(doc.bytes.len()).await;
    if !dry_run {
        document::store(site, &doc).await;
        document::remember(site, repo, &key, &doc, Kind::Manifest).await;
    }
    Ok(doc)
}

/// The referrers of `digest`, and the digest the list is stored under:
/// through the site's own referrers route (which caches the list for
/// devices, and reads the tag schema when upstream lacks the API); a dry
/// run asks upstream and stores nothing.
async fn referrers_of(
    site: &OciSite,
    repo: &str,
    digest: &str,
    dry_run: bool,
) -> anyhow::Result<(Vec<Value>, Option<Digest>)> {
    let path = format!("/v2/{repo}/referrers/{digest}");
    let bytes = if dry_run {
        let api = UpstreamRequest::get(&path)
            .with_scope(OciSite::scope(repo))
            .with_header(
                http::header::ACCEPT,
                http::HeaderValue::from_static(referrers::MT_INDEX),
            );
        match document::fetch(site, api, Kind::Other).await {
            Ok(doc) => doc.bytes,
            Err(Failure::Status(r)) if referrers::lacks_api(r.status()) => {
                let tag = referrers::schema_tag(digest);
                let req = document::accept(
                    UpstreamRequest::get(format!("/v2/{repo}/manifests/{tag}"))
                        .with_scope(OciSite::scope(repo)),
                );
                match document::fetch(site, req, Kind::Manifest).await {
                    Ok(doc) => doc.bytes,
                    Err(Failure::Status(r)) if r.status() == StatusCode::NOT_FOUND => {
                        return Ok((Vec::new(), None));
                    }
                    Err(f) => anyhow::bail!("referrers of {digest}: {}", f.describe()),
                }
            }
            Err(f) => anyhow::bail!("referrers of {digest}: {}", f.describe()),
        }
    } else {
        let (parts, ()) = Request::builder()
            .method(Method::GET)
            .uri(&path)
            .body(())?
            .into_parts();
        let outcome = site.route(parts).await;
        let status = outcome.response.status();
        let body = outcome
            .response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the referrers of {digest}: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            anyhow::bail!(
                "referrers of {digest}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        body
    };
    let list = referrers::entries(&bytes)
        .ok_or_else(|| anyhow::anyhow!("the referrers list of {digest} is not an image index"))?;
    let stored = (!dry_run)
        .then(|| Digest::of(&bytes))
        .filter(|d| site.cache.held_size(d).is_some());
    Ok((list, stored))
}

/// How a blob fill ended for the mirror.
pub(super) enum Filled {
    /// Held already, or filled by a device's fill the mirror followed.
    Present,
    /// Fetched by the mirror: its size.
    Fetched(u64),
    /// The window closed first.
    Stopped,
}

/// Fills blob `digest` of `repo` unless held, through `pull` (the
/// mirror's rate and count). Reports the run's bytes against `total`
/// through `watch` every half second; gives up at `deadline` (the fill stops too unless a device
/// follows it).
pub(super) async fn fill_blob(
    site: &OciSite,
    repo: &str,
    digest: Digest,
    pull: &Arc<Pull>,
    deadline: Option<tokio::time::Instant>,
    watch: &dyn Watch,
    total: u64,
) -> anyhow::Result<Filled> {
    let (reader, fetched) = match site.cache.begin_fill(&digest, None).await? {
        Fill::Done(_) => {
            vouch(site, repo, &digest).await;
            return Ok(Filled::Present);
        }
        Fill::Follower(reader) => (reader, false),
        Fill::Leader(writer) => {
            let reader = writer.reader();
            let req = UpstreamRequest::get(format!("/v2/{repo}/blobs/{digest}"))
                .with_scope(OciSite::scope(repo));
            tokio::spawn(lead_pulled(
                site.upstream.clone(),
                req,
                writer,
                Some(pull.clone()),
            ));
            (reader, true)
        }
    };
    let wait = reader.wait();
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);
    let stop = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            done = &mut wait => {
                let size = done.map_err(|e| anyhow::anyhow!("blob {digest}: {e}"))?;
                vouch(site, repo, &digest).await;
                return Ok(if fetched { Filled::Fetched(size) } else { Filled::Present });
            }
            _ = tick.tick() => watch.bytes(pull.pulled(), total, ""),
            () = &mut stop => return Ok(Filled::Stopped),
        }
    }
}

/// Records that `repo`'s upstream has `digest` (a manifest it serves lists
/// it, and a registry accepts a manifest only when its blobs are in the
/// repository): with device groups, a device allowed `repo` is then served
/// the mirrored blob through it without an upstream HEAD, which the
/// upstream link being down would otherwise turn into a 502 (vouch.rs).
async fn vouch(site: &OciSite, repo: &str, digest: &Digest) {
    if let Err(e) = site.cache.vouch(&site.host, repo, digest).await {
        tracing::warn!(site = %site.host, %repo, %digest, error = %e, "cannot record a mirrored blob's repository");
    }
}
