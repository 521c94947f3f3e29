//! HTTP on an intercepted connection, TLS-terminated or plain.
//!
//! hyper serves HTTP/1.1 and h2 (by ALPN or preface) with its timeouts
//! really armed: a `Timer` is installed, so the header read timeout and the
//! h2 keep-alive actually fire (without one, hyper ignores them). Before a
//! request reaches a site it must pass the checks a proxy owes its
//! upstreams: unambiguous framing (else 400 and close) and a Host equal to
//! the TLS server name (else 421).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, LazyLock},
    time::Duration,
};

use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{self, Audited, Body};
use crate::{
    audit::{Audit, Event, Fault, Record, addr_text},
    registry::Sites,
};

/// Time a device has to send a request's headers (slowloris bound), also
/// the idle time allowed between keep-alive requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Concurrent h2 streams per connection.
const MAX_STREAMS: u32 = 128;
/// Request header block limit (both protocols).
const MAX_HEADER_BYTES: usize = 64 * 1024;

pub struct HttpContext {
    pub sites: Arc<Sites>,
    pub audit: Audit,
    /// `devices.groups`, when configured.
    pub groups: Option<Arc<crate::policy::groups::Groups>>,
}

/// Serves one connection until it closes. `sni` is the TLS server name, or
/// `None` on plain HTTP (where the Host header alone names the site);
/// `protocol` what the handshake's ALPN settled, if anything.
///
/// Once `stop` turns true the requests in flight finish and the
/// connection closes (a kept-alive idle one at once): see conns.rs.
///
/// Not an `async fn`: hyper's connection (the stream inside it) is boxed
/// before the returned future exists, so the future holds a pointer and
/// no moved-from copy of the stream. A kept-alive connection lives for
/// minutes; as an `async fn` this took 7.8 KiB per connection for 2.8 KiB
/// of connection state (each argument and every `pin!`ned local keeps its
/// own slot in the future).
pub fn serve<IO>(
    io: IO,
    device: SocketAddr,
    sni: Option<String>,
    protocol: Protocol,
    ctx: Arc<HttpContext>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sni = sni.map(Arc::<str>::from);
    let host = sni.as_deref().map(str::to_owned);
    let audit = ctx.audit.clone();
    let handler = move |req| {
        let ctx = ctx.clone();
        let sni = sni.clone();
        Box::pin(async move { handle(req, device, sni.as_deref(), &ctx).await })
    };
    let conn = drive(io, protocol, handler, stop, device);
    async move {
        if let Some(mut record) = conn.await {
            record.device = Some(addr_text(device));
            record.host = host;
            audit.log(record).await;
        }
    }
}

/// Drives hyper's connection on `io` with `handler` for each request, until
/// the connection ends or `stop` turns true (then the requests in flight
/// finish and it closes). Both the device side ([`serve`]) and the children
/// listener serve through here.
///
/// Resolves to the audit record of what hyper's parser refused before any
/// handler saw it (malformed lengths, oversized or slow headers, a
/// protocol other than the one ALPN settled), with the sender's fault; the
/// caller names the sender. `peer` is for the debug log only.
///
/// Not an `async fn`, for the reason [`serve`] gives: the connection is
/// boxed before the returned future exists. `handler`'s futures should be
/// boxed too: hyper keeps room for one request's future for the
/// connection's whole life (HTTP/1.1), so an idle kept-alive connection
/// then holds a pointer instead of the future's full size.
pub(crate) fn drive<IO, F, Fut>(
    io: IO,
    protocol: Protocol,
    handler: F,
    mut stop: tokio::sync::watch::Receiver<bool>,
    peer: SocketAddr,
) -> impl Future<Output = Option<Record>> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let response = handler(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let mut conn = Box::pin(builder(protocol).serve_connection(TokioIo::new(io), service));
    async move {
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            () = super::conns::stopping(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        let e = ended.err()?;
        tracing::debug!(%peer, error = %e, "connection ended with an error");
        // Requests hyper refused before they reached a handler are
        // decisions too.
        let (reason, status) = refused_by_parser(e.as_ref())?;
        // The whole chain: hyper's own text for an h2 error is only
        // "http2 error"; h2's says which.
        let mut record = Record::new(Event::Request)
            .reason(reason)
            .detail(crate::ebpf::error_chain(e.as_ref()));
        record.fault = Some(Fault::Device);
        record.status = status.map(|s| s.as_u16());
        Some(record)
    }
}

/// A request refused before it reached a site: `reason` as the body and
/// the record's reason, the device's fault; a 400 closes the connection
/// (ambiguous framing: the rest of the stream cannot be trusted).
pub(crate) fn refuse(
    status: StatusCode,
    reason: &str,
    record: Record,
    audit: &Audit,
) -> Response<Body> {
    let mut record = record.reason(reason);
    record.status = Some(status.as_u16());
    record.fault = Some(Fault::Device);
    let mut resp = Response::new(body::full(format!("{reason}\n")));
    *resp.status_mut() = status;
    if status == StatusCode::BAD_REQUEST {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    finish(resp, record, audit)
}

/// The HTTP version a TLS handshake settled by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2,
    /// No ALPN (or plain HTTP): hyper tells by the connection preface.
    Detect,
}

impl Protocol {
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Self::H2,
            Some(b"http/1.1") => Self::Http1,
            _ => Self::Detect,
        }
    }
}

