//! Reading a blob while its leader is still writing it.
//!
//! A [`FillReader`] streams from the leader's temp file through the shared
//! open descriptor, with positional reads, as far as the leader's
//! [`Progress`] says bytes have landed (bytes of the batch written last come
//! from the leader's memory instead); when it has caught up it waits for
//! the next progress change on the `watch` channel. Ranges wait until their
//! bytes are written.
//!
//! # Hold-back of the final byte
//!
//! While the fill is unverified a reader never passes on the last byte of
//! its response, nor the newest byte written: its stream can only complete
//! after the leader reported `Verified`. If the leader fails (wrong digest,
//! short or over-long upstream, abandoned), the stream ends with an error
//! instead, one byte or more short. So a client whose response carries a
//! Content-Length sees a truncated body, one reading a chunked body sees no
//! terminating chunk, and no client gets a complete-looking wrong blob. The
//! cost is that a ranged read completes only once the whole blob is
//! verified, even if its bytes arrived early.

use std::{fmt, io, sync::Arc};

use bytes::Bytes;
use futures::{Stream, stream};
use tokio::sync::watch;

use super::{
    CacheError, Digest, FailCause,
    blob::{chunk_len, resolve_range},
    fill::{FillShared, Progress},
    readers::Tracked,
    store::read_chunk,
};

/// A follower of a fill in progress. Cheap to clone. It and every stream
/// made from it count as readers of the fill (readers.rs): when all are
/// gone, the fill stops after a grace.
#[derive(Clone)]
pub struct FillReader {
    shared: Tracked,
}

impl FillReader {
    pub(super) fn new(shared: Arc<FillShared>) -> Self {
        Self {
            shared: Tracked::new(shared),
        }
    }

    pub fn digest(&self) -> Digest {
        self.shared.digest
    }

