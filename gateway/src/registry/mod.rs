//! Protocol handlers for the configured sites, by host.

pub mod files;
mod fill;
pub mod helm;
pub mod oci;
mod range;

/// A held blob read into memory (the shared store's uploads use it).
pub(crate) use fill::read_blob as read_whole;

use std::{collections::HashMap, sync::Arc};

use http::{Request, Response};
use hyper::body::Incoming;

use crate::{
    audit::{CacheStatus, Fault},
    proxy::body::Body,
};

/// Seconds since the Unix epoch (0 for a clock before it): what cache
/// entries record as `fetched_at`.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Seconds since `fetched_at` (negative when the clock went back).
pub(crate) fn age_secs(fetched_at: i64) -> i64 {
    unix_now().saturating_sub(fetched_at)
}

/// What a site handler answers, with what the audit record needs.
pub struct Outcome {
    pub response: Response<Body>,
    /// What the cache did; `None` when no content was involved (e.g.
    /// `/v2/`).
    pub cache: Option<CacheStatus>,
    pub upstream_ms: Option<u64>,
    /// Where a fill's bytes came from when not upstream (the audit
    /// record's `source`).
    pub source: Option<crate::audit::Source>,
    /// Whose fault it was when the request failed.
    pub fault: Option<Fault>,
    pub detail: Option<String>,
    /// The audit record's `reason`, for a refusal that has one (a
    /// repository outside the device's group).
    pub reason: Option<&'static str>,
}

impl Outcome {
    pub fn new(response: Response<Body>) -> Self {
        Self {
            response,
            cache: None,
            upstream_ms: None,
            source: None,
            fault: None,
            detail: None,
            reason: None,
        }
    }
}

/// A request extension: the request came over plain HTTP (port 80, a site
/// with `http: true`), not TLS. Handlers that write absolute URLs (a helm
/// index) use it for the scheme.
#[derive(Clone, Copy, Debug)]
pub struct PlainHttp;

/// A configured site's handler.
pub trait SiteService: Send + Sync {
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send + '_>>;
}

/// Handlers of the configured sites, by lowercase host.
#[derive(Default)]
pub struct Sites {
    by_host: HashMap<String, Served>,
}

struct Served {
    service: Arc<dyn SiteService>,
    /// The site's `http: true`: also over plain HTTP.
    plain_http: bool,
}

impl Sites {
    pub fn insert(&mut self, host: &str, service: Arc<dyn SiteService>, plain_http: bool) {
        self.by_host.insert(
            host.to_ascii_lowercase(),
            Served {
                service,
                plain_http,
            },
        );
    }

    pub fn get(&self, host: &str) -> Option<Arc<dyn SiteService>> {
        self.by_host.get(host).map(|s| s.service.clone())
    }

    /// Whether `host` is served over plain HTTP too.
    pub fn plain_http(&self, host: &str) -> bool {
        self.by_host.get(host).is_some_and(|s| s.plain_http)
    }

    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}
