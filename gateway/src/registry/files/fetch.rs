//! Answering a GET or HEAD of a files site: from the cache while fresh,
//! revalidated with a conditional GET once stale (served stale when
//! upstream is down or failing), filled from upstream on a miss.
//!
//! A miss takes the key's lock (mod.rs `lock_for`) while it asks
//! upstream, so concurrent misses of one key make one request: the
//! others find the fill it started and follow it. The fill's task takes
//! the lock again before it finishes and records the entry, so a request
//! never sees neither the fill nor the entry.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use futures::{Stream, StreamExt as _};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::{FilesSite, policy, readback, serve};
use crate::registry::{age_secs, unix_now};
use crate::{
    audit::CacheStatus,
    cache::{Blob, Cache, CacheError, Digest, Fill, FillReader, FillWriter, ObjectEntry},
    registry::Outcome,
    upstream::{UpstreamError, UpstreamRequest},
};

type Chunks = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// Where `gateway cache seed` learns the digest a request stored.
pub type Report = oneshot::Sender<Option<(Digest, u64)>>;

/// Request headers sent upstream (and so the only ones a `Vary` can
/// meaningfully name): content negotiation. Credentials and cookies of
/// devices never leave the gateway.
const FORWARDED: &[HeaderName] = &[
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
];

/// How long a device waits on upstream's answer to a revalidation when a
/// copy is held; past it the copy is served, marked stale (as OCI tags).
const STALE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// A stored entry found for a request.
pub(super) struct Found {
    /// The key it is stored under (the variant's, with `Vary`).
    key: String,
    entry: ObjectEntry,
    headers: HeaderMap,
    pub(super) blob: Blob,
}

impl FilesSite {
    /// GET or HEAD of `key` (path and query; `path` without the query)
    /// for a device that sent `request`.
    pub(super) async fn get(
        &self,
        method: &Method,
        key: &str,
        path: &str,
        request: &HeaderMap,
        report: Option<Report>,
    ) -> Outcome {
        let expected = if self.sum_files.iter().any(|f| f == path) {
            // A list is never verified against a list (nor against itself).
            None
        } else {
            self.expected_digest(path).await
        };
        let found = self.lookup(key, request).await;
        if let Some(digest) = expected {
            // Verified content: whichever key stored it, it is this path's.
            if let Ok(Some(blob)) = self.cache.get(&digest).await {
                let (headers, age) = match &found {
                    Some(f) if f.blob.digest() == digest => (
                        f.headers.clone(),
                        Some(age_secs(f.entry.fetched_at).max(0) as u64),
                    ),
                    _ => (HeaderMap::new(), None),
                };
                send(report, Some((digest, blob.size())));
                return self.stored(method, request, key, &headers, &blob, age, CacheStatus::Hit);
            }
        } else if let Some(found) = found {
            let lifetime = policy::lifetime(&found.headers, self.ttl);
            if policy::fresh(request, found.entry.fetched_at, lifetime, unix_now()) {
                send(report, Some((found.blob.digest(), found.blob.size())));
                return self.hit(method, request, &found, CacheStatus::Hit);
            }
            return self.revalidate(method, key, request, found, report).await;
        }
        self.miss(method, key, request, expected, report).await
    }

    /// The entry `key` holds for this request's variant, with its blob; a
    /// missing blob (evicted) is no entry.
    pub(super) async fn lookup(&self, key: &str, request: &HeaderMap) -> Option<Found> {
        let primary = self.cache.get_object(&self.host, key).await.ok()??;
        let names = policy::vary_names(&to_map(&primary.headers));
        let (key, entry) = if names.is_empty() {
            (key.to_owned(), primary)
        } else {
            let vkey = format!("{key}{}", policy::variant(&names, request));
            let entry = self.cache.get_object(&self.host, &vkey).await.ok()??;
            (vkey, entry)
        };
        let digest = Digest::parse(&entry.digest).ok()?;
        let blob = self.cache.get(&digest).await.ok()??;
        Some(Found {
            key,
            headers: to_map(&entry.headers),
            entry,
            blob,
        })
    }