/// hyper's server for one connection, HTTP/1.1 and h2, with the limits
/// and timers every terminated connection gets (device or child gateway).
///
/// A version ALPN settled is served without detection: detecting reads
/// the first bytes apart and hands them to HTTP/1.1 as a short first read,
/// after which hyper's read buffer grows from 8 to 16 KiB and stays so for
/// the connection's life (8 KiB more per kept-alive device connection).
///
/// Built once per version and shared: a connection borrows its builder,
/// which would otherwise live in every connection's future.
pub(crate) fn builder(protocol: Protocol) -> &'static auto::Builder<TokioExecutor> {
    static BUILDERS: LazyLock<[auto::Builder<TokioExecutor>; 3]> = LazyLock::new(|| {
        [
            configured().http1_only(),
            configured().http2_only(),
            configured(),
        ]
    });
    let i = match protocol {
        Protocol::Http1 => 0,
        Protocol::H2 => 1,
        Protocol::Detect => 2,
    };
    &BUILDERS[i]
}

fn configured() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // No keep-alive pings: they would count as progress and keep an
        // idle connection open forever; the connection's idle deadline
        // (`proxy.idle_timeout_secs`) ends idle and dead ones alike.
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

/// Why hyper's own parser or timers, or h2's, ended a connection before
/// a handler saw the request, when they did: the audit reason, and the
/// status hyper answered with if it answered one.
///
/// hyper answers HTTP/1.1 parse errors itself: 400 for a malformed request
/// line or header, 431 or 414 for one too large (which of the two it does
/// not say, so no status is recorded). It does not answer the h2 preface
/// on a connection where ALPN settled HTTP/1.1, and h2 answers a protocol
/// error (HTTP/1.1 text where ALPN settled h2 among them) with GOAWAY, not
/// a status: those are recorded as `malformed_request` without a status.
pub(crate) fn refused_by_parser(
    e: &(dyn std::error::Error + 'static),
) -> Option<(&'static str, Option<StatusCode>)> {
    use h2::Reason;
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_version_h2() || h.is_parse_too_large() {
                return Some(("malformed_request", None));
            }
            if h.is_parse() {
                return Some(("malformed_request", Some(StatusCode::BAD_REQUEST)));
            }
            if h.is_timeout() {
                return Some(("header_read_timeout", None));
            }
            // Otherwise an h2 error may be its source: read on.
        }
        if let Some(h) = err.downcast_ref::<h2::Error>() {
            // Raised by h2 itself against what the peer sent; not a reset
            // or GOAWAY the peer chose, nor an I/O error.
            let peer_broke_it = h.is_library()
                && matches!(
                    h.reason(),
                    Some(
                        Reason::PROTOCOL_ERROR
                            | Reason::FRAME_SIZE_ERROR
                            | Reason::COMPRESSION_ERROR
                    )
                );
            return peer_broke_it.then_some(("malformed_request", None));
        }
        source = err.source();
    }
    None
}

