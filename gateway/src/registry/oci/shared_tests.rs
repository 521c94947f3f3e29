//! The shared store (`cache.store`) behind the site handler, with
//! in-memory stores and the in-process upstream of tests.rs: read-through
//! (verified, a tampered object rejected), write-behind of verified fills
//! only, one upstream fetch for two gateways missing at once (both lease
//! mechanisms), an unreachable store skipped, and tags shared.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;

use super::{
    OciSite,
    tests::{Answer, Upstreamish, ask, blob_path, read, settled, site, small},
};
use crate::{
    audit::Source,
    cache::Digest,
    store::{
        SharedStore,
        testing::{Faulty, Mode, eventually, held, plant, quick, tier},
    },
};

async fn site_on(up: &Upstreamish, dir: &Path, store: &SharedStore) -> OciSite {
    let site = site(up, dir, small()).await;
    site.cache.set_shared(Some(store.clone()));
    site
}

/// Bounds a step that must not hang (not a timing check).
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("the step hung")
}

#[tokio::test]
async fn a_blob_in_the_store_is_served_without_upstream_and_a_tampered_one_is_deleted() {
    let good = Bytes::from_static(b"a layer the store holds");
    let good_digest = Digest::of(&good);
    let real = Bytes::from_static(b"what upstream really has");
    let real_digest = Digest::of(&real);
    let up = Upstreamish::start(vec![(
        blob_path(&real_digest.to_string()),
        Answer::Bytes("application/octet-stream", real.clone()),
    )])
    .await;
    let objects = Arc::new(Faulty::default());
    plant(&objects, &good_digest, &good).await;
    plant(&objects, &real_digest, b"tampered bytes in the store").await;
    let store = tier(objects.clone(), "gw-a", quick()).await;
    let dir = tempfile::tempdir().unwrap();
    let site = site_on(&up, dir.path(), &store).await;

    let o = bounded(ask(&site, &blob_path(&good_digest.to_string()))).await;
    assert_eq!(o.source, Some(Source::Store));
    assert_eq!(read(o).await, (good.to_vec(), true));
    assert_eq!(up.asked(&blob_path(&good_digest.to_string())), 0);
    settled(&site, dir.path()).await;
    assert!(
        site.cache.get(&good_digest).await.unwrap().is_some(),
        "not kept locally"
    );

    // The tampered object fails its fill and is deleted...
    let o = bounded(ask(&site, &blob_path(&real_digest.to_string()))).await;
    let (_, clean) = read(o).await;
    assert!(!clean, "a tampered object was served whole");
    settled(&site, dir.path()).await;
    assert!(site.cache.get(&real_digest).await.unwrap().is_none());
    eventually("the bad object is deleted", async || {
        held(&objects, &real_digest).await.is_none()
    })
    .await;
    assert_eq!(store.status().counts.reads_bad, 1);
    // ...so the next fill goes upstream, and writes the good copy behind.
    let o = bounded(ask(&site, &blob_path(&real_digest.to_string()))).await;
    assert_eq!(o.source, None);
    assert_eq!(read(o).await, (real.to_vec(), true));
    assert_eq!(up.asked(&blob_path(&real_digest.to_string())), 1);
    eventually("the good copy is written behind", async || {
        held(&objects, &real_digest).await.as_deref() == Some(&real[..])
    })
    .await;
}

#[tokio::test]
async fn only_verified_fills_are_written_behind() {
    let body = Bytes::from(vec![5u8; 200 * 1024]);
    let digest = Digest::of(&body);
    let liar = Digest::of(b"what the digest names");
    let up = Upstreamish::start(vec![
        (
            blob_path(&digest.to_string()),
            Answer::Bytes("application/octet-stream", body.clone()),
        ),
        (
            blob_path(&liar.to_string()),
            Answer::Bytes(
                "application/octet-stream",
                Bytes::from_static(b"other bytes"),
            ),
        ),
    ])
    .await;
    let objects = Arc::new(Faulty::default());
    // Parts of 64 KiB (quick()): this blob goes up as a multipart upload.
    let store = tier(objects.clone(), "gw-a", quick()).await;
    let dir = tempfile::tempdir().unwrap();
    let site = site_on(&up, dir.path(), &store).await;
    let o = bounded(ask(&site, &blob_path(&liar.to_string()))).await;
    assert!(!read(o).await.1, "a lying body was served whole");
    let o = bounded(ask(&site, &blob_path(&digest.to_string()))).await;
    assert_eq!(read(o).await, (body.to_vec(), true));
    eventually("the verified blob is written behind", async || {
        held(&objects, &digest).await.as_deref() == Some(&body[..])
    })
    .await;
    settled(&site, dir.path()).await;
    assert_eq!(
        held(&objects, &liar).await,
        None,
        "an unverified fill was uploaded"
    );
    let counts = store.status().counts;
    assert_eq!(
        (counts.uploads, counts.bytes_written),
        (1, body.len() as u64)
    );
}

