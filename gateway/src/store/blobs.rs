//! Blobs in the store: read into a local fill (which verifies them), and
//! written behind a verified local fill.

use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use object_store::{ObjectStoreExt as _, PutPayload, WriteMultipart};

use super::{SharedStore, StoreError};
use crate::cache::{Blob, Digest};

/// What a read of the store found.
pub enum ReadOutcome {
    /// The object, its size and its bytes (each chunk under the
    /// deadline).
    Found {
        size: u64,
        body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>,
    },
    /// Not there (or not to be read: the store is down, or this object
    /// failed verification before).
    Absent,
}

/// The blob `digest` from the store, if it holds it.
pub async fn read_into(store: &SharedStore, digest: &Digest) -> ReadOutcome {
    if store.is_bad(digest) {
        return ReadOutcome::Absent;
    }
    let key = store.key(&SharedStore::blob_key(digest));
    match store.call(store.inner.objects.get(&key)).await {
        Ok(got) => {
            let size = got.meta.size;
            let idle = store.inner.tuning.timeout;
            let me = store.clone();
            let body = got.into_stream().map_err(StoreError::from);
            // A body that stalls fails the fill (and marks the store
            // down) instead of holding its readers.
            let body = futures::stream::unfold(Some(Box::pin(body)), move |state| {
                let me = me.clone();
                async move {
                    let mut body = state?;
                    match tokio::time::timeout(idle, body.next()).await {
                        Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                        Ok(None) => None,
                        Ok(Some(Err(e))) => {
                            me.inner.stats.read_error();
                            me.mark_down(&e);
                            Some((Err(e), None))
                        }
                        Err(_) => {
                            let e = StoreError::Timeout(idle);
                            me.inner.stats.read_error();
                            me.mark_down(&e);
                            Some((Err(e), None))
                        }
                    }
                }
            });
            ReadOutcome::Found {
                size,
                body: Box::pin(body),
            }
        }
        Err(StoreError::NotFound) => {
            store.inner.stats.read_miss();
            ReadOutcome::Absent
        }
        Err(StoreError::Down) => ReadOutcome::Absent,
        Err(e) => {
            store.inner.stats.read_error();
            tracing::warn!(%digest, error = %e, "shared store read failed; fetching upstream");
            ReadOutcome::Absent
        }
    }
}

impl SharedStore {
    /// The size of the store's copy of `digest`, if it holds one (and the
    /// store is up).
    pub async fn blob_size(&self, digest: &Digest) -> Option<u64> {
        if self.is_bad(digest) {
            return None;
        }
        let key = self.key(&Self::blob_key(digest));
        self.call(self.inner.objects.head(&key))
            .await
            .ok()
            .map(|m| m.size)
    }

    /// A read of `digest` filled the local cache: counted.
    pub fn read_done(&self, size: u64) {
        self.inner.stats.read_hit(size);
    }

    /// The store's object for `digest` did not match it (or was not the
    /// size it said): it is deleted, so the next fill goes upstream and
    /// writes a good copy; if the delete fails, this gateway stops
    /// reading that object.
    pub async fn reject(&self, digest: &Digest, why: &str) {
        self.inner.stats.read_bad();
        tracing::error!(%digest, reason = why,
            "shared store object failed verification: deleted, the next fill goes upstream");
        let key = self.key(&Self::blob_key(digest));
        if let Err(e) = self.call(self.inner.objects.delete(&key)).await {
            tracing::warn!(%digest, error = %e,
                "could not delete the bad shared store object; this gateway no longer reads it");
            self.remember_bad(*digest);
        }
    }

    /// Uploads a verified local blob unless the store has it already.
    /// Parts of `part_size` above that size (multipart upload, which
    /// becomes visible only when complete).
    pub async fn upload(&self, blob: &Blob) -> Result<bool, StoreError> {
        let key = self.key(&Self::blob_key(&blob.digest()));
        match self.call(self.inner.objects.head(&key)).await {
            Ok(_) => return Ok(false),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let result = self.upload_new(&key, blob).await;
        match &result {
            Ok(()) => self.inner.stats.uploaded(blob.size()),
            Err(e) => {
                self.inner.stats.upload_error();
                tracing::warn!(digest = %blob.digest(), error = %e, "shared store upload failed");
            }
        }
        result.map(|()| true)
    }

    async fn upload_new(
        &self,
        key: &object_store::path::Path,
        blob: &Blob,
    ) -> Result<(), StoreError> {
        let part = self.inner.tuning.part_size;
        if blob.size() <= part as u64 {
            let bytes = crate::registry::read_whole(blob, part)
                .await
                .map_err(|e| StoreError::Local(e.to_string()))?;
            return self
                .call_long(
                    self.inner.objects.put(key, PutPayload::from(bytes)),
                    blob.size(),
                )
                .await
                .map(|_| ());
        }
        let upload = self.call(self.inner.objects.put_multipart(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let mut stream = std::pin::pin!(blob.stream(None));
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(StoreError::Local(e.to_string()));
                }
            };
            // At most a couple of parts in flight: memory stays bounded.
            if let Err(e) = self
                .call_long(writer.wait_for_capacity(2), part as u64)
                .await
            {
                let _ = writer.abort().await;
                return Err(e);
            }
            writer.put(chunk);
        }
        self.call_long(writer.finish(), part as u64 * 2)
            .await
            .map(|_| ())
    }

    /// Writes the bytes of a small object (a document) by digest, unless
    /// the store has it.
    pub async fn upload_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<bool, StoreError> {
        let key = self.key(&Self::blob_key(digest));
        match self.call(self.inner.objects.head(&key)).await {
            Ok(_) => return Ok(false),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let len = bytes.len() as u64;
        self.call(self.inner.objects.put(&key, PutPayload::from(bytes)))
            .await?;
        self.inner.stats.uploaded(len);
        Ok(true)
    }

    /// The whole object `digest` if the store holds it and it is no
    /// larger than `max`; checked against the digest (a bad one is
    /// rejected).
    pub async fn read_small(
        &self,
        digest: &Digest,
        max: usize,
    ) -> Result<Option<Bytes>, StoreError> {
        if self.is_bad(digest) {
            return Ok(None);
        }
        let key = self.key(&Self::blob_key(digest));
        let got = match self.call(self.inner.objects.get(&key)).await {
            Ok(g) => g,
            Err(StoreError::NotFound) => {
                self.inner.stats.read_miss();
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if got.meta.size > max as u64 {
            return Ok(None);
        }
        let bytes = self.call(got.bytes()).await?;
        if Digest::of(&bytes) != *digest {
            self.reject(digest, "digest mismatch").await;
            return Ok(None);
        }
        self.inner.stats.read_hit(bytes.len() as u64);
        Ok(Some(bytes))
    }

    /// [`SharedStore::call`] with a deadline that grows with the bytes
    /// moved (one `timeout` plus a second per MiB): uploads are
    /// background work, and a big part takes longer than a HEAD.
    async fn call_long<T, F>(&self, fut: F, bytes: u64) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, object_store::Error>>,
    {
        if !self.is_up() {
            return Err(StoreError::Down);
        }
        let deadline = self.inner.tuning.timeout + std::time::Duration::from_secs(bytes >> 20);
        let result = match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(deadline)),
        };
        if let Err(e) = &result
            && e.marks_down()
        {
            self.mark_down(e);
        }
        result
    }
}