async fn handle(
    req: Request<Incoming>,
    device: SocketAddr,
    sni: Option<&str>,
    ctx: &HttpContext,
) -> Response<Body> {
    let mut record = Record::new(Event::Request);
    record.device = Some(addr_text(device));
    record.method = Some(req.method().as_str().to_owned());
    record.path = Some(
        req.uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
    );
    let host = request_host(&req);
    record.host = host.clone().or_else(|| sni.map(str::to_owned));

    let refused = |status, reason: &str, record| refuse(status, reason, record, &ctx.audit);

    if let Some(reason) = framing_problem(req.headers()) {
        return refused(StatusCode::BAD_REQUEST, reason, record);
    }
    let Some(host) = host else {
        return refused(StatusCode::BAD_REQUEST, "missing_host", record);
    };
    if let Some(sni) = sni
        && host != sni
    {
        return refused(StatusCode::MISDIRECTED_REQUEST, "host_not_sni", record);
    }
    let Some(site) = ctx.sites.get(&host) else {
        return refused(StatusCode::FORBIDDEN, "host_not_allowed", record);
    };
    let mut req = req;
    if let Some(groups) = &ctx.groups {
        // Checked here too: plain HTTP has no handshake to refuse. (A
        // connection keeps the groups of the config it was accepted under,
        // as it keeps every other setting across a reload.)
        let group = groups.of(device.ip());
        record.group = Some(group.name.to_string());
        let Some(repositories) = group.host(&host) else {
            return refused(StatusCode::FORBIDDEN, crate::policy::DENY_GROUP, record);
        };
        req.extensions_mut()
            .insert(crate::policy::groups::Membership {
                group: group.name.clone(),
                repositories: repositories.clone(),
            });
    }
    if sni.is_none() {
        // Plain HTTP crosses the device network in clear and unauthenticated:
        // only for sites that say `http: true`.
        if !ctx.sites.plain_http(&host) {
            return refused(StatusCode::FORBIDDEN, "plain_http_not_allowed", record);
        }
        req.extensions_mut().insert(crate::registry::PlainHttp);
    }
    let outcome = site.handle(req).await;
    record.status = Some(outcome.response.status().as_u16());
    record.cache = outcome.cache;
    record.upstream_ms = outcome.upstream_ms;
    record.source = outcome.source;
    record.fault = outcome.fault;
    record.detail = outcome.detail;
    record.reason = outcome.reason.map(str::to_owned);
    finish(outcome.response, record, &ctx.audit)
}

pub(crate) fn finish(resp: Response<Body>, record: Record, audit: &Audit) -> Response<Body> {
    let (parts, inner) = resp.into_parts();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let audited = Audited::new(inner, record, audit.clone(), length);
    Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(audited))
}

/// The host a request names: the h2 `:authority` or the HTTP/1.1 `Host`
/// header, lowercased, without port or trailing dot.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_owned(),
        None => {
            let value = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = value.parse().ok()?;
            authority.host().to_owned()
        }
    };
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Request shapes that different parsers frame differently (request
/// smuggling). hyper already rejects malformed lengths (`+3`, duplicates
/// that disagree) but silently drops a `Content-Length` that comes with
/// `Transfer-Encoding`, so the CL.TE and TE.CL shapes reach us only as a
/// `Transfer-Encoding` header. Sites serve pulls, which carry no body: any
/// `Transfer-Encoding` on a request is refused.
pub fn framing_problem(headers: &HeaderMap) -> Option<&'static str> {
    let te = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    let cl = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if te > 0 && cl > 0 {
        return Some("content_length_with_transfer_encoding");
    }
    if te > 1 {
        return Some("duplicate_transfer_encoding");
    }
    if te > 0 {
        return Some("transfer_encoding_not_accepted");
    }
    if cl > 1 {
        return Some("duplicate_content_length");
    }
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Some("duplicate_host");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn alpn_picks_the_version_served() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::H2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        // No ALPN, or something neither: hyper reads the preface.
        assert_eq!(Protocol::from_alpn(None), Protocol::Detect);
        assert_eq!(Protocol::from_alpn(Some(b"h3")), Protocol::Detect);
        assert!(builder(Protocol::Http1).is_http1_available());
        assert!(!builder(Protocol::Http1).is_http2_available());
        assert!(builder(Protocol::H2).is_http2_available());
        assert!(!builder(Protocol::H2).is_http1_available());
        assert!(builder(Protocol::Detect).is_http1_available());
        assert!(builder(Protocol::Detect).is_http2_available());
    }

    #[test]
    fn host_from_header_or_authority() {
        assert_eq!(
            request_host(&req(&[("host", "Registry.Example.Test:443")], "/v2/")),
            Some("registry.example.test".into())
        );
        assert_eq!(
            request_host(&req(&[], "https://registry.example.test./v2/")),
            Some("registry.example.test".into())
        );
        assert_eq!(request_host(&req(&[], "/v2/")), None);
        assert_eq!(request_host(&req(&[("host", "bad host")], "/")), None);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
            framing_problem(&m)
        };
        assert!(h(&[("content-length", "3"), ("transfer-encoding", "chunked")]).is_some());
        assert!(
            h(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])
            .is_some()
        );
        assert!(h(&[("content-length", "3"), ("content-length", "3")]).is_some());
        assert!(h(&[("host", "a"), ("host", "b")]).is_some());
        assert!(h(&[("transfer-encoding", "chunked")]).is_some());
        assert!(h(&[("content-length", "3")]).is_none());
        assert!(h(&[]).is_none());
    }
}
