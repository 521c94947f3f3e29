//! Why a store call failed.

/// A failed store call. `NotFound` and `Exists` are answers, not
/// failures: they leave the store marked reachable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Marked unreachable after an earlier failure; not asked.
    #[error("the shared store is unreachable (skipped until a probe succeeds)")]
    Down,
    #[error("the shared store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("no such object in the shared store")]
    NotFound,
    /// A conditional create found the object there.
    #[error("the object exists in the shared store")]
    Exists,
    #[error("shared store: {0}")]
    Store(#[source] object_store::Error),
    /// A ref object that is not the JSON this gateway writes.
    #[error("shared store: bad ref object: {0}")]
    BadRef(String),
    #[error("shared store: local cache: {0}")]
    Local(String),
}

impl StoreError {
    /// Whether this failure says the store (or the way to it) is broken,
    /// so the tier is skipped until a probe succeeds.
    pub fn marks_down(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Store(_))
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Self::NotFound,
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => Self::Exists,
            other => Self::Store(other),
        }
    }
}
