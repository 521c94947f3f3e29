//! Single-flight fills: one leader writes a blob from upstream, everyone
//! else follows it.
//!
//! [`Cache::begin_fill`] decides under the state lock, so exactly one
//! [`FillWriter`] exists per digest at a time. The leader writes to a temp
//! file opened read-write; [`FillShared`] carries that open file and a
//! `watch` channel of [`Progress`] to every [`FillReader`], which reads the
//! bytes back with positional reads as they land (follow.rs). Because
//! readers use the open descriptor, the rename at publish changes nothing
//! for them. The two batches written last are also kept in memory: a
//! reader that has caught up takes its bytes from there instead of reading
//! back what was just written. (Two, because a caught-up reader still holds
//! back the newest byte: its next read starts in the batch before the last.)
//!
//! A leader ends in exactly one of two ways: [`FillWriter::finish`] checks
//! size and digest, reports `Verified` and publishes; anything else (an
//! error, a size or digest mismatch, [`FillWriter::fail`], or being
//! dropped) reports `Failed`, removes the temp file and frees the digest for
//! a new fill. `Verified` goes out before the fsyncs and the rename: readers
//! need the digest check, not durability, to finish their responses, so
//! followers complete with the leader instead of a few fsyncs later. If
//! publishing then fails, nothing is stored, and readers still finish the
//! verified bytes from the open descriptor.
//!
//! Bounds (see [`super::Limits`]): a size over `max_blob_size` is refused
//! when announced ([`FillWriter::set_size`], or `begin_fill`'s expected
//! size) and a body without one is cut off when it passes the limit; every
//! byte is reserved in the budget (budget.rs) before it is written; no more
//! than `max_concurrent_fills` leaders exist at once ([`CacheError::TooManyFills`]).
//! A failure reaches readers with its [`FailCause`].
//!
//! Recommended use by a proxy: run the whole upstream request and pump in a
//! spawned task (a client that hangs up must not end the fill its
//! followers wait for), stop it when [`FillWriter::unfollowed`] resolves,
//! and serve the leader's own client from [`FillWriter::reader`], so it
//! gets the same hold-back of the final byte as every follower.

