//! `index.yaml`: cached (upstream's bytes as a blob, an objects entry
//! with its validators), served while younger than the site's `ttl`, then
//! revalidated with a conditional GET (`If-None-Match`, `If-Modified-Since`;
//! a 304 only renews it). With a copy held, upstream gets a short deadline
//! for its answer's headers, and an upstream that is down, answers 5xx, 429 or 401,
//! or sends an index that does not parse, leaves the last good copy
//! served stale. Other answers (a 404) are passed on.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::{
    HelmSite, failed,
    index::{Index, MAX_INDEX},
    ms,
};
use crate::{
    audit::{CacheStatus, Fault},
    cache::{Digest, ObjectEntry},
    proxy::body,
    registry::{
        Outcome,
        fill::{read_blob, store_bytes},
    },
    upstream::{UpstreamError, UpstreamRequest},
};

/// How long a device waits for upstream's answer when a copy is held;
/// past it the copy is served, marked stale.
const STALE_DEADLINE: Duration = Duration::from_secs(3);

/// Upstream response headers kept with the index and replayed.
const KEPT_HEADERS: [&str; 3] = ["etag", "last-modified", "content-type"];

/// The index as resolved against the cache and upstream.
pub(super) struct Current {
    pub index: Arc<Index>,
    pub entry: ObjectEntry,
    pub cache: CacheStatus,
    pub started: Option<Instant>,
    /// Why upstream could not refresh a copy that is served stale.
    pub stale_because: Option<String>,
}

/// `GET`/`HEAD` of `index.yaml`.
pub(super) async fn serve_index(site: &HelmSite, method: &Method, plain_http: bool) -> Outcome {
    let current = match current(site, false).await {
        Ok(c) => c,
        Err(o) => return o,
    };
    let bytes = current.index.served(plain_http);
    let len = bytes.len();
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        body::full(bytes)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    let content_type = current
        .entry
        .header("content-type")
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or(HeaderValue::from_static("application/x-yaml"));
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let mut o = Outcome::new(resp);
    o.cache = Some(current.cache);
    o.upstream_ms = current.started.map(ms);
    let dropped = (!current.index.dropped.is_empty()).then(|| {
        format!(
            "{} chart versions left out of the served index (first: {})",
            current.index.dropped.len(),
            current.index.dropped[0]
        )
    });
    if current.stale_because.is_some() {
        o.fault = Some(Fault::Upstream);
    }
    let details: Vec<String> = current.stale_because.into_iter().chain(dropped).collect();
    o.detail = (!details.is_empty()).then(|| details.join("; "));
    o
}

/// The index held, parsed, however old, without asking upstream.
pub(super) async fn held(site: &HelmSite) -> Option<(Arc<Index>, ObjectEntry)> {
    let entry = match site.cache.get_object(&site.host, &site.index_path).await {
        Ok(e) => e?,
        Err(e) => {
            tracing::error!(error = %e, "cache index read failed; going upstream");
            return None;
        }
    };
    let digest = Digest::parse(&entry.digest).ok()?;
    if let Some(parsed) = site.parsed().filter(|p| p.digest == digest) {
        return Some((parsed, entry));
    }
    // After a restart, or another index fetched meanwhile: from the blob.
    let blob = site.cache.get(&digest).await.ok()??;
    let bytes = read_blob(&blob, MAX_INDEX).await.ok()?;
    match parse(site, bytes).await {
        Ok(index) => {
            let index = Arc::new(index);
            site.set_parsed(index.clone());
            Some((index, entry))
        }
        Err(e) => {
            tracing::warn!(site = %site.host, error = %e, "the cached index.yaml does not parse; fetching it again");
            None
        }
    }
}

/// The index to answer with: the copy held while fresh (unless `force`),
/// else refreshed from upstream, or the copy held served stale. `Err` is
/// the answer when there is no index to give.
pub(super) async fn current(site: &HelmSite, force: bool) -> Result<Current, Outcome> {
    let fresh =
        |entry: &ObjectEntry| super::super::age_secs(entry.fetched_at) < site.ttl.as_secs() as i64;
    if !force && let Some((index, entry)) = held(site).await.filter(|(_, e)| fresh(e)) {
        return Ok(hit(index, entry));
    }
    let _one = site.refreshing.lock().await;
    // Whoever held the lock before may have refreshed it.
    let held = held(site).await;
    if !force && let Some((index, entry)) = held.clone().filter(|(_, e)| fresh(e)) {
        return Ok(hit(index, entry));
    }
    let started = Instant::now();
    let fetched = fetch(site, held.as_ref().map(|(_, e)| e)).await;
    match (fetched, held) {
        (Ok(Fetched::NotModified(headers)), Some((index, mut entry))) => {
            for (name, value) in headers {
                entry.headers.retain(|(n, _)| *n != name);
                entry.headers.push((name, value));
            }
            entry.fetched_at = super::super::unix_now();
            remember(site, &entry).await;
            Ok(Current {
                index,
                entry,
                cache: CacheStatus::Revalidated,
                started: Some(started),
                stale_because: None,
            })
        }
        (Ok(Fetched::NotModified(_)), None) => Err(failed(
            StatusCode::BAD_GATEWAY,
            Fault::Upstream,
            "upstream answered 304 Not Modified to an unconditional request for index.yaml",
        )),
        (Ok(Fetched::Index(index, headers)), held) => {
            let index = Arc::new(index);
            let entry = ObjectEntry {
                digest: format!("sha256:{}", index.digest.hex()),
                size: index.upstream_bytes().len() as u64,
                headers,
                fetched_at: super::super::unix_now(),
            };
            if let Err(e) = store_bytes(&site.cache, index.upstream_bytes()).await {
                tracing::warn!(site = %site.host, error = %e, "could not cache index.yaml");
            }
            remember(site, &entry).await;
            for why in &index.dropped {
                tracing::warn!(site = %site.host, "index.yaml: left out of the served index: {why}");
            }
            site.set_parsed(index.clone());
            let cache = match held {
                Some((old, _)) if old.digest == index.digest => CacheStatus::Revalidated,
                _ => CacheStatus::Miss,
            };
            Ok(Current {
                index,
                entry,
                cache,
                started: Some(started),
                stale_because: None,
            })
        }
        (Err(Failure::Status(status)), _) if !is_outage(status) => {
            let mut o = super::text_outcome(
                status,
                &format!("upstream answered {status} for index.yaml"),
            );
            o.cache = Some(CacheStatus::Miss);
            o.upstream_ms = Some(ms(started));
            Err(o)
        }
        (Err(failure), Some((index, entry))) => Ok(Current {
            index,
            entry,
            cache: CacheStatus::Stale,
            started: Some(started),
            stale_because: Some(format!("{}; served the copy held", failure.describe())),
        }),
        (Err(failure), None) => {
            let mut o = failure.into_outcome();
            o.upstream_ms = Some(ms(started));
            Err(o)
        }
    }
}

