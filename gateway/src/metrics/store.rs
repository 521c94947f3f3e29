//! The shared tier's series (`cache.store`), read at scrape time from the
//! tier's own counters.

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use crate::store::SharedStore;

fn counter_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> std::fmt::Result {
    let mut enc = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in series {
        ConstCounter::new(*n).encode(enc.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    n: u64,
) -> std::fmt::Result {
    ConstCounter::new(n).encode(e.encode_descriptor(name, help, unit, MetricType::Counter)?)
}

pub(super) fn encode(e: &mut DescriptorEncoder, store: &SharedStore) -> std::fmt::Result {
    let s = store.status();
    let c = s.counts;
    ConstGauge::new(i64::from(s.reachable)).encode(e.encode_descriptor(
        "store_up",
        "1 while the shared store (cache.store) answers, 0 while it is skipped as unreachable",
        None,
        MetricType::Gauge,
    )?)?;
    counter_by(
        e,
        "store_reads",
        "Blob reads from the shared store, by result",
        "result",
        &[
            ("hit", c.reads_hit),
            ("miss", c.reads_miss),
            ("error", c.reads_error),
            ("bad", c.reads_bad),
        ],
    )?;
    counter(
        e,
        "store_read",
        "Bytes read from the shared store into the local cache",
        Some(&Unit::Bytes),
        c.bytes_read,
    )?;
    counter(
        e,
        "store_written",
        "Bytes uploaded to the shared store",
        Some(&Unit::Bytes),
        c.bytes_written,
    )?;
    counter_by(
        e,
        "store_uploads",
        "Uploads of verified blobs and documents to the shared store, by result",
        "result",
        &[("ok", c.uploads), ("error", c.upload_errors)],
    )?;
    counter_by(
        e,
        "store_leases",
        "Upstream fetch leases, by outcome",
        "outcome",
        &[
            ("won", c.leases_won),
            ("waited", c.leases_waited),
            ("fallback", c.leases_fallback),
        ],
    )?;
    counter_by(
        e,
        "store_refs",
        "Shared tag references, by operation",
        "op",
        &[("written", c.refs_written), ("adopted", c.refs_adopted)],
    )?;
    counter(
        e,
        "store_outages",
        "Times the shared store was marked unreachable",
        None,
        c.outages,
    )
}
