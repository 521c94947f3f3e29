//! Blobs: content addressed, so cached for good once verified.
//!
//! A miss starts one fill per digest however many devices ask: the first
//! request starts the fill's task, which makes the whole upstream request
//! and writes the body to the cache (it goes on if that device goes away,
//! and stops once no device follows it any more), and every request, the
//! first included, streams from the file being written. A fill refused by
//! the cache's bounds (too large, no room, too many at once) is a 507 or
//! 503 with fault `local`. Redirects to CDN hosts are followed by the
//! upstream client without credentials; the blob is stored under the
//! digest asked for, after its sha256 matched.

use std::time::Instant;

use futures::Stream;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::{OciSite, response, vouch};
use crate::{
    audit::{CacheStatus, Fault},
    cache::{Blob, CacheError, Digest, FailCause, Fill},
    proxy::body,
    registry::{
        Outcome,
        fill::{lead, stream_body},
        range::{self, Ranged},
    },
    upstream::UpstreamRequest,
};

pub async fn blob(
    site: &OciSite,
    method: &Method,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    groups: bool,
) -> Outcome {
    let d = match Digest::parse(digest) {
        Ok(d) => d,
        Err(e) => {
            return response::failed(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                Fault::Device,
                e.to_string(),
            );
        }
    };
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // With device groups, bytes held for another repository are served
    // through this one only once its upstream vouched for the digest.
    // What upstream says for this repository is recorded with or without
    // groups, so content fetched before groups were configured (or by
    // `cache seed`) is served offline once they are.
    let mut vouched = groups && vouch::recorded(site, name, &d).await;
    match site.cache.get(&d).await {
        Ok(Some(blob)) => {
            if groups
                && !vouched
                && let Err(o) = vouch::ask(site, name, &d).await
            {
                return o;
            }
            return serve_hit(method, digest, range_header, blob);
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cache read failed; going upstream"),
    }
    let path = format!("/v2/{name}/blobs/{digest}");
    let started = Instant::now();
    if method == Method::HEAD {
        // The shared store's copy answers too (no upstream needed for
        // the GET that follows), once this repository may have it.
        if (!groups || vouched)
            && let Some(store) = site.cache.shared()
            && let Some(size) = store.blob_size(&d).await
        {
            let mut o = serve(
                method,
                digest,
                size,
                range_header,
                CacheStatus::Miss,
                None,
                |_| futures::stream::empty(),
            );
            o.source = Some(crate::audit::Source::Store);
            return o;
        }
        // Not worth a fill: answer from upstream's HEAD.
        let o = head_upstream(site, &path, name, digest, started).await;
        if !vouched && o.response.status() == StatusCode::OK {
            vouch::record(site, name, &d);
        }
        return o;
    }
    let fill = match site.cache.begin_fill(&d, None).await {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    if groups && !vouched && !matches!(fill, Fill::Leader(_)) {
        // Held or being fetched for another repository meanwhile.
        if let Err(o) = vouch::ask(site, name, &d).await {
            return o;
        }
        vouched = true;
    }
    let (reader, leader) = match fill {
        Fill::Done(blob) => return serve_hit(method, digest, range_header, blob),
        Fill::Follower(reader) => (reader, false),
        Fill::Leader(writer) => {
            // The whole upstream exchange runs in the fill's own task: this
            // client is one reader among the others, and its going away
            // (before or after the headers) fails nobody.
            let reader = writer.reader();
            let req = UpstreamRequest::get(&path).with_scope(OciSite::scope(name));
            tokio::spawn(lead(site.upstream.clone(), req, writer));
            (reader, true)
        }
    };
    // Every client, the leader's too, waits for upstream's headers: a
    // failure before the body is answered with its own status, and a
    // size makes a Content-Length.
    let known = match reader.size() {
        Some(size) => Ok(Some(size)),
        None => tokio::time::timeout(SIZE_WAIT, reader.known_size())
            .await
            .unwrap_or(Ok(None)),
    };
    let mut o = match known {
        Ok(size) => {
            if leader && !vouched && size.is_some() {
                // This request's own upstream GET answered: its repository
                // has the digest (a follower's answer came for the
                // leader's repository, which may be another).
                vouch::record(site, name, &d);
            }
            serve_reader(method, digest, &reader, range_header)
        }
        Err(e) => refused(&e),
    };
    o.cache = Some(CacheStatus::Miss);
    if reader.from_store() {
        o.source = Some(crate::audit::Source::Store);
    } else if leader {
        o.upstream_ms = Some(ms(started));
    }
    o
}

/// How long a client waits for the leader's upstream headers before it
/// streams without a Content-Length.
const SIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A blob the cache holds, whole or the range asked for.
fn serve_hit(method: &Method, digest: &str, range_header: Option<&str>, blob: Blob) -> Outcome {
    serve(
        method,
        digest,
        blob.size(),
        range_header,
        CacheStatus::Hit,
        None,
        |r| blob.stream(r),
    )
}

/// The answer to a client whose fill failed before its body, or could not
/// start: by the failure's cause.
fn refused(e: &CacheError) -> Outcome {
    let detail = match e {
        // The leader's own error says it all (and names the digest).
        CacheError::FillFailed { reason, .. } => reason.to_string(),
        other => other.to_string(),
    };
    let cause = match e {
        CacheError::TooManyFills { .. } => {
            let mut o = response::failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                Fault::Local,
                detail,
            );
            o.response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return o;
        }
        CacheError::FillFailed { cause, .. } => *cause,
        other => other.cause(),
    };
    match cause {
        FailCause::Status(404) => {
            let mut o = Outcome::new(response::error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "upstream answered 404 Not Found",
            ));
            o.detail = Some(detail);
            o
        }
        FailCause::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            response::failed(status, "UNAVAILABLE", Fault::Upstream, detail)
        }
        FailCause::Upstream => response::failed(
            StatusCode::BAD_GATEWAY,
            "UNAVAILABLE",
            Fault::Upstream,
            detail,
        ),
        FailCause::TooLarge => response::failed(
            StatusCode::INSUFFICIENT_STORAGE,
            "SIZE_INVALID",
            Fault::Local,
            detail,
        ),
        FailCause::NoSpace => response::failed(
            StatusCode::INSUFFICIENT_STORAGE,
            "UNAVAILABLE",
            Fault::Local,
            detail,
        ),
        FailCause::Internal => response::failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            Fault::Internal,
            detail,
        ),
    }
}

