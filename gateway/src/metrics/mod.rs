//! Prometheus metrics: what the gateway counts, and the admin listener
//! that serves them (`admin.rs`).
//!
//! Most counts come from the one funnel every decision goes through, the
//! audit record ([`Metrics::observe`], called by `Audit::log`); what the
//! audit leaves out by rate limiting (DNS answers, refusals at a budget)
//! or never records (a TLS handshake that worked) is counted where it
//! happens. State that already exists (open connections, the cache, the
//! kernel's counters, the audit writer's counts) is read at scrape time by
//! [`collector::StateCollector`] instead of being mirrored.
//!
//! Label sets are bounded: sites and passthrough services are the
//! configured ones (anything else is `other`), methods a fixed list,
//! statuses their class. No device address, path, digest or repository is
//! ever a label. The full list is in docs/METRICS.md.

pub mod admin;
pub mod collector;
pub mod refused;
mod store;

use std::{
    collections::{HashMap, HashSet},
    sync::{LazyLock, Mutex, RwLock},
    time::{Instant, SystemTime},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::audit::{CacheStatus, Event, Record};

/// Every metric name starts with this (the registry adds the `_`).
pub const PREFIX: &str = "margo_gateway";

/// A label set: fixed keys, values from bounded sets.
pub type Labels = Vec<(&'static str, String)>;

/// Upstream wait buckets, in seconds: a cache revalidation on a LAN (ms)
/// up to a slow registry's first byte.
const UPSTREAM_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The label value for what is outside a bounded set.
pub const OTHER: &str = "other";

/// The process's metrics. One per daemon ([`global`]); tests make their
/// own.
pub struct Metrics {
    /// Accepted connections by the policy's decision on their destination.
    pub connections: Family<Labels, Counter>,
    /// Refused connections (audited `flow.denied`), by reason.
    pub refused_connections: Family<Labels, Counter>,
    pub passthrough_bytes: Family<Labels, Counter>,
    pub tls_handshakes: Family<Labels, Counter>,
    pub leaves_minted: Counter,
    pub dns_queries: Family<Labels, Counter>,
    pub http_requests: Family<Labels, Counter>,
    pub served_bytes: Family<Labels, Counter>,
    pub upstream_bytes: Counter,
    pub upstream_seconds: Family<Labels, Histogram>,
    pub errors: Family<Labels, Counter>,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
    /// Mirror runs of a repository (audited `mirror.synced` /
    /// `mirror.failed`), by site and result.
    pub mirror_runs: Family<Labels, Counter>,
    /// Bytes mirror runs fetched, by site.
    pub mirror_bytes: Family<Labels, Counter>,
    /// The recent refusals, for `gateway status`.
    pub refused: refused::Recent,
    /// Hits and lookups per site, for `gateway status`'s hit ratio.
    hit_ratio: Mutex<HashMap<String, SiteTally>>,
    sites: RwLock<HashSet<String>>,
    services: RwLock<HashSet<String>>,
    pub started: Instant,
    pub started_at: SystemTime,
}

/// Requests a site answered from its cache, out of those the cache saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SiteTally {
    pub requests: u64,
    /// Served from the cache: `hit`, `revalidated` or `stale`.
    pub hits: u64,
    /// Went to the cache at all (everything but `bypass`).
    pub lookups: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The daemon's metrics; counting into them costs an atomic add (and a
/// read lock for a labelled family).
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            connections: Family::default(),
            refused_connections: Family::default(),
            passthrough_bytes: Family::default(),
            tls_handshakes: Family::default(),
            leaves_minted: Counter::default(),
            dns_queries: Family::default(),
            http_requests: Family::default(),
            served_bytes: Family::default(),
            upstream_bytes: Counter::default(),
            upstream_seconds: Family::new_with_constructor(|| {
                Histogram::new(UPSTREAM_BUCKETS.iter().copied())
            }),
            errors: Family::default(),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
            mirror_runs: Family::default(),
            mirror_bytes: Family::default(),
            refused: refused::Recent::default(),
            hit_ratio: Mutex::new(HashMap::new()),
            sites: RwLock::new(HashSet::new()),
            services: RwLock::new(HashSet::new()),
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }

    /// The configured site hosts and passthrough service names: the only
    /// values their labels take (anything else is `other`).
    pub fn set_names(&self, sites: &[String], services: &[String]) {
        let norm = |h: &String| h.trim_end_matches('.').to_ascii_lowercase();
        *self.sites.write().unwrap_or_else(|e| e.into_inner()) = sites.iter().map(norm).collect();
        *self.services.write().unwrap_or_else(|e| e.into_inner()) =
            services.iter().cloned().collect();
    }

    /// `host` if it is a configured site, else `other`.
    pub fn site_label(&self, host: Option<&str>) -> String {
        let sites = self.sites.read().unwrap_or_else(|e| e.into_inner());
        match host.map(|h| h.trim_end_matches('.').to_ascii_lowercase()) {
            Some(h) if sites.contains(&h) => h,
            _ => OTHER.to_owned(),
        }
    }

    /// `name` if it is a configured passthrough service, else `other`.
    pub fn service_label(&self, name: &str) -> String {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        if services.contains(name) {
            name.to_owned()
        } else {
            OTHER.to_owned()
        }
    }

    /// Counts what an audit record says. Called for every record, before
    /// it is queued, so a full disk does not hide traffic from metrics.
    pub fn observe(&self, r: &Record) {
        match r.event {
            Event::FlowDenied => {
                let reason = reason_label(r.reason.as_deref());
                self.refused_connections
                    .get_or_create(&vec![("reason", reason)])
                    .inc();
            }
            Event::FlowPassthrough => {
                let service = self.service_label(r.service.as_deref().unwrap_or(""));
                for (direction, n) in [("up", r.bytes_up), ("down", r.bytes_down)] {
                    if let Some(n) = n {
                        self.passthrough_bytes
                            .get_or_create(&vec![
                                ("service", service.clone()),
                                ("direction", direction.to_owned()),
                            ])
                            .inc_by(n);
                    }
                }
            }
            Event::Request => self.observe_request(r),
            Event::MirrorSynced | Event::MirrorFailed => {
                let site = self.site_label(r.host.as_deref());
                let result = if r.event == Event::MirrorSynced {
                    "synced"
                } else {
                    "failed"
                };
                self.mirror_runs
                    .get_or_create(&vec![("site", site.clone()), ("result", result.to_owned())])
                    .inc();
                if let Some(n) = r.bytes {
                    self.mirror_bytes
                        .get_or_create(&vec![("site", site)])
                        .inc_by(n);
                }
            }
            _ => {}
        }
        if let Some(fault) = r.fault {
            self.errors
                .get_or_create(&vec![
                    ("fault", fault.as_str().to_owned()),
                    ("event", event_label(r.event).to_owned()),
                ])
                .inc();
        }
        self.refused.observe(r);
    }

    fn observe_request(&self, r: &Record) {
        let site = self.site_label(r.host.as_deref());
        let method = match r.method.as_deref() {
            Some(m) if METHODS.contains(&m) => m.to_owned(),
            _ => OTHER.to_owned(),
        };
        let status = r
            .status
            .filter(|s| (100..600).contains(s))
            .map_or_else(|| "none".to_owned(), |s| format!("{}xx", s / 100));
        let cache = cache_label(r.cache).to_owned();
        self.http_requests
            .get_or_create(&vec![
                ("site", site.clone()),
                ("method", method),
                ("status", status),
                ("cache", cache.clone()),
            ])
            .inc();
        if let Some(bytes) = r.bytes {
            self.served_bytes
                .get_or_create(&vec![("site", site.clone()), ("cache", cache)])
                .inc_by(bytes);
        }
        if let Some(ms) = r.upstream_ms {
            self.upstream_seconds
                .get_or_create(&vec![("site", site.clone())])
                .observe(ms as f64 / 1000.0);
        }
        let mut tallies = self.hit_ratio.lock().unwrap_or_else(|e| e.into_inner());
        let t = tallies.entry(site).or_default();
        t.requests += 1;
        if let Some(c) = r.cache {
            if c != CacheStatus::Bypass {
                t.lookups += 1;
            }
            if matches!(
                c,
                CacheStatus::Hit | CacheStatus::Revalidated | CacheStatus::Stale
            ) {
                t.hits += 1;
            }
        }
    }

    /// Per-site request tallies since the daemon started.
    pub fn site_tallies(&self) -> HashMap<String, SiteTally> {
        self.hit_ratio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An accepted connection and the policy's decision on it
    /// (`passthrough`, `dns`, `inspect`, `denied`); `service` for a
    /// passthrough.
    pub fn connection(&self, decision: &'static str, service: Option<&str>) {
        let service = service.map_or_else(String::new, |s| self.service_label(s));
        self.connections
            .get_or_create(&vec![
                ("decision", decision.to_owned()),
                ("service", service),
            ])
            .inc();
    }

    /// A TLS handshake with a device: `ok`, `failed` or `timeout`.
    pub fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// A device's DNS query: `answered`, `refused` or `malformed`, over
    /// `udp` or `tcp`.
    pub fn dns_query(&self, result: &'static str, transport: &'static str) {
        self.dns_counter(result, transport).inc();
    }

    /// The `dns_queries_total` series of `result` and `transport`, for a
    /// caller that counts often and keeps it (the counter is shared).
    pub fn dns_counter(&self, result: &'static str, transport: &'static str) -> Counter {
        self.dns_queries
            .get_or_create(&vec![
                ("result", result.to_owned()),
                ("transport", transport.to_owned()),
            ])
            .clone()
    }

    /// Registers every metric of `self` and the scrape-time state of
    /// `sources` under [`PREFIX`].
    pub fn registry(&'static self, sources: collector::Sources) -> Registry {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix(PREFIX);
        self.register(r);
        r.register_collector(Box::new(collector::StateCollector {
            metrics: self,
            sources,
        }));
        root
    }

    /// The counting metrics alone (tests encode these without a daemon).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "connections",
            "Connections accepted from devices, by the policy's decision on their destination (passthrough, dns, inspect, denied) and passthrough service",
            self.connections.clone(),
        );
        r.register(
            "refused_connections",
            "Device connections refused by the proxy (audited flow.denied), by reason",
            self.refused_connections.clone(),
        );
        r.register_with_unit(
            "passthrough",
            "Bytes relayed on passthrough connections that ended, by service and direction (up: device to service)",
            prometheus_client::registry::Unit::Bytes,
            self.passthrough_bytes.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes with devices on site hosts, by result (ok, failed, timeout)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "tls_leaves_minted",
            "Leaf certificates minted under the site CA",
            self.leaves_minted.clone(),
        );
        r.register(
            "dns_queries",
            "Device DNS queries, by result (answered, refused, malformed) and transport",
            self.dns_queries.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests served on site hosts, by site, method, status class and cache status",
            self.http_requests.clone(),
        );
        r.register_with_unit(
            "http_served",
            "Response body bytes sent to devices, by site and cache status",
            prometheus_client::registry::Unit::Bytes,
            self.served_bytes.clone(),
        );
        r.register_with_unit(
            "upstream_received",
            "Body bytes received from upstream registries and the CDNs they redirect to",
            prometheus_client::registry::Unit::Bytes,
            self.upstream_bytes.clone(),
        );
        r.register_with_unit(
            "upstream_wait",
            "Time requests spent waiting on upstream, by site",
            prometheus_client::registry::Unit::Seconds,
            self.upstream_seconds.clone(),
        );
        r.register(
            "errors",
            "Flows and requests that ended in error, by whose fault (device, upstream, internal, local) and audit event",
            self.errors.clone(),
        );
        r.register(
            "cache_evictions",
            "Blobs evicted from the cache (least recently used, unpinned)",
            self.evictions.clone(),
        );
        r.register_with_unit(
            "cache_evicted",
            "Bytes of blobs evicted from the cache",
            prometheus_client::registry::Unit::Bytes,
            self.evicted_bytes.clone(),
        );
        r.register(
            "mirror_runs",
            "Mirror runs of a repository, by site and result (synced, failed)",
            self.mirror_runs.clone(),
        );
        r.register_with_unit(
            "mirror_fetched",
            "Blob bytes mirror runs fetched, by site",
            prometheus_client::registry::Unit::Bytes,
            self.mirror_bytes.clone(),
        );
    }
}

