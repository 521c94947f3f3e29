//! The in-memory view of the cache, behind one std `Mutex`.
//!
//! The lock guards maps only and is never held across I/O or an `.await`:
//! every operation takes it briefly to decide, does its disk or index work
//! unlocked, then takes it again to record the outcome.
//!
//! Last-access times use the cache's own clock: milliseconds since the Unix
//! epoch, but strictly increasing, so two accesses in the same millisecond
//! (or a wall clock stepped back) still order LRU correctly. Times change in
//! memory on every access and reach the index lazily (see evict.rs).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{Digest, fill::FillShared};

/// How often access times are written to the index at most, outside
/// eviction passes: losing a minute of LRU precision in a crash is harmless,
/// a write per request is not.
const FLUSH_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub(super) struct BlobMeta {
    pub(super) size: u64,
    /// Last access, in the cache clock.
    pub(super) access: u64,
    /// The access time the index holds.
    pub(super) persisted: u64,
}

pub(super) struct State {
    /// Complete blobs.
    pub(super) blobs: HashMap<Digest, BlobMeta>,
    /// Sum of `blobs` sizes.
    pub(super) bytes: u64,
    /// Fills in progress, one per digest.
    pub(super) fills: HashMap<Digest, Arc<FillShared>>,
    /// Sum of what fills in progress reserved toward `max_size` (budget.rs).
    pub(super) reserved: u64,
    /// Blobs an eviction pass is unlinking; a fill of one waits until the
    /// unlink is done so it cannot lose its fresh file to the old unlink.
    pub(super) evicting: HashSet<Digest>,
    pub(super) pins: BTreeMap<String, Vec<Digest>>,
    clock: u64,
    last_flush: Instant,
}

impl State {
    pub(super) fn new(
        blobs: HashMap<Digest, BlobMeta>,
        pins: BTreeMap<String, Vec<Digest>>,
    ) -> Self {
        let bytes = blobs.values().map(|b| b.size).sum();
        // Continue after the newest stored time, whatever the wall clock says.
        let clock = blobs.values().map(|b| b.access).max().unwrap_or(0);
        Self {
            blobs,
            bytes,
            fills: HashMap::new(),
            reserved: 0,
            evicting: HashSet::new(),
            pins,
            clock,
            last_flush: Instant::now(),
        }
    }

    /// The next time on the cache clock.
    pub(super) fn tick(&mut self) -> u64 {
        self.clock = (self.clock + 1).max(unix_millis());
        self.clock
    }

    /// Marks a blob used now; its size and the access time set, if present.
    pub(super) fn touch(&mut self, digest: &Digest) -> Option<(u64, u64)> {
        let now = self.tick();
        let meta = self.blobs.get_mut(digest)?;
        meta.access = now;
        Some((meta.size, now))
    }

    /// Forgets a blob whose file turned out missing, unless it was
    /// republished after `seen` (a newer access time means a newer entry).
    pub(super) fn forget_missing(&mut self, digest: &Digest, seen: u64) {
        if self.blobs.get(digest).is_some_and(|m| m.access <= seen) {
            self.remove_blob(digest);
        }
    }

    /// Records a newly published blob, last accessed at `access`.
    pub(super) fn insert_blob(&mut self, digest: Digest, size: u64, access: u64) {
        let meta = BlobMeta {
            size,
            access,
            persisted: access,
        };
        if let Some(old) = self.blobs.insert(digest, meta) {
            self.bytes -= old.size;
        }
        self.bytes += size;
    }

    pub(super) fn remove_blob(&mut self, digest: &Digest) -> Option<BlobMeta> {
        let meta = self.blobs.remove(digest)?;
        self.bytes -= meta.size;
        Some(meta)
    }

    /// What counts toward `max_size`: complete blobs and reservations.
    pub(super) fn used(&self) -> u64 {
        self.bytes.saturating_add(self.reserved)
    }

    /// Blobs an eviction pass may take: not pinned, not being filled.
    pub(super) fn evictable(&self) -> impl Iterator<Item = (&Digest, &BlobMeta)> {
        let pinned = self.pinned();
        self.blobs
            .iter()
            .filter(move |(d, _)| !pinned.contains(d) && !self.fills.contains_key(d))
    }

    /// Every digest some pin names, present or not.
    pub(super) fn pinned(&self) -> HashSet<Digest> {
        self.pins.values().flatten().copied().collect()
    }

    /// Access times newer in memory than in the index.
    pub(super) fn dirty_access(&self) -> Vec<(Digest, u64)> {
        self.blobs
            .iter()
            .filter(|(_, m)| m.access != m.persisted)
            .map(|(d, m)| (*d, m.access))
            .collect()
    }

    /// Takes the access times to persist now, if `force`d or due (at most
    /// once per [`FLUSH_EVERY`]); a failed write leaves them dirty for the
    /// next time.
    pub(super) fn take_flush(&mut self, force: bool) -> Vec<(Digest, u64)> {
        if !force && !self.flush_due() {
            return Vec::new();
        }
        self.last_flush = Instant::now();
        self.dirty_access()
    }

    /// Notes that the index now holds these times.
    pub(super) fn mark_persisted(&mut self, written: &[(Digest, u64)]) {
        for (digest, access) in written {
            if let Some(meta) = self.blobs.get_mut(digest) {
                meta.persisted = *access;
            }
        }
    }

    /// Access times have waited [`FLUSH_EVERY`] to be persisted.
    pub(super) fn flush_due(&self) -> bool {
        self.last_flush.elapsed() >= FLUSH_EVERY
    }
}

pub(super) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
