//! Applying a reload to the running daemon: the pieces it swaps and the
//! order it swaps them in.
//!
//! Order: everything that can fail on the new file's content is built
//! first (the file loaded and validated, the diff checked, the CA and site
//! handlers built) while nothing has changed. Then the proxy, the DNS
//! zone, the site handlers and the cache limits are swapped, then the
//! kernel's maps are updated in place (new entries before stale ones go,
//! never cleared and refilled). In between, a port the proxy no longer
//! serves but the kernel still redirects is refused by the proxy's new
//! policy, and a port the kernel does not redirect yet is dropped: no
//! moment lets anything through that either configuration would refuse.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;

use super::{Refusal, Shared, diff};
use crate::{
    audit::{Audit, Event, Record},
    cache::Cache,
    config::Config,
    control::server::{Control, DaemonInfo},
    dns::Responder,
    ebpf::Maps,
    policy::Policy,
    proxy::{Proxy, http::HttpContext, limits::Limits},
    sites,
};

/// What a reload replaces or updates, held by the daemon.
pub struct Live {
    /// The file the daemon was started with (canonical when it could be).
    pub path: PathBuf,
    pub config: Arc<Shared<Config>>,
    pub proxy: Arc<Shared<Proxy>>,
    /// Present when `dns.enabled` (which a reload cannot change).
    pub dns: Option<Arc<Responder>>,
    /// Present when sites were configured at start.
    pub cache: Option<Cache>,
    pub control: Arc<Control>,
    pub maps: Arc<Mutex<Maps>>,
    pub limits: Arc<Limits>,
    pub audit: Audit,
    pub generation: Arc<AtomicU64>,
}

/// What set off a reload, for the audit record.
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    /// SIGHUP (`systemctl reload`).
    Signal,
    /// `gateway reload` over the control socket.
    Control,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "sighup",
            Self::Control => "control",
        }
    }
}

/// The proxy a config asks for: built the same way at start and on reload.
/// `limits` (the connection caps and their counts) carry over.
pub fn build_proxy(
    config: &Config,
    serving: sites::Serving,
    limits: Arc<Limits>,
    dns: Option<Arc<Responder>>,
    audit: &Audit,
) -> Proxy {
    let policy = Policy::new(config);
    let groups = policy.groups.clone();
    Proxy {
        policy,
        limits,
        refused: std::sync::Mutex::new(crate::dns::Budget::new(10, Duration::from_secs(2))),
        idle_timeout: Duration::from_secs(config.proxy.idle_timeout_secs),
        passthrough_idle: Duration::from_secs(config.proxy.passthrough_idle_secs),
        dns,
        audit: audit.clone(),
        connect_timeout: Duration::from_secs(config.proxy.connect_timeout_secs),
        inspect_timeout: Duration::from_secs(config.proxy.first_bytes_timeout_secs),
        tls: serving.tls,
        http: Arc::new(HttpContext {
            sites: Arc::new(serving.sites),
            audit: audit.clone(),
            groups,
        }),
    }
}

/// Writes what the kernel program reads of a config into its maps.
pub type KernelSync = fn(&Config, &mut Maps) -> anyhow::Result<()>;

impl Live {
    /// Re-reads the config file and applies it, or refuses it and keeps
    /// the old one; audits either way. `asked` is the file a `gateway
    /// reload` named.
    pub async fn reload(
        &self,
        trigger: Trigger,
        asked: Option<&Path>,
        sync_local: KernelSync,
    ) -> Result<serde_json::Value, Refusal> {
        let result = self.try_reload(asked, sync_local).await;
        let record = match &result {
            Ok((generation, summary)) => {
                tracing::info!(generation, %summary, "config reloaded");
                Record::new(Event::ConfigReloaded)
                    .reason(trigger.as_str())
                    .detail(format!("generation {generation}: {summary}"))
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused");
                Record::new(Event::ConfigReloadFailed)
                    .reason(trigger.as_str())
                    .detail(e.to_string())
            }
        };
        self.audit.log(record).await;
        result.map(|(generation, summary)| json!({ "generation": generation, "changes": summary }))
    }

    async fn try_reload(
        &self,
        asked: Option<&Path>,
        sync_local: KernelSync,
    ) -> Result<(u64, String), Refusal> {
        if let Some(asked) = asked {
            let asked = std::fs::canonicalize(asked).unwrap_or_else(|_| asked.to_owned());
            if asked != self.path {
                return Err(Refusal::OtherFile {
                    running: self.path.display().to_string(),
                    asked: asked.display().to_string(),
                });
            }
        }
        let new = Config::load(&self.path)
            .and_then(|c| c.check_host().map(|()| c))
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let old = self.config.load();
        let changes = diff(&old, &new)?;
        // The CA and site handlers anew, even with no key changed: a
        // rotated password file or a renewed CA is read here.
        let serving = sites::build_with(&new, self.cache.clone())
            .await
            .map_err(|e| Refusal::Apply(format!("{e:#}")))?;
        let oci = serving
            .content
            .as_ref()
            .map(|c| c.handlers.clone())
            .unwrap_or_default();
        let proxy = Arc::new(build_proxy(
            &new,
            serving,
            self.limits.clone(),
            self.dns.clone(),
            &self.audit,
        ));

        let old_proxy = self.proxy.load();
        let old_oci = self.control.handlers.load();
        self.proxy.store(proxy);
        if let Some(dns) = &self.dns {
            dns.set_zone(&new);
        }
        self.control.handlers.store(Arc::new(oci));
        if let Err(e) = self.write_kernel(&new, sync_local) {
            // Back to the old configuration everywhere (the maps too: a
            // write may have failed half way).
            self.proxy.store(old_proxy);
            if let Some(dns) = &self.dns {
                dns.set_zone(&old);
            }
            self.control.handlers.store(old_oci);
            if let Err(back) = self.write_kernel(&old, sync_local) {
                tracing::error!(error = %back, "restoring the old configuration in the kernel");
            }
            return Err(Refusal::Apply(format!(
                "writing the new configuration into the kernel: {e:#}"
            )));
        }
        if let Some(cache) = &self.cache {
            cache.set_limits(new.cache.limits());
        }
        let passthrough = new.passthrough_services();
        let site_hosts: Vec<String> = new.sites.iter().map(|s| s.host.clone()).collect();
        crate::metrics::global().set_names(
            &site_hosts,
            &passthrough
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
        );
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(daemon) = &self.control.daemon {
            daemon.store(Arc::new(DaemonInfo {
                limits: self.limits.clone(),
                services: passthrough,
                sites: site_hosts,
                generation,
            }));
        }
        self.config.store(Arc::new(new));
        Ok((generation, changes.summary()))
    }

    fn write_kernel(&self, config: &Config, sync_local: KernelSync) -> anyhow::Result<()> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        // No sockets: the socket map keeps the daemon's own.
        maps.configure(config, &[])?;
        sync_local(config, &mut maps)
    }
}
