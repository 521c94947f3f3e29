//! Single flight: one leader, followers streaming from the file being
//! written, and no follower ever completing on a failed fill.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use tokio::{sync::Barrier, time::timeout};

use super::{
    super::{Cache, CacheError, Digest, FailCause, Fill, FillWriter, Limits},
    assert_tmp_clean, collect, data, leader, open, open_limits, read_all, tempdir,
};

/// How the leader of a concurrent test ends its fill.
#[derive(Clone, Copy)]
enum Ending {
    Finish,
    Fail,
    Drop,
}

/// Writes `content` in small chunks with pauses, so followers overlap it.
async fn write_slowly(w: &mut FillWriter, content: &[u8], upto: usize) {
    for chunk in content[..upto].chunks(4096) {
        w.write(chunk).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

enum Outcome {
    Leader,
    Follower {
        bytes: Vec<u8>,
        error: Option<std::io::Error>,
        early: bool,
        size: Option<u64>,
    },
    Done,
}

/// Eight concurrent requests for one digest; the leader sends `sent` and
/// ends as told. Returns every outcome.
async fn eight_clients(
    cache: &Cache,
    wanted: &[u8],
    sent: Vec<u8>,
    ending: Ending,
) -> Vec<Outcome> {
    let digest = Digest::of(wanted);
    let expected = wanted.len() as u64;
    let barrier = Arc::new(Barrier::new(8));
    let finished = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(sent);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cache, barrier, finished, sent) = (
            cache.clone(),
            barrier.clone(),
            finished.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            match cache
                .begin_fill(&digest, Some(expected))
                .await
                .expect("begin_fill")
            {
                Fill::Leader(mut w) => {
                    match ending {
                        Ending::Finish => {
                            write_slowly(&mut w, &sent, sent.len()).await;
                            let _ = w.finish().await;
                        }
                        Ending::Fail => {
                            write_slowly(&mut w, &sent, sent.len() / 2).await;
                            w.fail("upstream reset the connection");
                        }
                        Ending::Drop => {
                            write_slowly(&mut w, &sent, sent.len() / 3).await;
                            drop(w);
                        }
                    }
                    finished.store(true, Ordering::SeqCst);
                    Outcome::Leader
                }
                Fill::Follower(r) => {
                    let size = r.size();
                    let mut stream = std::pin::pin!(r.stream(None));
                    let mut bytes = Vec::new();
                    let mut early = false;
                    let mut error = None;
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(b) => {
                                if bytes.is_empty() {
                                    early = !finished.load(Ordering::SeqCst);
                                }
                                bytes.extend_from_slice(&b);
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    Outcome::Follower {
                        bytes,
                        error,
                        early,
                        size,
                    }
                }
                Fill::Done(_) => Outcome::Done,
            }
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(
            timeout(Duration::from_secs(30), t)
                .await
                .expect("in time")
                .expect("task"),
        );
    }
    outcomes
}

fn count_leaders(outcomes: &[Outcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Leader))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_seven_followers_stream_while_it_writes() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(256 * 1024 + 17, 10);
    let outcomes = eight_clients(&cache, &content, content.clone(), Ending::Finish).await;
    assert_eq!(count_leaders(&outcomes), 1);
    let mut followers = 0;
    for o in &outcomes {
        match o {
            Outcome::Follower {
                bytes,
                error,
                early,
                size,
            } => {
                followers += 1;
                assert!(error.is_none(), "{error:?}");
                assert!(bytes == &content, "follower got different bytes");
                assert!(early, "a follower got its first bytes only after the fill");
                assert_eq!(*size, Some(content.len() as u64));
            }
            Outcome::Done => panic!("a client arrived after the fill"),
            Outcome::Leader => {}
        }
    }
    assert_eq!(followers, 7);
    assert_eq!(cache.stats().blobs, 1);
    assert_tmp_clean(dir.path()).await;
    // Latecomers get the blob.
    assert!(matches!(
        cache
            .begin_fill(&Digest::of(&content), None)
            .await
            .expect("begin"),
        Fill::Done(_)
    ));
}

/// Every follower ends with an error and short of the full body.
fn assert_followers_failed(outcomes: &[Outcome], len: usize) {
    assert_eq!(count_leaders(outcomes), 1);
    for o in outcomes {
        if let Outcome::Follower { bytes, error, .. } = o {
            assert!(bytes.len() < len, "a follower got a complete body");
            let error = error.as_ref().expect("followers see the failure");
            let inner = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<CacheError>())
                .expect("a cache error inside");
            assert!(matches!(inner, CacheError::FillFailed { .. }), "{inner:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_error_when_the_leader_fails() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(128 * 1024, 11);
    let outcomes = eight_clients(&cache, &content, content.clone(), Ending::Fail).await;
    assert_followers_failed(&outcomes, content.len());
    assert_tmp_clean(dir.path()).await;
    assert_eq!(cache.stats().blobs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_error_when_the_digest_mismatches() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let wanted = data(128 * 1024, 12);
    // Same length, one bit off at the very end: the strongest case for
    // holding back the last byte.
    let mut sent = wanted.clone();
    if let Some(last) = sent.last_mut() {
        *last ^= 1;
    }
    let outcomes = eight_clients(&cache, &wanted, sent, Ending::Finish).await;
    assert_followers_failed(&outcomes, wanted.len());
    // (That includes the flipped final byte: it was held back, so no
    // follower saw a body of the right length.)
    assert_tmp_clean(dir.path()).await;
    assert_eq!(cache.stats().blobs, 0);
    assert!(
        cache
            .get(&Digest::of(&wanted))
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_error_when_the_leader_is_dropped() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(64 * 1024, 13);
    let outcomes = eight_clients(&cache, &content, content.clone(), Ending::Drop).await;
    assert_followers_failed(&outcomes, content.len());
    assert_tmp_clean(dir.path()).await;
    assert_eq!(cache.stats().fills_in_progress, 0);
    let _next = leader(&cache, &Digest::of(&content), None).await;
}

#[tokio::test]
async fn final_byte_waits_for_verification() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(10_000, 14);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, Some(content.len() as u64)).await;
    let own = w.reader();
    w.write(&content).await.expect("write");

    let mut stream = std::pin::pin!(own.stream(None));
    let mut got = Vec::new();
    while got.len() < content.len() - 1 {
        let piece = timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("written bytes flow")
            .expect("item")
            .expect("ok");
        got.extend_from_slice(&piece);
    }
    assert_eq!(got, &content[..content.len() - 1]);
    assert!(
        timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err(),
        "the last byte must wait for the digest check"
    );
    w.finish().await.expect("finish");
    let (rest, err) = collect(stream).await;
    assert!(err.is_none());
    assert_eq!(rest, &content[content.len() - 1..]);
}

#[tokio::test]
async fn unknown_size_stream_ends_only_after_verification() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(5_000, 15);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, None).await;
    let reader = w.reader();
    assert_eq!(reader.size(), None);
    w.write(&content).await.expect("write");
    let follower = tokio::spawn(collect(reader.stream(None)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!follower.is_finished(), "ended before verification");
    // Wrong length against the digest: fails, so the follower fails.
    w.write(b"extra").await.expect("write");
    assert!(w.finish().await.is_err());
    let (bytes, err) = follower.await.expect("task");
    assert!(err.is_some());
    assert!(bytes.len() < content.len() + 5);
}

#[tokio::test]
async fn ranged_followers_wait_for_their_bytes() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(200_000, 16);
    let len = content.len() as u64;
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, Some(len)).await;

    let r = match cache.begin_fill(&digest, None).await.expect("begin") {
        Fill::Follower(r) => r,
        other => panic!("expected a follower, got {other:?}"),
    };
    assert_eq!(r.size(), Some(len), "joiners learn the leader's size");
    let middle = tokio::spawn(read_all(r.stream(Some((150_000, 160_000)))));
    let tail = tokio::spawn(read_all(r.stream(Some((len - 10, len + 50)))));
    let (none, refused) = collect(r.stream(Some((len, len + 1)))).await;
    assert!(none.is_empty());
    assert_eq!(
        refused.expect("refused").kind(),
        std::io::ErrorKind::InvalidInput
    );
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { r.wait().await })
    };

    write_slowly(&mut w, &content, content.len()).await;
    w.finish().await.expect("finish");
    assert_eq!(middle.await.expect("task"), &content[150_000..=160_000]);
    assert_eq!(tail.await.expect("task"), &content[content.len() - 10..]);
    assert_eq!(waiter.await.expect("task").expect("verified"), len);
    // A follower stream started after the end still reads everything.
    assert_eq!(read_all(r.stream(Some((5, 9)))).await, &content[5..10]);
}

