//! The upstream client's error type.
//!
//! Every variant says whose fault it was ([`Fault`], the audit record's
//! `fault` field) and whether the same request may succeed later
//! ([`UpstreamError::retryable`]). URLs in messages are redacted
//! ([`super::redirect::redact`]): no query string (CDN redirect targets
//! carry signatures there) and no user-info. Passwords and tokens never
//! reach an error: they are held as [`super::Secret`] or sensitive header
//! values and no variant carries one.

use std::{fmt, time::Duration};

use http::{Method, StatusCode};
use thiserror::Error;

use super::{credentials::CredentialsError, proxy::ProxyError};

/// Who was at fault when a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The upstream registry, its token service or a CDN it redirected to.
    Upstream,
    /// The gateway itself: its configuration or a caller's bug.
    Internal,
}

impl Fault {
    /// The audit record's spelling: `upstream` or `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gateway was waiting for when a timeout struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The status line and headers, after the request was sent.
    Headers,
    /// The next bytes of a response body.
    Body,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Headers => "response headers",
            Self::Body => "body bytes",
        })
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Internal (configuration); not retryable.
    #[error(
        "site {site}: upstream `{url}` is not usable ({reason}); \
         check sites[].upstream, e.g. https://registry.example.com"
    )]
    InvalidUpstreamUrl {
        site: String,
        url: String,
        reason: &'static str,
    },
    /// Internal (configuration or secrets on disk); not retryable.
    #[error("site {site}: cannot load the upstream credentials")]
    Credentials {
        site: String,
        #[source]
        source: CredentialsError,
    },
    /// Internal (the upstream proxy's password file); not retryable.
    #[error("site {site}: cannot load the password for the upstream proxy {proxy}")]
    ProxyCredentials {
        site: String,
        proxy: String,
        #[source]
        source: CredentialsError,
    },
    /// Internal (configuration: `check-config` refuses it first); not
    /// retryable.
    #[error("site {site}: upstream_proxy is not usable: {reason}")]
    ProxyConfig { site: String, reason: String },
    /// Internal (trust anchors); not retryable.
    #[error("site {site}: cannot build the TLS client configuration")]
    Tls {
        site: String,
        #[source]
        source: crate::tls::TlsError,
    },
    /// Internal (a caller's bug); not retryable.
    #[error("method {method} is never sent upstream: only GET and HEAD are")]
    MethodNotAllowed { method: Method },
    /// Internal (a caller's bug); not retryable.
    #[error("request target `{target}` is not a path and query starting with `/`")]
    InvalidTarget { target: String },
    /// Upstream: connect, TLS handshake, or the connection failed before
    /// a response arrived (already retried where safe). Retryable unless
    /// TLS rejected the peer (see [`UpstreamError::retryable`]).
    #[error("request to {url} failed before a response (connect, TLS or reset)")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Upstream: the site's proxy refused or failed the CONNECT tunnel
    /// (already retried where [`ProxyError::retryable`] allows). The
    /// message carries the proxy's (no `#[source]`: the audit record's
    /// text is this Display alone).
    #[error("request to {url} failed: {error}")]
    Proxy { url: String, error: ProxyError },
    /// Upstream stalled; retryable.
    #[error("no {waiting} from {url} within {after:?}")]
    Timeout {
        url: String,
        waiting: Waiting,
        after: Duration,
    },
    /// Upstream sent a body too slowly (below `upstream.min_body_rate`
    /// over a window, see `rate.rs`); not retryable within the request:
    /// a peer that crawls once will likely crawl again, and the device
    /// may retry.
    #[error(
        "upstream sent {bytes} bytes in the last {} s, below the floor of {floor} B/s \
         (upstream.min_body_rate), reading {url}",
        window.as_secs_f64()
    )]
    TooSlow {
        url: String,
        bytes: u64,
        window: Duration,
        floor: u64,
    },
    /// Upstream broke the connection while sending the body; retryable.
    #[error("reading the response body from {url} failed")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    /// Upstream (a redirect loop or chain); not retryable.
    #[error("more than {max} redirects, the last one from {url}")]
    TooManyRedirects { url: String, max: usize },
    /// Upstream; not retryable.
    #[error("{status} redirect from {url} has no usable http(s) Location")]
    BadRedirect { url: String, status: StatusCode },
    /// Upstream (a downgrade the gateway refuses); not retryable.
    #[error("redirect from {from} to {to} refused: it leaves https for plain http")]
    InsecureRedirect { from: String, to: String },
    /// Upstream (a redirect or token realm leading to an address the
    /// gateway refuses: loopback, private, link-local, a passthrough
    /// service...); not retryable.
    #[error(
        "{what} {url} refused: {host} {reason}; \
         if the site needs it, list `{host}` in the site's redirect_hosts"
    )]
    RefusedTarget {
        /// `redirect to` or `token realm`.
        what: &'static str,
        url: String,
        host: String,
        reason: String,
    },
    /// Upstream (its Bearer challenge); not retryable.
    #[error("token realm `{realm}` named by {url} is not usable: {reason}")]
    BadRealm {
        url: String,
        realm: String,
        reason: &'static str,
    },
    /// Upstream token service; retryable on 5xx and 429.
    #[error("token service {realm} answered {status}")]
    TokenStatus { realm: String, status: StatusCode },
    /// Upstream token service; not retryable.
    #[error("token service {realm} sent no usable token: {reason}")]
    BadToken { realm: String, reason: &'static str },
    /// Upstream token service; not retryable. serde_json's syntax errors
    /// name a line and column, never the content.
    #[error("token service {realm} sent a response that is not JSON")]
    TokenJson {
        realm: String,
        #[source]
        source: serde_json::Error,
    },
}

