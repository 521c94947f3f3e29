//! The upstream proxy: a site with an `upstream_proxy` reaches every
//! upstream host (its registry, token realms, CDNs it redirects to)
//! through an HTTP `CONNECT` tunnel, and TLS to the origin runs inside the
//! tunnel exactly as on a direct connection (SNI and certificate checks
//! for the origin's name; the proxy sees the name and port only).
//!
//! [`Connector`] is the inner connector under hyper-rustls: for a host in
//! the proxy's `no_proxy` list, or with no proxy, it is the direct
//! connector with the SSRF-guarding resolver (`targets.rs`); otherwise
//! [`ProxyRoute::tunnel`] connects to the proxy (its address is trusted
//! config: never judged by the guard), sends
//!
//! ```text
//! CONNECT registry.example:443 HTTP/1.1
//! Host: registry.example:443
//! Proxy-Authorization: Basic …        (when username/password_file are set)
//! ```
//!
//! and reads the response head, bounded in size ([`MAX_HEAD`]) and time
//! (`upstream.connect_timeout_secs`, which covers the proxy's own connect
//! to the origin). A 2xx hands the connection on; anything else is a
//! [`ProxyError`] naming the proxy, which the client turns into
//! [`super::UpstreamError::Proxy`]. Plain `http://` upstreams are
//! tunnelled too (the proxy must allow CONNECT to their port).
//!
//! The gateway does not resolve an origin's name when it goes through the
//! proxy (the proxy does), so the resolver half of the SSRF guard does not
//! apply there; the literal-address check of redirect and realm URLs does
//! (docs/SECURITY.md).

use std::{
    collections::BTreeMap,
    error::Error,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, Uri};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use serde::Serialize;
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tower_service::Service;

use super::{
    credentials::{UpstreamCredentials, read_password_file},
    error::UpstreamError,
    targets::{GuardedResolver, normalize, unbracket},
};
use crate::config::{UpstreamProxy, parse_proxy_url};

/// The longest CONNECT response head read: a status line and a few
/// headers (Squid's 407 head is about 400 bytes).
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// Why a tunnel through the proxy could not be opened. Each message names
/// the proxy by its URL (which holds no credentials).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("cannot resolve the upstream proxy {proxy}: {reason}")]
    Resolve { proxy: String, reason: String },
    #[error("cannot connect to the upstream proxy {proxy}: {reason}")]
    Connect { proxy: String, reason: String },
    #[error("cannot connect to the upstream proxy {proxy} within {after:?}")]
    ConnectTimeout { proxy: String, after: Duration },
    #[error("the upstream proxy {proxy} did not answer CONNECT {target} within {after:?}")]
    HeadTimeout {
        proxy: String,
        target: String,
        after: Duration,
    },
    #[error(
        "the upstream proxy {proxy} refused the gateway's credentials \
         (407 Proxy Authentication Required)"
    )]
    BadCredentials { proxy: String },
    #[error(
        "the upstream proxy {proxy} requires credentials (407 Proxy Authentication \
         Required): set username and password_file under upstream_proxy"
    )]
    CredentialsRequired { proxy: String },
    #[error("the upstream proxy {proxy} answered {status} to CONNECT {target}")]
    Status {
        proxy: String,
        target: String,
        /// The status code and reason phrase: `403 Forbidden`.
        status: String,
        code: u16,
    },
    #[error("the upstream proxy {proxy} closed the connection before answering CONNECT {target}")]
    Closed { proxy: String, target: String },
    #[error(
        "the upstream proxy {proxy} did not answer CONNECT {target} with an HTTP response \
         ({what})"
    )]
    Garbage {
        proxy: String,
        target: String,
        what: &'static str,
    },
    #[error(
        "the upstream proxy {proxy} answered CONNECT {target} with a head longer than {max} bytes"
    )]
    HeadTooLong {
        proxy: String,
        target: String,
        max: usize,
    },
    #[error(
        "the connection to the upstream proxy {proxy} failed during CONNECT {target}: {reason}"
    )]
    Io {
        proxy: String,
        target: String,
        reason: String,
    },
}

impl ProxyError {
    /// Whether another attempt may succeed: a proxy that was unreachable,
    /// dropped the connection or had an upstream of its own fail (5xx).
    /// Not a refusal (407, 403...), a proxy that talks garbage, or one
    /// that let the time for an answer pass (the request's budget is
    /// spent, as with a header timeout).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Resolve { .. }
            | Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Closed { .. }
            | Self::Io { .. } => true,
            Self::Status { code, .. } => (500..600).contains(code),
            Self::HeadTimeout { .. }
            | Self::BadCredentials { .. }
            | Self::CredentialsRequired { .. }
            | Self::Garbage { .. }
            | Self::HeadTooLong { .. } => false,
        }
    }
}

