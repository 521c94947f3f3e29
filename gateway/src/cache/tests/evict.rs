//! Eviction: least recently used first, never pinned, down to the limit,
//! without disturbing readers or other blobs.

use super::{
    super::{Cache, CacheError, Digest, FailCause},
    assert_tmp_clean, data, fill, leader, open, read_all, tempdir, tmp_entries,
};

const KIB100: usize = 100 * 1024;

async fn present(cache: &Cache, content: &[u8]) -> bool {
    cache
        .get(&Digest::of(content))
        .await
        .expect("get")
        .is_some()
}

/// Checks without touching (a `get` would count as an access).
fn on_disk(dir: &std::path::Path, content: &[u8]) -> bool {
    dir.join("blobs/sha256")
        .join(Digest::of(content).hex())
        .exists()
}

#[tokio::test]
async fn evicts_lru_first_keeps_pinned_and_respects_the_limit() {
    let dir = tempdir();
    let max = 3 * KIB100 as u64;
    let cache = open(dir.path(), max).await;
    let [a, b, c, d, e] = [1u8, 2, 3, 4, 5].map(|s| data(KIB100, 20 + s));

    fill(&cache, &a).await;
    fill(&cache, &b).await;
    fill(&cache, &c).await;
    cache
        .pin("site-seed", &[Digest::of(&a)])
        .await
        .expect("pin");
    // Order of use now: a (oldest, but pinned), c, b.
    assert!(present(&cache, &b).await);
    // A reader of c, opened before c is evicted.
    let c_blob = cache.get(&Digest::of(&c)).await.expect("get").expect("c");
    assert!(present(&cache, &b).await);

    fill(&cache, &d).await;
    cache.evict().await.expect("evict");
    assert!(
        on_disk(dir.path(), &a),
        "pinned, so kept though least recently used"
    );
    assert!(
        !on_disk(dir.path(), &c),
        "the least recently used unpinned blob goes"
    );
    assert!(on_disk(dir.path(), &b) && on_disk(dir.path(), &d));
    let stats = cache.stats();
    assert!(stats.bytes <= max, "{stats:?}");
    assert_eq!(
        (stats.blobs, stats.pinned_blobs, stats.max_bytes),
        (3, 1, max)
    );
    assert!(!present(&cache, &c).await);

    // The reader opened before eviction still reads all of c.
    assert_eq!(read_all(c_blob.stream(None)).await, c);
    // The blobs left are whole.
    for kept in [&a, &b, &d] {
        let blob = cache
            .get(&Digest::of(kept))
            .await
            .expect("get")
            .expect("kept");
        assert_eq!(&read_all(blob.stream(None)).await, kept);
    }

    // Unpinned, a is the oldest again once b and d are used after it.
    assert!(cache.unpin("site-seed").await.expect("unpin"));
    assert!(!cache.unpin("site-seed").await.expect("unpin again"));
    assert!(present(&cache, &b).await && present(&cache, &d).await);
    fill(&cache, &e).await;
    cache.evict().await.expect("evict");
    assert!(!on_disk(dir.path(), &a));
    assert!(on_disk(dir.path(), &b) && on_disk(dir.path(), &d) && on_disk(dir.path(), &e));
    assert!(cache.stats().bytes <= max);
}

