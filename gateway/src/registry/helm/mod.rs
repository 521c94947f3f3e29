//! `kind: helm` sites: a Helm chart repository through the cache.
//!
//! `index.yaml` (at the upstream URL's path, which devices ask for on the
//! site's host) is cached, served while younger than the site's `ttl`,
//! then revalidated with a conditional GET, and served stale when
//! upstream is down or sends a malformed index (`refresh.rs`). Its chart
//! URLs are what the handler serves, on the site's host and its chart
//! hosts alike (`index.rs`): each chart is fetched once, verified against
//! the digest the index gives for it before a byte reaches a device, and
//! kept for good by that digest; a `.prov` beside a listed chart is
//! fetched once and kept (`chart.rs`). Anything else is a 404.

mod chart;
mod index;
mod refresh;
pub mod seed;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::{Outcome, PlainHttp, SiteService};
use crate::{
    audit::Fault,
    cache::Cache,
    config::Site,
    proxy::body,
    upstream::{Upstream, UpstreamError},
};
use index::{Index, Repo, Source};

pub use seed::seed;

pub struct HelmSite {
    /// The site's host, lowercase.
    pub host: String,
    repo: Repo,
    /// `index.yaml`'s path, as devices and upstream name it.
    index_path: String,
    /// The configured upstream: `index.yaml` is `/index.yaml` on it.
    upstream: Upstream,
    /// The upstream's origin, for chart URLs on it or on the site's host
    /// (paths from the root).
    origin: Upstream,
    /// One client per chart host (its own origin, no credentials).
    chart_hosts: HashMap<String, Upstream>,
    cache: Cache,
    ttl: Duration,
    /// The index last parsed (parsing a large one is costly).
    parsed: Mutex<Option<Arc<Index>>>,
    /// One refresh of the index at a time: devices that find it stale
    /// together wait for one upstream fetch.
    refreshing: tokio::sync::Mutex<()>,
}

impl HelmSite {
    /// `upstream` is the site's configured one; `build` makes the clients
    /// of the upstream's origin and of the chart hosts from copies of the
    /// site, so that the SSRF guard, proxy and trust anchors apply alike.
    pub fn new(
        site: &Site,
        upstream: Upstream,
        cache: Cache,
        build: impl Fn(&Site) -> Result<Upstream, UpstreamError>,
    ) -> Result<Arc<Self>, UpstreamError> {
        let base = site.upstream_url();
        let invalid = || UpstreamError::InvalidTarget {
            target: base.clone(),
        };
        let index_url: http::Uri = format!("{base}/index.yaml")
            .parse()
            .map_err(|_| invalid())?;
        let (Some(scheme), Some(authority)) = (index_url.scheme_str(), index_url.authority())
        else {
            return Err(invalid());
        };
        let origin = build(&Site {
            upstream: Some(format!("{scheme}://{authority}")),
            ..site.clone()
        })?;
        let mut chart_hosts = HashMap::new();
        for host in site.served_hosts().skip(1) {
            // Credentials go to the repository's own origin only, as Helm
            // sends them (without --pass-credentials).
            let client = build(&Site {
                upstream: Some(format!("https://{host}")),
                credentials: None,
                // A chart host is reached directly, never as a parent.
                client_cert: None,
                client_key: None,
                ..site.clone()
            })?;
            chart_hosts.insert(host, client);
        }
        let host = site.host.trim_end_matches('.').to_ascii_lowercase();
        Ok(Arc::new(Self {
            repo: Repo {
                site_host: host.clone(),
                chart_hosts: chart_hosts.keys().cloned().collect(),
                index_url: index_url.clone(),
            },
            host,
            index_path: index_url.path().to_owned(),
            upstream,
            origin,
            chart_hosts,
            cache,
            ttl: site.ttl_or_default(),
            parsed: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The client that fetches from `source`.
    fn client(&self, source: &Source) -> Option<&Upstream> {
        match source {
            Source::Origin => Some(&self.origin),
            Source::ChartHost(h) => self.chart_hosts.get(h),
        }
    }

    fn parsed(&self) -> Option<Arc<Index>> {
        self.parsed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_parsed(&self, index: Arc<Index>) {
        *self.parsed.lock().unwrap_or_else(PoisonError::into_inner) = Some(index);
    }

    /// Answers one request for `host` (the site's or a chart host).
    async fn route(&self, host: String, req: http::request::Parts) -> Outcome {
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut o = failed(
                StatusCode::METHOD_NOT_ALLOWED,
                Fault::Device,
                format!(
                    "{} is not served: a chart repository is read-only",
                    req.method
                ),
            );
            o.response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return o;
        }
        let plain_http = req.extensions.get::<PlainHttp>().is_some();
        if host == self.host && req.uri.path() == self.index_path {
            return refresh::serve_index(self, &req.method, plain_http).await;
        }
        let path = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_owned(), |p| p.as_str().to_owned());
        let range = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        chart::serve(self, &req.method, &host, &path, range).await
    }
}

impl SiteService for HelmSite {
    fn handle(&self, req: Request<Incoming>) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        // The http layer routed by this host: the site's or a chart host.
        let host = crate::proxy::http::request_host(&req).unwrap_or_default();
        let (parts, _body) = req.into_parts();
        Box::pin(self.route(host, parts))
    }
}

/// An error answer with its audit fields: the detail is the body too.
fn failed(status: StatusCode, fault: Fault, detail: impl Into<String>) -> Outcome {
    let detail = detail.into();
    let mut o = Outcome::new(text(status, &detail));
    o.fault = Some(fault);
    o.detail = Some(detail);
    o
}

/// Upstream's answer passed on (a 404), with no fault: nothing failed.
fn text_outcome(status: StatusCode, message: &str) -> Outcome {
    let mut o = Outcome::new(text(status, message));
    o.detail = Some(message.to_owned());
    o
}

fn text(status: StatusCode, message: &str) -> Response<body::Body> {
    let mut resp = Response::new(body::full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
