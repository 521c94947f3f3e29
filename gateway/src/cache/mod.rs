//! The local verified cache: content-addressed blobs, an index of mutable
//! references, pins, LRU eviction, and single-flight fills.
//!
//! # Contract
//!
//! - Blobs are keyed by [`Digest`] (sha256 only) and immutable. A blob is
//!   published only after its sha256 matched, its data was fsynced and it
//!   was renamed into place (store.rs): a name is the whole content or absent.
//! - One upstream fetch per digest: [`Cache::begin_fill`] makes exactly one
//!   [`FillWriter`] (the leader) per digest at a time; everyone else gets a
//!   [`FillReader`] that streams the bytes from the file being written, or
//!   the finished [`Blob`]. No reader ever receives the last byte of its
//!   response before the leader verified the digest (follow.rs), so a wrong
//!   or short upstream never yields a complete-looking body.
//! - The total size of complete blobs is kept under `max_size` by evicting
//!   the least recently used unpinned blobs after each fill, in the
//!   background (evict.rs). Readers hold open descriptors, so eviction never
//!   cuts a transfer short.
//! - References (tag → digest) and pins live in an embedded ACID index
//!   (index.rs); [`Cache::open`] reconciles it with the files (reconcile.rs).
//!
//! No data lock is held across I/O: the std `Mutex` in state.rs guards maps
//! only, and file and index work runs on `spawn_blocking` (two async
//! mutexes only serialise maintenance passes and pin writes). Nothing
//! buffers a whole blob: data moves in chunks of at most 256 KiB.
//!
//! # Use from a proxy
//!
//! `get` → serve the [`Blob`]. Otherwise `begin_fill`: `Done` → serve it;
//! `Follower` → [`FillReader::known_size`] for headers, then
//! [`FillReader::stream`]; `Leader` → request upstream, [`FillWriter::set_size`]
//! from its Content-Length, spawn a task that pumps the body into
//! [`FillWriter::write_bytes`] and calls `finish` (or `fail`), and serve the
//! client from [`FillWriter::reader`]. The pump must time out a stalled
//! upstream and `fail`: followers wait as long as the leader does.
//!
//! A blob larger than `max_size` (and not pinned) is served to everyone
//! following its fill, then evicted by the next pass.
//!
//! Only one process may open a cache directory at a time (the index file is
//! locked); `gateway cache ls` and the like go through the running daemon,
//! or open the cache while it is stopped.

mod blob;
mod digest;
mod error;
mod evict;
mod fill;
mod follow;
mod index;
mod pins;
mod reconcile;
mod refs;
mod state;
mod store;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    fs::File,
    io,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError, atomic::AtomicBool},
};

use tokio::sync::Notify;

pub use blob::Blob;
pub use digest::Digest;
pub use error::CacheError;
pub use evict::EvictReport;
pub use fill::{Fill, FillWriter};
pub use follow::FillReader;
pub use refs::RefEntry;

use index::Index;
use state::State;
use store::Layout;

/// The cache. Cheap to clone: clones share one state and index.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    index: Index,
    max_size: u64,
    state: Mutex<State>,
    /// Serialises maintenance passes (eviction, access-time flushes). An
    /// async mutex because a pass does I/O; it guards no data.
    maintenance: Arc<tokio::sync::Mutex<()>>,
    /// A pass is queued and has not started yet (so more requests for one
    /// are satisfied by it).
    maintenance_queued: AtomicBool,
    /// Serialises pin writes so memory and index agree on the last one.
    pin_writes: tokio::sync::Mutex<()>,
    /// Woken when an eviction pass finished unlinking.
    evicted: Notify,
}

/// A snapshot of the cache's size and activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Complete blobs held.
    pub blobs: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// The configured limit in bytes.
    pub max_bytes: u64,
    /// Blobs held that some pin names.
    pub pinned_blobs: usize,
    pub fills_in_progress: usize,
}