fn serve_reader(
    method: &Method,
    digest: &str,
    reader: &crate::cache::FillReader,
    range_header: Option<&str>,
) -> Outcome {
    match reader.size() {
        Some(size) => serve(
            method,
            digest,
            size,
            range_header,
            CacheStatus::Miss,
            None,
            |r| reader.stream(r),
        ),
        None => {
            // Size unknown until the fill ends: stream chunked, whole.
            let mut resp = if method == Method::HEAD {
                Response::new(body::empty())
            } else {
                Response::new(stream_body(reader.stream(None)))
            };
            blob_headers(resp.headers_mut(), digest);
            let mut o = Outcome::new(resp);
            o.cache = Some(CacheStatus::Miss);
            o
        }
    }
}

fn serve<S>(
    method: &Method,
    digest: &str,
    size: u64,
    range_header: Option<&str>,
    cache: CacheStatus,
    started: Option<Instant>,
    stream: impl FnOnce(Option<(u64, u64)>) -> S,
) -> Outcome
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    let (status, range) = match range::parse(range_header, size) {
        Ranged::Full => (StatusCode::OK, None),
        Ranged::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, Some((start, end))),
        Ranged::Unsatisfiable => {
            let mut resp = response::error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "range outside the blob",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            let mut o = Outcome::new(resp);
            o.cache = Some(cache);
            o.fault = Some(Fault::Device);
            return o;
        }
    };
    let len = range.map_or(size, |(s, e)| e - s + 1);
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        stream_body(stream(range))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    blob_headers(h, digest);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((s, e)) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    let mut o = Outcome::new(resp);
    o.cache = Some(cache);
    o.upstream_ms = started.map(ms);
    o
}

fn blob_headers(h: &mut HeaderMap, digest: &str) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(digest) {
        h.insert("docker-content-digest", v.clone());
        h.insert(header::ETAG, v);
    }
}

async fn head_upstream(
    site: &OciSite,
    path: &str,
    name: &str,
    digest: &str,
    started: Instant,
) -> Outcome {
    let req = UpstreamRequest::head(path).with_scope(OciSite::scope(name));
    match site.upstream.send(req).await {
        Ok(resp) => {
            let status = resp.status();
            let mut out = Response::new(body::empty());
            *out.status_mut() = status;
            if status == StatusCode::OK {
                blob_headers(out.headers_mut(), digest);
                if let Some(len) = resp.headers().get(header::CONTENT_LENGTH) {
                    out.headers_mut()
                        .insert(header::CONTENT_LENGTH, len.clone());
                }
            }
            let mut o = Outcome::new(out);
            o.cache = Some(CacheStatus::Miss);
            o.upstream_ms = Some(ms(started));
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                o.fault = Some(Fault::Upstream);
            }
            o
        }
        Err(e) => {
            let mut o = response::failed(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                e.fault().into(),
                e.to_string(),
            );
            o.upstream_ms = Some(ms(started));
            o
        }
    }
}

fn ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