/// A refusal reason as a label: the reasons are the code's own constants,
/// but a bound is kept in case one ever carries text from outside.
fn reason_label(reason: Option<&str>) -> String {
    match reason {
        Some(r)
            if !r.is_empty()
                && r.len() <= 48
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()) =>
        {
            r.to_owned()
        }
        _ => OTHER.to_owned(),
    }
}

fn event_label(e: Event) -> &'static str {
    match e {
        Event::GatewayStart => "gateway.start",
        Event::GatewayStop => "gateway.stop",
        Event::FlowPassthrough => "flow.passthrough",
        Event::FlowDenied => "flow.denied",
        Event::FlowDropped => "flow.dropped",
        Event::Request => "request",
        Event::DnsAnswered => "dns.answered",
        Event::DnsRefused => "dns.refused",
        Event::TimeServed => "time.served",
        Event::ConfigReloaded => "config.reloaded",
        Event::ConfigReloadFailed => "config.reload_failed",
        Event::MirrorSynced => "mirror.synced",
        Event::MirrorFailed => "mirror.failed",
    }
}

fn cache_label(c: Option<CacheStatus>) -> &'static str {
    match c {
        Some(CacheStatus::Hit) => "hit",
        Some(CacheStatus::Miss) => "miss",
        Some(CacheStatus::Stale) => "stale",
        Some(CacheStatus::Revalidated) => "revalidated",
        Some(CacheStatus::Bypass) => "bypass",
        None => "none",
    }
}

#[cfg(test)]
mod tests;
