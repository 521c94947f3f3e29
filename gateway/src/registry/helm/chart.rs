//! Chart archives and their `.prov` files, by the URLs the index lists.
//!
//! A chart is fetched once per digest (one fill however many devices
//! ask), and answered only once it is whole and its sha256 matched the
//! digest the index gives for it: a mismatch is a 502 and nothing is
//! stored, never a cut-off body. Charts are small, so waiting for the
//! verification costs a device little. Held, a chart is served for good,
//! Range requests included. A `.prov` beside a listed chart is fetched
//! once and kept (a chart version's provenance does not change); upstream's
//! 404 for one is passed on and not remembered.

use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::{HelmSite, failed, index::Chart, ms, refresh, text_outcome};
use crate::{
    audit::{CacheStatus, Fault},
    cache::{Blob, CacheError, Digest, FailCause, Fill, FillReader, ObjectEntry},
    proxy::body,
    registry::{
        Outcome,
        fill::{lead, read_blob, store_bytes, stream_body},
        range::{self, Ranged},
    },
    upstream::{UpstreamError, UpstreamRequest},
};

/// The largest `.prov` read (a signature over a chart's Chart.yaml and
/// digest: a few KiB).
const MAX_PROV: usize = 1 << 20;

/// `GET`/`HEAD` of `path` (with query) on `host`: a chart or a `.prov`.
pub(super) async fn serve(
    site: &HelmSite,
    method: &Method,
    host: &str,
    path: &str,
    range: Option<&str>,
) -> Outcome {
    if let Some(chart_path) = path.strip_suffix(".prov") {
        let chart = match find(site, host, chart_path).await {
            Ok(c) => c,
            Err(o) => return o,
        };
        return match prov(site, host, path, &chart).await {
            Ok(got) => got.respond(method, range, "application/pgp-signature"),
            Err(o) => o,
        };
    }
    let chart = match find(site, host, path).await {
        Ok(c) => c,
        Err(o) => return o,
    };
    let digest = match &chart.digest {
        Ok(d) => *d,
        Err(why) => return failed(StatusCode::BAD_GATEWAY, Fault::Upstream, why.clone()),
    };
    match fetch(site, &chart, digest).await {
        Ok(got) => got.respond(method, range, "application/gzip"),
        Err(o) => o,
    }
}

/// The chart the index lists at `path` on `host`: in the copy held if it
/// lists it (a chart is immutable by its digest, so an old index is good
/// enough), else in the index refreshed when it is stale.
pub(super) async fn find(site: &HelmSite, host: &str, path: &str) -> Result<Chart, Outcome> {
    if let Some((index, _)) = refresh::held(site).await
        && let Some(chart) = index.chart(host, path)
    {
        return Ok(chart.clone());
    }
    let current = refresh::current(site, false).await?;
    current.index.chart(host, path).cloned().ok_or_else(|| {
        let mut o = text_outcome(
            StatusCode::NOT_FOUND,
            &format!("{host}{path} is not a chart URL the repository's index.yaml lists"),
        );
        o.cache = Some(current.cache);
        o
    })
}

/// Content held or just verified, to answer with.
pub(super) struct Got {
    pub size: u64,
    pub digest: Digest,
    body: Held,
    cache: CacheStatus,
    started: Option<Instant>,
    content_type: Option<String>,
}

enum Held {
    Blob(Blob),
    /// A fill verified this moment, its blob maybe still on its way into
    /// the store: read through the fill.
    Reader(FillReader),
    Bytes(Bytes),
}