#[tokio::test]
async fn eviction_runs_in_the_background_after_a_fill() {
    let dir = tempdir();
    let max = 2 * KIB100 as u64;
    let cache = open(dir.path(), max).await;
    for seed in 0..5 {
        fill(&cache, &data(KIB100, 40 + seed)).await;
    }
    // No explicit pass: wait (bounded) for the background ones.
    for _ in 0..200 {
        if cache.stats().bytes <= max {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(cache.stats().bytes <= max, "{:?}", cache.stats());
    assert!(on_disk(dir.path(), &data(KIB100, 44)), "the newest stays");
}

#[tokio::test]
async fn pins_may_name_blobs_before_they_are_filled() {
    let dir = tempdir();
    let max = KIB100 as u64;
    let cache = open(dir.path(), max).await;
    let (x, y) = (data(KIB100, 50), data(KIB100, 51));
    cache.pin("pre-seed", &[Digest::of(&x)]).await.expect("pin");
    assert_eq!(
        cache.list_pins(),
        vec![("pre-seed".to_owned(), vec![Digest::of(&x)])]
    );
    fill(&cache, &x).await;
    // The pinned blob fills the cache: another one finds no room, and is
    // refused before a byte is written rather than stored and evicted.
    match cache
        .begin_fill(&Digest::of(&y), Some(y.len() as u64))
        .await
    {
        Err(CacheError::NoSpace { needed, .. }) => assert_eq!(needed, y.len() as u64),
        other => panic!("expected no room, got {other:?}"),
    }
    assert!(on_disk(dir.path(), &x));
    assert!(!on_disk(dir.path(), &y));
    assert!(tmp_entries(dir.path()).is_empty());
    // Everything left is pinned: over nothing, evict nothing more.
    assert_eq!(cache.evict().await.expect("evict").evicted, 0);
}

#[tokio::test]
async fn temp_bytes_count_toward_the_limit() {
    let dir = tempdir();
    let max = 3 * KIB100 as u64;
    let cache = open(dir.path(), max).await;
    let [a, b, c, d] = [1u8, 2, 3, 4].map(|s| data(KIB100, 70 + s));
    fill(&cache, &a).await;
    fill(&cache, &b).await;
    cache.pin("keep-b", &[Digest::of(&b)]).await.expect("pin");

    // A fill of two blobs' worth, announced: reserved whole before a byte
    // is written, and the least recently used unpinned blob (a) makes room.
    let big = data(2 * KIB100, 75);
    let mut w = leader(&cache, &Digest::of(&big), None).await;
    w.set_size(big.len() as u64).await.expect("room is made");
    let stats = cache.stats();
    assert_eq!(stats.reserved_bytes, big.len() as u64, "{stats:?}");
    assert_eq!(stats.bytes, KIB100 as u64, "a was evicted: {stats:?}");
    assert!(!on_disk(dir.path(), &a) && on_disk(dir.path(), &b));
    assert!(stats.bytes + stats.reserved_bytes <= max);

    // Nothing evictable is left (b is pinned, big is filling): another
    // fill finds no room, announced or growing as bytes arrive.
    match cache.begin_fill(&Digest::of(&c), Some(1)).await {
        Err(e @ CacheError::NoSpace { .. }) => {
            assert_eq!(e.cause(), FailCause::NoSpace);
            assert!(e.to_string().contains("cache.max_size"), "{e}");
        }
        other => panic!("expected no room, got {other:?}"),
    }
    let mut wd = leader(&cache, &Digest::of(&d), None).await;
    let rd = wd.reader();
    assert!(matches!(
        wd.write(&d[..10]).await,
        Err(CacheError::NoSpace { .. })
    ));
    assert!(matches!(
        rd.wait().await,
        Err(CacheError::FillFailed {
            cause: FailCause::NoSpace,
            ..
        })
    ));

    // Published, the blob's own size takes the reservation's place.
    for chunk in big.chunks(64 * 1024) {
        w.write(chunk).await.expect("write");
    }
    w.finish().await.expect("finish");
    let stats = cache.stats();
    assert_eq!(
        (stats.bytes, stats.reserved_bytes),
        (3 * KIB100 as u64, 0),
        "{stats:?}"
    );
    assert_tmp_clean(dir.path()).await;
}

#[tokio::test]
async fn a_blob_evicted_and_filled_again_is_whole() {
    let dir = tempdir();
    let cache = open(dir.path(), KIB100 as u64).await;
    let (x, y) = (data(KIB100, 60), data(KIB100, 61));
    fill(&cache, &x).await;
    fill(&cache, &y).await;
    cache.evict().await.expect("evict");
    assert!(!on_disk(dir.path(), &x));
    fill(&cache, &x).await;
    cache.evict().await.expect("evict");
    let blob = cache
        .get(&Digest::of(&x))
        .await
        .expect("get")
        .expect("refilled");
    assert_eq!(read_all(blob.stream(None)).await, x);
}

/// A config reload lowers `cache.max_size`: the cache evicts down to the
/// new bound in the background, as it does at open, and reports it.
#[tokio::test]
async fn a_lowered_max_size_from_a_reload_evicts_down_to_it() {
    let dir = tempdir();
    let cache = open(dir.path(), 5 * KIB100 as u64).await;
    for seed in 0..4 {
        fill(&cache, &data(KIB100, 60 + seed)).await;
    }
    assert_eq!(cache.stats().blobs, 4);
    let lowered = 2 * KIB100 as u64;
    cache.set_limits(super::super::Limits::new(lowered));
    assert_eq!(cache.stats().max_bytes, lowered);
    // No explicit pass: wait (bounded) for the background one.
    for _ in 0..1000 {
        if cache.stats().bytes <= lowered {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(cache.stats().bytes <= lowered, "{:?}", cache.stats());
    assert!(on_disk(dir.path(), &data(KIB100, 63)), "the newest stays");
    assert!(!on_disk(dir.path(), &data(KIB100, 60)), "the oldest goes");
}
