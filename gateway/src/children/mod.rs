//! A parent (regional) gateway's listener for child gateways.
//!
//! A child is another site's gateway whose site `upstream` names this one
//! (`children.server_name`). It connects over mutual TLS: this side
//! presents a leaf the site CA mints for `children.server_name` and
//! requires a client certificate `children.client_ca` issued (`gateway ca
//! issue-client`); no certificate, or one from another CA, fails the
//! handshake, audited. Each request names the origin host it wants in
//! [`ORIGIN_HOST_HEADER`]: a host that is one of this gateway's own sites
//! is served by that site's handler, the one devices use (cache, fill
//! with this gateway's credentials); any other host gets 403, audited.
//!
//! Why a header and not `Host`: the child's upstream client addresses the
//! parent by its URL (TCP, SNI, certificate check and `Host` all name the
//! parent), so redirects, token realms and connection pooling work as for
//! any upstream; the origin travels beside it, and only to the parent.
//!
//! Audit records of children's requests carry `child` (the client
//! certificate's common name) instead of a device address.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::{
    audit::{Event, Fault, Record},
    config::Config,
    proxy::{
        IdleIo, Proxy,
        body::Body,
        conns::{Connections, STOP_GRACE, stopping},
        http::{HttpContext, Protocol, drive, finish, framing_problem, refuse},
    },
    tls::{LeafResolver, SiteCa, identity},
};

/// The request header naming the origin host a child wants served.
pub const ORIGIN_HOST_HEADER: &str = "gateway-origin-host";

/// Leaves kept for the one server name.
const LEAF_CACHE: usize = 4;

/// The TLS side of the children listener, or `None` without `children:`.
pub fn acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    let Some(children) = &config.children else {
        return Ok(None);
    };
    let ca = SiteCa::load(&config.tls.ca_dir).with_context(|| {
        format!(
            "loading the site CA from {} for the children listener",
            config.tls.ca_dir.display()
        )
    })?;
    let resolver = Arc::new(LeafResolver::new(
        Arc::new(ca),
        vec![children.server_name.clone()],
        config.tls.leaf_validity,
        LEAF_CACHE,
    ));
    let client_ca = children.client_ca_file(&config.tls.ca_dir);
    let server = identity::children_server_config(resolver, &client_ca)
        .context("setting up the children listener's TLS")?;
    Ok(Some(TlsAcceptor::from(server)))
}