    /// Whether the leader reads the bytes from the shared store (known
    /// once the size is).
    pub fn from_store(&self) -> bool {
        self.shared
            .from_store
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The total size, if known yet (given to `begin_fill` or declared by
    /// the leader). Without it a caller cannot send a Content-Length: see
    /// [`FillReader::known_size`].
    pub fn size(&self) -> Option<u64> {
        self.shared.expected_size.get().copied()
    }

    /// Waits until the size is known or cannot be before the end: returns
    /// `Some(size)` once the leader declared it (or the fill is verified),
    /// `None` if the leader started writing without declaring one (stream
    /// chunked then). Callers use this before sending response headers.
    pub async fn known_size(&self) -> Result<Option<u64>, CacheError> {
        let mut rx = self.shared.progress.subscribe();
        loop {
            let progress = rx.borrow_and_update().clone();
            if let Some(size) = self.size() {
                return Ok(Some(size));
            }
            match progress {
                Progress::Verified { size } => return Ok(Some(size)),
                Progress::Failed(reason, cause) => return Err(self.failed(reason, cause)),
                Progress::Writing { written } if written > 0 => return Ok(None),
                Progress::Opening | Progress::Writing { .. } => {}
            }
            if rx.changed().await.is_err() {
                return Err(self.failed("the leader went away".into(), FailCause::Internal));
            }
        }
    }

    /// Waits until the fill is verified (returns its size) or failed. The
    /// blob may still be on its way into the store when this returns.
    pub async fn wait(&self) -> Result<u64, CacheError> {
        let mut rx = self.shared.progress.subscribe();
        loop {
            let progress = rx.borrow_and_update().clone();
            match progress {
                Progress::Verified { size } => return Ok(size),
                Progress::Failed(reason, cause) => return Err(self.failed(reason, cause)),
                Progress::Opening | Progress::Writing { .. } => {}
            }
            if rx.changed().await.is_err() {
                return Err(self.failed("the leader went away".into(), FailCause::Internal));
            }
        }
    }

    /// Streams the blob, or the inclusive range `(first, last)`, as the
    /// leader writes it. Ranges behave as in [`super::Blob::stream`]; when
    /// the size is not known yet, an unsatisfiable range is reported once it
    /// is. Ends with an error if the fill fails; see the module docs for why
    /// the final byte waits for verification.
    pub fn stream(
        &self,
        range: Option<(u64, u64)>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let digest = self.shared.digest;
        // Only a range given before the size is known is checked at the end.
        let size = self.size();
        let unchecked = size.is_none() && range.is_some();
        let window = match (size, range) {
            (Some(size), range) => resolve_range(digest, range, size).map(|(s, e)| (s, Some(e))),
            (None, None) => Ok((0, None)),
            (None, Some((start, last))) if start <= last => {
                Ok((start, Some(last.saturating_add(1))))
            }
            (None, Some((start, end))) => Err(CacheError::RangeNotSatisfiable {
                digest,
                start,
                end,
                size: 0,
            }),
        };
        let follow = match window {
            Ok((start, end)) => Follow {
                shared: self.shared.clone(),
                rx: self.shared.progress.subscribe(),
                start,
                pos: start,
                end,
                unchecked,
                error: None,
                done: false,
            },
            Err(e) => Follow {
                shared: self.shared.clone(),
                rx: self.shared.progress.subscribe(),
                start: 0,
                pos: 0,
                end: Some(0),
                unchecked: false,
                error: Some(e),
                done: false,
            },
        };
        stream::unfold(follow, |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        })
    }

    fn failed(&self, reason: Arc<str>, cause: FailCause) -> CacheError {
        CacheError::FillFailed {
            digest: self.shared.digest,
            reason,
            cause,
        }
    }
}

/// One follower stream's position.
struct Follow {
    shared: Tracked,
    rx: watch::Receiver<Progress>,
    start: u64,
    pos: u64,
    /// Exclusive end, if known before verification (range or expected size).
    end: Option<u64>,
    /// The range was given before the size was known: check `start` once
    /// the size is.
    unchecked: bool,
    /// A range refused up front, reported as the first item.
    error: Option<CacheError>,
    done: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        if let Some(e) = self.error.take() {
            return self.fail(e);
        }
        loop {
            // Marks this value seen, so `changed` below waits for a newer one.
            let progress = self.rx.borrow_and_update().clone();
            let readable = match progress {
                Progress::Opening => 0,
                Progress::Writing { written } => {
                    // The hold-back: never the newest byte written, never the
                    // last byte of the response, until verified.
                    written.min(self.end.unwrap_or(u64::MAX)).saturating_sub(1)
                }
                Progress::Verified { size } => {
                    if self.unchecked && self.start >= size {
                        return self.fail(CacheError::RangeNotSatisfiable {
                            digest: self.shared.digest,
                            start: self.start,
                            end: self.end.map_or(0, |e| e - 1),
                            size,
                        });
                    }
                    let end = self.end.map_or(size, |e| e.min(size));
                    if self.pos >= end {
                        self.done = true;
                        return None;
                    }
                    end
                }
                Progress::Failed(reason, cause) => {
                    return self.fail(CacheError::FillFailed {
                        digest: self.shared.digest,
                        reason,
                        cause,
                    });
                }
            };
            if self.pos < readable {
                return Some(self.read_upto(readable).await);
            }
            if self.rx.changed().await.is_err() {
                return self.fail(CacheError::FillFailed {
                    digest: self.shared.digest,
                    reason: "the leader went away".into(),
                    cause: FailCause::Internal,
                });
            }
        }
    }

    async fn read_upto(&mut self, limit: u64) -> io::Result<Bytes> {
        // Set before progress left `Opening`, which it has if bytes are readable.
        let Some(file) = self.shared.file.get().cloned() else {
            self.done = true;
            return Err(io::Error::other("cache: fill progressed without a file"));
        };
        let len = chunk_len(self.pos, limit);
        // Caught up with the leader: the batch it wrote last, from memory.
        if let Some(bytes) = self.shared.recent_slice(self.pos, len) {
            self.pos += bytes.len() as u64;
            return Ok(bytes);
        }
        match read_chunk(file, self.pos, len).await {
            Ok(bytes) => {
                self.pos += len as u64;
                Ok(bytes)
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }

    fn fail(&mut self, e: CacheError) -> Option<io::Result<Bytes>> {
        self.done = true;
        Some(Err(e.into()))
    }
}

impl fmt::Debug for FillReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillReader")
            .field("digest", &self.shared.digest)
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}
