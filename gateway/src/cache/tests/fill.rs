//! A single leader: round trip, ranges, and every way upstream can be wrong.

use std::io;

use futures::StreamExt as _;

use super::{
    super::{CacheError, Digest, Fill},
    assert_tmp_clean, collect, data, fill, leader, open, read_all, tempdir,
};

#[tokio::test]
async fn fill_then_get_round_trip_with_ranges() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(1024 * 1024 + 3, 1);
    let digest = Digest::of(&content);
    let len = content.len() as u64;

    let published = fill(&cache, &content).await;
    assert_eq!(published.size(), len);
    assert_eq!(read_all(published.stream(None)).await, content);
    assert!(dir.path().join("blobs/sha256").join(digest.hex()).is_file());
    assert_tmp_clean(dir.path()).await;

    let blob = cache.get(&digest).await.expect("get").expect("present");
    assert_eq!(blob.size(), len);
    assert_eq!(blob.digest(), digest);
    assert_eq!(read_all(blob.stream(None)).await, content);
    assert_eq!(read_all(blob.stream(Some((0, 0)))).await, &content[..1]);
    assert_eq!(
        read_all(blob.stream(Some((10, 99)))).await,
        &content[10..100]
    );
    // Spans chunk boundaries.
    let (a, b) = (200_000, 700_000);
    assert_eq!(
        read_all(blob.stream(Some((a, b)))).await,
        &content[a as usize..=b as usize]
    );
    // An end past the blob is clamped, as HTTP ranges are.
    assert_eq!(
        read_all(blob.stream(Some((len - 5, len + 100)))).await,
        &content[content.len() - 5..]
    );
    for bad in [(len, len), (len + 1, len + 9), (5, 4)] {
        let (bytes, err) = collect(blob.stream(Some(bad))).await;
        assert!(bytes.is_empty());
        let err = err.expect("range refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    // A later fill request finds it done.
    assert!(matches!(
        cache.begin_fill(&digest, Some(len)).await.expect("begin"),
        Fill::Done(b) if b.size() == len
    ));
    let stats = cache.stats();
    assert_eq!(
        (stats.blobs, stats.bytes, stats.fills_in_progress),
        (1, len, 0)
    );

    // Unknown digests are misses.
    assert!(
        cache
            .get(&Digest::of(b"nope"))
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn fill_without_expected_size() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(300_000, 2);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, None).await;
    for chunk in content.chunks(7_000) {
        w.write(chunk).await.expect("write");
    }
    let blob = w.finish().await.expect("finish");
    assert_eq!(read_all(blob.stream(None)).await, content);
}

#[tokio::test]
async fn empty_blob() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let digest = Digest::of(b"");
    let w = leader(&cache, &digest, Some(0)).await;
    let blob = w.finish().await.expect("finish");
    assert_eq!(blob.size(), 0);
    assert!(read_all(blob.stream(None)).await.is_empty());
    assert!(collect(blob.stream(Some((0, 0)))).await.1.is_some());
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let wanted = data(100_000, 3);
    let sent = data(100_000, 4);
    let digest = Digest::of(&wanted);

    let mut w = leader(&cache, &digest, Some(wanted.len() as u64)).await;
    w.write(&sent).await.expect("write");
    match w.finish().await {
        Err(e @ CacheError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, digest);
            assert_eq!(actual, Digest::of(&sent));
            assert!(e.is_upstream_fault());
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(cache.get(&digest).await.expect("get").is_none());
    assert!(cache.get(&Digest::of(&sent)).await.expect("get").is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/sha256"))
            .expect("ls")
            .count(),
        0
    );
    assert_tmp_clean(dir.path()).await;
    assert_eq!(cache.stats().fills_in_progress, 0);
    // The digest is free for a new attempt.
    let _retry = leader(&cache, &digest, None).await;
}

#[tokio::test]
async fn over_long_upstream_fails_at_the_first_extra_byte() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(16, 5);
    let digest = Digest::of(&content[..10]);
    let mut w = leader(&cache, &digest, Some(10)).await;
    w.write(&content[..8]).await.expect("within the size");
    let err = w.write(&content[8..]).await.expect_err("too long");
    assert!(
        matches!(err, CacheError::TooLong { expected: 10, .. }),
        "{err:?}"
    );
    assert!(matches!(
        w.write(b"x").await,
        Err(CacheError::FillClosed { .. })
    ));
    assert!(matches!(
        w.finish().await,
        Err(CacheError::FillClosed { .. })
    ));
    assert_tmp_clean(dir.path()).await;
    assert!(cache.get(&digest).await.expect("get").is_none());
}

#[tokio::test]
async fn short_upstream_fails_at_finish() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(100, 6);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, Some(100)).await;
    w.write(&content[..99]).await.expect("write");
    assert!(matches!(
        w.finish().await,
        Err(CacheError::Truncated {
            expected: 100,
            received: 99,
            ..
        })
    ));
    assert_tmp_clean(dir.path()).await;
    assert!(cache.get(&digest).await.expect("get").is_none());
}

#[tokio::test]
async fn explicit_fail_and_drop_clean_up() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let digest = Digest::of(b"whatever");
    let mut w = leader(&cache, &digest, None).await;
    w.write(b"what").await.expect("write");
    w.fail("upstream reset the connection");
    assert_tmp_clean(dir.path()).await;

    let mut w = leader(&cache, &digest, None).await;
    w.write(b"what").await.expect("write");
    drop(w);
    assert_tmp_clean(dir.path()).await;
    assert_eq!(cache.stats().fills_in_progress, 0);
}

/// 64 MiB through the fill path in 64 KiB chunks, generated on the fly: the
/// cache must stream (nothing here holds the blob, and neither may it).
#[tokio::test]
async fn large_blob_streams_through() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1024;
    let chunk = |i: usize| {
        let mut c = vec![0u8; CHUNK];
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        c
    };
    // Precomputed (sha256 of the chunks below): hashing 64 MiB once more in
    // an unoptimised test build would take seconds.
    let digest =
        Digest::parse("sha256:34dde61508c93b567476c8b8a51576b4dfd85f54277d34a65123b57465740e7b")
            .expect("digest");

    let dir = tempdir();
    let cache = open(dir.path(), 1 << 40).await;
    let size = (CHUNK * CHUNKS) as u64;
    let mut w = leader(&cache, &digest, Some(size)).await;
    for i in 0..CHUNKS {
        w.write_bytes(chunk(i).into()).await.expect("write");
    }
    let blob = w.finish().await.expect("finish");
    assert_eq!(blob.size(), size);

    // Read back, compared chunk by chunk (a second hash would only make an
    // unoptimised test build slower; the fill already verified the digest).
    let mut stream = std::pin::pin!(blob.stream(None));
    let mut total = 0usize;
    while let Some(piece) = stream.next().await {
        let piece = piece.expect("read");
        assert!(piece.len() <= 256 * 1024 && piece.len() % CHUNK == 0);
        for (j, got) in piece.chunks(CHUNK).enumerate() {
            assert!(got == chunk(total / CHUNK + j).as_slice(), "chunk differs");
        }
        total += piece.len();
    }
    assert_eq!(total as u64, size);
}
