//! Manifests, tag lists and referrers: small JSON documents.
//!
//! By tag (and for tag lists and referrers) they are mutable: cached by
//! name, served from the cache while younger than `tag_ttl`, then
//! revalidated (a HEAD first for manifests: Docker Hub does not count HEADs
//! against its pull limit). When upstream is down, slow or rate limiting,
//! the last good copy is served at once and audited as stale. By digest a
//! manifest is immutable: verified against its digest and kept for good.
//! Referrers lists go through [`resolve`] too, with a fetch of their own
//! (`referrers.rs`).

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::{
    OciSite,
    query::Query,
    response::{self, MANIFEST_ACCEPT},
    route::Reference,
};
use crate::{
    audit::{CacheStatus, Fault},
    cache::{Digest, RefEntry},
    proxy::body,
    registry::Outcome,
    upstream::{UpstreamError, UpstreamRequest},
};

/// Largest document the gateway reads into memory (manifests are KiB).
pub(super) const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
const DIGEST_HEADER: &str = "docker-content-digest";
/// How long a device waits on upstream when a copy is held; past it the
/// copy is served, marked stale.
const STALE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// What kind of document, for keys, headers and checks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Manifest,
    Other,
}

pub async fn manifest(
    site: &OciSite,
    method: &Method,
    name: &str,
    reference: &Reference,
) -> Outcome {
    // The API defines no query for manifests: none goes upstream.
    let path = format!("/v2/{name}/manifests/{}", reference.as_str());
    match reference {
        Reference::Tag(tag) => {
            let key = format!("manifests/{tag}");
            if let Some(o) = stale_at_once(site, method, name, &key, &path).await {
                return o;
            }
            mutable(site, method, name, &key, &path, Kind::Manifest).await
        }
        Reference::Digest(d) => by_digest(site, method, name, d, &path).await,
    }
}

