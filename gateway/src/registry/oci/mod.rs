//! OCI distribution pull-through for a `kind: oci` site.
//!
//! `/v2/` is answered here (devices need no credentials); manifests, tag
//! lists and referrers are mutable documents cached by name with a TTL and
//! served stale when upstream fails; blobs and manifests by digest are
//! immutable, verified before they are stored, and served from the cache
//! for good. Upstream is reached by the site's configured name with the
//! site's credentials, never at an address a device chose. The Referrers
//! API is served even for an upstream without it, from the referrers tag
//! schema (`referrers.rs`).

mod blob;
mod document;
mod range;
mod referrers;
mod response;
mod route;
pub mod seed;

use std::{pin::Pin, sync::Arc, time::Duration};

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::{Outcome, SiteService};
use crate::{cache::Cache, upstream::Upstream};
use route::Route;

pub struct OciSite {
    /// The site's host name, as configured (lowercase).
    pub host: String,
    pub upstream: Upstream,
    pub cache: Cache,
    pub tag_ttl: Duration,
}

impl SiteService for OciSite {
    fn handle(&self, req: Request<Incoming>) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        // Pulls carry no body worth reading; what matters is in the head.
        let (parts, _body) = req.into_parts();
        Box::pin(self.route(parts))
    }
}

impl OciSite {
    pub fn new(host: &str, upstream: Upstream, cache: Cache, tag_ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            host: host.to_ascii_lowercase(),
            upstream,
            cache,
            tag_ttl,
        })
    }

    /// Answers one request, given its head.
    pub async fn route(&self, req: http::request::Parts) -> Outcome {
        let method = req.method.clone();
        if method != Method::GET && method != Method::HEAD {
            return response::failed(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "device",
                format!(
                    "{method} is not served: devices pull through the gateway, they do not push"
                ),
            );
        }
        let query = match upstream_query(req.uri.query(), &self.host) {
            Ok(q) => q,
            Err(detail) => {
                return response::failed(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "device", detail);
            }
        };
        let headers = &req.headers;
        let mut outcome = match route::route(req.uri.path()) {
            Route::Base => {
                let mut resp = http::Response::new(crate::proxy::body::full("{}"));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Outcome::new(resp)
            }
            Route::Manifest { name, reference } => {
                document::manifest(self, &method, &name, &reference, &query).await
            }
            Route::Tags { name } => document::tags(self, &method, &name, &query).await,
            Route::Referrers { name, digest } => {
                referrers::referrers(self, &method, &name, &digest, &query).await
            }
            Route::Blob { name, digest } => {
                blob::blob(self, &method, &name, &digest, headers).await
            }
            Route::Upload { .. } => response::failed(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "device",
                "uploads are not accepted through the gateway",
            ),
            Route::Invalid(code) => response::failed(
                StatusCode::BAD_REQUEST,
                code,
                "device",
                format!("{} is not a valid distribution path", req.uri.path()),
            ),
            Route::NotFound => response::failed(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "device",
                format!("{} is not a distribution API path", req.uri.path()),
            ),
        };
        response::api_version(&mut outcome.response);
        outcome
    }

    fn scope(name: &str) -> String {
        format!("repository:{name}:pull")
    }
}

/// The query to send upstream: containerd's `ns` parameter (the registry a
/// mirror request is for) must name this site and is not forwarded; the
/// rest is passed on as it came.
fn upstream_query(query: Option<&str>, host: &str) -> Result<String, String> {
    let Some(query) = query else {
        return Ok(String::new());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "ns" {
            if !value.eq_ignore_ascii_case(host) {
                return Err(format!("ns={value} names another registry than {host}"));
            }
            continue;
        }
        kept.push(pair);
    }
    Ok(if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_ns_is_checked_and_stripped() {
        let h = "registry.example.test";
        assert_eq!(upstream_query(None, h), Ok(String::new()));
        assert_eq!(
            upstream_query(Some("ns=registry.example.test"), h),
            Ok(String::new())
        );
        assert_eq!(
            upstream_query(Some("ns=Registry.Example.Test&artifactType=x"), h),
            Ok("?artifactType=x".into())
        );
        assert!(upstream_query(Some("ns=docker.io"), h).is_err());
        assert_eq!(upstream_query(Some("n=1&&m=2"), h), Ok("?n=1&m=2".into()));
    }
}
