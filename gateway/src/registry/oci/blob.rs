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

use futures::{FutureExt as _, Stream, StreamExt as _};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::{
    OciSite,
    range::{self, Ranged},
    response,
};
use crate::{
    audit::{CacheStatus, Fault},
    cache::{Blob, CacheError, Digest, FailCause, Fill, FillWriter},
    proxy::body::{self, Body},
    registry::Outcome,
    upstream::{self, Upstream, UpstreamRequest},
};

pub async fn blob(
    site: &OciSite,
    method: &Method,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
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
    match site.cache.get(&d).await {
        Ok(Some(blob)) => return serve_hit(method, digest, range_header, blob),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cache read failed; going upstream"),
    }
    let path = format!("/v2/{name}/blobs/{digest}");
    let started = Instant::now();
    if method == Method::HEAD {
        // Not worth a fill: answer from upstream's HEAD.
        return head_upstream(site, &path, name, digest, started).await;
    }
    let fill = match site.cache.begin_fill(&d, None).await {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
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
        Ok(_) => serve_reader(method, digest, &reader, range_header),
        Err(e) => refused(&e),
    };
    o.cache = Some(CacheStatus::Miss);
    if leader {
        o.upstream_ms = Some(ms(started));
    }
    o
}

/// How long a client waits for the leader's upstream headers before it
/// streams without a Content-Length.
const SIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The fill's task: asks upstream, declares the size, pumps the body; or
/// stops once no client follows the fill any more (its temp file goes).
async fn lead(upstream: Upstream, req: UpstreamRequest, writer: FillWriter) {
    let digest = writer.digest();
    let unfollowed = writer.unfollowed();
    tokio::select! {
        () = fetch_into(&upstream, req, writer) => {}
        () = unfollowed => {
            // Dropping the fetch dropped the writer, which failed the fill
            // and removed its temp file.
            tracing::info!(%digest, "blob fill stopped: no client follows it any more");
        }
    }
}

/// Requests the blob and writes it into the fill, failing the fill with
/// the cause its readers answer by.
async fn fetch_into(upstream: &Upstream, req: UpstreamRequest, writer: FillWriter) {
    let resp = match upstream.send(req).await {
        Ok(r) => r,
        Err(e) => {
            let cause = match e.fault() {
                upstream::Fault::Upstream => FailCause::Upstream,
                upstream::Fault::Internal => FailCause::Internal,
            };
            writer.fail_with(cause, &e);
            return;
        }
    };
    let status = resp.status();
    if status != StatusCode::OK {
        writer.fail_with(
            FailCause::Status(status.as_u16()),
            format!("upstream answered {status}"),
        );
        return;
    }
    // Followers learn the size from here on, and can be told a
    // Content-Length; a size over the limits is refused before any byte.
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut writer = writer;
    if let Some(len) = length
        && let Err(e) = writer.set_size(len).await
    {
        // set_size failed the fill for every reader.
        tracing::warn!(digest = %writer.digest(), error = %e, "blob fill refused");
        return;
    }
    let stream = Box::pin(upstream.body_stream(resp));
    pump(writer, stream).await;
}

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

/// Upstream chunks that have already arrived are written together up to
/// this size: each write is a trip to the blocking pool and wakes every
/// follower, and upstream's chunks are TLS records (16 KiB at most).
const FILL_BATCH: usize = 256 * 1024;

/// Batches in flight between the upstream reader and the disk writer.
const FILL_QUEUE: usize = 4;