/// Binds `children.listen` (none without `children:`).
pub async fn bind(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for addr in config.children.iter().flat_map(|c| c.addresses()) {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the children listener on {addr}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepts children until `stop` turns true. Each connection takes the
/// proxy current when it was accepted (its sites, audit and limits), as
/// device connections do.
pub async fn serve(
    proxy: Arc<crate::reload::Shared<Proxy>>,
    acceptor: TlsAcceptor,
    listeners: Vec<TcpListener>,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(
            proxy.clone(),
            acceptor.clone(),
            listener,
            stop.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(
    current: Arc<crate::reload::Shared<Proxy>>,
    acceptor: TlsAcceptor,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = Connections::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = conns.reap() => continue,
            () = stopping(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "children listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = current.load();
        // Children share the proxy's connection caps, per address too.
        let Ok(permit) = proxy.limits.acquire(peer.ip()) else {
            // Logged, not audited: a child is a configured peer, and a
            // flood from it is the admin's to see, not a device's deed.
            tracing::warn!(%peer, "children listener: connection cap reached; closed");
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            handle(proxy, acceptor, stream, peer, stop).await;
            drop(permit);
        });
    }
    let dropped = conns.drain(STOP_GRACE).await;
    if dropped > 0 {
        tracing::info!(
            dropped,
            "stopping: closed children's connections still busy after the grace"
        );
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let denied = |reason: &str, detail: String| {
        let mut r = Record::new(Event::FlowDenied).reason(reason).detail(detail);
        r = match local {
            Some(local) => r.tcp(peer, local),
            None => r,
        };
        r.fault = Some(Fault::Device);
        r
    };
    let io = IdleIo::new(stream, proxy.inspect_timeout, proxy.idle_timeout);
    let tls = match tokio::time::timeout(proxy.inspect_timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            proxy
                .audit
                .log(denied(handshake_refusal(&e), e.to_string()))
                .await;
            return;
        }
        Err(_) => {
            proxy
                .audit
                .log(denied("child_handshake_timeout", String::new()))
                .await;
            return;
        }
    };
    let child: Arc<str> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(identity::peer_name)
        .unwrap_or_else(|| String::from("(unnamed)"))
        .into();
    tracing::debug!(%peer, child = %child, "child gateway connected");
    let ctx = proxy.http.clone();
    let audit = ctx.audit.clone();
    let handler = {
        let child = child.clone();
        move |req| {
            let (ctx, child) = (ctx.clone(), child.clone());
            Box::pin(async move { serve_request(req, &child, &ctx).await })
        }
    };
    let protocol = Protocol::from_alpn(tls.get_ref().1.alpn_protocol());
    // A child keeps its connection pooled between pulls: when the daemon
    // stops, requests in flight finish and the connection closes, so it
    // does not hold the daemon (and its audit log) open until it idles out.
    if let Some(mut record) = drive(tls, protocol, handler, stop, peer).await {
        record.child = Some(child.to_string());
        audit.log(record).await;
    }
}

/// The audit reason for a failed handshake on the children listener.
fn handshake_refusal(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        // No client certificate, one from another CA, an expired one.
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            "child_certificate_refused"
        }
        // A server name other than `children.server_name` (or none).
        Some(rustls::Error::General(m)) if m.contains("no server certificate") => {
            "child_server_name_unknown"
        }
        _ => "child_handshake_failed",
    }
}

/// One request of a child: the origin host it names, if this gateway
/// serves it, through that site's own handler.
async fn serve_request(req: Request<Incoming>, child: &str, ctx: &HttpContext) -> Response<Body> {
    let mut record = Record::new(Event::Request);
    record.child = Some(child.to_owned());
    record.method = Some(req.method().as_str().to_owned());
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    record.path = Some(path.clone());
    let origin = origin_host(req.headers());
    record.host = origin.clone();
    let refused = |status, reason: &str, record| refuse(status, reason, record, &ctx.audit);
    if let Some(reason) = framing_problem(req.headers()) {
        return refused(StatusCode::BAD_REQUEST, reason, record);
    }
    let Some(origin) = origin else {
        return refused(StatusCode::BAD_REQUEST, "missing_origin_host", record);
    };
    let Some(site) = ctx.sites.get(&origin) else {
        return refused(StatusCode::FORBIDDEN, "origin_not_served", record);
    };
    // The site's handler sees the request as a device's for `origin`
    // (helm tells its chart hosts apart by it).
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = path.parse() else {
        return refused(StatusCode::BAD_REQUEST, "malformed_request", record);
    };
    parts.uri = uri;
    let Ok(host) = HeaderValue::from_str(&origin) else {
        return refused(StatusCode::BAD_REQUEST, "missing_origin_host", record);
    };
    parts.headers.insert(header::HOST, host);
    parts.headers.remove(ORIGIN_HOST_HEADER);
    let outcome = site.handle(Request::from_parts(parts, body)).await;
    record.status = Some(outcome.response.status().as_u16());
    record.cache = outcome.cache;
    record.upstream_ms = outcome.upstream_ms;
    record.fault = outcome.fault;
    record.detail = outcome.detail;
    record.reason = outcome.reason.map(str::to_owned);
    finish(outcome.response, record, &ctx.audit)
}

/// The origin host a child asks for: one header value, a DNS name,
/// lowercased, without a trailing dot.
pub fn origin_host(headers: &http::HeaderMap) -> Option<String> {
    let mut values = headers.get_all(ORIGIN_HOST_HEADER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let host = value
        .to_str()
        .ok()?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    crate::config::is_dns_name(&host).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_are_told_apart() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            handshake_refusal(&io(rustls::Error::NoCertificatesPresented)),
            "child_certificate_refused"
        );
        assert_eq!(
            handshake_refusal(&io(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            "child_certificate_refused"
        );
        assert_eq!(
            handshake_refusal(&io(rustls::Error::General(
                "no server certificate chain resolved".into()
            ))),
            "child_server_name_unknown"
        );
        assert_eq!(
            handshake_refusal(&std::io::ErrorKind::UnexpectedEof.into()),
            "child_handshake_failed"
        );
    }

    #[test]
    fn the_origin_host_is_one_dns_name() {
        let mut h = http::HeaderMap::new();
        assert_eq!(origin_host(&h), None);
        h.insert(
            ORIGIN_HOST_HEADER,
            HeaderValue::from_static("Registry.Test."),
        );
        assert_eq!(origin_host(&h), Some("registry.test".into()));
        h.append(ORIGIN_HOST_HEADER, HeaderValue::from_static("other.test"));
        assert_eq!(origin_host(&h), None, "two values are ambiguous");
        h.insert(ORIGIN_HOST_HEADER, HeaderValue::from_static("a b"));
        assert_eq!(origin_host(&h), None);
    }
}
