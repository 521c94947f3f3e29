//! Space for fills: temp files count toward `max_size`.
//!
//! A fill reserves bytes of the budget before it writes them: its whole
//! announced size at once, or, without one, a step at a time as bytes
//! arrive. The state holds the sum of reservations beside the size of
//! complete blobs, and both count toward `max_size`. A reservation that
//! does not fit is granted only if evicting unpinned blobs that no fill
//! holds can make room, and the fill then waits for that eviction pass
//! before writing; otherwise it is refused with [`CacheError::NoSpace`].
//! The filesystem is asked too (`statvfs`): if it has less room than the
//! fills in progress still need (a `max_size` larger than the disk, or
//! the disk shared with something else), the reservation is refused
//! instead of running into ENOSPC halfway through a body.
//!
//! Reservations are released when the fill ends (fill.rs): on publish the
//! blob's own size takes their place under the same lock.

use std::sync::atomic::Ordering;

use super::{Cache, CacheError, fill::FillShared};

/// How much a fill without an announced size reserves at a time: large
/// enough that eviction passes stay rare, small enough not to crowd out
/// other fills.
pub(super) const RESERVE_STEP: u64 = 16 << 20;

impl Cache {
    /// Makes `shared` hold at least `target` bytes of the budget. On error
    /// what it already held stays held; the caller fails the fill, which
    /// releases it.
    pub(super) async fn reserve(&self, shared: &FillShared, target: u64) -> Result<(), CacheError> {
        let digest = shared.digest;
        let max = self.inner.limits().max_size;
        let must_evict = {
            let mut state = self.inner.state();
            let have = shared.reserved.load(Ordering::SeqCst);
            let Some(more) = target.checked_sub(have).filter(|m| *m > 0) else {
                return Ok(());
            };
            let used = state.used();
            let after = used.saturating_add(more);
            if after > max {
                let evictable: u64 = state.evictable().map(|(_, m)| m.size).sum();
                if after.saturating_sub(evictable) > max {
                    return Err(CacheError::NoSpace {
                        digest,
                        needed: target,
                        detail: format!(
                            "cache.max_size is {max} bytes and {} of them are held by pinned \
                             blobs and fills in progress",
                            used.saturating_sub(evictable)
                        ),
                    });
                }
            }
            state.reserved += more;
            shared.reserved.fetch_add(more, Ordering::SeqCst);
            after > max
        };
        if must_evict {
            // Counted as reserved already, so the pass evicts room for it.
            self.evict().await?;
        }
        self.check_disk(shared, target).await
    }

    /// Refuses the reservation when the filesystem cannot hold what the
    /// fills in progress still have to write.
    async fn check_disk(&self, shared: &FillShared, target: u64) -> Result<(), CacheError> {
        let tmp = self.inner.layout.tmp.clone();
        let free = tokio::task::spawn_blocking(move || {
            nix::sys::statvfs::statvfs(&tmp)
                .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
                .map_err(|e| CacheError::io("statvfs", tmp)(e.into()))
        })
        .await
        .map_err(CacheError::task("check the free space"))??;
        let outstanding = {
            let state = self.inner.state();
            let mut sum: u64 = state.fills.values().map(|f| outstanding_of(f)).sum();
            // This fill may be out of the map already (abandoned): counted
            // once either way.
            if !state
                .fills
                .values()
                .any(|f| std::ptr::eq(f.as_ref(), shared))
            {
                sum = sum.saturating_add(outstanding_of(shared));
            }
            sum
        };
        if free >= outstanding {
            return Ok(());
        }
        Err(CacheError::NoSpace {
            digest: shared.digest,
            needed: target,
            detail: format!(
                "the cache's filesystem has {free} bytes free and fills in progress still need \
                 {outstanding} (keep cache.max_size below the room the disk has)"
            ),
        })
    }
}

/// Reserved but not yet written.
fn outstanding_of(shared: &FillShared) -> u64 {
    shared
        .reserved
        .load(Ordering::SeqCst)
        .saturating_sub(shared.written.load(Ordering::SeqCst))
}