use std::{
    fmt,
    fs::File,
    os::unix::fs::FileExt as _,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::{
    Blob, Cache, CacheError, Digest, FailCause, budget::RESERVE_STEP, follow::FillReader,
    readers::Readers, store,
};

/// Fills named by a key rather than a digest (a files site's URL).
mod unnamed;

/// What [`Cache::begin_fill`] hands out.
#[derive(Debug)]
pub enum Fill {
    /// Already complete.
    Done(Blob),
    /// You fetch it: write the upstream body, then finish or fail.
    Leader(FillWriter),
    /// Someone else is fetching it; stream from their file.
    Follower(FillReader),
}

/// How far a fill got; sent to readers on every change.
#[derive(Clone, Debug)]
pub(super) enum Progress {
    /// The leader is creating the temp file.
    Opening,
    /// `written` bytes are in the temp file, not yet verified.
    Writing { written: u64 },
    /// Digest matched; the blob is published with `size` bytes.
    Verified { size: u64 },
    /// The fill failed; nothing was stored.
    Failed(Arc<str>, FailCause),
}

/// What the leader shares with its readers.
pub(super) struct FillShared {
    pub(super) digest: Digest,
    /// Set at most once: by `begin_fill` or by [`FillWriter::set_size`].
    pub(super) expected_size: OnceLock<u64>,
    /// Set once, before progress leaves `Opening`.
    pub(super) file: OnceLock<Arc<File>>,
    pub(super) progress: watch::Sender<Progress>,
    /// The two batches written last with their offsets, oldest first: the
    /// same bytes as the file holds there, set before the progress that
    /// makes them readable.
    pub(super) recent: Mutex<[Option<(u64, Bytes)>; 2]>,
    /// Bytes of `max_size` this fill holds (budget.rs); changed under the
    /// state lock only.
    pub(super) reserved: AtomicU64,
    /// Bytes in the temp file (the disk check counts what is still to come).
    pub(super) written: AtomicU64,
    pub(super) readers: Readers,
    /// The bytes come from the shared store, not upstream (the audit
    /// record's `source`); set before the size is declared.
    pub(super) from_store: std::sync::atomic::AtomicBool,
}

impl FillShared {
    pub(super) fn new(digest: Digest, expected_size: Option<u64>) -> Self {
        Self {
            digest,
            expected_size: expected_size.map(OnceLock::from).unwrap_or_default(),
            file: OnceLock::new(),
            progress: watch::Sender::new(Progress::Opening),
            recent: Mutex::new([None, None]),
            reserved: AtomicU64::new(0),
            written: AtomicU64::new(0),
            readers: Readers::default(),
            from_store: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records a batch just written at `offset`.
    fn remember(&self, offset: u64, batch: Bytes) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent[0] = recent[1].take();
        recent[1] = Some((offset, batch));
    }

    /// Up to `len` bytes at `pos` from the batches written last, if one
    /// holds `pos` (a shared slice, no copy).
    pub(super) fn recent_slice(&self, pos: u64, len: usize) -> Option<Bytes> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().flatten().find_map(|(offset, bytes)| {
            let skip = usize::try_from(pos.checked_sub(*offset)?).ok()?;
            (skip < bytes.len()).then(|| bytes.slice(skip..bytes.len().min(skip + len)))
        })
    }
}

/// The one writer of a fill. Dropping it without [`FillWriter::finish`]
/// fails the fill.
pub struct FillWriter {
    cache: Cache,
    shared: Arc<FillShared>,
    temp: Option<PathBuf>,
    /// Taken while a write runs off-thread; missing afterwards only if that
    /// write was cancelled, which makes the fill unfinishable.
    hasher: Option<Sha256>,
    written: u64,
    /// Finished or failed: followers were told; nothing more to clean up.
    closed: bool,
    /// `false` for a fill whose digest is learnt at the end (unnamed.rs):
    /// published under the sha256 of what was written.
    named: bool,
}

impl Cache {
    /// Starts or joins the fill of `digest`.
    ///
    /// `expected_size` is the size known before asking upstream (from a
    /// descriptor); a leader that learns it only from upstream's headers
    /// declares it with [`FillWriter::set_size`]. With it, the fill fails as
    /// soon as upstream sends more, and followers know the total size
    /// ([`FillReader::size`], [`FillReader::known_size`]). A follower's own
    /// `expected_size` is ignored: the leader's counts. A leader's expected
    /// size is checked against `max_blob_size` and reserved here, so this
    /// fails with [`CacheError::TooLarge`] or [`CacheError::NoSpace`];
    /// a new leader past `max_concurrent_fills` gets
    /// [`CacheError::TooManyFills`].
    ///
    /// Async because a leader's temp file is created here (after any
    /// eviction its reservation needs) and a `Done` blob's file is opened
    /// here.
    pub async fn begin_fill(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<Fill, CacheError> {
        loop {
            let notified = self.inner.evicted.notified();
            let next = {
                let mut state = self.inner.state();
                if let Some((size, seen)) = state.touch(digest) {
                    Next::Present(size, seen)
                } else if let Some(shared) = state.fills.get(digest) {
                    // Made under the lock: an abandoned fill is taken out
                    // of the map under it too, never with a new reader.
                    Next::Follow(FillReader::new(Arc::clone(shared)))
                } else if state.evicting.contains(digest) {
                    Next::WaitForEviction
                } else if state.fills.len() >= self.inner.limits().max_concurrent_fills {
                    return Err(CacheError::TooManyFills {
                        limit: self.inner.limits().max_concurrent_fills,
                    });
                } else {
                    let shared = Arc::new(FillShared::new(*digest, expected_size));
                    state.fills.insert(*digest, Arc::clone(&shared));
                    Next::Lead(shared)
                }
            };
            match next {
                Next::Present(size, seen) => {
                    if let Some(blob) = self.open_blob(*digest, size, seen).await? {
                        return Ok(Fill::Done(blob));
                    }
                    // Its file vanished; it is forgotten now, so fill it.
                }
                Next::Follow(reader) => return Ok(Fill::Follower(reader)),
                // `notified` was created before the check, so the wake-up
                // cannot slip between the check and this wait.
                Next::WaitForEviction => notified.await,
                Next::Lead(shared) => {
                    // The writer exists before the first await, so a
                    // cancelled call still fails the fill (in Drop).
                    let mut writer = FillWriter {
                        cache: self.clone(),
                        shared,
                        temp: None,
                        hasher: Some(Sha256::new()),
                        written: 0,
                        closed: false,
                        named: true,
                    };
                    if let Some(size) = expected_size {
                        writer.claim(size).await?;
                    }
                    writer.create_temp().await?;
                    return Ok(Fill::Leader(writer));
                }
            }
        }
    }
}

enum Next {
    Present(u64, u64),
    Follow(FillReader),
    WaitForEviction,
    Lead(Arc<FillShared>),
}

impl FillWriter {
    pub fn digest(&self) -> Digest {
        self.shared.digest
    }

    /// Bytes written so far.
    /// The cache this fill writes to.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Marks the fill as read from the shared store (call before
    /// [`FillWriter::set_size`], which readers wait for).
    pub fn mark_from_store(&self) {
        self.shared.from_store.store(true, Ordering::Release);
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// A reader of this fill, for serving the leader's own client.
    pub fn reader(&self) -> FillReader {
        FillReader::new(Arc::clone(&self.shared))
    }

    /// Resolves once no reader has followed this fill for the cache's
    /// `abandon_grace`; by then nobody can join it any more, and the
    /// caller should stop and fail it (the temp file goes). Pending while
    /// anyone follows. Holds the cache open until it resolves or is dropped.
    pub fn unfollowed(&self) -> impl Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.cache.inner);
        let grace = inner.limits().abandon_grace;
        super::readers::unfollowed(inner, Arc::clone(&self.shared), grace)
    }

    /// Declares the total size once upstream announced it (Content-Length),
    /// so followers can send it and the fill can enforce it. Fails the
    /// fill when the size contradicts the one already known or the bytes
    /// already written ([`CacheError::SizeConflict`]), exceeds
    /// `max_blob_size` ([`CacheError::TooLarge`]) or cannot be reserved
    /// ([`CacheError::NoSpace`]); followers learn the size only once it is
    /// reserved. Async because making room may wait for an eviction pass.
    pub async fn set_size(&mut self, size: u64) -> Result<(), CacheError> {
        let digest = self.shared.digest;
        if self.closed {
            return Err(CacheError::FillClosed { digest });
        }
        let known = self.shared.expected_size.get().copied();
        if known.is_some_and(|k| k != size) || self.written > size {
            let e = CacheError::SizeConflict {
                digest,
                expected: known.unwrap_or(0).max(self.written),
                announced: size,
            };
            self.abort_with(&e);
            return Err(e);
        }
        self.claim(size).await?;
        let _ = self.shared.expected_size.set(size);
        // Wakes readers waiting in `known_size`.
        self.shared.progress.send_modify(|_| {});
        Ok(())
    }

    /// Checks an announced size against `max_blob_size` and reserves it;
    /// fails the fill if either refuses.
    async fn claim(&mut self, size: u64) -> Result<(), CacheError> {
        let limit = self.cache.inner.limits().max_blob_size;
        if size > limit {
            let e = CacheError::TooLarge {
                digest: self.shared.digest,
                size,
                limit,
                how: "announced",
            };
            self.abort_with(&e);
            return Err(e);
        }
        self.reserve(size).await
    }

    /// Reserves up to `target` bytes; fails the fill if refused.
    async fn reserve(&mut self, target: u64) -> Result<(), CacheError> {
        let reserved = self.cache.reserve(&self.shared, target).await;
        if let Err(e) = &reserved {
            self.abort_with(e);
        }
        reserved
    }

    async fn create_temp(&mut self) -> Result<(), CacheError> {
        let inner = Arc::clone(&self.cache.inner);
        let digest = self.shared.digest;
        let created = tokio::task::spawn_blocking(move || inner.layout.create_temp(&digest))
            .await
            .map_err(CacheError::task("create a temp file"))
            .and_then(|r| r);
        match created {
            Ok((path, file)) => {
                self.temp = Some(path.keep());
                // Set before any reader can leave `Opening`; never set twice.
                let _ = self.shared.file.set(Arc::new(file));
                self.shared
                    .progress
                    .send_replace(Progress::Writing { written: 0 });
                Ok(())
            }
            Err(e) => {
                self.abort_with(&e);
                Err(e)
            }
        }
    }

    /// Appends a chunk of the upstream body (copied; see
    /// [`FillWriter::write_bytes`] to hand over a `Bytes` without a copy).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        self.write_bytes(Bytes::copy_from_slice(chunk)).await
    }

    /// Appends a chunk: hashes it and writes it to the temp file (both off
    /// the async threads), then tells readers. Fails the fill, for everyone,
    /// if upstream sent more than the expected size or `max_blob_size`, if
    /// the bytes cannot be reserved, or if the disk failed.
    pub async fn write_bytes(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        let digest = self.shared.digest;
        if self.closed || self.hasher.is_none() {
            self.abort("a write was interrupted".to_owned(), FailCause::Internal);
            return Err(CacheError::FillClosed { digest });
        }
        let end = self.written + chunk.len() as u64;
        if let Some(&expected) = self.shared.expected_size.get()
            && end > expected
        {
            let e = CacheError::TooLong { digest, expected };
            self.abort_with(&e);
            return Err(e);
        }
        let limit = self.cache.inner.limits().max_blob_size;
        if end > limit {
            let e = CacheError::TooLarge {
                digest,
                size: end,
                limit,
                how: "received, and more coming",
            };
            self.abort_with(&e);
            return Err(e);
        }
        if end > self.shared.reserved.load(Ordering::SeqCst) {
            // No size announced (an announced one is reserved whole): grow
            // the reservation a step ahead of the bytes.
            let step = self.written.saturating_add(RESERVE_STEP);
            self.reserve(end.max(step).min(limit)).await?;
        }
        let (Some(mut hasher), Some(file)) = (self.hasher.take(), self.shared.file.get().cloned())
        else {
            self.abort("a write was interrupted".to_owned(), FailCause::Internal);
            return Err(CacheError::FillClosed { digest });
        };
        let pos = self.written;
        let batch = chunk.clone();
        let written = tokio::task::spawn_blocking(move || {
            file.write_all_at(&chunk, pos)?;
            hasher.update(&chunk);
            Ok::<_, std::io::Error>(hasher)
        })
        .await;
        let result = match written {
            Ok(Ok(hasher)) => {
                self.hasher = Some(hasher);
                self.written = end;
                self.shared.written.store(end, Ordering::SeqCst);
                self.shared.remember(pos, batch);
                self.shared
                    .progress
                    .send_replace(Progress::Writing { written: end });
                return Ok(());
            }
            Ok(Err(source)) => CacheError::Io {
                op: "write the temp file",
                path: self.temp.clone().unwrap_or_default(),
                source,
            },
            Err(e) => CacheError::task("write a temp file")(e),
        };
        self.abort_with(&result);
        Err(result)
    }

    /// Checks size and digest, publishes the blob, and wakes readers.
    ///
    /// Runs on its own task: if the caller stops waiting, the fill still
    /// completes (or fails) for its followers.
    pub async fn finish(self) -> Result<Blob, CacheError> {
        tokio::spawn(self.publish())
            .await
            .map_err(CacheError::task("publish a fill"))?
    }

    /// Fails the fill as upstream's fault: readers get `reason`, the temp
    /// file is removed.
    pub fn fail(self, reason: impl fmt::Display) {
        self.fail_with(FailCause::Upstream, reason);
    }

    /// Fails the fill: readers get `reason` and `cause`, the temp file is
    /// removed.
    pub fn fail_with(mut self, cause: FailCause, reason: impl fmt::Display) {
        self.abort(reason.to_string(), cause);
    }

    async fn publish(mut self) -> Result<Blob, CacheError> {
        let digest = self.shared.digest;
        let (Some(hasher), Some(file), Some(temp), false) = (
            self.hasher.take(),
            self.shared.file.get().cloned(),
            self.temp.clone(),
            self.closed,
        ) else {
            self.abort("a write was interrupted".to_owned(), FailCause::Internal);
            return Err(CacheError::FillClosed { digest });
        };
        let size = self.written;
        if let Some(&expected) = self.shared.expected_size.get()
            && size != expected
        {
            let e = CacheError::Truncated {
                digest,
                expected,
                received: size,
            };
            self.abort_with(&e);
            return Err(e);
        }
        let actual = Digest::from_hasher(hasher);
        // An unnamed fill's slot digest only named the fill: the blob is
        // what was written.
        let digest = if self.named { digest } else { actual };
        if actual != digest {
            let e = CacheError::DigestMismatch {
                expected: digest,
                actual,
            };
            self.abort_with(&e);
            return Err(e);
        }

        // The bytes are right: readers may finish now. They need the digest
        // check, not durability, so they do not wait for the fsyncs below.
        self.shared
            .progress
            .send_replace(Progress::Verified { size });

        let inner = Arc::clone(&self.cache.inner);
        let access = inner.state().tick();
        let publish_file = Arc::clone(&file);
        let published = tokio::task::spawn_blocking(move || {
            inner.layout.publish(&temp, &publish_file, &digest)?;
            if let Err(e) = inner.index.put_blobs(&[(digest, size, access)]) {
                // Unindexed, the file would be invisible until the next
                // start; remove it so disk and memory agree now.
                store::remove_quietly(&inner.layout.blob(&digest));
                return Err(e);
            }
            Ok(())
        })
        .await
        .map_err(CacheError::task("publish a fill"))
        .and_then(|r| r);

        self.closed = true;
        let temp = self.temp.take();
        {
            // One critical section: a concurrent begin_fill sees either this
            // fill (and follows it, already `Verified`) or the blob.
            let mut state = self.cache.inner.state();
            if published.is_ok() {
                state.insert_blob(digest, size, access);
            }
            release(&mut state, &self.shared);
            remove_fill(&mut state.fills, &self.shared);
        }
        if let Err(e) = published {
            // Not stored, but what readers got is verified: they keep
            // reading it through the open descriptor, so no `Failed` here.
            tracing::warn!(%digest, error = %e, "cache: verified blob could not be stored");
            if let Some(temp) = temp {
                store::remove_in_background(temp);
            }
            return Err(e);
        }
        self.cache.schedule_maintenance();
        Ok(Blob::new(digest, size, file))
    }

    /// Fails the fill with `e` and the cause it implies.
    fn abort_with(&mut self, e: &CacheError) {
        self.abort(e.to_string(), e.cause());
    }

    /// Fails the fill once: frees the digest and its reservation, tells
    /// readers, removes the temp file.
    fn abort(&mut self, reason: String, cause: FailCause) {
        if self.closed {
            return;
        }
        self.closed = true;
        {
            let mut state = self.cache.inner.state();
            release(&mut state, &self.shared);
            remove_fill(&mut state.fills, &self.shared);
        }
        self.shared
            .progress
            .send_replace(Progress::Failed(reason.into(), cause));
        if let Some(temp) = self.temp.take() {
            store::remove_in_background(temp);
        }
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.abort(
            "the fill was abandoned before it finished".to_owned(),
            FailCause::Internal,
        );
    }
}

