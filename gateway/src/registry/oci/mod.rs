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
#[doc(hidden)]
pub mod fuzzing;
pub mod mirror;
mod mirror_content;
#[cfg(test)]
mod mirror_tests;
mod query;
mod referrers;
mod response;
mod route;
pub mod seed;
mod shared;
#[cfg(test)]
mod shared_tests;
mod swr;
#[cfg(test)]
mod tests;
mod vouch;

use std::{
    pin::Pin,
    sync::{Arc, Weak},
    time::Duration,
};

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::{Outcome, SiteService};
use crate::{audit::Fault, cache::Cache, policy::groups::Membership, upstream::Upstream};
use query::Query;
use route::Route;

pub struct OciSite {
    /// The site's host name, as configured (lowercase).
    pub host: String,
    pub upstream: Upstream,
    pub cache: Cache,
    pub tag_ttl: Duration,
    /// `cache.stale_while_revalidate`: past `tag_ttl` by less than this, a
    /// tag is served at once and revalidated in the background (swr.rs).
    pub stale_while_revalidate: Duration,
    /// This site, for the background revalidations it starts.
    me: Weak<OciSite>,
    revalidations: swr::Revalidations,
}

impl SiteService for OciSite {
    fn handle(&self, req: Request<Incoming>) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        // Pulls carry no body worth reading; what matters is in the head.
        let (parts, _body) = req.into_parts();
        Box::pin(self.route(parts))
    }
}

impl OciSite {
    /// A site that revalidates tags before answering once `tag_ttl` has
    /// passed.
    pub fn new(host: &str, upstream: Upstream, cache: Cache, tag_ttl: Duration) -> Arc<Self> {
        Self::with_stale_while_revalidate(host, upstream, cache, tag_ttl, Duration::ZERO)
    }

    /// A site that serves a tag past `tag_ttl` by less than `window` at
    /// once and revalidates it in the background.
    pub fn with_stale_while_revalidate(
        host: &str,
        upstream: Upstream,
        cache: Cache,
        tag_ttl: Duration,
        window: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            host: host.to_ascii_lowercase(),
            upstream,
            cache,
            tag_ttl,
            stale_while_revalidate: window,
            me: me.clone(),
            revalidations: swr::Revalidations::default(),
        })
    }

    /// Answers one request, given its head.
    pub async fn route(&self, req: http::request::Parts) -> Outcome {
        let method = req.method.clone();
        if method != Method::GET && method != Method::HEAD {
            return response::failed(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                Fault::Device,
                format!(
                    "{method} is not served: devices pull through the gateway, they do not push"
                ),
            );
        }
        let query = match Query::parse(req.uri.query(), &self.host) {
            Ok(q) => q,
            Err(detail) if detail.starts_with("ns=") => {
                return response::failed(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    Fault::Device,
                    detail,
                );
            }
            Err(detail) => {
                return response::failed(
                    StatusCode::BAD_REQUEST,
                    "PAGINATION_NUMBER_INVALID",
                    Fault::Device,
                    detail,
                );
            }
        };
        let headers = &req.headers;
        let route = route::route(req.uri.path());
        // Set by the proxy when `devices.groups` is configured: the
        // device's group and its repository patterns on this site.
        let member = req.extensions.get::<Membership>();
        if let (Some(m), Some(name)) = (member, route.repository())
            && !m.allows(name)
        {
            let mut o = response::denied(&m.group, name);
            response::api_version(&mut o.response);
            return o;
        }
        let mut outcome = match route {
            Route::Base => {
                let mut resp = http::Response::new(crate::proxy::body::full("{}"));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Outcome::new(resp)
            }
            Route::Manifest { name, reference } => {
                document::manifest(self, &method, &name, &reference).await
            }
            Route::Tags { name } => document::tags(self, &method, &name, &query).await,
            Route::Referrers { name, digest } => {
                referrers::referrers(self, &method, &name, &digest, &query.referrers_query()).await
            }
            Route::Blob { name, digest } => {
                blob::blob(self, &method, &name, &digest, headers, member.is_some()).await
            }
            Route::Upload { .. } => response::failed(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                Fault::Device,
                "uploads are not accepted through the gateway",
            ),
            Route::Invalid(code) => response::failed(
                StatusCode::BAD_REQUEST,
                code,
                Fault::Device,
                format!("{} is not a valid distribution path", req.uri.path()),
            ),
            Route::NotFound => response::failed(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                Fault::Device,
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
