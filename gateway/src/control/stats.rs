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
    // The shared tier (`cache.store`): reachability, lease mechanism and
    // counts; never a credential.
    let store = cache
        .and_then(|c| c.shared())
        .and_then(|s| serde_json::to_value(s.status()).ok());
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
        "store": store,
        "open_connections": daemon.limits.open(),
        "recent_refusals": metrics.refused.list(),
        "upstream_proxy_problems": crate::upstream::proxy_problems(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::{CacheStatus, Event, Record},
        config::Service,
        proxy::limits::Limits,
    };

    #[tokio::test]
    async fn stats_carry_what_status_shows() {
        let metrics = Metrics::new();
        metrics.set_names(&["reg.test".to_owned()], &["wfm.test".to_owned()]);
        for cache in [CacheStatus::Miss, CacheStatus::Hit, CacheStatus::Bypass] {
            let mut r = Record::new(Event::Request);
            r.host = Some("reg.test".into());
            r.cache = Some(cache);
            metrics.observe(&r);
        }
        metrics.observe(&Record::new(Event::FlowDenied).reason("no_rule"));
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path(), 1000).await.expect("cache");
        let (audit, writer) = crate::audit::Audit::open(&dir.path().join("a.jsonl"))
            .await
            .expect("audit");
        let counter = audit.counter();
        drop(audit);
        writer.close().await;
        let limits = Limits::new(10, 5);
        let _held = limits
            .acquire("10.0.3.2".parse().expect("ip"))
            .expect("slot");
        let daemon = DaemonInfo {
            limits,
            services: vec![Service {
                name: "wfm.test".into(),
                addresses: vec!["10.0.9.1:443".parse().expect("addr")],
            }],
            sites: vec!["reg.test".into(), "idle.test".into()],
            generation: 1,
        };
        let v = stats(&counter, &daemon, Some(&cache), &metrics);
        assert_eq!(v["config_generation"], 1, "{v}");
        assert_eq!(v["open_connections"], 1, "{v}");
        assert_eq!(v["passthrough"][0]["addresses"][0], "10.0.9.1:443", "{v}");
        // A bypass is no cache lookup: one hit of two lookups.
        assert_eq!(v["sites"][0]["requests"], 3, "{v}");
        assert_eq!(v["sites"][0]["hit_ratio"], 0.5, "{v}");
        assert!(v["sites"][1]["hit_ratio"].is_null(), "{v}");
        assert_eq!(v["cache"]["max_bytes"], 1000, "{v}");
        assert_eq!(v["recent_refusals"][0]["reason"], "no_rule", "{v}");
        assert!(v["uptime_secs"].is_u64(), "{v}");
    }
}
