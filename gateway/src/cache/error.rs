//! The cache's one error type.
//!
//! Every variant names what it was doing and on what, so a log line says
//! what to check. [`CacheError::is_upstream_fault`] tells the proxy whose
//! fault a failed fill was, for the audit record.

use std::{io, path::PathBuf, sync::Arc};

use thiserror::Error;

use super::Digest;

#[derive(Debug, Error)]
pub enum CacheError {
    /// A well-formed digest of an algorithm the cache does not store; the
    /// caller proxies the content without caching it.
    #[error("digest algorithm {algorithm:?} is not cached (only sha256 is)")]
    UnsupportedDigest { algorithm: String },

    /// Not a digest at all (or a sha256 digest that is not 64 lowercase hex).
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: &'static str },

    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The embedded index failed; check the disk under the cache directory,
    /// and that no other gateway process has the same cache open.
    #[error("cache index: cannot {op}: {source}")]
    Index {
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },

    /// A stored reference or pin no longer parses (written by another version?).
    #[error("cache index: the entry for {key:?} is corrupt: {source}")]
    IndexEntry {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// A blocking task (disk or index work) panicked or was cancelled.
    #[error("cache: the background task to {op} did not finish: {source}")]
    Task {
        op: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },

    /// Upstream sent bytes whose sha256 is not the digest asked for.
    /// Nothing was stored.
    #[error("upstream sent the wrong content for {expected}: its digest is {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },

    /// Upstream sent more bytes than it announced.
    #[error("upstream sent more than the {expected} bytes announced for {digest}")]
    TooLong { digest: Digest, expected: u64 },

    /// Upstream announced a size that contradicts the one already known
    /// (from a descriptor) or the bytes it already sent.
    #[error("upstream announced {announced} bytes for {digest}, but {expected} are known")]
    SizeConflict {
        digest: Digest,
        expected: u64,
        announced: u64,
    },

    /// Upstream ended before the announced size.
    #[error("upstream sent {received} of the {expected} bytes announced for {digest}")]
    Truncated {
        digest: Digest,
        expected: u64,
        received: u64,
    },

    /// The fill this reader was following failed; the reason is the leader's
    /// error, `cause` whose fault it was. A retry starts a new fill.
    #[error("the fill of {digest} failed: {reason}")]
    FillFailed {
        digest: Digest,
        reason: Arc<str>,
        cause: FailCause,
    },

    /// Larger than `cache.max_blob_size`: refused before a byte is written
    /// when announced, cut off at the limit when not.
    #[error("{digest} is larger than cache.max_blob_size ({limit} bytes): {size} bytes {how}")]
    TooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
        /// `announced` or `received, and more coming`.
        how: &'static str,
    },

    /// No room for a fill: under `cache.max_size` once everything evictable
    /// is counted out, or on the cache's filesystem.
    #[error("no room in the cache for {digest} ({needed} bytes): {detail}")]
    NoSpace {
        digest: Digest,
        needed: u64,
        detail: String,
    },

    /// `cache.max_concurrent_fills` fills are running; a new one is refused
    /// rather than queued (a client retries).
    #[error(
        "{limit} fills are in progress, the most cache.max_concurrent_fills allows; retry shortly"
    )]
    TooManyFills { limit: usize },

    /// A byte range that does not lie within the blob.
    #[error("range {start}-{end} is outside {digest} ({size} bytes)")]
    RangeNotSatisfiable {
        digest: Digest,
        start: u64,
        end: u64,
        size: u64,
    },

    /// The fill was already finished or failed; a leader writes no more.
    #[error("the fill of {digest} is no longer writable (it already failed or finished)")]
    FillClosed { digest: Digest },
}

impl CacheError {
    /// True when the upstream's content was at fault (the client may retry
    /// later; the cache is fine).
    pub fn is_upstream_fault(&self) -> bool {
        matches!(
            self,
            Self::DigestMismatch { .. }
                | Self::TooLong { .. }
                | Self::Truncated { .. }
                | Self::SizeConflict { .. }
        )
    }

    /// Whose fault a fill that failed with this error was, for its readers.
    pub fn cause(&self) -> FailCause {
        match self {
            Self::FillFailed { cause, .. } => *cause,
            Self::TooLarge { .. } => FailCause::TooLarge,
            Self::NoSpace { .. } | Self::TooManyFills { .. } => FailCause::NoSpace,
            Self::Io { source, .. } if is_storage_full(source) => FailCause::NoSpace,
            e if e.is_upstream_fault() => FailCause::Upstream,
            _ => FailCause::Internal,
        }
    }

    pub(super) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    pub(super) fn index<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> Self {
        move |source| Self::Index {
            op,
            source: Box::new(source.into()),
        }
    }

    pub(super) fn task(op: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| Self::Task { op, source }
    }
}

/// Why a fill failed, as every reader of it learns: the proxy answers
/// each reader by it (an upstream 404 is a 404 to all of them, a full
/// cache is the gateway's own limit, not upstream's fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailCause {
    /// Upstream answered this status instead of the content.
    Status(u16),
    /// Upstream's connection broke or its content was wrong.
    Upstream,
    /// Larger than `cache.max_blob_size`.
    TooLarge,
    /// No room under `cache.max_size` or on the disk.
    NoSpace,
    /// The gateway's own failure (disk, configuration, a fill nobody
    /// followed any more).
    Internal,
}

/// ENOSPC or EDQUOT.
pub(super) fn is_storage_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Streams carry `io::Error`; the cache error rides inside so the caller
/// can downcast it for the audit record.
impl From<CacheError> for io::Error {
    fn from(e: CacheError) -> Self {
        let kind = match &e {
            CacheError::RangeNotSatisfiable { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