/// The tag list: one document per repository, fetched whole and cached
/// under one key; a device's page (`n`, `last`) is cut from it here, so
/// pages work offline too and device queries never multiply cache keys.
pub async fn tags(site: &OciSite, method: &Method, name: &str, query: &Query) -> Outcome {
    let path = format!("/v2/{name}/tags/list");
    let req = UpstreamRequest::get(&path).with_scope(OciSite::scope(name));
    let resolved = match resolve(
        site,
        name,
        "tags/list",
        Kind::Other,
        None,
        fetch(site, req, Kind::Other),
    )
    .await
    {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    if query.n.is_none() && query.last.is_none() {
        return resolved.serve(method, &resolved.doc, Kind::Other);
    }
    let Some((bytes, next)) =
        super::query::page(&resolved.doc.bytes, query.n, query.last.as_deref())
    else {
        return response::failed(
            StatusCode::BAD_GATEWAY,
            "UNAVAILABLE",
            Fault::Upstream,
            format!("upstream's tag list of {name} is not a tag list"),
        );
    };
    let doc = Doc::composed(Bytes::from(bytes), &resolved.doc.media_type, None);
    let mut o = resolved.serve(method, &doc, Kind::Other);
    if let (Some(next), Some(n)) = (next, query.n)
        && let Ok(link) = HeaderValue::from_str(&format!(
            "</v2/{name}/tags/list?n={n}&last={next}>; rel=\"next\""
        ))
    {
        o.response.headers_mut().insert(header::LINK, link);
    }
    o
}

/// A fetched or cached document.
pub(super) struct Doc {
    pub bytes: Bytes,
    pub digest: String,
    pub media_type: String,
    /// How a document just fetched was obtained, when that is worth an
    /// audit line (a referrers list read from the tag schema); never
    /// stored, so a cached copy has none.
    pub note: Option<String>,
}

impl Doc {
    /// A document the gateway composed itself: its digest is its bytes'.
    pub fn composed(bytes: Bytes, media_type: &str, note: Option<String>) -> Self {
        Self {
            digest: format!("sha256:{}", Digest::of(&bytes).hex()),
            bytes,
            media_type: media_type.to_owned(),
            note,
        }
    }
}

/// A mutable document as resolved against the cache and upstream.
pub(super) struct Resolved {
    pub doc: Doc,
    /// `hit`, `miss`, `revalidated` or `stale`.
    pub cache: CacheStatus,
    /// When upstream was first asked, if it was.
    pub started: Option<Instant>,
    /// Why upstream could not refresh a copy that is served stale.
    pub stale_because: Option<String>,
}

impl Resolved {
    /// The response for `doc` (possibly a transformed copy of `self.doc`)
    /// with this resolution's audit fields.
    pub fn serve(&self, method: &Method, doc: &Doc, kind: Kind) -> Outcome {
        let mut o = serve(method, doc, kind, self.cache, self.started);
        match &self.stale_because {
            Some(detail) => {
                o.fault = Some(Fault::Upstream);
                o.detail = Some(detail.clone());
            }
            None => o.detail.clone_from(&doc.note),
        }
        o
    }
}

/// A tag past `tag_ttl` but inside `cache.stale_while_revalidate`: its
/// held manifest at once, while it is revalidated in the background
/// (swr.rs). `None` when the tag is fresh, past the window, not held, or
/// no revalidation could be started: the caller resolves it as usual.
async fn stale_at_once(
    site: &OciSite,
    method: &Method,
    name: &str,
    key: &str,
    path: &str,
) -> Option<Outcome> {
    if site.stale_while_revalidate.is_zero() {
        return None;
    }
    let entry = site.cache.get_ref(&site.host, name, key).await.ok()??;
    if !super::swr::in_window(site, entry.fetched_at) {
        return None;
    }
    let doc = load(site, &entry).await?;
    if !super::swr::start(site, name, key, path) {
        return None;
    }
    let mut o = serve(method, &doc, Kind::Manifest, CacheStatus::Stale, None);
    o.detail = Some("past tag_ttl: served at once, revalidating in the background".to_owned());
    Some(o)
}

async fn mutable(
    site: &OciSite,
    method: &Method,
    name: &str,
    key: &str,
    path: &str,
    kind: Kind,
) -> Outcome {
    // Revalidation: a manifest whose digest has not moved is not fetched.
    let head = (kind == Kind::Manifest)
        .then(|| accept(UpstreamRequest::head(path).with_scope(OciSite::scope(name))));
    let req = UpstreamRequest::get(path).with_scope(OciSite::scope(name));
    let req = if kind == Kind::Manifest {
        accept(req)
    } else {
        req
    };
    match resolve(site, name, key, kind, head, fetch(site, req, kind)).await {
        Ok(resolved) => resolved.serve(method, &resolved.doc, kind),
        Err(outcome) => outcome,
    }
}

/// Finds the document cached under `key` in repository `name`: served
/// while younger than `tag_ttl`; else refreshed with `get` (after a `head`
/// that may show the held copy unchanged), or served stale when upstream
/// fails and a copy is held. `get` runs only when upstream is asked.
/// `Err` is the outcome to answer with: upstream's own answer (a 404) or
/// the failure when no copy is held.
pub(super) async fn resolve(
    site: &OciSite,
    name: &str,
    key: &str,
    kind: Kind,
    head: Option<UpstreamRequest>,
    get: impl Future<Output = Result<Doc, Failure>>,
) -> Result<Resolved, Outcome> {
    let cached = match site.cache.get_ref(&site.host, name, key).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cache index read failed; going upstream");
            None
        }
    };
    let held = match &cached {
        Some(entry) => load(site, entry).await,
        None => None,
    };
    let is_fresh = |c: &Option<RefEntry>| {
        c.as_ref().is_some_and(|entry| {
            super::super::age_secs(entry.fetched_at) < site.tag_ttl.as_secs() as i64
        })
    };
    // Missing or stale here: another gateway of the site may have
    // confirmed the tag more recently (shared.rs).
    let (cached, held) = if is_fresh(&cached) && held.is_some() {
        (cached, held)
    } else {
        match super::shared::adopt(site, name, key, kind, cached.as_ref()).await {
            Some((entry, doc)) => (Some(entry), Some(doc)),
            None => (cached, held),
        }
    };
    let fresh = is_fresh(&cached);
    let held = match held {
        Some(doc) if fresh => {
            return Ok(Resolved {
                doc,
                cache: CacheStatus::Hit,
                started: None,
                stale_because: None,
            });
        }
        other => other,
    };
    // Upstream was just found unreachable (swr.rs): the held copy at once,
    // not another wait on upstream for every request of an outage.
    let held = match held {
        Some(doc) if site.revalidations.backing_off(Instant::now()) => {
            return Ok(Resolved {
                doc,
                cache: CacheStatus::Stale,
                started: None,
                stale_because: Some(
                    "upstream unreachable at the last attempt: served from the cache until the next retry"
                        .to_owned(),
                ),
            });
        }
        other => other,
    };

    let started = Instant::now();
    let refresh = async {
        if let (Some(head), Some(entry), Some(_)) = (head, &cached, &held) {
            match site.upstream.send(head).await {
                Ok(resp)
                    if resp.status() == StatusCode::OK
                        && header_str(resp.headers(), DIGEST_HEADER)
                            == Some(entry.digest.as_str()) =>
                {
                    return Refresh::Unchanged;
                }
                // Upstream is down: no point asking again with a GET.
                Err(e) => return Refresh::Fetched(Err(Failure::Upstream(e))),
                Ok(resp) if is_outage(resp.status()) => {
                    let status = resp.status();
                    return Refresh::Fetched(Err(Failure::Status(response::error(
                        status,
                        "UNAVAILABLE",
                        &format!("upstream answered {status}"),
                    ))));
                }
                Ok(_) => {}
            }
        }
        Refresh::Fetched(get.await)
    };
    // With a copy in hand, upstream gets a short deadline: the device is
    // served the last good copy at once rather than after upstream's
    // timeouts.
    let refreshed = if held.is_some() {
        match tokio::time::timeout(STALE_DEADLINE, refresh).await {
            Ok(r) => r,
            Err(_) => Refresh::Fetched(Err(Failure::Body(format!(
                "upstream did not answer within {STALE_DEADLINE:?}"
            )))),
        }
    } else {
        refresh.await
    };
    if held.is_some() {
        let reached = match &refreshed {
            Refresh::Unchanged | Refresh::Fetched(Ok(_)) => true,
            Refresh::Fetched(Err(Failure::Status(resp))) => !is_outage(resp.status()),
            Refresh::Fetched(Err(_)) => false,
        };
        super::swr::attempted(site, reached);
    }
    let fetched = match (refreshed, held) {
        (Refresh::Unchanged, Some(doc)) => {
            remember(site, name, key, &doc, kind).await;
            return Ok(Resolved {
                doc,
                cache: CacheStatus::Revalidated,
                started: Some(started),
                stale_because: None,
            });
        }
        (Refresh::Unchanged, None) => (
            Err(Failure::Body("revalidated a copy not held".into())),
            None,
        ),
        (Refresh::Fetched(f), held) => (f, held),
    };
    match fetched {
        (Ok(doc), _) => {
            store(site, &doc).await;
            remember(site, name, key, &doc, kind).await;
            let label = match &cached {
                Some(entry) if entry.digest == doc.digest => CacheStatus::Revalidated,
                _ => CacheStatus::Miss,
            };
            Ok(Resolved {
                doc,
                cache: label,
                started: Some(started),
                stale_because: None,
            })
        }
        (Err(Failure::Status(resp)), held) if !is_outage(resp.status()) => {
            if resp.status() == StatusCode::FORBIDDEN && held.is_some() {
                // Upstream revoked access: the copy held must not be served
                // stale later either (a 401 is only the token dance failing).
                if let Err(e) = site.cache.remove_ref(&site.host, name, key).await {
                    tracing::warn!(error = %e, %name, %key, "cannot forget a revoked reference");
                }
            }
            let mut o = Outcome::new(resp);
            o.cache = Some(CacheStatus::Miss);
            o.upstream_ms = Some(ms(started));
            Err(o)
        }
        // The classic offline case: upstream down, copy held.
        (Err(failure), Some(doc)) => Ok(Resolved {
            doc,
            cache: CacheStatus::Stale,
            started: Some(started),
            stale_because: Some(failure.describe()),
        }),
        (Err(failure), None) => Err(failure.into_outcome(started)),
    }
}

