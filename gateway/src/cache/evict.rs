//! Maintenance passes: LRU eviction down to the size limit, and persisting
//! access times.
//!
//! A pass picks its victims under the state lock (least recently used
//! first, never a pinned blob, never one with a fill in progress), takes
//! them out of the state and marks them `evicting`, then unlinks their files
//! and deletes their index rows without the lock. Unlinking only removes a
//! name: readers holding the descriptor read on, and no other blob is
//! touched, since every blob is its own file. A fill of a blob being
//! evicted waits for the pass (fill.rs), so an old unlink can never remove a
//! fresh copy. Unlink comes before the index delete: a crash in between
//! leaves an entry without a file, which the next open drops.
//!
//! Passes run one at a time, in the background after each published fill
//! (so a request never waits for eviction), when access times are due to be
//! persisted, and on [`Cache::evict`] and [`Cache::close`].
//!
//! [`dispose`] is the one way a complete blob leaves the cache: eviction,
//! `gateway cache rm` (remove.rs) and `gateway cache verify`'s quarantine
//! (verify.rs) all take blobs out of the state, mark them `evicting` and
//! hand them to it.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use super::{Cache, CacheError, Digest, Inner, store};

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    pub evicted: usize,
    pub freed_bytes: u64,
}

impl Cache {
    /// Runs a maintenance pass now (after any running one) and reports what
    /// it evicted.
    pub async fn evict(&self) -> Result<EvictReport, CacheError> {
        let _pass = self.inner.maintenance.lock().await;
        pass(&self.inner, true).await
    }

    /// Queues a pass on the runtime unless one is already queued.
    pub(super) fn schedule_maintenance(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.maintenance_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        // Weak, so a queued pass does not keep a closed cache (and its
        // index file lock) alive.
        let weak = Arc::downgrade(&self.inner);
        let lock = Arc::clone(&self.inner.maintenance);
        runtime.spawn(async move {
            let guard = lock.lock_owned().await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            // Cleared once running: changes from now on need another pass.
            inner.maintenance_queued.store(false, Ordering::Release);
            if let Err(e) = pass(&inner, false).await {
                tracing::warn!(error = %e, "cache: maintenance pass failed");
            }
            // Before the guard: `close` waits on the lock, then expects this
            // reference gone.
            drop(inner);
            drop(guard);
        });
    }
}

/// One pass; the caller holds the maintenance lock. Access times are
/// persisted when `flush` says so, when they are due, or along with an
/// eviction (whose index write happens anyway).
pub(super) async fn pass(inner: &Arc<Inner>, flush: bool) -> Result<EvictReport, CacheError> {
    let (victims, dirty, still_over) = {
        let mut state = inner.state();
        let max = inner.limits().max_size;
        // Fills' reservations count: a pass a fill asked for makes room
        // for it (budget.rs).
        let mut excess = state.used().saturating_sub(max);
        let mut candidates: Vec<(u64, Digest, u64)> = Vec::new();
        if excess > 0 {
            candidates = state
                .evictable()
                .map(|(d, m)| (m.access, *d, m.size))
                .collect();
            // Oldest access first.
            candidates.sort_unstable();
        }
        let mut victims = Vec::new();
        for (_, digest, size) in candidates {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(size);
            victims.push((digest, size));
        }
        for (digest, _) in &victims {
            state.remove_blob(digest);
            state.evicting.insert(*digest);
        }
        let still_over = state.used() > max;
        let dirty = state.take_flush(flush || !victims.is_empty());
        (victims, dirty, still_over)
    };
    if still_over {
        tracing::warn!(
            max_bytes = inner.limits().max_size,
            reserved_bytes = inner.state().reserved,
            "cache: over its size limit with only pinned blobs and fills in progress left"
        );
    }
    if victims.is_empty() && dirty.is_empty() {
        // Nothing to write: spare the index a commit (and its fsync).
        return Ok(EvictReport::default());
    }

    let evicted: Vec<Victim> = victims
        .iter()
        .map(|(digest, size)| Victim {
            digest: *digest,
            size: *size,
            to: Disposal::Unlink,
        })
        .collect();
    dispose(inner, evicted, dirty).await?;

    let report = EvictReport {
        evicted: victims.len(),
        freed_bytes: victims.iter().map(|(_, size)| size).sum(),
    };
    if report.evicted > 0 {
        let metrics = crate::metrics::global();
        metrics.evictions.inc_by(report.evicted as u64);
        metrics.evicted_bytes.inc_by(report.freed_bytes);
        tracing::info!(
            evicted = report.evicted,
            freed_bytes = report.freed_bytes,
            "cache: evicted least recently used blobs"
        );
    }
    Ok(report)
}