/// Hosts reached directly: `no_proxy`, parsed (validation guarantees the
/// entries are names, `.suffix`es or IP addresses).
#[derive(Debug, Default, Clone)]
struct NoProxy {
    /// Lower case, no trailing dot.
    names: Vec<String>,
    /// Without the leading dot: `site.internal` for `.site.internal`.
    suffixes: Vec<String>,
    /// Canonical.
    addresses: Vec<IpAddr>,
}

impl NoProxy {
    fn new(entries: &[String]) -> Self {
        let mut me = Self::default();
        for entry in entries {
            let entry = unbracket(entry);
            if let Ok(ip) = entry.parse::<IpAddr>() {
                me.addresses.push(ip.to_canonical());
            } else if let Some(suffix) = entry.strip_prefix('.') {
                me.suffixes.push(normalize(suffix));
            } else {
                me.names.push(normalize(entry));
            }
        }
        me
    }

    /// Whether `host` (as a URL names it, IPv6 in brackets or not) is
    /// reached directly.
    fn matches(&self, host: &str) -> bool {
        let host = unbracket(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.addresses.contains(&ip.to_canonical());
        }
        let name = normalize(host);
        self.names.contains(&name)
            || self.suffixes.iter().any(|s| {
                name.strip_suffix(s.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
            })
    }
}

/// One site's proxy, loaded: where it is, the `Proxy-Authorization`
/// value (sensitive: Debug never shows it) and the hosts that bypass it.
pub(crate) struct ProxyRoute {
    site: String,
    /// `http://host:port`, for messages.
    url: String,
    host: String,
    port: u16,
    username: Option<String>,
    authorization: Option<HeaderValue>,
    no_proxy: NoProxy,
    /// Per address of the proxy, and again for the answer to CONNECT.
    timeout: Duration,
}

impl fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyRoute")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .field("no_proxy", &self.no_proxy)
            .finish_non_exhaustive()
    }
}

impl ProxyRoute {
    /// Reads the password file (it must be private) and builds the route;
    /// `timeout` bounds the connect to each of the proxy's addresses and
    /// the wait for its answer.
    pub(crate) fn load(
        site: &str,
        config: &UpstreamProxy,
        timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let (host, port) =
            parse_proxy_url(&config.url).map_err(|reason| UpstreamError::ProxyConfig {
                site: site.to_owned(),
                reason,
            })?;
        let shown_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let url = format!("http://{shown_host}:{port}");
        let authorization = match (&config.username, &config.password_file) {
            (Some(user), Some(path)) => {
                let password =
                    read_password_file(path).map_err(|source| UpstreamError::ProxyCredentials {
                        site: site.to_owned(),
                        proxy: url.clone(),
                        source,
                    })?;
                Some(
                    UpstreamCredentials::new(user.clone(), password)
                        .basic_header()
                        .clone(),
                )
            }
            _ => None,
        };
        Ok(Self {
            site: site.to_owned(),
            url,
            host,
            port,
            username: config.username.clone(),
            authorization,
            no_proxy: NoProxy::new(&config.no_proxy),
            timeout,
        })
    }

    /// Whether connections to `dst` go directly (its host is in
    /// `no_proxy`).
    fn bypasses(&self, dst: &Uri) -> bool {
        dst.host().is_some_and(|h| self.no_proxy.matches(h))
    }

    /// Opens a tunnel to `dst`'s host and port through the proxy; records
    /// the outcome for `gateway status` ([`proxy_problems`]).
    pub(crate) async fn tunnel(&self, dst: &Uri) -> Result<TcpStream, ProxyError> {
        let result = self.try_tunnel(dst).await;
        match &result {
            Ok(_) => health::clear(&self.site),
            Err(e) => {
                tracing::warn!(site = %self.site, proxy = %self.url, error = %e, "upstream proxy failed");
                health::record(&self.site, &self.url, e);
            }
        }
        result
    }

