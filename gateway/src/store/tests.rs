//! The tier's own mechanics on in-memory stores: the lease probe and
//! both lease mechanisms with two contenders, an expired lease taken
//! over, and an unreachable store skipped until a probe finds it again.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{sync::Arc, time::Duration};

use super::{
    Lease, LeaseMode,
    testing::{Faulty, Mode, eventually, plant, quick, tier},
};
use crate::cache::Digest;

#[tokio::test]
async fn the_probe_finds_the_lease_mechanism() {
    let memory = Arc::new(Faulty::default());
    assert_eq!(
        tier(memory, "a", quick()).await.lease_mode(),
        LeaseMode::Conditional
    );
    let garage = Arc::new(Faulty::garage_like());
    assert_eq!(
        tier(garage, "a", quick()).await.lease_mode(),
        LeaseMode::List
    );
    let down = Arc::new(Faulty::default());
    down.set(Mode::Fail);
    let store = tier(down, "a", quick()).await;
    assert_eq!(store.lease_mode(), LeaseMode::Unknown);
    assert!(!store.is_up());
    assert!(matches!(store.lease(&Digest::of(b"x")).await, Lease::Alone));
}

#[tokio::test]
async fn two_contenders_one_winner_the_other_reads_the_store() {
    for objects in [Arc::new(Faulty::default()), Arc::new(Faulty::garage_like())] {
        let a = tier(objects.clone(), "gw-a", quick()).await;
        let b = tier(objects.clone(), "gw-b", quick()).await;
        let digest = Digest::of(b"layer");
        let (ta, tb) = (a.clone(), b.clone());
        let mut ja = tokio::spawn(async move { ta.lease(&digest).await });
        let mut jb = tokio::spawn(async move { tb.lease(&digest).await });
        // Whoever wins "fetches" and uploads, then releases.
        let (first, other) = tokio::select! {
            r = &mut ja => (r.unwrap(), jb),
            r = &mut jb => (r.unwrap(), ja),
        };
        let Lease::Won(guard) = first else {
            panic!(
                "the first to decide did not win: {first:?} ({:?})",
                a.lease_mode()
            );
        };
        plant(&objects, &digest, b"layer").await;
        guard.release().await;
        assert!(matches!(other.await.unwrap(), Lease::InStore));
        let counts = [a.status().counts, b.status().counts];
        assert_eq!(counts.iter().map(|c| c.leases_won).sum::<u64>(), 1);
        assert_eq!(counts.iter().map(|c| c.leases_waited).sum::<u64>(), 1);
    }
}

#[tokio::test]
async fn a_lease_whose_winner_failed_is_contended_again() {
    let objects = Arc::new(Faulty::garage_like());
    let a = tier(objects.clone(), "gw-a", quick()).await;
    let b = tier(objects.clone(), "gw-b", quick()).await;
    let digest = Digest::of(b"layer");
    let Lease::Won(guard) = a.lease(&digest).await else {
        panic!("alone, a did not win");
    };
    let tb = b.clone();
    let waiting = tokio::spawn(async move { tb.lease(&digest).await });
    // a's fetch fails: its lease goes without a blob; b takes over.
    tokio::time::sleep(quick().settle * 3).await;
    guard.release().await;
    assert!(matches!(waiting.await.unwrap(), Lease::Won(_)));
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    for objects in [Arc::new(Faulty::default()), Arc::new(Faulty::garage_like())] {
        let tuning = super::Tuning {
            lease_ttl: Duration::from_secs(1),
            ..quick()
        };
        let ghost = tier(objects.clone(), "ghost", tuning).await;
        let b = tier(objects.clone(), "gw-b", tuning).await;
        let digest = Digest::of(b"layer");
        let Lease::Won(guard) = ghost.lease(&digest).await else {
            panic!("alone, the ghost did not win");
        };
        // The ghost crashes: its lease is never released.
        std::mem::forget(guard);
        let started = tokio::time::Instant::now();
        assert!(matches!(b.lease(&digest).await, Lease::Won(_)));
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "taken before it expired"
        );
    }
}

#[tokio::test]
async fn an_unreachable_store_is_skipped_until_a_probe_finds_it() {
    for mode in [Mode::Fail, Mode::Hang] {
        let objects = Arc::new(Faulty::default());
        let store = tier(objects.clone(), "gw-a", quick()).await;
        assert!(store.is_up());
        objects.set(mode);
        let digest = Digest::of(b"layer");
        assert!(matches!(
            super::read_into(&store, &digest).await,
            super::ReadOutcome::Absent
        ));
        assert!(!store.is_up(), "{mode:?}: still up");
        let status = store.status();
        assert!(!status.reachable && status.last_error.is_some());
        assert_eq!(status.counts.outages, 1);
        // Skipped: no call reaches the store but the probe's.
        let before = objects.calls.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..5 {
            let _ = super::read_into(&store, &digest).await;
        }
        let after = objects.calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            after - before <= 2,
            "{mode:?}: {} calls while down",
            after - before
        );
        objects.set(Mode::Ok);
        eventually("the store is up again", async || store.is_up()).await;
        assert!(
            store.status().last_error.is_some(),
            "the last error is kept for status"
        );
    }
}

#[tokio::test]
async fn a_ref_that_is_not_ours_is_refused_and_a_good_one_read_back() {
    use object_store::ObjectStoreExt as _;
    let objects = Arc::new(Faulty::default());
    let store = tier(objects.clone(), "gw-a", quick()).await;
    let key = |tag: &str| object_store::path::Path::from(format!("refs/reg.test/app/{tag}"));
    for (tag, body) in [
        ("garbage", b"not json".to_vec()),
        (
            "nodigest",
            br#"{"digest":"md5:abc","confirmed_at":1}"#.to_vec(),
        ),
        ("huge", vec![b' '; 8192]),
    ] {
        objects.inner.put(&key(tag), body.into()).await.unwrap();
        let e = store.get_ref("reg.test", "app", tag).await.unwrap_err();
        assert!(matches!(e, super::StoreError::BadRef(_)), "{tag}: {e}");
        assert!(store.is_up(), "a bad ref is no outage");
    }
    assert_eq!(
        store.get_ref("reg.test", "app", "none").await.unwrap(),
        None
    );
    let r = super::SharedRef {
        digest: Digest::of(b"m").to_string(),
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        confirmed_at: 1_800_000_000,
        gateway: "gw-a".into(),
    };
    store.put_ref("REG.test", "app", "v1", &r).await.unwrap();
    assert_eq!(
        store.get_ref("reg.test", "app", "v1").await.unwrap(),
        Some(r)
    );
}