async fn by_digest(
    site: &OciSite,
    method: &Method,
    name: &str,
    digest: &str,
    path: &str,
) -> Outcome {
    let key = format!("manifests/{digest}");
    if let Some(hit) = held_manifest(site, method, name, digest, &key).await {
        return hit;
    }
    // Another gateway of the site fetched it for this repository.
    if let Some((_, doc)) = super::shared::adopt(site, name, &key, Kind::Manifest, None).await {
        let mut o = serve(method, &doc, Kind::Manifest, CacheStatus::Miss, None);
        o.source = Some(crate::audit::Source::Store);
        return o;
    }
    if let Some(size) = Digest::parse(digest)
        .ok()
        .and_then(|d| site.cache.held_size(&d))
        .filter(|size| *size > MAX_DOCUMENT as u64)
    {
        // A blob no manifest this gateway serves can be (a layer): known
        // without asking upstream, which may answer anything to it (the
        // distribution registry says 500).
        let mut o = Outcome::new(response::error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("{digest} is not a manifest"),
        ));
        o.detail = Some(format!(
            "{digest} is held as a blob of {size} bytes, larger than any manifest ({MAX_DOCUMENT} bytes)"
        ));
        o.cache = Some(CacheStatus::Hit);
        return o;
    }
    let started = Instant::now();
    let req = accept(UpstreamRequest::get(path).with_scope(OciSite::scope(name)));
    match fetch(site, req, Kind::Manifest).await {
        Ok(doc) if doc.digest != digest => {
            // Wrong bytes for a digest: an error, and nothing is kept.
            let mut o = response::failed(
                StatusCode::BAD_GATEWAY,
                "MANIFEST_INVALID",
                Fault::Upstream,
                format!(
                    "upstream sent a manifest with digest {} for {digest}",
                    doc.digest
                ),
            );
            o.upstream_ms = Some(ms(started));
            o
        }
        Ok(doc) => {
            store(site, &doc).await;
            remember(site, name, &key, &doc, Kind::Manifest).await;
            serve(
                method,
                &doc,
                Kind::Manifest,
                CacheStatus::Miss,
                Some(started),
            )
        }
        Err(Failure::Status(resp)) if !is_outage(resp.status()) => {
            let mut o = Outcome::new(resp);
            o.cache = Some(CacheStatus::Miss);
            o.upstream_ms = Some(ms(started));
            o
        }
        Err(failure) => failure.into_outcome(started),
    }
}