    async fn try_tunnel(&self, dst: &Uri) -> Result<TcpStream, ProxyError> {
        let target = connect_target(dst).ok_or_else(|| ProxyError::Garbage {
            proxy: self.url.clone(),
            target: dst.to_string(),
            what: "the request has no host to connect to",
        })?;
        let mut stream = self.open().await?;
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(value) = &self.authorization {
            request.extend_from_slice(b"Proxy-Authorization: ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let exchange = async {
            stream.write_all(&request).await?;
            read_head(&mut stream).await
        };
        let head = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_elapsed) => {
                return Err(ProxyError::HeadTimeout {
                    proxy: self.url.clone(),
                    target,
                    after: self.timeout,
                });
            }
            Ok(Err(e)) => return Err(self.head_error(target, e)),
            Ok(Ok(head)) => head,
        };
        let (code, reason) = match status_of(&head) {
            Ok(status) => status,
            Err(what) => {
                return Err(ProxyError::Garbage {
                    proxy: self.url.clone(),
                    target,
                    what,
                });
            }
        };
        match code {
            200..=299 => Ok(stream),
            407 if self.authorization.is_some() => Err(ProxyError::BadCredentials {
                proxy: self.url.clone(),
            }),
            407 => Err(ProxyError::CredentialsRequired {
                proxy: self.url.clone(),
            }),
            _ => Err(ProxyError::Status {
                proxy: self.url.clone(),
                target,
                status: format!("{code} {reason}").trim_end().to_owned(),
                code,
            }),
        }
    }

    /// TCP to the proxy: each of its addresses in turn, each bounded.
    async fn open(&self) -> Result<TcpStream, ProxyError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| ProxyError::Resolve {
                proxy: self.url.clone(),
                reason: e.to_string(),
            })?
            .collect();
        let mut last = ProxyError::Resolve {
            proxy: self.url.clone(),
            reason: "the name has no addresses".to_owned(),
        };
        for addr in addrs {
            match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small TLS records and requests go out at once.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => {
                    last = ProxyError::Connect {
                        proxy: self.url.clone(),
                        reason: format!("{addr}: {e}"),
                    };
                }
                Err(_elapsed) => {
                    last = ProxyError::ConnectTimeout {
                        proxy: self.url.clone(),
                        after: self.timeout,
                    };
                }
            }
        }
        Err(last)
    }

    fn head_error(&self, target: String, e: HeadError) -> ProxyError {
        let proxy = self.url.clone();
        match e {
            HeadError::Closed => ProxyError::Closed { proxy, target },
            HeadError::Garbage(what) => ProxyError::Garbage {
                proxy,
                target,
                what,
            },
            HeadError::TooLong => ProxyError::HeadTooLong {
                proxy,
                target,
                max: MAX_HEAD,
            },
            HeadError::Io(e) => ProxyError::Io {
                proxy,
                target,
                reason: e.to_string(),
            },
        }
    }
}

/// `host:port` for the CONNECT line: the URL's host (IPv6 in brackets)
/// and its port, or the scheme's.
fn connect_target(dst: &Uri) -> Option<String> {
    let host = dst.host().filter(|h| !h.is_empty())?;
    let port = dst
        .port_u16()
        .unwrap_or(if dst.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    if host.contains(':') && !host.starts_with('[') {
        Some(format!("[{host}]:{port}"))
    } else {
        Some(format!("{host}:{port}"))
    }
}

enum HeadError {
    Closed,
    Garbage(&'static str),
    TooLong,
    Io(std::io::Error),
}

impl From<std::io::Error> for HeadError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// The response head, through its blank line and not a byte further: a
/// byte at a time, so that nothing of the tunnel's own bytes is consumed
/// (the head is a few hundred bytes once per connection).
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(if head.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Garbage("the connection closed in the middle of the response head")
            });
        }
        head.push(byte[0]);
        // Fail early on a peer that speaks something else (TLS, SSH...).
        if head.len() == 5 && head != b"HTTP/" {
            return Err(HeadError::Garbage("no HTTP/1.x status line"));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() >= MAX_HEAD {
            return Err(HeadError::TooLong);
        }
    }
}

/// The status code and reason phrase (control characters dropped, at
/// most 80 characters) of a response head.
fn status_of(head: &[u8]) -> Result<(u16, String), &'static str> {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..end])
        .map_err(|_| "a status line that is not text")?
        .trim_end_matches('\r');
    let mut parts = line.splitn(3, ' ');
    if !matches!(parts.next(), Some("HTTP/1.1" | "HTTP/1.0")) {
        return Err("no HTTP/1.x status line");
    }
    let code = parts
        .next()
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or("a status line without a status code")?;
    let reason = parts
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    Ok((code, reason))
}

type BoxError = Box<dyn Error + Send + Sync>;

/// The client's inner connector: direct (with the guarding resolver) or
/// through the site's proxy, per destination.
#[derive(Clone)]
pub(crate) struct Connector {
    direct: HttpConnector<GuardedResolver>,
    proxy: Option<Arc<ProxyRoute>>,
}

