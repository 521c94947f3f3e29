//! Unit tests of the cache: no network, each in its own temp directory.

mod digest;
mod evict;
mod fill;
mod follow;
mod manage;
mod persist;

use std::{io, path::Path};

use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use super::{Blob, Cache, Digest, Fill, FillWriter, Limits};

/// Deterministic non-repeating test content.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A cache of `max` bytes whose blobs may be as large as the whole cache
/// (the default allows half: tests of eviction fill it with few blobs).
async fn open(dir: &Path, max: u64) -> Cache {
    open_limits(
        dir,
        Limits {
            max_blob_size: max,
            ..Limits::new(max)
        },
    )
    .await
}

async fn open_limits(dir: &Path, limits: Limits) -> Cache {
    Cache::open_with(dir, limits).await.expect("open the cache")
}

async fn leader(cache: &Cache, digest: &Digest, expected: Option<u64>) -> FillWriter {
    match cache
        .begin_fill(digest, expected)
        .await
        .expect("begin_fill")
    {
        Fill::Leader(w) => w,
        other => panic!("expected a leader, got {other:?}"),
    }
}

/// Fills `content` completely in 64 KiB writes.
async fn fill(cache: &Cache, content: &[u8]) -> Blob {
    let digest = Digest::of(content);
    let mut w = leader(cache, &digest, Some(content.len() as u64)).await;
    for chunk in content.chunks(64 * 1024) {
        w.write(chunk).await.expect("write");
    }
    w.finish().await.expect("finish")
}

/// Everything a stream yields before its end or first error.
async fn collect(stream: impl Stream<Item = io::Result<Bytes>>) -> (Vec<u8>, Option<io::Error>) {
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

async fn read_all(stream: impl Stream<Item = io::Result<Bytes>>) -> Vec<u8> {
    let (bytes, err) = collect(stream).await;
    assert!(err.is_none(), "stream failed: {err:?}");
    bytes
}

/// Temp files left (our own `.part` files and anything else).
fn tmp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("tmp"))
        .expect("list tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Waits (bounded) for background temp removal after a failed fill.
async fn assert_tmp_clean(dir: &Path) {
    for _ in 0..200 {
        if tmp_entries(dir).is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("temp files left: {:?}", tmp_entries(dir));
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