#[tokio::test]
async fn ranged_follower_of_unknown_size() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(50_000, 17);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, None).await;
    let r = w.reader();
    let inside = tokio::spawn(read_all(r.stream(Some((100, 60_000)))));
    let outside = tokio::spawn(collect(r.stream(Some((50_000, 50_010)))));
    write_slowly(&mut w, &content, content.len()).await;
    w.finish().await.expect("finish");
    assert_eq!(inside.await.expect("task"), &content[100..]);
    let (bytes, err) = outside.await.expect("task");
    assert!(bytes.is_empty());
    assert_eq!(
        err.expect("refused").kind(),
        std::io::ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn leader_declares_the_size_from_upstream_headers() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let content = data(20_000, 18);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, None).await;
    let r = match cache.begin_fill(&digest, None).await.expect("begin") {
        Fill::Follower(r) => r,
        other => panic!("expected a follower, got {other:?}"),
    };
    assert_eq!(r.size(), None);
    let asked = {
        let r = r.clone();
        tokio::spawn(async move { r.known_size().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!asked.is_finished(), "waits for the leader's headers");
    w.set_size(content.len() as u64).await.expect("declare");
    assert_eq!(
        asked.await.expect("task").expect("known"),
        Some(content.len() as u64)
    );
    assert_eq!(r.size(), Some(content.len() as u64));
    // The declared size is enforced like one given up front.
    w.write(&content).await.expect("write");
    assert!(matches!(
        w.write(b"x").await,
        Err(CacheError::TooLong { .. })
    ));
    assert!(matches!(r.known_size().await, Ok(Some(_))));
    assert!(collect(r.stream(None)).await.1.is_some());
}

#[tokio::test]
async fn conflicting_sizes_fail_the_fill() {
    let dir = tempdir();
    let cache = open(dir.path(), 1 << 30).await;
    let digest = Digest::of(b"sized");
    let mut w = leader(&cache, &digest, Some(5)).await;
    let r = w.reader();
    assert!(matches!(
        w.set_size(6).await,
        Err(CacheError::SizeConflict {
            expected: 5,
            announced: 6,
            ..
        })
    ));
    assert!(r.wait().await.is_err());
    assert_tmp_clean(dir.path()).await;

    // Undeclared and already writing: followers learn there is no size.
    let mut w = leader(&cache, &digest, None).await;
    let r = w.reader();
    w.write(b"siz").await.expect("write");
    assert_eq!(r.known_size().await.expect("known"), None);
    w.write(b"ed").await.expect("write");
    w.finish().await.expect("finish");
    assert_eq!(r.known_size().await.expect("known"), Some(5));
}

/// A short grace, so the abandoned-fill tests do not wait long.
fn short_grace() -> Limits {
    Limits {
        abandon_grace: Duration::from_millis(50),
        ..Limits::new(1 << 30)
    }
}

#[tokio::test]
async fn a_fill_nobody_follows_any_more_is_stopped_and_its_temp_removed() {
    let dir = tempdir();
    let cache = open_limits(dir.path(), short_grace()).await;
    let content = data(200_000, 30);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, Some(content.len() as u64)).await;
    let unfollowed = w.unfollowed();
    let r = w.reader();
    w.write(&content[..100_000]).await.expect("write");
    {
        // The only client reads a little, then hangs up (its body stream
        // and its handler's reader go).
        let mut stream = std::pin::pin!(r.stream(None));
        assert!(stream.next().await.expect("a chunk").is_ok());
    }
    drop(r);
    // The guard bounds a hang; the grace itself is 50 ms.
    timeout(Duration::from_secs(30), unfollowed)
        .await
        .expect("the fill is reported abandoned");
    // Nobody can join it any more: the digest is free for a new fill...
    assert_eq!(cache.stats().fills_in_progress, 0);
    let again = leader(&cache, &digest, None).await;
    drop(again);
    // ...and the leader stops it; its temp file goes.
    w.fail_with(FailCause::Internal, "abandoned");
    assert_tmp_clean(dir.path()).await;
    assert_eq!(cache.stats().reserved_bytes, 0);
    assert!(cache.get(&digest).await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_follower_leaving_fails_nobody() {
    let dir = tempdir();
    let cache = open_limits(dir.path(), short_grace()).await;
    let content = data(64 * 4096, 31);
    let digest = Digest::of(&content);
    let mut w = leader(&cache, &digest, Some(content.len() as u64)).await;
    let unfollowed = w.unfollowed();
    let stays = match cache.begin_fill(&digest, None).await.expect("begin") {
        Fill::Follower(r) => r,
        other => panic!("expected a follower, got {other:?}"),
    };
    let leaves = w.reader();
    let staying = tokio::spawn({
        let r = stays.clone();
        async move { collect(r.stream(None)).await }
    });
    drop(stays);
    write_slowly(&mut w, &content, content.len() / 4).await;
    {
        let mut stream = std::pin::pin!(leaves.stream(None));
        assert!(stream.next().await.expect("a chunk").is_ok());
    }
    drop(leaves);
    // Well past the grace (64 writes with 2 ms pauses each, at least) with
    // one reader left: the fill goes on.
    let rest = async {
        write_slowly(&mut w, &content[content.len() / 4..], content.len() * 3 / 4).await;
    };
    tokio::select! {
        () = rest => {}
        () = unfollowed => panic!("the fill was reported abandoned with a reader left"),
    }
    w.finish().await.expect("finish");
    let (bytes, error) = timeout(Duration::from_secs(30), staying)
        .await
        .expect("in time")
        .expect("task");
    assert!(error.is_none(), "{error:?}");
    assert!(bytes == content, "the staying follower got different bytes");
    assert!(cache.get(&digest).await.expect("get").is_some());
}
