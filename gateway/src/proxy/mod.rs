//! The transparent proxy: accept what the kernel redirected, decide by
//! policy, then splice (passthrough services), answer (DNS over TCP),
//! terminate and serve (site hosts), or refuse, auditing each decision.

pub mod body;
pub(crate) mod conns;
pub mod http;
mod idle;
pub mod limits;
mod listener;
mod passthrough;
pub mod peek;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

pub use listener::bind;
pub(crate) use listener::set_ipv6_transparent;

use crate::{
    audit::{Audit, Event, Fault, Record},
    policy::{Decision, Policy},
};
pub(crate) use idle::IdleIo;
use peek::FirstBytes;

/// A TLS alert record: fatal `unrecognized_name` (RFC 6066), sent to a
/// ClientHello for a name the gateway will not serve.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

pub struct Proxy {
    pub policy: Policy,
    pub audit: Audit,
    /// Connection caps, in all and per device.
    pub limits: Arc<limits::Limits>,
    /// Refusals at the caps are audited within this budget per device.
    pub refused: std::sync::Mutex<crate::dns::Budget>,
    /// The longest time no byte moves either way on a terminated
    /// connection.
    pub idle_timeout: Duration,
    /// The same for a passthrough connection (which also gets TCP
    /// keepalive probes).
    pub passthrough_idle: Duration,
    pub connect_timeout: Duration,
    /// Time a device has to send its ClientHello or request line.
    pub inspect_timeout: Duration,
    /// Present when sites are configured.
    pub tls: Option<TlsAcceptor>,
    /// Present when `dns.enabled`.
    pub dns: Option<Arc<crate::dns::Responder>>,
    pub http: Arc<http::HttpContext>,
}

/// Accepts on every listener until `stop` turns true. Each connection
/// takes the proxy current when it was accepted: a config reload replaces
/// it for new connections while established ones keep theirs.
pub async fn serve(
    proxy: Arc<crate::reload::Shared<Proxy>>,
    listeners: Vec<TcpListener>,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(proxy.clone(), listener, stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(
    current: Arc<crate::reload::Shared<Proxy>>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = conns::Connections::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = conns.reap() => continue,
            () = conns::stopping(&mut stop) => break,
        };
        let (stream, device) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = current.load();
        let permit = match proxy.limits.acquire(device.ip()) {
            Ok(p) => p,
            Err(refusal) => {
                // Closed at once; the device's other connections go on.
                let dst = stream.local_addr().ok();
                drop(stream);
                refuse(&proxy, device, dst, refusal).await;
                continue;
            }
        };
        let stop = stop.clone();
        conns.spawn(async move {
            handle(proxy, stream, device, stop).await;
            drop(permit);
        });
    }
    let dropped = conns.drain(conns::STOP_GRACE).await;
    if dropped > 0 {
        tracing::info!(
            dropped,
            "stopping: closed connections still busy after the grace"
        );
    }
}

/// Audits a connection refused at a cap, within the per-device budget.
async fn refuse(
    proxy: &Proxy,
    device: SocketAddr,
    dst: Option<SocketAddr>,
    refusal: limits::Refusal,
) {
    let suppressed = proxy
        .refused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(device.ip().to_canonical(), std::time::Instant::now());
    let Some(suppressed) = suppressed else {
        return;
    };
    let mut r = Record::new(Event::FlowDenied).reason(refusal.reason());
    r = match dst {
        Some(dst) => r.tcp(device, dst),
        None => r,
    };
    r.fault = Some(Fault::Device);
    r.suppressed = (suppressed > 0).then_some(suppressed);
    r.detail = Some(format!("{} connections open", proxy.limits.open()));
    proxy.audit.log(r).await;
}

