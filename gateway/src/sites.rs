//! Building the serving side from the configuration: the content (cache
//! and one handler per site) and the site CA's TLS acceptor.

use std::{collections::HashMap, sync::Arc};

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;

use crate::{
    cache::Cache,
    config::{Config, SiteKind},
    registry::{SiteService, Sites, files::FilesSite, helm::HelmSite, oci::OciSite},
    tls::{self, LeafResolver, SiteCa},
    upstream::Upstream,
};

/// The cache and the site handlers that fill it.
pub struct Content {
    pub cache: Cache,
    pub handlers: Handlers,
}

/// Each site's handler by kind, keyed by the site's lowercase host.
#[derive(Default, Clone)]
pub struct Handlers {
    pub oci: HashMap<String, Arc<OciSite>>,
    pub helm: HashMap<String, Arc<HelmSite>>,
    pub files: HashMap<String, Arc<FilesSite>>,
}

pub struct Serving {
    pub sites: Sites,
    pub tls: Option<TlsAcceptor>,
    pub content: Option<Content>,
}

/// Opens the cache and builds the site handlers (no TLS: also what the
/// `cache` subcommands use when no daemon runs).
pub async fn build_content(config: &Config) -> anyhow::Result<Content> {
    let cache = Cache::open_with(&config.cache.dir, config.cache.limits())
        .await
        .with_context(|| format!("opening the cache in {}", config.cache.dir.display()))?;
    content_with(config, cache)
}

/// The site handlers on an open cache (a config reload keeps the cache
/// and builds these anew: upstreams, credentials, tag TTLs).
fn content_with(config: &Config, cache: Cache) -> anyhow::Result<Content> {
    let mut oci = HashMap::new();
    let mut helm = HashMap::new();
    let mut files = HashMap::new();
    for site in &config.sites {
        let upstream = Upstream::configured(
            site,
            &config.passthrough_addresses(),
            &config.upstream,
            config.upstream_proxy_for(site),
        )
        .with_context(|| format!("setting up the upstream of site {}", site.host))?;
        match site.kind {
            SiteKind::Oci => {
                oci.insert(
                    site.host.to_ascii_lowercase(),
                    OciSite::with_stale_while_revalidate(
                        &site.host,
                        upstream,
                        cache.clone(),
                        config.cache.tag_ttl,
                        config.cache.stale_while_revalidate,
                    ),
                );
            }
            SiteKind::Helm => {
                // The upstream's origin and each chart host get a client of
                // their own, built like the site's.
                let build = |copy: &crate::config::Site| {
                    Upstream::configured(
                        copy,
                        &config.passthrough_addresses(),
                        &config.upstream,
                        config.upstream_proxy_for(site),
                    )
                };
                let handler = HelmSite::new(site, upstream, cache.clone(), build)
                    .with_context(|| format!("setting up the chart hosts of site {}", site.host))?;
                helm.insert(site.host.to_ascii_lowercase(), handler);
            }
            SiteKind::Files => {
                files.insert(
                    site.host.to_ascii_lowercase(),
                    FilesSite::new(site, upstream, cache.clone()),
                );
            }
        }
    }
    Ok(Content {
        cache,
        handlers: Handlers { oci, helm, files },
    })
}

/// Loads the CA, opens the cache and builds the site handlers. With no
/// sites configured nothing is loaded and every non-manager connection is
/// refused.
///
/// The daemon's build: the shared store (`cache.store`) is put behind the
/// cache here and probed in the background (the `cache` subcommands work
/// on the local cache only).
pub async fn build(config: &Config) -> anyhow::Result<Serving> {
    let serving = build_with(config, None).await?;
    if let (Some(cfg), Some(content)) = (&config.cache.store, &serving.content) {
        let store = crate::store::SharedStore::open(cfg)?;
        tracing::info!(store = ?store, "shared cache tier configured");
        store.start();
        content.cache.set_shared(Some(store));
    }
    Ok(serving)
}

/// [`build`] for a config reload: the CA and site handlers anew, on the
/// daemon's open cache when it has one.
pub async fn build_with(config: &Config, cache: Option<Cache>) -> anyhow::Result<Serving> {
    if config.sites.is_empty() {
        return Ok(Serving {
            sites: Sites::default(),
            tls: None,
            content: None,
        });
    }
    let ca = SiteCa::load(&config.tls.ca_dir).with_context(|| {
        format!(
            "loading the site CA from {} (create it with `gateway ca init --config FILE`)",
            config.tls.ca_dir.display()
        )
    })?;
    let hosts = config.served_hosts();
    let resolver = Arc::new(LeafResolver::new(
        Arc::new(ca),
        hosts,
        config.tls.leaf_validity,
        config.tls.leaf_cache,
    ));
    let server_config = tls::server_config(resolver)?;
    let content = match cache {
        Some(cache) => content_with(config, cache)?,
        None => build_content(config).await?,
    };
    let mut sites = Sites::default();
    for site in &config.sites {
        let host = site.host.to_ascii_lowercase();
        let service: Option<Arc<dyn SiteService>> = match site.kind {
            SiteKind::Oci => content.handlers.oci.get(&host).map(|s| s.clone() as _),
            SiteKind::Helm => content.handlers.helm.get(&host).map(|s| s.clone() as _),
            SiteKind::Files => content.handlers.files.get(&host).map(|s| s.clone() as _),
        };
        let service =
            service.with_context(|| format!("no handler was built for site {}", site.host))?;
        // A helm site's chart hosts are served by the same handler, which
        // tells them apart by the request's host.
        for served in site.served_hosts() {
            sites.insert(&served, service.clone(), site.http);
        }
    }
    Ok(Serving {
        sites,
        tls: Some(TlsAcceptor::from(server_config)),
        content: Some(content),
    })
}