impl Cache {
    /// Opens (creating if needed) the cache in `dir`, limited to `max_size`
    /// bytes of blobs.
    ///
    /// Reconciles the index with the files first (which may hash blobs
    /// found without an index entry, so it can take a while after a crash)
    /// and wipes the temp files of fills a crash interrupted. If the cache is
    /// over `max_size` (a lowered limit), an eviction pass starts in the
    /// background.
    pub async fn open(dir: &Path, max_size: u64) -> Result<Cache, CacheError> {
        let layout = Layout::new(dir);
        let (layout, index, loaded) = tokio::task::spawn_blocking(move || {
            layout.create_dirs()?;
            // The index is opened (and so locked) before anything is wiped,
            // so a second process cannot wipe a running daemon's fills.
            let index = Index::open(&layout.index)?;
            let loaded = reconcile::reconcile(&layout, &index)?;
            Ok::<_, CacheError>((layout, index, loaded))
        })
        .await
        .map_err(CacheError::task("open the cache"))??;

        let cache = Cache {
            inner: Arc::new(Inner {
                layout,
                index,
                max_size,
                state: Mutex::new(State::new(loaded.blobs, loaded.pins)),
                maintenance: Arc::new(tokio::sync::Mutex::new(())),
                maintenance_queued: AtomicBool::new(false),
                pin_writes: tokio::sync::Mutex::new(()),
                evicted: Notify::new(),
            }),
        };
        if cache.stats().bytes > max_size {
            cache.schedule_maintenance();
        }
        Ok(cache)
    }

    /// The complete blob, if held. Counts as an access for LRU.
    pub async fn get(&self, digest: &Digest) -> Result<Option<Blob>, CacheError> {
        let touched = {
            let mut state = self.inner.state();
            let touched = state.touch(digest);
            if touched.is_some() && state.flush_due() {
                drop(state);
                self.schedule_maintenance();
            }
            touched
        };
        match touched {
            Some((size, seen)) => self.open_blob(*digest, size, seen).await,
            None => Ok(None),
        }
    }

    /// Size and activity, from memory.
    pub fn stats(&self) -> CacheStats {
        let state = self.inner.state();
        let pinned = state.pinned();
        CacheStats {
            blobs: state.blobs.len(),
            bytes: state.bytes,
            max_bytes: self.inner.max_size,
            pinned_blobs: state.blobs.keys().filter(|d| pinned.contains(d)).count(),
            fills_in_progress: state.fills.len(),
        }
    }

    /// Persists access times, waits for a running eviction pass, and drops
    /// this handle. The index closes when the last clone (including those
    /// inside [`FillWriter`]s) is gone.
    pub async fn close(self) -> Result<(), CacheError> {
        let guard = Arc::clone(&self.inner.maintenance).lock_owned().await;
        let result = evict::pass(&self.inner, true).await.map(drop);
        // Our reference goes before the lock, so whoever waits on the lock
        // next sees this handle gone.
        drop(self);
        drop(guard);
        result
    }

    /// Opens the file of a blob the state lists. A file that vanished (or
    /// changed size) behind our back is forgotten, so the caller sees a miss
    /// and fills it again.
    /// `seen` is the access time the caller's touch set.
    async fn open_blob(
        &self,
        digest: Digest,
        size: u64,
        seen: u64,
    ) -> Result<Option<Blob>, CacheError> {
        let path = self.inner.layout.blob(&digest);
        let opened = tokio::task::spawn_blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(CacheError::io("open the blob", path)(e)),
            };
            let len = file
                .metadata()
                .map_err(CacheError::io("stat the blob", &path))?
                .len();
            if len != size {
                tracing::warn!(path = %path.display(), len, size, "cache: blob file has the wrong size; removing it");
                store::remove_quietly(&path);
                return Ok(None);
            }
            Ok(Some(file))
        })
        .await
        .map_err(CacheError::task("open a blob"))??;
        match opened {
            Some(file) => Ok(Some(Blob::new(digest, size, Arc::new(file)))),
            None => {
                self.inner.state().forget_missing(&digest, seen);
                Ok(None)
            }
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic: every update is a
        // single map operation plus its byte count.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.inner.layout.root)
            .field("max_size", &self.inner.max_size)
            .finish_non_exhaustive()
    }
}