/// The chart by `digest`: from the cache, or fetched and verified.
pub(super) async fn fetch(site: &HelmSite, chart: &Chart, digest: Digest) -> Result<Got, Outcome> {
    let got = |body, size, cache, started| Got {
        size,
        digest,
        body,
        cache,
        started,
        content_type: None,
    };
    match site.cache.get(&digest).await {
        Ok(Some(blob)) => {
            return Ok(got(
                Held::Blob(blob.clone()),
                blob.size(),
                CacheStatus::Hit,
                None,
            ));
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cache read failed; going upstream"),
    }
    let Some(client) = site.client(&chart.source) else {
        return Err(failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            Fault::Internal,
            format!("no upstream client for {:?}", chart.source),
        ));
    };
    let started = Instant::now();
    let fill = site
        .cache
        .begin_fill(&digest, None)
        .await
        .map_err(|e| refused(chart, &e, started))?;
    let (reader, task) = match fill {
        Fill::Done(blob) => {
            return Ok(got(
                Held::Blob(blob.clone()),
                blob.size(),
                CacheStatus::Hit,
                None,
            ));
        }
        Fill::Follower(reader) => (reader, None),
        Fill::Leader(writer) => {
            // The fill runs in its own task: this device is one reader
            // among others, and its going away fails nobody.
            let reader = writer.reader();
            let req = UpstreamRequest::get(&chart.path);
            (
                reader,
                Some(tokio::spawn(lead(client.clone(), req, writer))),
            )
        }
    };
    let size = reader
        .wait()
        .await
        .map_err(|e| refused(chart, &e, started))?;
    if let Some(task) = task {
        // Verified; the task ends once the chart is in the store, so the
        // next request (a seed's pin) finds it there.
        let _ = task.await;
    }
    Ok(got(
        Held::Reader(reader),
        size,
        CacheStatus::Miss,
        Some(started),
    ))
}

/// The answer to a chart whose fill failed or could not start.
fn refused(chart: &Chart, e: &CacheError, started: Instant) -> Outcome {
    let what = format!("chart {} {}", chart.name, chart.version);
    let reason = match e {
        CacheError::FillFailed { reason, .. } => reason.to_string(),
        other => other.to_string(),
    };
    let detail = format!("{what}: {reason}");
    let mut o = match e {
        CacheError::TooManyFills { .. } => {
            let mut o = failed(StatusCode::SERVICE_UNAVAILABLE, Fault::Local, detail);
            o.response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            o
        }
        e => match e.cause() {
            FailCause::Status(404) => text_outcome(StatusCode::NOT_FOUND, &detail),
            FailCause::Status(_) | FailCause::Upstream => {
                failed(StatusCode::BAD_GATEWAY, Fault::Upstream, detail)
            }
            FailCause::TooLarge | FailCause::NoSpace => {
                failed(StatusCode::INSUFFICIENT_STORAGE, Fault::Local, detail)
            }
            FailCause::Internal => {
                failed(StatusCode::INTERNAL_SERVER_ERROR, Fault::Internal, detail)
            }
        },
    };
    o.cache = Some(CacheStatus::Miss);
    o.upstream_ms = Some(ms(started));
    o
}

