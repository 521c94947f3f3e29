//! Responses of a files site: stored content (whole, a range, or 304 to a
//! device's conditional request), a fill being written, what upstream
//! sent when it may not be stored, and errors as plain text.

use futures::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

use super::policy::{self, Validators};
use crate::{
    audit::{CacheStatus, Fault},
    cache::{CacheError, FailCause, FillReader},
    proxy::body,
    registry::{
        Outcome,
        fill::stream_body,
        range::{self, Ranged},
    },
};

/// Response headers stored with a file and replayed to devices; the
/// others (hop-by-hop, cookies, lengths the gateway sets itself) are not.
pub const KEPT: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_DISPOSITION,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::DATE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::VARY,
];

/// The [`KEPT`] headers of `from`.
pub fn kept(from: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in KEPT {
        for v in from.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    h
}

/// An error as plain text, with the audit's fault and detail; both start
/// with `code` (the audit's `detail` is where the reason goes).
pub fn error(status: StatusCode, code: &str, fault: Fault, detail: String) -> Outcome {
    let detail = format!("{code}: {detail}");
    let mut resp = Response::new(body::full(format!("{detail}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let mut o = Outcome::new(resp);
    o.fault = Some(fault);
    o.detail = Some(detail);
    o
}

/// Content of `size` bytes the cache holds or is writing with a known
/// size: 304 when the device's conditional request matches `stored`'s
/// validators, else whole or the range asked for (`If-Range` that does
/// not match the ETag sends it whole).
#[allow(clippy::too_many_arguments)]
pub fn content<S>(
    method: &Method,
    request: &HeaderMap,
    stored: &HeaderMap,
    size: u64,
    age: Option<u64>,
    cache: CacheStatus,
    stream: impl FnOnce(Option<(u64, u64)>) -> S,
) -> Outcome
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
    let validators = Validators {
        etag,
        last_modified: stored
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok()),
    };
    if policy::not_modified(request, &validators) {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        for name in [
            header::ETAG,
            header::LAST_MODIFIED,
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::VARY,
        ] {
            if let Some(v) = stored.get(&name) {
                h.insert(name, v.clone());
            }
        }
        let mut o = Outcome::new(resp);
        o.cache = Some(cache);
        return o;
    }
    let range_header = request
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_holds(request, etag));
    let (status, range) = match range::parse(range_header, size) {
        Ranged::Full => (StatusCode::OK, None),
        Ranged::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, Some((start, end))),
        Ranged::Unsatisfiable => {
            let mut o = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                Fault::Device,
                format!("the range asked for is outside the {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                o.response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            o.cache = Some(cache);
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
    replay(h, stored, age);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((s, e)) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    let mut o = Outcome::new(resp);
    o.cache = Some(cache);
    o
}

/// `If-Range` absent, or naming the stored ETag (a strong one; dates are
/// not compared: the range is then ignored, which is always allowed).
fn if_range_holds(request: &HeaderMap, etag: Option<&str>) -> bool {
    match request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => etag.is_some_and(|e| !e.starts_with("W/") && v.trim() == e),
    }
}

fn replay(h: &mut HeaderMap, stored: &HeaderMap, age: Option<u64>) {
    for (name, v) in stored {
        h.append(name.clone(), v.clone());
    }
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(age) = age {
        h.insert(header::AGE, HeaderValue::from(age));
    }
}

/// A fill in progress, for its leader's client or a follower.
pub fn following(
    method: &Method,
    request: &HeaderMap,
    stored: &HeaderMap,
    reader: &FillReader,
) -> Outcome {
    match reader.size() {
        Some(size) => content(
            method,
            request,
            stored,
            size,
            None,
            CacheStatus::Miss,
            |r| reader.stream(r),
        ),
        None => {
            // Size unknown until the fill ends: the whole body, chunked.
            let body = if method == Method::HEAD {
                body::empty()
            } else {
                stream_body(reader.stream(None))
            };
            let mut resp = Response::new(body);
            replay(resp.headers_mut(), stored, None);
            let mut o = Outcome::new(resp);
            o.cache = Some(CacheStatus::Miss);
            o
        }
    }
}

/// What upstream answered, passed on without storing: its status, the
/// [`KEPT`] headers and the length, the body streamed.
pub fn passed(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    body: impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
) -> Outcome {
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        stream_body(body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    *h = kept(headers);
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
    ] {
        if let Some(v) = headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    let mut o = Outcome::new(resp);
    o.cache = Some(CacheStatus::Bypass);
    if status.is_server_error() {
        o.fault = Some(Fault::Upstream);
        o.detail = Some(format!("upstream answered {status}"));
    }
    o
}

/// The answer when a fill could not start or failed before the body.
pub fn refused(e: &CacheError) -> Outcome {
    let detail = match e {
        CacheError::FillFailed { reason, .. } => reason.to_string(),
        other => other.to_string(),
    };
    let cause = match e {
        CacheError::TooManyFills { .. } => {
            let mut o = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                Fault::Local,
                detail,
            );
            o.response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return o;
        }
        other => other.cause(),
    };
    let (status, code) = match cause {
        FailCause::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
            "upstream_status",
        ),
        FailCause::Upstream => (StatusCode::BAD_GATEWAY, "upstream_failed"),
        FailCause::TooLarge | FailCause::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
        FailCause::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    error(status, code, cause.into(), detail)
}