/// A manifest held for this repository, streamed from its file like a
/// blob (never read into memory). Only a digest this repository fetched
/// as a manifest counts (its reference is recorded): a blob held under
/// the same digest is not one; the caller answers `MANIFEST_UNKNOWN` for
/// one too large to be a manifest, and asks upstream about the others
/// (a manifest may have been fetched as a blob).
async fn held_manifest(
    site: &OciSite,
    method: &Method,
    name: &str,
    digest: &str,
    key: &str,
) -> Option<Outcome> {
    let d = Digest::parse(digest).ok()?;
    let entry = match site.cache.get_ref(&site.host, name, key).await {
        Ok(entry) => entry?,
        Err(e) => {
            tracing::error!(error = %e, "cache index read failed; going upstream");
            return None;
        }
    };
    if entry.digest != digest {
        return None;
    }
    let blob = site.cache.get(&d).await.ok()??;
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        crate::registry::fill::stream_body(blob.stream(None))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&entry.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.size()));
    if let Ok(v) = HeaderValue::from_str(digest) {
        h.insert(DIGEST_HEADER, v.clone());
        h.insert(header::ETAG, v);
    }
    let mut o = Outcome::new(resp);
    o.cache = Some(CacheStatus::Hit);
    Some(o)
}

enum Refresh {
    /// Upstream still has the digest held.
    Unchanged,
    Fetched(Result<Doc, Failure>),
}

pub(super) enum Failure {
    /// Upstream answered with a status other than 200.
    Status(Response<body::Body>),
    Upstream(UpstreamError),
    /// The body could not be read, was too large, or lied about its digest.
    Body(String),
}

impl Failure {
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Status(r) => format!("upstream answered {}", r.status()),
            Self::Upstream(e) => e.to_string(),
            Self::Body(d) => d.clone(),
        }
    }

    fn into_outcome(self, started: Instant) -> Outcome {
        let detail = self.describe();
        let mut o = match self {
            Self::Status(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                let mut o = Outcome::new(resp);
                o.fault = Some(Fault::Upstream);
                o.detail = Some(detail);
                o
            }
            Self::Status(resp) => {
                let mut o = response::failed(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    Fault::Upstream,
                    detail,
                );
                o.response.headers_mut().extend(
                    resp.headers()
                        .get(header::RETRY_AFTER)
                        .map(|v| (header::RETRY_AFTER, v.clone())),
                );
                o
            }
            Self::Upstream(e) => {
                let status = if matches!(e, UpstreamError::Timeout { .. }) {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                let mut o = response::failed(status, "UNAVAILABLE", e.fault().into(), detail);
                o.fault = Some(e.fault().into());
                o
            }
            Self::Body(_) => response::failed(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                Fault::Upstream,
                detail,
            ),
        };
        o.upstream_ms = Some(ms(started));
        o
    }
}

/// Statuses that mean "upstream cannot answer now" rather than an answer:
/// they make the gateway serve a stale copy when it holds one. A 403 is an
/// answer: access was revoked, and revoked content is not served stale.
fn is_outage(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
}

