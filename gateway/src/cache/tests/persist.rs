//! What survives a restart, and how open reconciles index and files.

use std::fs;

use super::{
    super::{Cache, CacheError, Digest, RefEntry},
    data, fill, open, read_all, tempdir, tmp_entries,
};

fn entry(digest: &Digest, at: i64) -> RefEntry {
    RefEntry {
        digest: digest.to_string(),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        size: 1234,
        fetched_at: at,
    }
}

#[tokio::test]
async fn refs_pins_and_blobs_survive_reopen() {
    let dir = tempdir();
    let content = data(300_000, 70);
    let digest = Digest::of(&content);
    {
        let cache = open(dir.path(), 1 << 30).await;
        fill(&cache, &content).await;
        cache
            .put_ref(
                "registry.example",
                "library/nginx",
                "1.27",
                entry(&digest, 1),
            )
            .await
            .expect("put");
        // Replaced, not duplicated.
        cache
            .put_ref(
                "registry.example",
                "library/nginx",
                "1.27",
                entry(&digest, 2),
            )
            .await
            .expect("put");
        cache
            .put_ref("charts.example", "margo/app", "0.1.0", entry(&digest, 3))
            .await
            .expect("put");
        cache.pin("offline", &[digest]).await.expect("pin");
        cache.close().await.expect("close");
    }
    let cache = open(dir.path(), 1 << 30).await;
    let got = cache
        .get_ref("registry.example", "library/nginx", "1.27")
        .await
        .expect("get_ref");
    assert_eq!(got, Some(entry(&digest, 2)));
    assert_eq!(
        cache
            .get_ref("registry.example", "library/nginx", "latest")
            .await
            .expect("get_ref"),
        None
    );
    let all = cache.list_refs().await.expect("list");
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].0.as_str(), all[0].1.as_str(), all[0].2.as_str()),
        ("charts.example", "margo/app", "0.1.0")
    );
    assert_eq!(
        cache.list_pins(),
        vec![("offline".to_owned(), vec![digest])]
    );
    let blob = cache.get(&digest).await.expect("get").expect("blob");
    assert_eq!(read_all(blob.stream(None)).await, content);
    assert_eq!(cache.stats().pinned_blobs, 1);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let second = Cache::open(dir.path(), 1 << 30).await;
    assert!(
        matches!(second, Err(CacheError::Index { .. })),
        "{second:?}"
    );
    drop(cache);
}

#[tokio::test]
async fn open_reconciles_index_files_and_tmp() {
    let dir = tempdir();
    let (kept, lost, orphan, forged) = (
        data(10_000, 71),
        data(10_000, 72),
        data(10_000, 73),
        data(10_000, 74),
    );
    {
        let cache = open(dir.path(), 1 << 30).await;
        fill(&cache, &kept).await;
        fill(&cache, &lost).await;
        cache.close().await.expect("close");
    }
    let blobs = dir.path().join("blobs/sha256");
    // An indexed blob whose file is gone (crash inside eviction).
    fs::remove_file(blobs.join(Digest::of(&lost).hex())).expect("rm");
    // A verified file without an index entry (crash inside publish).
    fs::write(blobs.join(Digest::of(&orphan).hex()), &orphan).expect("write");
    // A file whose content does not match its name.
    let forged_name = Digest::of(b"something else");
    fs::write(blobs.join(forged_name.hex()), &forged).expect("write");
    // Temp files of interrupted fills.
    fs::write(
        dir.path()
            .join("tmp")
            .join(format!("{}.1-0.part", Digest::of(&kept).hex())),
        b"half",
    )
    .expect("write");
    fs::write(dir.path().join("tmp").join("x.99-7.part"), b"").expect("write");

    let cache = open(dir.path(), 1 << 30).await;
    assert!(
        tmp_entries(dir.path()).is_empty(),
        "{:?}",
        tmp_entries(dir.path())
    );
    assert!(cache.get(&Digest::of(&lost)).await.expect("get").is_none());
    assert!(
        !blobs.join(forged_name.hex()).exists(),
        "a forged blob is removed"
    );
    assert!(cache.get(&forged_name).await.expect("get").is_none());
    let stats = cache.stats();
    assert_eq!((stats.blobs, stats.bytes), (2, 20_000));
    for content in [&kept, &orphan] {
        let blob = cache
            .get(&Digest::of(content))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(&read_all(blob.stream(None)).await, content);
    }
    cache.close().await.expect("close");

    // The repairs were written to the index: a second open has nothing to do.
    let cache = open(dir.path(), 1 << 30).await;
    assert_eq!(cache.stats().blobs, 2);
}

#[tokio::test]
async fn access_order_survives_reopen() {
    let dir = tempdir();
    let (old, used) = (data(10_000, 75), data(10_000, 76));
    {
        let cache = open(dir.path(), 1 << 30).await;
        fill(&cache, &used).await;
        fill(&cache, &old).await;
        // `used` is now the more recently used, in memory only.
        assert!(cache.get(&Digest::of(&used)).await.expect("get").is_some());
        cache.close().await.expect("close");
    }
    // Reopened with room for one blob: the pass at open evicts the other.
    let cache = open(dir.path(), 10_000).await;
    cache.evict().await.expect("evict");
    let blobs = dir.path().join("blobs/sha256");
    assert!(blobs.join(Digest::of(&used).hex()).exists());
    assert!(!blobs.join(Digest::of(&old).hex()).exists());
}