impl fmt::Debug for FillWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillWriter")
            .field("digest", &self.shared.digest)
            .field("expected_size", &self.shared.expected_size.get())
            .field("written", &self.written)
            .field("closed", &self.closed)
            .finish()
    }
}

/// Gives back what the fill reserved (it is over, one way or the other).
fn release(state: &mut super::state::State, shared: &FillShared) {
    let held = shared.reserved.swap(0, Ordering::SeqCst);
    state.reserved = state.reserved.saturating_sub(held);
}

/// Removes this fill's slot, not a newer fill's of the same digest.
pub(super) fn remove_fill(
    fills: &mut std::collections::HashMap<Digest, Arc<FillShared>>,
    shared: &Arc<FillShared>,
) {
    if fills
        .get(&shared.digest)
        .is_some_and(|s| Arc::ptr_eq(s, shared))
    {
        fills.remove(&shared.digest);
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn recent_slices_serve_only_the_bytes_the_two_last_batches_hold() {
        let shared = FillShared::new(Digest::of(b""), None);
        assert_eq!(shared.recent_slice(0, 10), None);
        shared.remember(90, Bytes::from_static(b"abcdefghij"));
        shared.remember(100, Bytes::from_static(b"0123456789"));
        assert_eq!(shared.recent_slice(89, 10), None, "before the batches");
        assert_eq!(shared.recent_slice(110, 10), None, "after the batches");
        assert_eq!(shared.recent_slice(100, 4).as_deref(), Some(&b"0123"[..]));
        assert_eq!(shared.recent_slice(106, 100).as_deref(), Some(&b"6789"[..]));
        // A held-back reader's next read starts in the older batch: it gets
        // the rest of that batch, then the newer one.
        assert_eq!(shared.recent_slice(99, 256).as_deref(), Some(&b"j"[..]));
        shared.remember(110, Bytes::from_static(b"ABCDEFGHIJ"));
        assert_eq!(shared.recent_slice(95, 4), None, "forgotten");
        assert_eq!(shared.recent_slice(105, 2).as_deref(), Some(&b"56"[..]));
    }
}
