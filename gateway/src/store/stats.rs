//! Counts of the tier's work, for status and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::LeaseMode;

/// Counters, read at scrape time.
#[derive(Debug, Default)]
pub struct StoreStats {
    reads_hit: AtomicU64,
    reads_miss: AtomicU64,
    reads_error: AtomicU64,
    /// Objects that failed verification when read back.
    reads_bad: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    uploads: AtomicU64,
    upload_errors: AtomicU64,
    leases_won: AtomicU64,
    leases_waited: AtomicU64,
    leases_fallback: AtomicU64,
    refs_written: AtomicU64,
    refs_adopted: AtomicU64,
    /// Times the store was marked unreachable.
    outages: AtomicU64,
}

/// A snapshot of [`StoreStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub reads_hit: u64,
    pub reads_miss: u64,
    pub reads_error: u64,
    pub reads_bad: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub uploads: u64,
    pub upload_errors: u64,
    pub leases_won: u64,
    pub leases_waited: u64,
    pub leases_fallback: u64,
    pub refs_written: u64,
    pub refs_adopted: u64,
    pub outages: u64,
}

/// What status shows of the tier: never a credential.
#[derive(Clone, Debug, Serialize)]
pub struct StoreStatus {
    /// `endpoint/bucket[/prefix]`.
    pub location: String,
    pub gateway_id: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub lease: LeaseMode,
    pub counts: StoreCounts,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl StoreStats {
    pub(super) fn read_hit(&self, bytes: u64) {
        add(&self.reads_hit, 1);
        add(&self.bytes_read, bytes);
    }
    pub(super) fn read_miss(&self) {
        add(&self.reads_miss, 1);
    }
    pub(super) fn read_error(&self) {
        add(&self.reads_error, 1);
    }
    pub(super) fn read_bad(&self) {
        add(&self.reads_bad, 1);
    }
    pub(super) fn uploaded(&self, bytes: u64) {
        add(&self.uploads, 1);
        add(&self.bytes_written, bytes);
    }
    pub(super) fn upload_error(&self) {
        add(&self.upload_errors, 1);
    }
    pub(super) fn lease_won(&self) {
        add(&self.leases_won, 1);
    }
    pub(super) fn lease_waited(&self) {
        add(&self.leases_waited, 1);
    }
    pub(super) fn lease_fallback(&self) {
        add(&self.leases_fallback, 1);
    }
    pub(super) fn ref_written(&self) {
        add(&self.refs_written, 1);
    }
    pub(super) fn ref_adopted(&self) {
        add(&self.refs_adopted, 1);
    }
    pub(super) fn count_down(&self) {
        add(&self.outages, 1);
    }

    pub fn snapshot(&self) -> StoreCounts {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreCounts {
            reads_hit: g(&self.reads_hit),
            reads_miss: g(&self.reads_miss),
            reads_error: g(&self.reads_error),
            reads_bad: g(&self.reads_bad),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            uploads: g(&self.uploads),
            upload_errors: g(&self.upload_errors),
            leases_won: g(&self.leases_won),
            leases_waited: g(&self.leases_waited),
            leases_fallback: g(&self.leases_fallback),
            refs_written: g(&self.refs_written),
            refs_adopted: g(&self.refs_adopted),
            outages: g(&self.outages),
        }
    }
}
