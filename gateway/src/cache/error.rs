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
    /// error. A retry starts a new fill.
    #[error("the fill of {digest} failed: {reason}")]
    FillFailed { digest: Digest, reason: Arc<str> },

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