    /// A stale entry: a conditional GET upstream. 304 refreshes it; new
    /// content replaces it; an unreachable, failing (5xx, 429) or silent
    /// (3 s) upstream gets the stale copy served.
    async fn revalidate(
        &self,
        method: &Method,
        key: &str,
        request: &HeaderMap,
        found: Found,
        report: Option<Report>,
    ) -> Outcome {
        let started = Instant::now();
        let mut req = upstream_request(key, request);
        if let Some(etag) = found.headers.get(header::ETAG) {
            req = req.with_header(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = found.headers.get(header::LAST_MODIFIED) {
            req = req.with_header(header::IF_MODIFIED_SINCE, lm.clone());
        }
        // With a copy in hand, upstream gets a short deadline: the device
        // is served the copy rather than waiting out upstream's timeouts
        // (a connection whose link went away answers nothing).
        let sent = tokio::time::timeout(STALE_DEADLINE, self.upstream.send(req)).await;
        let resp = match sent {
            Ok(Ok(r))
                if !r.status().is_server_error() && r.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                r
            }
            other => {
                let detail = match other {
                    Ok(Ok(r)) => format!("upstream answered {}", r.status()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("upstream did not answer within {STALE_DEADLINE:?}"),
                };
                send(report, Some((found.blob.digest(), found.blob.size())));
                let mut o = self.hit(method, request, &found, CacheStatus::Stale);
                o.upstream_ms = Some(ms(started));
                o.detail = Some(format!("served stale: {detail}"));
                return o;
            }
        };
        if resp.status() == StatusCode::NOT_MODIFIED {
            let mut found = found;
            for name in serve::KEPT {
                if let Some(v) = resp.headers().get(name)
                    && *name != header::VARY
                {
                    found.headers.insert(name.clone(), v.clone());
                }
            }
            found.entry.headers = from_map(&found.headers);
            found.entry.fetched_at = unix_now();
            if let Err(e) = self
                .cache
                .put_object(&self.host, &found.key, found.entry.clone())
                .await
            {
                tracing::warn!(site = %self.host, key = %found.key, error = %e, "files: refreshing an entry failed");
            }
            send(report, Some((found.blob.digest(), found.blob.size())));
            let mut o = self.hit(method, request, &found, CacheStatus::Revalidated);
            o.upstream_ms = Some(ms(started));
            return o;
        }
        let name = self.fill_name(key, request);
        let lock = self.lock_for(&name);
        let guard = lock.clone().lock_owned().await;
        self.respond(
            method,
            key,
            request,
            None,
            resp,
            started,
            (name, lock, guard),
            report,
        )
        .await
    }

    /// Nothing usable stored: one upstream GET per key at a time.
    async fn miss(
        &self,
        method: &Method,
        key: &str,
        request: &HeaderMap,
        expected: Option<Digest>,
        report: Option<Report>,
    ) -> Outcome {
        let name = self.fill_name(key, request);
        let lock = self.lock_for(&name);
        let guard = lock.clone().lock_owned().await;
        // Whoever held the lock may have started a fill or stored it.
        let running = match expected {
            Some(d) => self.cache.follow_fill(&d),
            None => self.cache.follow_unnamed_fill(&name),
        };
        if let Some(reader) = running {
            drop(guard);
            let headers = self.fill_headers(&name);
            drop(report);
            return self
                .answer_fill(method, request, &headers, reader, expected)
                .await;
        }
        if let Some(d) = expected {
            if let Ok(Some(blob)) = self.cache.get(&d).await {
                send(report, Some((d, blob.size())));
                let none = HeaderMap::new();
                return self.stored(method, request, key, &none, &blob, None, CacheStatus::Hit);
            }
        } else if let Some(found) = self.lookup(key, request).await {
            send(report, Some((found.blob.digest(), found.blob.size())));
            return self.hit(method, request, &found, CacheStatus::Hit);
        }
        let started = Instant::now();
        let mut req = upstream_request(key, request);
        if method == Method::HEAD {
            req.method = Method::HEAD;
        }
        let resp = match self.upstream.send(req).await {
            Ok(r) => r,
            Err(e) => {
                let mut o = serve::error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    e.fault().into(),
                    e.to_string(),
                );
                o.cache = Some(CacheStatus::Miss);
                o.upstream_ms = Some(ms(started));
                return o;
            }
        };
        self.respond(
            method,
            key,
            request,
            expected,
            resp,
            started,
            (name, lock, guard),
            report,
        )
        .await
    }

    /// Upstream's fresh answer: stored as a fill when it may be, passed on
    /// otherwise.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        method: &Method,
        key: &str,
        request: &HeaderMap,
        expected: Option<Digest>,
        resp: Response<Incoming>,
        started: Instant,
        (name, lock, guard): (
            String,
            Arc<tokio::sync::Mutex<()>>,
            tokio::sync::OwnedMutexGuard<()>,
        ),
        report: Option<Report>,
    ) -> Outcome {
        let status = resp.status();
        // Content a checksum names is verified whatever upstream says of
        // caching it: passing it through would pass it unverified, and it
        // cannot change without failing the checksum.
        let store = policy::storable(request, status, resp.headers())
            || (expected.is_some() && status == StatusCode::OK);
        if method == Method::HEAD || !store {
            drop(guard);
            drop(report);
            let headers = resp.headers().clone();
            let body = io_stream(self.upstream.body_stream(resp));
            let mut o = serve::passed(method, status, &headers, body);
            o.upstream_ms = Some(ms(started));
            return o;
        }
        let headers = serve::kept(resp.headers());
        let length = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let fill = match expected {
            Some(d) => self.cache.begin_fill(&d, length).await,
            None => self.cache.begin_unnamed_fill(&name).await,
        };
        // A file the cache will not take (larger than max_blob_size, no
        // room beside pinned content, too many fills) still reaches the
        // device, uncached; unless a checksum names it, which only a fill
        // can check.
        let uncached = |resp: Response<Incoming>, e: &CacheError| {
            let headers = resp.headers().clone();
            let body = io_stream(self.upstream.body_stream(resp));
            let mut o = serve::passed(method, status, &headers, body);
            o.detail = Some(format!("not cached: {e}"));
            o.upstream_ms = Some(ms(started));
            o
        };
        let mut o = match fill {
            Ok(Fill::Leader(mut writer)) => {
                if expected.is_none()
                    && let Some(len) = length
                    && let Err(e) = writer.set_size(len).await
                {
                    // set_size failed the fill; followers get its error.
                    drop(guard);
                    return uncached(resp, &e);
                }
                let reader = writer.reader();
                self.filling
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.clone(), headers.clone());
                let task = FillTask {
                    cache: self.cache.clone(),
                    host: self.host.clone(),
                    key: key.to_owned(),
                    variant: policy::variant(&policy::vary_names(&headers), request),
                    headers: headers.clone(),
                    name,
                    filling: Arc::clone(&self.filling),
                    lock,
                };
                let body = Box::pin(self.upstream.body_stream(resp));
                tokio::spawn(task.run(writer, body, report));
                drop(guard);
                self.answer_fill(method, request, &headers, reader, expected)
                    .await
            }
            Ok(Fill::Follower(reader)) => {
                drop(guard);
                drop(report);
                self.answer_fill(method, request, &headers, reader, expected)
                    .await
            }
            Ok(Fill::Done(blob)) => {
                drop(guard);
                send(report, Some((blob.digest(), blob.size())));
                self.stored(
                    method,
                    request,
                    key,
                    &headers,
                    &blob,
                    None,
                    CacheStatus::Hit,
                )
            }
            Err(e) if expected.is_none() => {
                drop(guard);
                return uncached(resp, &e);
            }
            Err(e) => serve::refused(&e),
        };
        o.upstream_ms = Some(ms(started));
        o
    }

    /// Serves a fill: as it is written when its digest is learnt at the
    /// end; once verified when a checksum named it, so that a mismatch is
    /// a 502 rather than a body cut short.
    async fn answer_fill(
        &self,
        method: &Method,
        request: &HeaderMap,
        headers: &HeaderMap,
        reader: FillReader,
        expected: Option<Digest>,
    ) -> Outcome {
        let Some(digest) = expected else {
            return serve::following(method, request, headers, &reader);
        };
        if let Err(e) = reader.wait().await {
            let mut o = serve::refused(&e);
            o.cache = Some(CacheStatus::Miss);
            if let Some(d) = o.detail.as_mut() {
                *d = format!("checksum {digest}: {d}");
            }
            return o;
        }
        let mut o = match self.cache.get(&digest).await {
            Ok(Some(blob)) => serve::content(
                method,
                request,
                headers,
                blob.size(),
                None,
                CacheStatus::Miss,
                |r| blob.stream(r),
            ),
            // Verified but not stored (the disk refused it): the reader
            // still has the bytes.
            _ => serve::following(method, request, headers, &reader),
        };
        o.cache = Some(CacheStatus::Miss);
        o
    }

    fn hit(
        &self,
        method: &Method,
        request: &HeaderMap,
        found: &Found,
        cache: CacheStatus,
    ) -> Outcome {
        let age = Some(age_secs(found.entry.fetched_at).max(0) as u64);
        self.stored(
            method,
            request,
            &found.key,
            &found.headers,
            &found.blob,
            age,
            cache,
        )
    }

    /// A blob the cache holds, for `key`: a whole body is verified as it
    /// is read back (readback.rs); a damaged one makes `key` forgotten so
    /// the next request fills it afresh.
    #[allow(clippy::too_many_arguments)]
    fn stored(
        &self,
        method: &Method,
        request: &HeaderMap,
        key: &str,
        headers: &HeaderMap,
        blob: &Blob,
        age: Option<u64>,
        cache: CacheStatus,
    ) -> Outcome {
        let digest = blob.digest();
        let forget = {
            let (cache, host, key) = (self.cache.clone(), self.host.clone(), key.to_owned());
            move |actual: Digest| {
                tracing::warn!(site = %host, key = %key, expected = %digest, %actual, "files: a cached blob no longer matches its digest; the entry is forgotten (run `gateway cache verify` to quarantine the file)");
                tokio::spawn(async move {
                    let _ = cache.remove_object(&host, &key).await;
                });
            }
        };
        serve::content(
            method,
            request,
            headers,
            blob.size(),
            age,
            cache,
            |r| -> Chunks {
                match r {
                    None => Box::pin(readback::verified(blob.stream(None), digest, forget)),
                    Some(_) => Box::pin(blob.stream(r)),
                }
            },
        )
    }

    /// The fill of a key for this request's negotiated variant: requests
    /// that differ in a forwarded header never share a fill.
    pub(super) fn fill_name(&self, key: &str, request: &HeaderMap) -> String {
        let names: Vec<String> = FORWARDED.iter().map(|n| n.as_str().to_owned()).collect();
        format!("{}\0{key}{}", self.host, policy::variant(&names, request))
    }

    fn fill_headers(&self, name: &str) -> HeaderMap {
        self.filling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

/// What a fill's task needs to finish it and record the entry.
struct FillTask {
    cache: Cache,
    host: String,
    key: String,
    /// [`policy::variant`] of the request for the response's `Vary`.
    variant: String,
    headers: HeaderMap,
    name: String,
    filling: Arc<Mutex<std::collections::HashMap<String, HeaderMap>>>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl FillTask {
    /// Writes the body into the fill (stopping if nobody follows it any
    /// more), then, under the key's lock, finishes it and records the
    /// entry.
    async fn run(
        self,
        writer: FillWriter,
        body: impl Stream<Item = Result<bytes::Bytes, UpstreamError>> + Unpin,
        report: Option<Report>,
    ) {
        let unfollowed = writer.unfollowed();
        let written = tokio::select! {
            w = write_body(writer, body) => w,
            () = unfollowed => None,
        };
        let _guard = self.lock.lock().await;
        let stored = match written {
            Some(writer) => match writer.finish().await {
                Ok(blob) => self.record(&blob).await.then_some(blob),
                Err(e) => {
                    tracing::warn!(site = %self.host, key = %self.key, error = %e, "files: fill rejected");
                    None
                }
            },
            None => None,
        };
        self.filling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
        send(report, stored.map(|b| (b.digest(), b.size())));
    }

    async fn record(&self, blob: &Blob) -> bool {
        let entry = ObjectEntry {
            digest: blob.digest().to_string(),
            size: blob.size(),
            headers: from_map(&self.headers),
            fetched_at: unix_now(),
        };
        let mut keys = vec![self.key.clone()];
        if !self.variant.is_empty() {
            // The plain key keeps the `Vary` that says which variant key
            // a request looks up.
            keys.push(format!("{}{}", self.key, self.variant));
        }
        for key in keys {
            if let Err(e) = self.cache.put_object(&self.host, &key, entry.clone()).await {
                tracing::warn!(site = %self.host, key = %key, error = %e, "files: recording an entry failed");
                return false;
            }
        }
        true
    }
}

/// Pumps the body into the fill; the writer back when it all arrived.
async fn write_body(
    mut writer: FillWriter,
    mut body: impl Stream<Item = Result<bytes::Bytes, UpstreamError>> + Unpin,
) -> Option<FillWriter> {
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                if let Err(e) = writer.write_bytes(bytes).await {
                    // write_bytes failed the fill for everyone.
                    tracing::warn!(error = %e, "files: fill failed");
                    return None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "files: upstream body failed during a fill");
                writer.fail(&e);
                return None;
            }
        }
    }
    Some(writer)
}

fn upstream_request(key: &str, request: &HeaderMap) -> UpstreamRequest {
    let mut req = UpstreamRequest::get(key);
    for name in FORWARDED {
        for v in request.get_all(name) {
            req = req.with_header(name.clone(), v.clone());
        }
    }
    req
}

fn io_stream(
    s: impl Stream<Item = Result<bytes::Bytes, UpstreamError>> + Send + 'static,
) -> impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    s.map(|r| r.map_err(std::io::Error::other))
}

fn send(report: Option<Report>, found: Option<(Digest, u64)>) {
    if let Some(tx) = report {
        let _ = tx.send(found);
    }
}

pub(super) fn to_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
    h
}

fn from_map(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

fn ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
