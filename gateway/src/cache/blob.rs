//! A complete, verified blob and the stream that reads it.
//!
//! A [`Blob`] holds an open descriptor of its file, taken when it was looked
//! up. Eviction only unlinks names, so a stream started from a `Blob` reads
//! to the end even if the blob is evicted meanwhile.

use std::{fs::File, io, sync::Arc};

use bytes::Bytes;
use futures::{Stream, stream};

use super::{
    CacheError, Digest,
    store::{READ_CHUNK, read_chunk},
};

/// A verified blob in the cache. Cheap to clone; clones share the descriptor.
#[derive(Clone, Debug)]
pub struct Blob {
    digest: Digest,
    size: u64,
    file: Arc<File>,
}

impl Blob {
    pub(super) fn new(digest: Digest, size: u64, file: Arc<File>) -> Self {
        Self { digest, size, file }
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Streams the blob, or the inclusive byte range `(first, last)` of it,
    /// in chunks of up to 256 KiB. `last` past the end is clamped (as HTTP
    /// ranges are); a range starting at or past the end, or with
    /// `first > last`, yields one [`CacheError::RangeNotSatisfiable`]
    /// (as `io::ErrorKind::InvalidInput`). Callers should validate with
    /// [`Blob::size`] first to answer `416` before sending headers.
    pub fn stream(
        &self,
        range: Option<(u64, u64)>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let state = match resolve_range(self.digest, range, self.size) {
            Ok((pos, end)) => Read::Range {
                file: Arc::clone(&self.file),
                pos,
                end,
            },
            Err(e) => Read::Fail(e),
        };
        stream::unfold(state, |state| async move {
            match state {
                Read::Range { file, pos, end } if pos < end => {
                    let len = chunk_len(pos, end);
                    match read_chunk(Arc::clone(&file), pos, len).await {
                        Ok(bytes) => Some((
                            Ok(bytes),
                            Read::Range {
                                file,
                                pos: pos + len as u64,
                                end,
                            },
                        )),
                        Err(e) => Some((Err(e), Read::Done)),
                    }
                }
                Read::Fail(e) => Some((Err(e.into()), Read::Done)),
                Read::Range { .. } | Read::Done => None,
            }
        })
    }
}

enum Read {
    Range { file: Arc<File>, pos: u64, end: u64 },
    Fail(CacheError),
    Done,
}

/// Bytes to read next: a full chunk, or what is left before `end`.
pub(super) fn chunk_len(pos: u64, end: u64) -> usize {
    // Fits in usize: bounded by READ_CHUNK.
    end.saturating_sub(pos).min(READ_CHUNK as u64) as usize
}

/// Turns an optional inclusive range into `[start, end)` within `size`.
pub(super) fn resolve_range(
    digest: Digest,
    range: Option<(u64, u64)>,
    size: u64,
) -> Result<(u64, u64), CacheError> {
    match range {
        None => Ok((0, size)),
        Some((start, last)) if start <= last && start < size => Ok((start, last.min(size - 1) + 1)),
        Some((start, end)) => Err(CacheError::RangeNotSatisfiable {
            digest,
            start,
            end,
            size,
        }),
    }
}