impl UpstreamError {
    /// Whose fault the failure was.
    pub fn fault(&self) -> Fault {
        match self {
            Self::InvalidUpstreamUrl { .. }
            | Self::Credentials { .. }
            | Self::ProxyCredentials { .. }
            | Self::ProxyConfig { .. }
            | Self::Tls { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidTarget { .. } => Fault::Internal,
            Self::Request { .. }
            | Self::Proxy { .. }
            | Self::Timeout { .. }
            | Self::TooSlow { .. }
            | Self::Body { .. }
            | Self::TooManyRedirects { .. }
            | Self::BadRedirect { .. }
            | Self::InsecureRedirect { .. }
            | Self::RefusedTarget { .. }
            | Self::BadRealm { .. }
            | Self::TokenStatus { .. }
            | Self::BadToken { .. }
            | Self::TokenJson { .. } => Fault::Upstream,
        }
    }

    /// Whether the same request may succeed if tried again later (a
    /// caller serving stale content may still prefer not to wait).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Request { source, .. } => !is_tls_rejection(source),
            Self::Proxy { error, .. } => error.retryable(),
            Self::Timeout { .. } | Self::Body { .. } => true,
            Self::TokenStatus { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::InvalidUpstreamUrl { .. }
            | Self::Credentials { .. }
            | Self::ProxyCredentials { .. }
            | Self::ProxyConfig { .. }
            | Self::Tls { .. }
            | Self::MethodNotAllowed { .. }
            | Self::InvalidTarget { .. }
            | Self::TooSlow { .. }
            | Self::TooManyRedirects { .. }
            | Self::BadRedirect { .. }
            | Self::InsecureRedirect { .. }
            | Self::RefusedTarget { .. }
            | Self::BadRealm { .. }
            | Self::BadToken { .. }
            | Self::TokenJson { .. } => false,
        }
    }
}

/// Whether rustls failed the handshake (unknown issuer, wrong name,
/// expired certificate...): trying again will not help.
///
/// hyper-rustls wraps the `rustls::Error` in an `io::Error` (itself in
/// another), and `io::Error::source` skips the error it wraps, so the
/// chain is walked through `get_ref` at each `io::Error`.
pub(crate) fn is_tls_rejection(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// The `T` somewhere in a client error's source chain (the resolver's or
/// the proxy connector's error, wrapped by the connector and the client).
/// Walks `io::Error`s through `get_ref`, whose `source` skips what they
/// wrap.
pub(crate) fn find_in<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
