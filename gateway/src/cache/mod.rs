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
//! - The total size of complete blobs plus the space fills in progress
//!   reserved is kept under `max_size` (budget.rs): a fill reserves its
//!   announced size (or grows its reservation as bytes arrive) before it
//!   writes, evicting the least recently used unpinned blobs to make room,
//!   and is refused ([`CacheError::NoSpace`]) when even that cannot make
//!   room or the filesystem has not the space. Readers hold open
//!   descriptors, so eviction never cuts a transfer short.
//! - Fills are bounded ([`Limits`]): a blob larger than `max_blob_size` is
//!   refused before a byte is written when announced, and cut off at the
//!   limit when not; at most `max_concurrent_fills` run at once; a fill no
//!   reader follows any more for `abandon_grace` is taken out of the map so
//!   its leader can stop it ([`FillWriter::unfollowed`], readers.rs).
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
//! [`FillReader::stream`]; `Leader` → take [`FillWriter::reader`] for the
//! client, and spawn a task that requests upstream, declares
//! [`FillWriter::set_size`] from its Content-Length, pumps the body into
//! [`FillWriter::write_bytes`] and calls `finish` (or `fail_with`), and
//! stops when [`FillWriter::unfollowed`] resolves. The leader's client is
//! then one follower among others: its going away fails nobody. The pump
//! must time out a stalled upstream and fail: followers wait as long as the
//! leader does.
//!
//! Only one process may open a cache directory at a time (the index file is
//! locked); `gateway cache ls` and the like go through the running daemon,
//! or open the cache while it is stopped.

mod blob;
mod budget;
mod digest;
mod error;
mod evict;
mod fill;
mod follow;
mod index;
mod objects;
mod pins;
mod readers;
mod reconcile;
mod refs;
mod remove;
mod state;
mod store;
#[cfg(test)]
mod tests;
mod usage;
mod verify;
mod vouch;
mod walk;

use std::{
    fmt,
    fs::File,
    io,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError, atomic::AtomicBool},
    time::Duration,
};

use tokio::sync::Notify;

pub use blob::Blob;
pub use digest::Digest;
pub use error::{CacheError, FailCause};
pub use evict::EvictReport;
pub use fill::{Fill, FillWriter};
pub use follow::FillReader;
pub use objects::ObjectEntry;
pub use refs::RefEntry;
pub use remove::RemoveReport;
pub use usage::{Amount, BlobInfo, Named, Owner, RepoUsage, SiteUsage, Usage, usage};
pub use verify::{QUARANTINE_DIR, Quarantined, VerifyReport, VerifyStep};
pub use walk::Walk;

use index::Index;
use state::State;
use store::Layout;

/// The cache. Cheap to clone: clones share one state and index.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// Default `max_concurrent_fills`: enough for several devices pulling
/// different images at once (clients fetch a few layers in parallel each).
pub const DEFAULT_MAX_CONCURRENT_FILLS: usize = 32;

/// How long a fill goes on with no reader: long enough for a client that
/// lost its connection to come back (with a Range request, say) and find
/// the fill still running, short enough that a fill everyone gave up on
/// stops holding upstream bandwidth and temp space.
pub const ABANDON_GRACE: Duration = Duration::from_secs(10);

/// The default `max_blob_size` for a cache of `max_size` bytes: half of it
/// (one blob may not push out everything else), at most 16 GiB.
pub fn default_max_blob_size(max_size: u64) -> u64 {
    (max_size / 2).min(16 << 30)
}

/// What bounds the cache and its fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Complete blobs plus what fills in progress reserved, in bytes.
    pub max_size: u64,
    /// The largest blob a fill accepts.
    pub max_blob_size: u64,
    /// Fills (leaders) in progress at once.
    pub max_concurrent_fills: usize,
    /// See [`ABANDON_GRACE`].
    pub abandon_grace: Duration,
}

