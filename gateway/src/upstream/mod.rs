//! The upstream side: one HTTP client per configured site, which fills
//! cache misses from the site's registry with credentials only the
//! gateway holds.
//!
//! [`Upstream::send`] takes a GET or HEAD relative to the site's upstream
//! URL and returns the final response of any status (the caller decides
//! what a 404 or 429 means). Around the bare request it:
//!
//! - answers one `401` with a Bearer token from the challenge's realm
//!   (the "token dance", cached per realm, service and scope) or with
//!   Basic credentials (`auth.rs`);
//! - follows up to [`MAX_REDIRECTS`] redirects, sending `Authorization`
//!   only to the configured origin, never to a CDN (`redirect.rs`);
//! - goes through the site's HTTP proxy (`upstream_proxy`) with a
//!   CONNECT tunnel per connection, TLS to the origin inside it
//!   (`proxy.rs`);
//! - refuses redirect and token-realm targets on loopback, private,
//!   link-local and passthrough addresses, literal or resolved, unless the
//!   site names the host in `redirect_hosts` (`targets.rs`);
//! - retries a request that failed before any response, or got
//!   502/503/504, twice with a short pause; never 429, never once a body
//!   was read;
//! - bounds the wait for response headers ([`Timeouts`]); the caller
//!   bounds body stalls and crawls with [`Upstream::body_stream`]
//!   (an idle timeout and a progress floor, [`BodyRate`]).
//!
//! Passwords and tokens never reach logs or errors ([`Secret`], sensitive
//! header values, redacted URLs).

mod auth;
mod body;
pub mod challenge;
mod client;
mod credentials;
mod error;
mod proxy;
mod rate;
mod redirect;
mod targets;

pub use body::{BodyStream, DEFAULT_BODY_IDLE, body_stream};
pub use client::{ResponseMeta, Timeouts, Upstream, UpstreamRequest};
pub use credentials::{CredentialsError, Secret, UpstreamCredentials, read_password_file};
pub use error::{Fault, UpstreamError, Waiting};
pub use proxy::{ProxyError, ProxyProblem, proxy_problems};
pub use rate::{BodyRate, DEFAULT_BODY_RATE_WINDOW, DEFAULT_MIN_BODY_RATE};
pub use redirect::{MAX_REDIRECTS, redact};
// A helm index's chart URLs are references resolved like `Location`.
pub(crate) use redirect::{Origin, resolve as resolve_reference};

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests;