fn hit(index: Arc<Index>, entry: ObjectEntry) -> Current {
    Current {
        index,
        entry,
        cache: CacheStatus::Hit,
        started: None,
        stale_because: None,
    }
}

async fn remember(site: &HelmSite, entry: &ObjectEntry) {
    if let Err(e) = site
        .cache
        .put_object(&site.host, &site.index_path, entry.clone())
        .await
    {
        tracing::warn!(site = %site.host, error = %e, "could not record index.yaml");
    }
}

enum Fetched {
    /// 304: the copy held is current; upstream's new validators, if any.
    NotModified(Vec<(String, String)>),
    Index(Index, Vec<(String, String)>),
}

enum Failure {
    /// Upstream answered with a status other than 200 or 304.
    Status(StatusCode),
    Upstream(UpstreamError),
    /// The body could not be read, was too large, or did not parse.
    Body(String),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Self::Status(s) => format!("upstream answered {s} for index.yaml"),
            Self::Upstream(e) => e.to_string(),
            Self::Body(d) => d.clone(),
        }
    }

    fn into_outcome(self) -> Outcome {
        let status = match &self {
            Self::Status(StatusCode::TOO_MANY_REQUESTS) => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let fault = match &self {
            Self::Upstream(e) => e.fault().into(),
            _ => Fault::Upstream,
        };
        failed(status, fault, self.describe())
    }
}

/// Statuses that mean "upstream cannot answer now" rather than an answer:
/// the copy held is served stale.
fn is_outage(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
}

/// Asks upstream for the index, conditionally when `held` has validators.
/// With a copy held, upstream's headers must come within
/// [`STALE_DEADLINE`]; the body then comes at the link's pace (bounded by
/// the upstream client's idle timeout and progress floor), so that a
/// large index on a slow link still gets refreshed.
async fn fetch(site: &HelmSite, held: Option<&ObjectEntry>) -> Result<Fetched, Failure> {
    let mut req = UpstreamRequest::get("/index.yaml");
    for (ours, theirs) in [
        ("etag", header::IF_NONE_MATCH),
        ("last-modified", header::IF_MODIFIED_SINCE),
    ] {
        if let Some(v) = held
            .and_then(|e| e.header(ours))
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            req = req.with_header(theirs, v);
        }
    }
    let resp = if held.is_some() {
        tokio::time::timeout(STALE_DEADLINE, site.upstream.send(req))
            .await
            .map_err(|_| {
                Failure::Body(format!("upstream did not answer within {STALE_DEADLINE:?}"))
            })?
    } else {
        site.upstream.send(req).await
    }
    .map_err(Failure::Upstream)?;
    let kept: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let v = resp.headers().get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), v.to_owned()))
        })
        .collect();
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_MODIFIED if held.is_some() => return Ok(Fetched::NotModified(kept)),
        status => return Err(Failure::Status(status)),
    }
    let announced = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        Failure::Body(format!(
            "upstream's index.yaml is larger than {} MiB",
            MAX_INDEX >> 20
        ))
    };
    if announced.is_some_and(|n| n > MAX_INDEX as u64) {
        return Err(too_large());
    }
    let mut stream = std::pin::pin!(site.upstream.body_stream(resp));
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Failure::Upstream)?;
        if bytes.len() + chunk.len() > MAX_INDEX {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let index = parse(site, Bytes::from(bytes))
        .await
        .map_err(|e| Failure::Body(format!("upstream's {e}")))?;
    Ok(Fetched::Index(index, kept))
}

/// Parses on the blocking pool: a large index takes a while.
async fn parse(site: &HelmSite, bytes: Bytes) -> Result<Index, String> {
    let repo = site.repo.clone();
    tokio::task::spawn_blocking(move || Index::parse(&repo, bytes))
        .await
        .map_err(|e| format!("index.yaml: the parse did not finish: {e}"))?
}