/// Two gateways (two caches on one store) miss one blob at the same
/// moment: upstream is asked once, both devices get the blob.
async fn two_gateways_one_fetch(objects: Arc<Faulty>) {
    let chunk = Bytes::from(vec![9u8; 16 * 1024]);
    let whole: Vec<u8> = chunk.repeat(8);
    let digest = Digest::of(&whole);
    let path = blob_path(&digest.to_string());
    let up = Upstreamish::start(vec![(
        path.clone(),
        Answer::Stream {
            chunk,
            pause: Duration::from_millis(30),
            count: Some(8),
            length: Some(whole.len() as u64),
        },
    )])
    .await;
    let a = tier(objects.clone(), "gw-a", quick()).await;
    let b = tier(objects.clone(), "gw-b", quick()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, sb) = (
        site_on(&up, da.path(), &a).await,
        site_on(&up, db.path(), &b).await,
    );
    let (oa, ob) = bounded(async { tokio::join!(ask(&sa, &path), ask(&sb, &path)) }).await;
    let from_store = [oa.source, ob.source]
        .iter()
        .filter(|s| **s == Some(Source::Store))
        .count();
    let (ra, rb) = bounded(async { tokio::join!(read(oa), read(ob)) }).await;
    assert_eq!(ra, (whole.clone(), true));
    assert_eq!(rb, (whole.clone(), true));
    assert_eq!(up.asked(&path), 1, "lease mode {:?}", a.lease_mode());
    assert_eq!(
        from_store, 1,
        "the loser's device was not served from the store"
    );
    let counts = [a.status().counts, b.status().counts];
    assert_eq!(counts.iter().map(|c| c.leases_won).sum::<u64>(), 1);
    assert_eq!(counts.iter().map(|c| c.leases_waited).sum::<u64>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_missing_at_once_fetch_once_with_conditional_leases() {
    two_gateways_one_fetch(Arc::new(Faulty::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_missing_at_once_fetch_once_with_the_list_election() {
    two_gateways_one_fetch(Arc::new(Faulty::garage_like())).await;
}

#[tokio::test]
async fn with_the_store_unreachable_devices_are_served_from_upstream() {
    let one = Bytes::from_static(b"first layer");
    let two = Bytes::from_static(b"second layer");
    let (d1, d2) = (Digest::of(&one), Digest::of(&two));
    let up = Upstreamish::start(vec![
        (
            blob_path(&d1.to_string()),
            Answer::Bytes("application/octet-stream", one.clone()),
        ),
        (
            blob_path(&d2.to_string()),
            Answer::Bytes("application/octet-stream", two.clone()),
        ),
    ])
    .await;
    let objects = Arc::new(Faulty::default());
    let store = tier(objects.clone(), "gw-a", quick()).await;
    let dir = tempfile::tempdir().unwrap();
    let site = site_on(&up, dir.path(), &store).await;
    objects.set(Mode::Hang);
    // The store's deadline (300 ms) passes, then upstream serves.
    let o = bounded(ask(&site, &blob_path(&d1.to_string()))).await;
    assert_eq!(read(o).await, (one.to_vec(), true));
    assert!(!store.status().reachable);
    assert_eq!(up.asked(&blob_path(&d1.to_string())), 1);
    // Back: found by the probe, and written to again.
    objects.set(Mode::Ok);
    eventually("the store is found again", async || store.is_up()).await;
    let o = bounded(ask(&site, &blob_path(&d2.to_string()))).await;
    assert_eq!(read(o).await, (two.to_vec(), true));
    eventually("the next fill is written behind", async || {
        held(&objects, &d2).await.is_some()
    })
    .await;
}

#[tokio::test]
async fn a_tag_confirmed_by_one_gateway_is_served_by_another_with_its_upstream_down() {
    const MT: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    let path = "/v2/app/manifests/latest".to_owned();
    let up_a = Upstreamish::start(vec![(path.clone(), Answer::Bytes(MT, manifest.clone()))]).await;
    let up_b = Upstreamish::start(vec![(path.clone(), Answer::Unavailable)]).await;
    let objects = Arc::new(Faulty::garage_like());
    let (a, b) = (
        tier(objects.clone(), "gw-a", quick()).await,
        tier(objects.clone(), "gw-b", quick()).await,
    );
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sa = site_on(&up_a, da.path(), &a).await;
    let sb = site_on(&up_b, db.path(), &b).await;
    let o = bounded(ask(&sa, &path)).await;
    assert_eq!(read(o).await, (manifest.to_vec(), true));
    eventually("the tag and its manifest are shared", async || {
        let counts = a.status().counts;
        counts.refs_written == 2 && counts.uploads == 1
    })
    .await;
    // By digest: served for the repository that had it, from the
    // store...
    let digest = Digest::of(&manifest).to_string();
    let by_digest = format!("/v2/app/manifests/{digest}");
    let o = bounded(ask(&sb, &by_digest)).await;
    assert_eq!(o.source, Some(Source::Store));
    assert_eq!(read(o).await, (manifest.to_vec(), true));
    assert_eq!(up_b.asked(&by_digest), 0);
    // ...not for another repository, which upstream is asked about.
    let other = format!("/v2/other/manifests/{digest}");
    let o = bounded(ask(&sb, &other)).await;
    assert_eq!(o.response.status(), http::StatusCode::NOT_FOUND);
    assert_eq!(up_b.asked(&other), 1);
    // The tag, fresh on a: served without b's upstream.
    let o = bounded(ask(&sb, &path)).await;
    assert_eq!(o.response.status(), http::StatusCode::OK);
    assert_eq!(o.response.headers()["content-type"], MT);
    assert_eq!(read(o).await, (manifest.to_vec(), true));
    assert_eq!(up_b.asked(&path), 0, "a fresh shared tag went upstream");
    assert_eq!(b.status().counts.refs_adopted, 2);
    // Adopted locally: the next request does not read the store.
    let reads = b.status().counts.reads_hit;
    let o = bounded(ask(&sb, &path)).await;
    assert_eq!(o.cache, Some(crate::audit::CacheStatus::Hit));
    assert_eq!(b.status().counts.reads_hit, reads);
}
