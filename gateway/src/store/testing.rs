//! An in-memory store for tests that can be made to fail or hang, and to
//! ignore conditional creates the way Garage 2.5 does.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, memory::InMemory,
    path::Path,
};

use super::{SharedStore, Tuning};

/// How [`Faulty`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Ok = 0,
    Fail = 1,
    Hang = 2,
}

/// [`InMemory`] behind a switch.
#[derive(Debug, Default)]
pub struct Faulty {
    pub inner: InMemory,
    mode: AtomicU8,
    /// Calls that reached the store (made while any mode was set).
    pub calls: AtomicUsize,
    /// Conditional creates are plain writes (Garage 2.5).
    pub ignore_create: bool,
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faulty")
    }
}

impl Faulty {
    pub fn garage_like() -> Self {
        Self {
            ignore_create: true,
            ..Self::default()
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    async fn gate(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            0 => Ok(()),
            1 => Err(object_store::Error::Generic {
                store: "Faulty",
                source: "connection refused".into(),
            }),
            _ => std::future::pending().await,
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        self.gate().await?;
        if self.ignore_create && opts.mode == PutMode::Create {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.gate().await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gate().await?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        match self.mode.load(Ordering::SeqCst) {
            0 => {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.inner.delete_stream(locations)
            }
            1 => futures::stream::once(async {
                Err(object_store::Error::Generic {
                    store: "Faulty",
                    source: "connection refused".into(),
                })
            })
            .boxed(),
            _ => futures::stream::pending().boxed(),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            0 => self.inner.list(prefix),
            1 => futures::stream::once(async {
                Err(object_store::Error::Generic {
                    store: "Faulty",
                    source: "connection refused".into(),
                })
            })
            .boxed(),
            _ => futures::stream::pending().boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.gate().await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.gate().await?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// Short timings for tests.
pub fn quick() -> Tuning {
    Tuning {
        timeout: Duration::from_millis(300),
        probe_every: Duration::from_millis(50),
        settle: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(30),
        poll: Duration::from_millis(20),
        part_size: 64 * 1024,
    }
}

/// A tier named `id` over `objects`, its lease mode learnt.
pub async fn tier(objects: Arc<Faulty>, id: &str, tuning: Tuning) -> SharedStore {
    let store = SharedStore::new(objects, None, id.to_owned(), "test".to_owned(), tuning);
    store.check_now().await;
    store
}

/// Puts `bytes` under the blob key of `digest` (whatever they are).
pub async fn plant(objects: &Faulty, digest: &crate::cache::Digest, bytes: &[u8]) {
    use object_store::ObjectStoreExt as _;
    objects
        .inner
        .put(
            &Path::from(format!("blobs/sha256/{}", digest.hex())),
            PutPayload::from(bytes.to_vec()),
        )
        .await
        .unwrap();
}

/// The bytes under the blob key of `digest`, if any.
pub async fn held(objects: &Faulty, digest: &crate::cache::Digest) -> Option<Vec<u8>> {
    use object_store::ObjectStoreExt as _;
    match objects
        .inner
        .get(&Path::from(format!("blobs/sha256/{}", digest.hex())))
        .await
    {
        Ok(g) => Some(g.bytes().await.unwrap().to_vec()),
        Err(_) => None,
    }
}

/// Waits (bounded) for `f` to hold.
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}
