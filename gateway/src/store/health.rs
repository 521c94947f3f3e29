//! Reachability: an unreachable store is probed in the background until
//! it answers; requests skip it meanwhile.

use std::sync::{PoisonError, atomic::Ordering};

use object_store::ObjectStoreExt as _;

use super::{LeaseMode, SharedStore, StoreError};

impl SharedStore {
    /// One probe now (at start): marks the store down if it does not
    /// answer, and learns the lease mechanism if it does.
    pub async fn check_now(&self) {
        match self.probe_once().await {
            Ok(()) => self.learn_lease_mode().await,
            Err(e) => self.mark_down(&e),
        }
    }

    /// A HEAD of a key that need not exist: any answer (found or not
    /// found) means the store and the credentials work.
    pub(super) async fn probe_once(&self) -> Result<(), StoreError> {
        let timeout = self.inner.tuning.timeout;
        let key = self.key("probe");
        match tokio::time::timeout(timeout, self.inner.objects.head(&key)).await {
            Err(_) => Err(StoreError::Timeout(timeout)),
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Store(e)),
        }
    }

    /// Starts the probe loop unless one runs.
    pub(super) fn spawn_probe(&self) {
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.inner.tuning.probe_every).await;
                match me.probe_once().await {
                    Ok(()) => break,
                    Err(e) => {
                        *me.inner
                            .last_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                    }
                }
            }
            me.inner.up.store(true, Ordering::Relaxed);
            me.inner.probing.store(false, Ordering::Release);
            tracing::info!(store = %me.inner.location, "shared store reachable again");
            if me.lease_mode() == LeaseMode::Unknown {
                me.learn_lease_mode().await;
            }
        });
    }
}