/// One accepted connection. Each branch's future is boxed: a task is as
/// large as its largest state, so unboxed, every connection (a kept-alive
/// TLS one included) would carry room for the largest branch (about 12 KiB
/// measured); boxed, it carries its own branch's state only.
async fn handle(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    device: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    // The gateway answers in whole messages (handshake flights, responses)
    // and relays the manager's: Nagle would hold the last segment of each
    // for the device's delayed ACK, adding ~40 ms to a new connection's
    // first request.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, %device, "TCP_NODELAY not set");
    }
    // The local address of a transparently accepted socket is where the
    // device sent its SYN.
    let original_dst = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, %device, "no original destination; closing");
            return;
        }
    };
    let denied = |reason: &str| {
        Record::new(Event::FlowDenied)
            .tcp(device, original_dst)
            .reason(reason)
    };
    let decision = proxy.policy.decide(original_dst);
    let group = proxy
        .policy
        .groups
        .as_ref()
        .map(|g| g.of(device.ip()).clone());
    let group_refuses = |service: &str| group.as_ref().is_some_and(|g| !g.allows_service(service));
    let metrics = crate::metrics::global();
    match &decision {
        Decision::Passthrough { service, .. } if group_refuses(service) => {
            metrics.connection("denied", None);
        }
        Decision::Passthrough { service, .. } => metrics.connection("passthrough", Some(service)),
        Decision::Dns => metrics.connection("dns", None),
        Decision::Deny { .. } => metrics.connection("denied", None),
        Decision::Inspect => metrics.connection("inspect", None),
    }
    match decision {
        Decision::Passthrough { service, .. } if group_refuses(&service) => {
            // Refused like a destination no rule names: the device's group
            // may not reach this service.
            drop(stream);
            let mut r = denied(crate::policy::DENY_GROUP);
            r.service = Some(service.to_string());
            r.group = group.map(|g| g.name.to_string());
            r.fault = Some(Fault::Device);
            proxy.audit.log(r).await;
        }
        Decision::Passthrough { upstream, service } => {
            let mut record = Box::pin(passthrough::splice(
                stream,
                device,
                original_dst,
                upstream,
                &service,
                passthrough::Timing {
                    connect: proxy.connect_timeout,
                    idle: proxy.passthrough_idle,
                },
                stop,
            ))
            .await;
            record.group = group.map(|g| g.name.to_string());
            proxy.audit.log(record).await;
        }
        Decision::Dns => match &proxy.dns {
            Some(dns) => Box::pin(crate::dns::tcp::serve(dns, stream, device, original_dst)).await,
            None => proxy.audit.log(denied(crate::policy::DENY_NO_RULE)).await,
        },
        Decision::Deny { reason } => {
            drop(stream);
            proxy.audit.log(denied(reason)).await;
        }
        Decision::Inspect => {
            // The inspection's box is freed at the end of this statement,
            // before the connection is served.
            let serving =
                Box::pin(inspect(proxy.clone(), stream, device, original_dst, stop)).await;
            if let Some(serving) = serving {
                serving.await;
            }
        }
    }
}

/// A connection's HTTP service, ready to be awaited.
type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Reads what the device speaks, refuses or completes the TLS handshake,
/// and returns the HTTP service for what it may use (or `None`, refused
/// and audited). Returned rather than awaited here: the caller awaits it
/// after this future is gone, so a kept-alive connection does not keep
/// this future's room (the ClientHello, the refusal records) for its
/// life.
async fn inspect(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    device: SocketAddr,
    dst: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Option<Serving> {
    let denied = |reason: &str| {
        Record::new(Event::FlowDenied)
            .tcp(device, dst)
            .reason(reason)
    };
    match peek::first_bytes(&stream, proxy.inspect_timeout).await {
        FirstBytes::Tls(hello) => {
            let sni = hello.server_name.clone();
            let host = match proxy.policy.decide_sni(sni.as_deref()) {
                Ok(host) => host,
                Err(reason) => {
                    let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                    let mut r = denied(reason);
                    r.host = sni;
                    proxy.audit.log(r).await;
                    return None;
                }
            };
            if let Some(groups) = &proxy.policy.groups {
                // A site the device's group may not use is refused like a
                // name that is no site: no certificate is minted for it.
                let group = groups.of(device.ip());
                if !group.allows_host(&host) {
                    let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                    let mut r = denied(crate::policy::DENY_GROUP);
                    r.host = Some(host);
                    r.group = Some(group.name.to_string());
                    r.fault = Some(Fault::Device);
                    proxy.audit.log(r).await;
                    return None;
                }
            }
            let Some(acceptor) = proxy.tls.clone() else {
                proxy.audit.log(denied("tls_not_configured")).await;
                return None;
            };
            let stream = IdleIo::new(stream, proxy.inspect_timeout, proxy.idle_timeout);
            // Boxed: the handshake's state (about 1.5 KiB) is needed only
            // until it ends.
            let accept = tokio::time::timeout(proxy.inspect_timeout, acceptor.accept(stream));
            let refused = match Box::pin(accept).await {
                Ok(Ok(tls)) => {
                    crate::metrics::global().tls_handshake("ok");
                    let protocol = http::Protocol::from_alpn(tls.get_ref().1.alpn_protocol());
                    return Some(Box::pin(http::serve(
                        tls,
                        device,
                        Some(host),
                        protocol,
                        proxy.http.clone(),
                        stop,
                    )));
                }
                Ok(Err(e)) => {
                    crate::metrics::global().tls_handshake("failed");
                    let mut r = denied("tls_handshake_failed").detail(e.to_string());
                    r.host = Some(host);
                    r.fault = Some(Fault::Device);
                    r
                }
                Err(_) => {
                    crate::metrics::global().tls_handshake("timeout");
                    let mut r = denied("tls_handshake_timeout");
                    r.host = Some(host);
                    r.fault = Some(Fault::Device);
                    r
                }
            };
            proxy.audit.log(refused).await;
        }
        FirstBytes::Http => {
            let stream = IdleIo::new(stream, proxy.inspect_timeout, proxy.idle_timeout);
            return Some(Box::pin(http::serve(
                stream,
                device,
                None,
                http::Protocol::Detect,
                proxy.http.clone(),
                stop,
            )));
        }
        FirstBytes::Other => proxy.audit.log(denied("unsupported_protocol")).await,
        FirstBytes::Invalid(why) => {
            proxy
                .audit
                .log(denied("malformed_client_hello").detail(why))
                .await;
        }
        FirstBytes::Timeout => proxy.audit.log(denied("no_request_in_time")).await,
        FirstBytes::Closed => proxy.audit.log(denied("closed_before_request")).await,
    }
    None
}
