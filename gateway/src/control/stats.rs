//! The `stats` answer: what `gateway status` shows of the running daemon.

use serde_json::{Value, json};

use super::server::DaemonInfo;
use crate::{audit::AuditCounter, cache::Cache, metrics::Metrics};

pub fn stats(
    audit: &AuditCounter,
    daemon: &DaemonInfo,
    cache: Option<&Cache>,
    metrics: &Metrics,
) -> Value {
    let tallies = metrics.site_tallies();
    let sites: Vec<Value> = daemon
        .sites
        .iter()
        .map(|host| {
            let t = tallies
                .get(&host.trim_end_matches('.').to_ascii_lowercase())
                .copied()
                .unwrap_or_default();
            json!({
                "host": host,
                "requests": t.requests,
                "cache_hits": t.hits,
                "cache_lookups": t.lookups,
                // None until the cache saw a request: 0/0 is no ratio.
                "hit_ratio": (t.lookups > 0).then(|| t.hits as f64 / t.lookups as f64),
            })
        })
        .collect();
    let services: Vec<Value> = daemon
        .services
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "addresses": s.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let cache = cache.map(|c| {
        let s = c.stats();
        json!({
            "bytes": s.bytes,
            "max_bytes": s.max_bytes,
            "reserved_bytes": s.reserved_bytes,
            "fill_ratio": if s.max_bytes > 0 { s.bytes as f64 / s.max_bytes as f64 } else { 0.0 },
            "blobs": s.blobs,
            "pinned_blobs": s.pinned_blobs,
            "pinned_bytes": s.pinned_bytes,
            "fills_in_progress": s.fills_in_progress,
        })
    });
    json!({
        "audit": audit.stats(),
        "uptime_secs": metrics.started.elapsed().as_secs(),
        "config_generation": daemon.generation,
        "passthrough": services,
        "sites": sites,
        "cache": cache,
        "open_connections": daemon.limits.open(),
        "recent_refusals": metrics.refused.list(),
    })
}