pub(super) async fn fetch(
    site: &OciSite,
    req: UpstreamRequest,
    kind: Kind,
) -> Result<Doc, Failure> {
    let resp = site.upstream.send(req).await.map_err(Failure::Upstream)?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let (parts, _) = resp.into_parts();
        let code = match (status, kind) {
            (StatusCode::NOT_FOUND, Kind::Manifest) => "MANIFEST_UNKNOWN",
            (StatusCode::NOT_FOUND, Kind::Other) => "NAME_UNKNOWN",
            (StatusCode::FORBIDDEN, _) => "DENIED",
            _ => "UNAVAILABLE",
        };
        let mut out = response::error(status, code, &format!("upstream answered {status}"));
        if let Some(v) = parts.headers.get(header::RETRY_AFTER) {
            out.headers_mut().insert(header::RETRY_AFTER, v.clone());
        }
        return Err(Failure::Status(out));
    }
    let media_type = header_str(resp.headers(), header::CONTENT_TYPE.as_str())
        .map(str::to_owned)
        .unwrap_or_default();
    let announced = header_str(resp.headers(), DIGEST_HEADER).map(str::to_owned);
    let mut body = std::pin::pin!(site.upstream.body_stream(resp));
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Failure::Upstream)?;
        if bytes.len() + chunk.len() > MAX_DOCUMENT {
            return Err(Failure::Body(format!(
                "document larger than {MAX_DOCUMENT} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let bytes = Bytes::from(bytes);
    let digest = format!("sha256:{}", Digest::of(&bytes).hex());
    if let Some(announced) = announced
        && kind == Kind::Manifest
        && announced.starts_with("sha256:")
        && announced != digest
    {
        return Err(Failure::Body(format!(
            "upstream announced {announced} but sent content with digest {digest}"
        )));
    }
    let media_type = if media_type.is_empty() || media_type == "application/octet-stream" {
        media_type_of(&bytes)
    } else {
        media_type
    };
    Ok(Doc {
        bytes,
        digest,
        media_type,
        note: None,
    })
}

/// Stores a document's bytes by digest (a no-op when held or being filled).
pub(super) async fn store(site: &OciSite, doc: &Doc) {
    if let Err(e) = crate::registry::fill::store_bytes(&site.cache, &doc.bytes).await {
        tracing::warn!(error = %e, digest = %doc.digest, "could not cache a document");
    }
}

/// Points `key` (and, for manifests, the digest) at the document, fresh now.
/// A tag is also published to the shared store, if any (shared.rs).
pub(super) async fn remember(site: &OciSite, name: &str, key: &str, doc: &Doc, kind: Kind) {
    let entry = RefEntry {
        digest: doc.digest.clone(),
        media_type: doc.media_type.clone(),
        size: doc.bytes.len() as u64,
        fetched_at: super::super::unix_now(),
    };
    super::shared::publish(site, name, key, doc, kind, entry.fetched_at);
    let mut keys = vec![key.to_owned()];
    if kind == Kind::Manifest {
        keys.push(format!("manifests/{}", doc.digest));
    }
    for k in keys {
        if let Err(e) = site
            .cache
            .put_ref(&site.host, name, &k, entry.clone())
            .await
        {
            tracing::warn!(error = %e, key = %k, "could not record a reference");
        }
    }
}

async fn load(site: &OciSite, entry: &RefEntry) -> Option<Doc> {
    let digest = Digest::parse(&entry.digest).ok()?;
    let blob = site.cache.get(&digest).await.ok()??;
    let bytes = crate::registry::fill::read_blob(&blob, MAX_DOCUMENT)
        .await
        .ok()?;
    Some(Doc {
        bytes,
        digest: entry.digest.clone(),
        media_type: entry.media_type.clone(),
        note: None,
    })
}

fn serve(
    method: &Method,
    doc: &Doc,
    kind: Kind,
    cache: CacheStatus,
    started: Option<Instant>,
) -> Outcome {
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        body::full(doc.bytes.clone())
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&doc.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(doc.bytes.len()));
    if kind == Kind::Manifest
        && let Ok(v) = HeaderValue::from_str(&doc.digest)
    {
        h.insert(DIGEST_HEADER, v.clone());
        h.insert(header::ETAG, v);
    }
    let mut o = Outcome::new(resp);
    o.cache = Some(cache);
    o.upstream_ms = started.map(ms);
    o
}

pub(super) fn accept(mut req: UpstreamRequest) -> UpstreamRequest {
    for t in MANIFEST_ACCEPT {
        req = req.with_header(header::ACCEPT, HeaderValue::from_static(t));
    }
    req
}

/// The `mediaType` a manifest declares, for one stored without its header.
pub(super) fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned())
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