/// Writes the upstream body into the fill; the fill verifies the digest.
///
/// Reading upstream and writing (hashing) run side by side: the batches
/// go through a short queue to a writer task, so upstream's connection
/// keeps flowing while a batch is hashed and written. Either side's
/// failure fails the fill for every reader.
async fn pump(
    writer: FillWriter,
    mut body: impl Stream<Item = Result<bytes::Bytes, crate::upstream::UpstreamError>> + Unpin,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(FILL_QUEUE);
    let disk = tokio::spawn(async move {
        let mut writer = writer;
        while let Some(batch) = rx.recv().await {
            if let Err(e) = writer.write_bytes(batch).await {
                // write_bytes has failed the fill for everyone already.
                tracing::warn!(error = %e, "blob fill failed");
                return None;
            }
        }
        Some(writer)
    });
    let outcome = read_batches(&mut body, &tx).await;
    drop(tx);
    let Ok(Some(writer)) = disk.await else {
        // The writer failed (the fill with it), or its task panicked, in
        // which case the dropped writer failed the fill.
        return;
    };
    match outcome {
        Ok(()) => {
            if let Err(e) = writer.finish().await {
                tracing::warn!(error = %e, "blob fill rejected");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream body failed during a blob fill");
            writer.fail(&e);
        }
    }
}

/// Reads the body into batches of up to [`FILL_BATCH`] (joining only
/// chunks that are ready, never waiting for more) and queues them. Stops at
/// the end, at upstream's first error (after queueing what came before),
/// or when the writer has gone.
async fn read_batches(
    body: &mut (impl Stream<Item = Result<bytes::Bytes, crate::upstream::UpstreamError>> + Unpin),
    tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<(), crate::upstream::UpstreamError> {
    loop {
        let mut batch = match body.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        };
        let mut next: Option<Result<(), crate::upstream::UpstreamError>> = None;
        if batch.len() < FILL_BATCH {
            let mut joined: Option<bytes::BytesMut> = None;
            while joined.as_ref().map_or(batch.len(), |j| j.len()) < FILL_BATCH {
                match body.next().now_or_never() {
                    Some(Some(Ok(more))) => joined
                        .get_or_insert_with(|| {
                            let mut j = bytes::BytesMut::with_capacity(FILL_BATCH + more.len());
                            j.extend_from_slice(&batch);
                            j
                        })
                        .extend_from_slice(&more),
                    Some(Some(Err(e))) => {
                        next = Some(Err(e));
                        break;
                    }
                    Some(None) => {
                        next = Some(Ok(()));
                        break;
                    }
                    None => break,
                }
            }
            if let Some(j) = joined {
                batch = j.freeze();
            }
        }
        if tx.send(batch).await.is_err() {
            // The writer failed; it has failed the fill.
            return Ok(());
        }
        if let Some(end) = next {
            return end;
        }
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

pub(super) fn stream_body<S>(s: S) -> Body
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    BodyExt::boxed_unsync(StreamBody::new(s.map(|r| r.map(Frame::data))))
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

#[cfg(test)]
mod tests {
    //! `pump`'s batching of ready chunks: what arrives is stored whole and
    //! verified, and an upstream error inside a batch still fails the fill.
    use bytes::Bytes;
    use futures::stream;

    use super::pump;
    use crate::{
        cache::{Cache, Digest, Fill},
        upstream::UpstreamError,
    };

    fn content() -> Vec<u8> {
        (0..(FILL_TEST_CHUNKS * 16 * 1024))
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }
    const FILL_TEST_CHUNKS: usize = 40;

    /// A cache in a temp dir, the test content, and the fill of it that
    /// this test leads (with a reader following it).
    async fn leading_fill() -> (
        tempfile::TempDir,
        Cache,
        Vec<u8>,
        Digest,
        crate::cache::FillWriter,
        crate::cache::FillReader,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path(), 1 << 30).await.expect("cache");
        let data = content();
        let digest = Digest::of(&data);
        let writer = match cache
            .begin_fill(&digest, Some(data.len() as u64))
            .await
            .expect("begin")
        {
            Fill::Leader(w) => w,
            _ => panic!("expected to lead the fill"),
        };
        let reader = writer.reader();
        (dir, cache, data, digest, writer, reader)
    }

    #[tokio::test]
    async fn ready_chunks_are_batched_and_the_blob_verified() {
        let (_dir, cache, data, digest, writer, reader) = leading_fill().await;
        let chunks: Vec<Result<Bytes, UpstreamError>> = data
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        pump(writer, stream::iter(chunks)).await;
        assert_eq!(reader.wait().await.expect("verified"), data.len() as u64);
        let blob = cache.get(&digest).await.expect("get").expect("stored");
        assert_eq!(blob.size(), data.len() as u64);
    }

    #[tokio::test]
    async fn an_error_inside_a_batch_fails_the_fill() {
        let (_dir, cache, data, digest, writer, reader) = leading_fill().await;
        // Every chunk but the last, then an error, all ready at once.
        let mut chunks: Vec<Result<Bytes, UpstreamError>> = data
            .chunks(16 * 1024)
            .take(FILL_TEST_CHUNKS - 1)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        chunks.push(Err(UpstreamError::InvalidTarget {
            target: "test: the body broke".into(),
        }));
        pump(writer, stream::iter(chunks)).await;
        assert!(reader.wait().await.is_err(), "a broken fill verified");
        assert!(cache.get(&digest).await.expect("get").is_none());
    }
}
