//! A single leader: round trip, ranges, and every way upstream can be wrong.

use std::io;

use futures::StreamExt as _;

use super::{
    super::{CacheError, Digest, FailCause, Fill, Limits},
    assert_tmp_clean, collect, data, fill, leader, open, open_limits, read_all, tempdir,
    tmp_entries,
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

/// Bounds for the tests below: blobs up to 1 MiB, two fills at once.
fn bounded() -> Limits {
    Limits {
        max_blob_size: 1 << 20,
        max_concurrent_fills: 2,
        ..Limits::new(1 << 30)
    }
}

#[tokio::test]
async fn an_endless_body_without_length_is_cut_at_the_cap() {
    let dir = tempdir();
    let cache = open_limits(dir.path(), bounded()).await;
    let digest = Digest::of(b"whatever upstream means to send");
    let mut w = leader(&cache, &digest, None).await;
    let r = w.reader();
    let chunk = data(64 * 1024, 7);
    // An endless upstream: it stops only when the fill refuses a chunk.
    let mut sent = 0u64;
    let err = loop {
        match w.write(&chunk).await {
            Ok(()) => sent += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(sent <= 1 << 20, "the fill took more than the cap");
    };
    assert!(
        matches!(err, CacheError::TooLarge { limit, .. } if limit == 1 << 20),
        "{err:?}"
    );
    assert_eq!(sent, 1 << 20, "everything up to the cap was taken");
    assert_eq!(err.cause(), FailCause::TooLarge);
    // The reader sees the cut as a failure of that cause, short of a body.
    match r.wait().await {
        Err(CacheError::FillFailed { cause, .. }) => assert_eq!(cause, FailCause::TooLarge),
        other => panic!("expected the fill to fail, got {other:?}"),
    }
    assert!(collect(r.stream(None)).await.1.is_some());
    assert!(cache.get(&digest).await.expect("get").is_none());
    assert_tmp_clean(dir.path()).await;
    let stats = cache.stats();
    assert_eq!(
        (stats.fills_in_progress, stats.reserved_bytes, stats.blobs),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn an_announced_length_over_the_cap_is_refused_before_a_byte() {
    let dir = tempdir();
    let cache = open_limits(dir.path(), bounded()).await;
    let digest = Digest::of(b"big");
    let over = (1 << 20) + 1;

    // Announced by upstream's headers.
    let mut w = leader(&cache, &digest, None).await;
    let r = w.reader();
    let err = w.set_size(over).await.expect_err("over the cap");
    assert!(
        matches!(err, CacheError::TooLarge { size, .. } if size == over),
        "{err:?}"
    );
    assert_eq!(w.written(), 0);
    assert!(matches!(
        r.known_size().await,
        Err(CacheError::FillFailed {
            cause: FailCause::TooLarge,
            ..
        })
    ));
    assert!(matches!(
        w.write(b"x").await,
        Err(CacheError::FillClosed { .. })
    ));
    assert_tmp_clean(dir.path()).await;

    // Known from a descriptor: refused before a temp file exists.
    match cache.begin_fill(&digest, Some(over)).await {
        Err(CacheError::TooLarge { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(tmp_entries(dir.path()).is_empty());
    let stats = cache.stats();
    assert_eq!((stats.fills_in_progress, stats.reserved_bytes), (0, 0));
    // At the cap exactly is fine.
    let _fits = leader(&cache, &digest, Some(1 << 20)).await;
}

#[tokio::test]
async fn fills_past_the_concurrency_bound_are_refused_but_followers_join() {
    let dir = tempdir();
    let cache = open_limits(dir.path(), bounded()).await;
    let [a, b, c] = [b"a", b"b", b"c"].map(|x| Digest::of(x));
    let wa = leader(&cache, &a, None).await;
    let _wb = leader(&cache, &b, None).await;
    match cache.begin_fill(&c, None).await {
        Err(e @ CacheError::TooManyFills { limit: 2 }) => {
            assert!(e.to_string().contains("max_concurrent_fills"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Joining a fill in progress starts nothing, so it is not refused.
    assert!(matches!(
        cache.begin_fill(&a, None).await.expect("follow"),
        Fill::Follower(_)
    ));
    // A slot frees when a fill ends.
    wa.fail("gone");
    let _wc = leader(&cache, &c, None).await;
}
