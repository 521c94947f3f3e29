//! Filling the cache from upstream, shared by the handlers whose content
//! is named by a digest before it is fetched (OCI blobs, Helm charts):
//! the fill's task ([`lead`]) makes the whole upstream request and pumps
//! the body into the cache, which verifies the digest; the clients follow
//! the fill as readers.

use futures::{FutureExt as _, Stream, StreamExt as _};
use http::{StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::{
    cache::{Blob, Cache, CacheError, Digest, FailCause, Fill, FillWriter},
    proxy::body::Body,
    upstream::{self, Upstream, UpstreamRequest},
};

/// Stores bytes already in memory (a document, an index) by their
/// digest; a no-op when they are held or being filled.
///
/// With a shared store, bytes stored here (verified by construction: the
/// digest is computed from them) are uploaded behind, in the background.
pub(super) async fn store_bytes(cache: &Cache, bytes: &[u8]) -> Result<Digest, CacheError> {
    let digest = Digest::of(bytes);
    if let Fill::Leader(mut writer) = cache.begin_fill(&digest, Some(bytes.len() as u64)).await? {
        writer.write(bytes).await?;
        writer.finish().await?;
        if let Some(store) = cache.shared() {
            let bytes = bytes::Bytes::copy_from_slice(bytes);
            tokio::spawn(async move {
                if let Err(e) = store.upload_bytes(&digest, bytes).await {
                    tracing::debug!(%digest, error = %e, "document not written to the shared store");
                }
            });
        }
    }
    Ok(digest)
}

/// A held blob read into memory, refused past `max` bytes.
pub(crate) async fn read_blob(blob: &Blob, max: usize) -> Result<bytes::Bytes, std::io::Error> {
    if blob.size() > max as u64 {
        return Err(std::io::Error::other(format!(
            "{} is larger than {max} bytes",
            blob.digest()
        )));
    }
    let mut out = Vec::with_capacity(blob.size() as usize);
    let mut stream = std::pin::pin!(blob.stream(None));
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(bytes::Bytes::from(out))
}

/// The fill's task: asks upstream, declares the size, pumps the body; or
/// stops once no client follows the fill any more (its temp file goes).
pub(super) async fn lead(upstream: Upstream, req: UpstreamRequest, writer: FillWriter) {
    lead_pulled(upstream, req, writer, None).await;
}

/// [`lead`], with the body read through `pull` (a mirror's `max_rate` and
/// byte count) when given.
pub(super) async fn lead_pulled(
    upstream: Upstream,
    req: UpstreamRequest,
    writer: FillWriter,
    pull: Option<std::sync::Arc<crate::mirror::rate::Pull>>,
) {
    let digest = writer.digest();
    let unfollowed = writer.unfollowed();
    let cache = writer.cache().clone();
    let behind = tokio::select! {
        behind = fill_tiered(&upstream, req, writer, pull) => behind,
        () = unfollowed => {
            // Dropping the fetch dropped the writer, which failed the fill
            // and removed its temp file (and a lease, which released it).
            tracing::info!(%digest, "blob fill stopped: no client follows it any more");
            None
        }
    };
    // Outside the select: the upload goes on after the readers left.
    if let Some(WriteBehind { store, lease }) = behind {
        write_behind(&cache, &store, &digest).await;
        if let Some(guard) = lease {
            guard.release().await;
        }
    }
}

/// A fill from upstream with a shared store: upload the blob, then
/// release the lease.
struct WriteBehind {
    store: crate::store::SharedStore,
    lease: Option<crate::store::LeaseGuard>,
}

/// The fill from the shared store when it holds the blob; else from
/// upstream, after the store's lease says this gateway is the one to
/// fetch (or that another gateway has meanwhile put it in the store).
/// Without a store, straight from upstream.
async fn fill_tiered(
    upstream: &Upstream,
    req: UpstreamRequest,
    writer: FillWriter,
    pull: Option<std::sync::Arc<crate::mirror::rate::Pull>>,
) -> Option<WriteBehind> {
    let Some(store) = writer.cache().shared().filter(|s| s.is_up()) else {
        fetch_into(upstream, req, writer, pull).await;
        return None;
    };
    let digest = writer.digest();
    let writer = from_store(&store, writer).await?;
    let lease = match store.lease(&digest).await {
        crate::store::Lease::InStore => {
            // Gone again (deleted as bad, or the store went down): fetch.
            let writer = from_store(&store, writer).await?;
            fetch_into(upstream, req, writer, pull).await;
            return Some(WriteBehind { store, lease: None });
        }
        crate::store::Lease::Won(guard) => Some(guard),
        crate::store::Lease::Alone => None,
    };
    fetch_into(upstream, req, writer, pull).await;
    Some(WriteBehind { store, lease })
}

/// Uploads the blob a fill just stored locally (verified). Runs in the
/// fill's task after its readers were answered: no client waits for it;
/// a lease is released only after it, so waiting gateways find the blob.
async fn write_behind(cache: &Cache, store: &crate::store::SharedStore, digest: &Digest) {
    let Ok(Some(blob)) = cache.get(digest).await else {
        return;
    };
    if let Err(e) = store.upload(&blob).await {
        tracing::debug!(%digest, error = %e, "blob not written to the shared store");
    }
}

/// Fills from the store if it holds the blob: `None` when the fill ended
/// (verified, or failed for its readers), the writer back when the store
/// does not have it.
async fn from_store(store: &crate::store::SharedStore, writer: FillWriter) -> Option<FillWriter> {
    let digest = writer.digest();
    let crate::store::ReadOutcome::Found { size, body } =
        crate::store::read_into(store, &digest).await
    else {
        return Some(writer);
    };
    writer.mark_from_store();
    let mut writer = writer;
    if let Err(e) = writer.set_size(size).await {
        tracing::warn!(%digest, error = %e, "blob fill from the shared store refused");
        return None;
    }
    match pump(writer, body).await {
        Pumped::Stored => store.read_done(size),
        Pumped::Rejected(e) => store.reject(&digest, &e.to_string()).await,
        Pumped::Failed => {}
    }
    None
}

/// Requests the blob and writes it into the fill, failing the fill with
/// the cause its readers answer by.
async fn fetch_into(
    upstream: &Upstream,
    req: UpstreamRequest,
    writer: FillWriter,
    pull: Option<std::sync::Arc<crate::mirror::rate::Pull>>,
) {
    let resp = match upstream.send(req).await {
        Ok(r) => r,
        Err(e) => {
            let cause = match e.fault() {
                upstream::Fault::Upstream => FailCause::Upstream,
                upstream::Fault::Internal => FailCause::Internal,
            };
            writer.fail_with(cause, &e);
            return;
        }
    };
    let status = resp.status();
    if status != StatusCode::OK {
        writer.fail_with(
            FailCause::Status(status.as_u16()),
            format!("upstream answered {status}"),
        );
        return;
    }
    // Followers learn the size from here on, and can be told a
    // Content-Length; a size over the limits is refused before any byte.
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut writer = writer;
    if let Some(len) = length
        && let Err(e) = writer.set_size(len).await
    {
        // set_size failed the fill for every reader.
        tracing::warn!(digest = %writer.digest(), error = %e, "blob fill refused");
        return;
    }
    let body = upstream.body_stream(resp);
    match pull {
        None => {
            pump(writer, Box::pin(body)).await;
        }
        Some(pull) => {
            // Each chunk is counted, and waits for the limit, before the
            // next is read.
            let paced = body.then(move |chunk| {
                let pull = pull.clone();
                async move {
                    if let Ok(c) = &chunk {
                        pull.take(c.len()).await;
                    }
                    chunk
                }
            });
            pump(writer, Box::pin(paced)).await;
        }
    }
}

/// Upstream chunks that have already arrived are written together up to
/// this size: each write is a trip to the blocking pool and wakes every
/// follower, and upstream's chunks are TLS records (16 KiB at most).
const FILL_BATCH: usize = 256 * 1024;

/// Batches in flight between the upstream reader and the disk writer.
const FILL_QUEUE: usize = 4;

/// Writes the upstream body into the fill; the fill verifies the digest.
///
/// Reading upstream and writing (hashing) run side by side: the batches
/// go through a short queue to a writer task, so upstream's connection
/// keeps flowing while a batch is hashed and written. Either side's
/// failure fails the fill for every reader.
pub(super) async fn pump<E: std::fmt::Display>(
    writer: FillWriter,
    mut body: impl Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Pumped {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(FILL_QUEUE);
    let disk = tokio::spawn(async move {
        let mut writer = writer;
        while let Some(batch) = rx.recv().await {
            if let Err(e) = writer.write_bytes(batch).await {
                // write_bytes has failed the fill for everyone already.
                tracing::warn!(error = %e, "blob fill failed");
                return None;
            }
        }
        Some(writer)
    });
    let outcome = read_batches(&mut body, &tx).await;
    drop(tx);
    let Ok(Some(writer)) = disk.await else {
        // The writer failed (the fill with it), or its task panicked, in
        // which case the dropped writer failed the fill.
        return Pumped::Failed;
    };
    match outcome {
        Ok(()) => match writer.finish().await {
            Ok(_) => Pumped::Stored,
            Err(e) => {
                tracing::warn!(error = %e, "blob fill rejected");
                if matches!(
                    e,
                    CacheError::DigestMismatch { .. }
                        | CacheError::Truncated { .. }
                        | CacheError::TooLong { .. }
                ) {
                    Pumped::Rejected(e)
                } else {
                    Pumped::Failed
                }
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "body failed during a blob fill");
            writer.fail(&e);
            Pumped::Failed
        }
    }
}

/// How [`pump`] ended.
pub(super) enum Pumped {
    /// Verified and stored.
    Stored,
    /// The bytes were not the blob (digest or size).
    Rejected(CacheError),
    /// The body or the disk failed.
    Failed,
}

/// Reads the body into batches of up to [`FILL_BATCH`] (joining only
/// chunks that are ready, never waiting for more) and queues them. Stops at
/// the end, at upstream's first error (after queueing what came before),
/// or when the writer has gone.
async fn read_batches<E>(
    body: &mut (impl Stream<Item = Result<bytes::Bytes, E>> + Unpin),
    tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<(), E> {
    loop {
        let mut batch = match body.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        };
        let mut next: Option<Result<(), E>> = None;
        if batch.len() < FILL_BATCH {
            let mut joined: Option<bytes::BytesMut> = None;
            while joined.as_ref().map_or(batch.len(), |j| j.len()) < FILL_BATCH {
                match body.next().now_or_never() {
                    Some(Some(Ok(more))) => joined
                        .get_or_insert_with(|| {
                            let mut j = bytes::BytesMut::with_capacity(FILL_BATCH + more.len());
                            j.extend_from_slice(&batch);
                            j
                        })
                        .extend_from_slice(&more),
                    Some(Some(Err(e))) => {
                        next = Some(Err(e));
                        break;
                    }
                    Some(None) => {
                        next = Some(Ok(()));
                        break;
                    }
                    None => break,
                }
            }
            if let Some(j) = joined {
                batch = j.freeze();
            }
        }
        if tx.send(batch).await.is_err() {
            // The writer failed; it has failed the fill.
            return Ok(());
        }
        if let Some(end) = next {
            return end;
        }
    }
}

/// A cache stream (a blob, a fill being written) as a response body.
pub(super) fn stream_body<S>(s: S) -> Body
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    BodyExt::boxed_unsync(StreamBody::new(s.map(|r| r.map(Frame::data))))
}

#[cfg(test)]
mod tests {
    //! `pump`'s batching of ready chunks: what arrives is stored whole and
    //! verified, and an upstream error inside a batch still fails the fill.
    use bytes::Bytes;
    use futures::stream;

    use super::pump;
    use crate::{
        cache::{Cache, Digest, Fill},
        upstream::UpstreamError,
    };

    fn content() -> Vec<u8> {
        (0..(FILL_TEST_CHUNKS * 16 * 1024))
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }
    const FILL_TEST_CHUNKS: usize = 40;

    /// A cache in a temp dir, the test content, and the fill of it that
    /// this test leads (with a reader following it).
    async fn leading_fill() -> (
        tempfile::TempDir,
        Cache,
        Vec<u8>,
        Digest,
        crate::cache::FillWriter,
        crate::cache::FillReader,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path(), 1 << 30).await.expect("cache");
        let data = content();
        let digest = Digest::of(&data);
        let writer = match cache
            .begin_fill(&digest, Some(data.len() as u64))
            .await
            .expect("begin")
        {
            Fill::Leader(w) => w,
            _ => panic!("expected to lead the fill"),
        };
        let reader = writer.reader();
        (dir, cache, data, digest, writer, reader)
    }

    #[tokio::test]
    async fn ready_chunks_are_batched_and_the_blob_verified() {
        let (_dir, cache, data, digest, writer, reader) = leading_fill().await;
        let chunks: Vec<Result<Bytes, UpstreamError>> = data
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        pump(writer, stream::iter(chunks)).await;
        assert_eq!(reader.wait().await.expect("verified"), data.len() as u64);
        let blob = cache.get(&digest).await.expect("get").expect("stored");
        assert_eq!(blob.size(), data.len() as u64);
    }

    #[tokio::test]
    async fn an_error_inside_a_batch_fails_the_fill() {
        let (_dir, cache, data, digest, writer, reader) = leading_fill().await;
        // Every chunk but the last, then an error, all ready at once.
        let mut chunks: Vec<Result<Bytes, UpstreamError>> = data
            .chunks(16 * 1024)
            .take(FILL_TEST_CHUNKS - 1)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        chunks.push(Err(UpstreamError::InvalidTarget {
            target: "test: the body broke".into(),
        }));
        pump(writer, stream::iter(chunks)).await;
        assert!(reader.wait().await.is_err(), "a broken fill verified");
        assert!(cache.get(&digest).await.expect("get").is_none());
    }
}