impl Limits {
    /// `max_size` with every other bound at its default.
    pub fn new(max_size: u64) -> Self {
        Self {
            max_size,
            max_blob_size: default_max_blob_size(max_size),
            max_concurrent_fills: DEFAULT_MAX_CONCURRENT_FILLS,
            abandon_grace: ABANDON_GRACE,
        }
    }
}

struct Inner {
    layout: Layout,
    index: Index,
    /// Replaced by a config reload (`Cache::set_limits`); read per use.
    limits: Mutex<Limits>,
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
    /// The shared tier behind this cache (`cache.store`), if configured.
    shared: Mutex<Option<crate::store::SharedStore>>,
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
    /// Space fills in progress reserved (their temp files, written or
    /// still to come); counts toward `max_bytes`.
    pub reserved_bytes: u64,
    /// Blobs held that some pin names.
    pub pinned_blobs: usize,
    /// Their total size in bytes.
    pub pinned_bytes: u64,
    pub fills_in_progress: usize,
}

impl Cache {
    /// Opens the cache in `dir` limited to `max_size` bytes, every other
    /// bound at its default; see [`Cache::open_with`].
    pub async fn open(dir: &Path, max_size: u64) -> Result<Cache, CacheError> {
        Self::open_with(dir, Limits::new(max_size)).await
    }

    /// Opens (creating if needed) the cache in `dir`, bounded by `limits`.
    ///
    /// Reconciles the index with the files first (which may hash blobs
    /// found without an index entry, so it can take a while after a crash)
    /// and wipes the temp files of fills a crash interrupted. If the cache is
    /// over `max_size` (a lowered limit), an eviction pass starts in the
    /// background.
    pub async fn open_with(dir: &Path, limits: Limits) -> Result<Cache, CacheError> {
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
                limits: Mutex::new(limits),
                state: Mutex::new(State::new(loaded.blobs, loaded.pins)),
                maintenance: Arc::new(tokio::sync::Mutex::new(())),
                maintenance_queued: AtomicBool::new(false),
                pin_writes: tokio::sync::Mutex::new(()),
                evicted: Notify::new(),
                shared: Mutex::new(None),
            }),
        };
        if cache.stats().bytes > limits.max_size {
            cache.schedule_maintenance();
        }
        Ok(cache)
    }

    /// Puts the shared tier behind this cache (or takes it away).
    pub fn set_shared(&self, store: Option<crate::store::SharedStore>) {
        *self
            .inner
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = store;
    }

    /// The shared tier, if configured.
    pub fn shared(&self) -> Option<crate::store::SharedStore> {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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

    /// The size of a complete blob, if held: from memory, no file opened,
    /// and not an access for LRU.
    pub fn held_size(&self, digest: &Digest) -> Option<u64> {
        self.inner.state().blobs.get(digest).map(|m| m.size)
    }

    /// Size and activity, from memory.
    pub fn stats(&self) -> CacheStats {
        let state = self.inner.state();
        let pinned = state.pinned();
        let (pinned_blobs, pinned_bytes) = state
            .blobs
            .iter()
            .filter(|(d, _)| pinned.contains(d))
            .fold((0, 0), |(n, b), (_, m)| (n + 1, b + m.size));
        CacheStats {
            blobs: state.blobs.len(),
            bytes: state.bytes,
            max_bytes: self.inner.limits().max_size,
            reserved_bytes: state.reserved,
            pinned_blobs,
            pinned_bytes,
            fills_in_progress: state.fills.len(),
        }
    }

    /// New bounds from a config reload. Fills already running keep the
    /// blob bound they started with; a lowered `max_size` starts an
    /// eviction pass in the background, as at open.
    pub fn set_limits(&self, limits: Limits) {
        *self
            .inner
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limits;
        if self.stats().bytes > limits.max_size {
            self.schedule_maintenance();
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
    fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

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
            .field("limits", &self.inner.limits())
            .finish_non_exhaustive()
    }
}
