//! Pins: named sets of digests that eviction never touches, so content can
//! be pre-seeded before a site goes offline. A pin may name blobs not (yet)
//! held; it protects them once they are filled.

use std::sync::Arc;

use super::{Cache, CacheError, Digest};

impl Cache {
    /// Sets pin `name` to exactly `digests` (replacing its previous set).
    pub async fn pin(&self, name: &str, digests: &[Digest]) -> Result<(), CacheError> {
        let _writes = self.inner.pin_writes.lock().await;
        // Memory first: an eviction pass running meanwhile already spares
        // these blobs. Undone if the index write fails.
        let previous = self
            .inner
            .state()
            .pins
            .insert(name.to_owned(), digests.to_vec());
        let inner = Arc::clone(&self.inner);
        let (owned_name, owned) = (name.to_owned(), digests.to_vec());
        let stored =
            tokio::task::spawn_blocking(move || inner.index.set_pin(&owned_name, Some(&owned)))
                .await
                .map_err(CacheError::task("store a pin"))
                .and_then(|r| r);
        if stored.is_err() {
            let mut state = self.inner.state();
            match previous {
                Some(p) => state.pins.insert(name.to_owned(), p),
                None => state.pins.remove(name),
            };
        } else {
            // A shrunken set may have released blobs.
            self.schedule_maintenance();
        }
        stored
    }

    /// Removes pin `name`; true if it existed. Its blobs become evictable
    /// (unless another pin names them).
    pub async fn unpin(&self, name: &str) -> Result<bool, CacheError> {
        let _writes = self.inner.pin_writes.lock().await;
        // Index first: until memory changes too, the blobs stay protected,
        // which is the safe side if the write fails.
        let inner = Arc::clone(&self.inner);
        let owned_name = name.to_owned();
        tokio::task::spawn_blocking(move || inner.index.set_pin(&owned_name, None))
            .await
            .map_err(CacheError::task("remove a pin"))??;
        let existed = self.inner.state().pins.remove(name).is_some();
        if existed {
            self.schedule_maintenance();
        }
        Ok(existed)
    }

    /// Every pin and its digests, sorted by name.
    pub fn list_pins(&self) -> Vec<(String, Vec<Digest>)> {
        self.inner
            .state()
            .pins
            .iter()
            .map(|(name, digests)| (name.clone(), digests.clone()))
            .collect()
    }
}