/// A blob taken out of the state (and marked `evicting`) by the caller.
pub(super) struct Victim {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) to: Disposal,
}

/// What becomes of a victim's file.
pub(super) enum Disposal {
    /// Unlinked (readers holding it read on).
    Unlink,
    /// Moved into `dir` for an admin to inspect, if the file still is the
    /// one with inode `inode`; a different file under the name is a fresh,
    /// verified copy published since (the old one was evicted and filled
    /// again), and is kept.
    Quarantine { dir: PathBuf, inode: u64 },
}

/// What [`dispose`] did with one victim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Disposed {
    Unlinked,
    /// Moved to this path.
    Moved(PathBuf),
    /// Put back: the name held a newer copy (see [`Disposal::Quarantine`]).
    Kept,
}

/// Removes the victims' files and index rows and persists `dirty` access
/// times, then clears `evicting` and wakes fills waiting on it. Runs as one
/// blocking task: once spawned it completes even if this future is
/// dropped, so no fill can be left waiting on an abandoned removal. Unlink
/// comes before the index delete: a crash in between leaves an entry
/// without a file, which the next open drops.
pub(super) async fn dispose(
    inner: &Arc<Inner>,
    victims: Vec<Victim>,
    dirty: Vec<(Digest, u64)>,
) -> Result<Vec<Disposed>, CacheError> {
    let worker = Arc::clone(inner);
    tokio::task::spawn_blocking(move || {
        let outcomes: Vec<Disposed> = victims
            .iter()
            .map(|v| dispose_file(&worker.layout.blob(&v.digest), &v.to))
            .collect();
        let gone: Vec<String> = victims
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o != Disposed::Kept)
            .map(|(v, _)| v.digest.hex())
            .collect();
        let mut result = worker.index.remove_blobs(gone.iter().map(String::as_str));
        if result.is_ok() && !dirty.is_empty() {
            result = worker.index.update_access(&dirty);
        }
        {
            // Whatever happened, the files are gone (or as gone as they
            // will get): let waiting fills go ahead.
            let mut state = worker.state();
            for (victim, outcome) in victims.iter().zip(&outcomes) {
                if *outcome == Disposed::Kept {
                    let now = state.tick();
                    state.insert_blob(victim.digest, victim.size, now);
                }
                state.evicting.remove(&victim.digest);
            }
            if result.is_ok() {
                state.mark_persisted(&dirty);
            }
        }
        worker.evicted.notify_waiters();
        result.map(|()| outcomes)
    })
    .await
    .map_err(CacheError::task("remove blobs"))?
}

fn dispose_file(path: &Path, to: &Disposal) -> Disposed {
    let Disposal::Quarantine { dir, inode } = to else {
        store::remove_quietly(path);
        return Disposed::Unlinked;
    };
    match std::fs::metadata(path) {
        Ok(m) if m.ino() == *inode => {}
        Ok(_) => return Disposed::Kept,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Disposed::Unlinked,
        Err(_) => {}
    }
    match super::verify::move_to_quarantine(path, dir) {
        Ok(moved) => Disposed::Moved(moved),
        Err(e) => {
            // Content that no longer matches its digest must not be served
            // again, kept for inspection or not.
            tracing::warn!(path = %path.display(), error = %e, "cache: cannot move a damaged blob to quarantine; removing it");
            store::remove_quietly(path);
            Disposed::Unlinked
        }
    }
}
