//! Metrics read at scrape time from state the daemon keeps anyway: open
//! connections, the cache, the kernel program's counters, the audit
//! writer's counts. Nothing is mirrored, so nothing can drift.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use super::Metrics;
use gateway_common::Counter;

use crate::{
    audit::AuditCounter,
    cache::Cache,
    ebpf::{Maps, counters::KernelCounts},
    proxy::limits::Limits,
};

/// Where the scrape-time values come from; absent parts are not exported.
#[derive(Default)]
pub struct Sources {
    pub limits: Option<Arc<Limits>>,
    pub cache: Option<Cache>,
    /// The daemon's handles on the pinned maps.
    pub kernel: Option<Arc<Mutex<Maps>>>,
    pub audit: Option<AuditCounter>,
    /// 1 at start, one more per applied config reload.
    pub generation: Arc<std::sync::atomic::AtomicU64>,
}

pub struct StateCollector {
    pub metrics: &'static Metrics,
    pub sources: Sources,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: i64,
) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The kernel program's counter as (interface, verdict, counter) labels:
/// the verdict is the counter's first word, so a dashboard can sum drops.
pub fn kernel_labels(interface: &str, name: &str) -> [(&'static str, String); 3] {
    let verdict = match name.split('_').next() {
        Some("pass") => "pass",
        Some("drop") => "drop",
        Some("assign") => "assign",
        Some("mark") => "mark",
        _ => "other",
    };
    [
        ("interface", interface.to_owned()),
        ("verdict", verdict.to_owned()),
        ("counter", name.to_owned()),
    ]
}

/// Every kernel series: each counter of each device interface and of the
/// fallback (`interface="other"`), zeros included, so the label set is
/// fixed by the configuration.
pub fn kernel_series(counts: &KernelCounts) -> Vec<([(&'static str, String); 3], u64)> {
    counts
        .interfaces
        .iter()
        .flat_map(|i| {
            Counter::ALL
                .iter()
                .map(|c| (kernel_labels(&i.interface, c.name()), i.get(*c)))
        })
        .collect()
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.metrics;
        gauge(
            &mut e,
            "start_time",
            "When the daemon started, in seconds since the Unix epoch",
            Some(&Unit::Seconds),
            m.started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| to_i64(d.as_secs())),
        )?;
        gauge(
            &mut e,
            "config_generation",
            "The configuration generation the daemon serves (1 at start, one more per applied reload)",
            None,
            to_i64(
                self.sources
                    .generation
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        )?;
        {
            let version = [("version", env!("CARGO_PKG_VERSION"))];
            let mut enc =
                e.encode_descriptor("build", "The gateway's version", None, MetricType::Info)?;
            enc.encode_info(&version)?;
        }
        if let Some(limits) = &self.sources.limits {
            gauge(
                &mut e,
                "open_connections",
                "Device connections the proxy holds now",
                None,
                to_i64(limits.open() as u64),
            )?;
        }
        if let Some(cache) = &self.sources.cache {
            let s = cache.stats();
            gauge(
                &mut e,
                "cache_size",
                "Bytes of complete blobs in the cache",
                Some(&Unit::Bytes),
                to_i64(s.bytes),
            )?;
            gauge(
                &mut e,
                "cache_max_size",
                "The cache's size limit (cache.max_size)",
                Some(&Unit::Bytes),
                to_i64(s.max_bytes),
            )?;
            gauge(
                &mut e,
                "cache_reserved",
                "Bytes reserved by fills in progress",
                Some(&Unit::Bytes),
                to_i64(s.reserved_bytes),
            )?;
            gauge(
                &mut e,
                "cache_blobs",
                "Complete blobs in the cache",
                None,
                to_i64(s.blobs as u64),
            )?;
            gauge(
                &mut e,
                "cache_pinned_blobs",
                "Blobs in the cache that a pin names",
                None,
                to_i64(s.pinned_blobs as u64),
            )?;
            gauge(
                &mut e,
                "cache_pinned",
                "Bytes of blobs in the cache that a pin names",
                Some(&Unit::Bytes),
                to_i64(s.pinned_bytes),
            )?;
            gauge(
                &mut e,
                "cache_fills_in_flight",
                "Fills from upstream in progress",
                None,
                to_i64(s.fills_in_progress as u64),
            )?;
        }
        if let Some(store) = self.sources.cache.as_ref().and_then(|c| c.shared()) {
            super::store::encode(&mut e, &store)?;
        }
        if let Some(kernel) = &self.sources.kernel {
            // A read of a few per-CPU map entries; the lock is held by the
            // refresh task for a moment every few seconds at most.
            let counters = kernel.lock().unwrap_or_else(|p| p.into_inner()).counters();
            match counters {
                Ok(counters) => {
                    let mut enc = e.encode_descriptor(
                        "kernel_packets",
                        "Packets by device interface (\"other\": counted on none of them) and the kernel program's verdict and counter",
                        None,
                        MetricType::Counter,
                    )?;
                    for (labels, v) in kernel_series(&counters) {
                        ConstCounter::new(v).encode(enc.encode_family(&labels)?)?;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "metrics: reading the kernel counters"),
            }
        }
        if let Some(audit) = &self.sources.audit {
            let s = audit.stats();
            let mut enc = e.encode_descriptor(
                "audit_records",
                "Audit records since the daemon started, by outcome (written, failed: a write or flush failed, lost: the writer had stopped)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, v) in [
                ("written", s.written),
                ("failed", s.write_failures),
                ("lost", s.lost),
            ] {
                ConstCounter::new(v).encode(enc.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        Ok(())
    }
}