impl Connector {
    pub(crate) fn new(
        direct: HttpConnector<GuardedResolver>,
        proxy: Option<Arc<ProxyRoute>>,
    ) -> Self {
        Self { direct, proxy }
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self.proxy.clone().filter(|p| !p.bypasses(&dst)) {
            Some(route) => Box::pin(async move {
                let stream = route.tunnel(&dst).await?;
                Ok(TokioIo::new(stream))
            }),
            None => {
                let connecting = self.direct.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}

/// A site's last proxy failure, for `gateway status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyProblem {
    pub site: String,
    pub proxy: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub error: String,
}

/// Each site's last proxy failure since the daemon started, until a
/// tunnel of that site opens again.
pub fn proxy_problems() -> Vec<ProxyProblem> {
    health::list()
}

mod health {
    use std::sync::PoisonError;

    use time::{OffsetDateTime, format_description::well_known::Rfc3339};

    use super::*;

    /// By site host. Process-wide: the daemon rebuilds its sites on every
    /// reload, and what failed before a reload is still worth showing.
    static PROBLEMS: Mutex<BTreeMap<String, ProxyProblem>> = Mutex::new(BTreeMap::new());

    pub(super) fn record(site: &str, proxy: &str, e: &ProxyError) {
        let problem = ProxyProblem {
            site: site.to_owned(),
            proxy: proxy.to_owned(),
            at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            error: e.to_string(),
        };
        PROBLEMS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(site.to_owned(), problem);
    }

    pub(super) fn clear(site: &str) {
        PROBLEMS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(site);
    }

    pub(super) fn list() -> Vec<ProxyProblem> {
        PROBLEMS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_matching() {
        let n = NoProxy::new(&[
            "Registry.Site.Internal".to_owned(),
            ".corp.example".to_owned(),
            "10.0.0.5".to_owned(),
            "[fd00::5]".to_owned(),
        ]);
        for direct in [
            "registry.site.internal",
            "REGISTRY.site.internal.",
            "corp.example",
            "cdn.corp.example",
            "a.b.corp.example",
            "10.0.0.5",
            "[fd00::5]",
            "fd00::5",
            "[::ffff:10.0.0.5]",
        ] {
            assert!(n.matches(direct), "{direct}");
        }
        for proxied in [
            "other.site.internal",
            "site.internal",
            "notcorp.example",
            "corp.example.com",
            "10.0.0.6",
            "[fd00::6]",
        ] {
            assert!(!n.matches(proxied), "{proxied}");
        }
    }

    #[test]
    fn connect_targets() {
        let t = |u: &str| connect_target(&u.parse().unwrap());
        assert_eq!(
            t("https://reg.example/v2/").as_deref(),
            Some("reg.example:443")
        );
        assert_eq!(
            t("http://reg.example/v2/").as_deref(),
            Some("reg.example:80")
        );
        assert_eq!(
            t("https://reg.example:5000/").as_deref(),
            Some("reg.example:5000")
        );
        assert_eq!(
            t("https://[fd00::1]:8443/").as_deref(),
            Some("[fd00::1]:8443")
        );
        assert_eq!(t("https://10.0.0.1/").as_deref(), Some("10.0.0.1:443"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_of(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Ok((200, "Connection established".to_owned()))
        );
        assert_eq!(status_of(b"HTTP/1.0 407\r\n\r\n"), Ok((407, String::new())));
        assert_eq!(
            status_of(b"HTTP/1.1 403 Forbidden\x07 here\r\nX: y\r\n\r\n"),
            Ok((403, "Forbidden here".to_owned()))
        );
        let bad: [&[u8]; 5] = [
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 999 Nope\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ];
        for bad in bad {
            assert!(status_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retryable_errors() {
        let p = || "http://proxy:3128".to_owned();
        let t = || "reg:443".to_owned();
        let status = |code| ProxyError::Status {
            proxy: p(),
            target: t(),
            status: format!("{code}"),
            code,
        };
        assert!(status(502).retryable());
        assert!(status(503).retryable());
        assert!(!status(403).retryable());
        assert!(!ProxyError::BadCredentials { proxy: p() }.retryable());
        assert!(
            ProxyError::Closed {
                proxy: p(),
                target: t()
            }
            .retryable()
        );
        assert!(
            !ProxyError::HeadTimeout {
                proxy: p(),
                target: t(),
                after: Duration::from_secs(1)
            }
            .retryable()
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.password");
        std::fs::write(&file, "hunter2-proxy\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = UpstreamProxy {
            url: "http://proxy.corp.example:3128".to_owned(),
            username: Some("gateway".to_owned()),
            password_file: Some(file),
            no_proxy: Vec::new(),
        };
        let route = ProxyRoute::load("reg.example", &config, Duration::from_secs(1)).unwrap();
        let debug = format!("{route:?}");
        // base64("gateway:hunter2-proxy") starts with Z2F0ZXdheTpo.
        assert!(
            !debug.contains("hunter2") && !debug.contains("Z2F0ZXdhe"),
            "{debug}"
        );
        assert!(debug.contains("http://proxy.corp.example:3128"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }
}
