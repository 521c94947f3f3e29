//! `kind: helm` sites. PLACEHOLDER: answers 501 until the handler lands.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{Outcome, SiteService};
use crate::{cache::Cache, config::Site, proxy::body, upstream::Upstream};

pub struct HelmSite {
    host: String,
}

impl HelmSite {
    pub fn new(site: &Site, _upstream: Upstream, _cache: Cache) -> Arc<Self> {
        Arc::new(Self {
            host: site.host.to_ascii_lowercase(),
        })
    }
}

impl SiteService for HelmSite {
    fn handle(
        &self,
        _req: Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(async move {
            let mut resp = Response::new(body::full(format!(
                "{}: kind helm is not served yet\n",
                self.host
            )));
            *resp.status_mut() = StatusCode::NOT_IMPLEMENTED;
            Outcome::new(resp)
        })
    }
}

/// `gateway cache seed` for `chart`@`version` on `site`: fetched, verified and pinned.
/// PLACEHOLDER until the handler lands.
pub async fn seed(
    site: &HelmSite,
    chart: &str,
    version: &str,
    _progress: &(dyn Fn(String) + Send + Sync),
) -> anyhow::Result<crate::registry::oci::seed::SeedReport> {
    let _ = (chart, version);
    anyhow::bail!(
        "{}: seeding kind helm sites is not implemented yet",
        site.host
    )
}