/// The `.prov` at `path` on `host` beside `chart`: held, or fetched and
/// kept. Upstream's 404 is the `Err` answer.
pub(super) async fn prov(
    site: &HelmSite,
    host: &str,
    path: &str,
    chart: &Chart,
) -> Result<Got, Outcome> {
    let key = format!("prov {host}{path}");
    if let Some(got) = held_prov(site, &key).await {
        return Ok(got);
    }
    let Some(client) = site.client(&chart.source) else {
        return Err(failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            Fault::Internal,
            format!("no upstream client for {:?}", chart.source),
        ));
    };
    let started = Instant::now();
    let what = format!(
        "the provenance file of chart {} {}",
        chart.name, chart.version
    );
    let fail = |e: UpstreamError| {
        let status = if matches!(e, UpstreamError::Timeout { .. }) {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        let mut o = failed(status, e.fault().into(), format!("{what}: {e}"));
        o.upstream_ms = Some(ms(started));
        o
    };
    let resp = client
        .send(UpstreamRequest::get(path))
        .await
        .map_err(fail)?;
    let status = resp.status();
    if status != StatusCode::OK {
        let mut o = if status == StatusCode::NOT_FOUND {
            text_outcome(status, &format!("upstream has no {what}"))
        } else {
            failed(
                StatusCode::BAD_GATEWAY,
                Fault::Upstream,
                format!("upstream answered {status} for {what}"),
            )
        };
        o.cache = Some(CacheStatus::Miss);
        o.upstream_ms = Some(ms(started));
        return Err(o);
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut stream = std::pin::pin!(client.body_stream(resp));
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(fail)?;
        if bytes.len() + chunk.len() > MAX_PROV {
            let mut o = failed(
                StatusCode::BAD_GATEWAY,
                Fault::Upstream,
                format!("{what} is larger than {MAX_PROV} bytes"),
            );
            o.upstream_ms = Some(ms(started));
            return Err(o);
        }
        bytes.extend_from_slice(&chunk);
    }
    let bytes = Bytes::from(bytes);
    let digest = Digest::of(&bytes);
    match store_bytes(&site.cache, &bytes).await {
        Ok(_) => {
            let entry = ObjectEntry {
                digest: format!("sha256:{}", digest.hex()),
                size: bytes.len() as u64,
                headers: content_type
                    .iter()
                    .map(|v| ("content-type".to_owned(), v.clone()))
                    .collect(),
                fetched_at: super::super::unix_now(),
            };
            if let Err(e) = site.cache.put_object(&site.host, &key, entry).await {
                tracing::warn!(error = %e, %key, "could not record a provenance file");
            }
        }
        Err(e) => tracing::warn!(error = %e, %key, "could not cache a provenance file"),
    }
    Ok(Got {
        size: bytes.len() as u64,
        digest,
        body: Held::Bytes(bytes),
        cache: CacheStatus::Miss,
        started: Some(started),
        content_type,
    })
}

async fn held_prov(site: &HelmSite, key: &str) -> Option<Got> {
    let entry = site.cache.get_object(&site.host, key).await.ok()??;
    let digest = Digest::parse(&entry.digest).ok()?;
    let blob = site.cache.get(&digest).await.ok()??;
    // Read whole: small, and checked against the entry's size.
    let bytes = read_blob(&blob, MAX_PROV).await.ok()?;
    Some(Got {
        size: bytes.len() as u64,
        digest,
        body: Held::Bytes(bytes),
        cache: CacheStatus::Hit,
        started: None,
        content_type: entry.header("content-type").map(str::to_owned),
    })
}

impl Got {
    /// The whole content or the range asked for.
    fn respond(self, method: &Method, range: Option<&str>, default_type: &str) -> Outcome {
        let size = self.size;
        let (status, range) = match range::parse(range, size) {
            Ranged::Full => (StatusCode::OK, None),
            Ranged::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, Some((start, end))),
            Ranged::Unsatisfiable => {
                let mut o = failed(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Fault::Device,
                    format!("range outside the {size} bytes"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    o.response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                o.cache = Some(self.cache);
                return o;
            }
        };
        let len = range.map_or(size, |(s, e)| e - s + 1);
        let body = if method == Method::HEAD {
            body::empty()
        } else {
            match self.body {
                Held::Blob(blob) => stream_body(blob.stream(range)),
                Held::Reader(reader) => stream_body(reader.stream(range)),
                Held::Bytes(bytes) => stream_body(once(match range {
                    Some((s, e)) => bytes.slice(s as usize..=e as usize),
                    None => bytes,
                })),
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        let content_type = self
            .content_type
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
            .unwrap_or_else(|| {
                HeaderValue::from_str(default_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream"))
            });
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Ok(v) = HeaderValue::from_str(&format!("\"sha256:{}\"", self.digest.hex())) {
            h.insert(header::ETAG, v);
        }
        if let Some((s, e)) = range
            && let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{size}"))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        let mut o = Outcome::new(resp);
        o.cache = Some(self.cache);
        o.upstream_ms = self.started.map(ms);
        o
    }
}

fn once(bytes: Bytes) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::once(async move { Ok(bytes) })
}
