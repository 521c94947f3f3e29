//! Who follows a fill, so that a fill nobody wants any more stops.
//!
//! Every [`super::FillReader`] and every stream made from one holds a
//! [`Tracked`] handle, which counts as one reader while it lives. A client
//! that hangs up drops its response body (the stream) and its handler (the
//! reader), so the count falls to zero once every client of a fill is gone.
//! [`unfollowed`] then waits `grace` and, if still nobody came, takes the
//! fill out of the map under the state lock. `begin_fill` makes followers
//! under that same lock, so from then on nobody can join the fill: its
//! leader stops it and the temp file goes, with no reader left to see it
//! fail.

use std::{
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use super::{Inner, fill::FillShared};

/// The reader count of one fill.
#[derive(Default)]
pub(super) struct Readers {
    live: AtomicUsize,
    /// Readers ever made: a reader who came and went during the grace
    /// restarts it.
    joined: AtomicU64,
    /// Woken when the last reader goes.
    gone: Notify,
}

/// A fill handle that counts as one reader while it lives.
pub(super) struct Tracked(Arc<FillShared>);

impl Tracked {
    pub(super) fn new(shared: Arc<FillShared>) -> Self {
        shared.readers.live.fetch_add(1, Ordering::SeqCst);
        shared.readers.joined.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.0))
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.readers.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.readers.gone.notify_waiters();
        }
    }
}

impl Deref for Tracked {
    type Target = Arc<FillShared>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Resolves once the fill has had no reader for `grace`, after taking it
/// out of the map (nobody can join it any more). Pending for as long as
/// someone follows.
pub(super) async fn unfollowed(inner: Arc<Inner>, shared: Arc<FillShared>, grace: Duration) {
    let readers = &shared.readers;
    loop {
        loop {
            // Created before the check: a last reader leaving in between
            // still wakes it.
            let gone = readers.gone.notified();
            if readers.live.load(Ordering::SeqCst) == 0 {
                break;
            }
            gone.await;
        }
        let joined = readers.joined.load(Ordering::SeqCst);
        tokio::time::sleep(grace).await;
        let mut state = inner.state();
        if readers.live.load(Ordering::SeqCst) == 0
            && readers.joined.load(Ordering::SeqCst) == joined
        {
            super::fill::remove_fill(&mut state.fills, &shared);
            return;
        }
    }
}
