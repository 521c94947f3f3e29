//! The progress floor on bodies ([`BodyRate`]): a trickle below it fails
//! with [`UpstreamError::TooSlow`], a body above it does not, and time the
//! consumer spends elsewhere is not held against upstream.
//!
//! Rates are an order of magnitude either side of the floor and windows
//! short, so the outcome does not hang on a noisy machine's timing.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::{faults::hold, faults::raw, *};
use crate::upstream::{BodyRate, Fault, UpstreamRequest};

/// Headers announcing `len` bytes, then `pieces` of `piece` bytes, one
/// every `every`, then silence.
async fn paced(
    mut s: tokio::net::TcpStream,
    len: usize,
    piece: usize,
    every: Duration,
    pieces: usize,
) {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let bytes = vec![b'x'; piece];
    for _ in 0..pieces {
        if s.write_all(&bytes).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
    hold(s).await;
}

fn limited(addr: SocketAddr, rate: BodyRate) -> Upstream {
    Upstream::with_limits(&site(&format!("http://{addr}")), &[], fast(), rate).unwrap()
}

#[tokio::test]
async fn a_trickle_below_the_floor_fails_after_the_window() {
    // 1000 B/s (100 bytes every 100 ms) of a 1 MB body, against a floor of
    // 10 000 B/s over 1 s; the idle timeout (5 s) never strikes.
    let (addr, accepted, task) =
        raw(|s| paced(s, 1_000_000, 100, Duration::from_millis(100), 10_000)).await;
    let up = limited(
        addr,
        BodyRate {
            floor: 10_000,
            window: Duration::from_secs(1),
        },
    );
    let resp = up.send(UpstreamRequest::get("/v2/blob")).await.unwrap();
    let mut stream = up.body_stream(resp);
    let mut got = 0;
    let e = loop {
        match stream.next().await.expect("the body ended") {
            Ok(chunk) => got += chunk.len(),
            Err(e) => break e,
        }
    };
    assert!(got > 0, "the trickle sent nothing: a stall, not a crawl");
    let UpstreamError::TooSlow {
        bytes,
        window,
        floor,
        ..
    } = e
    else {
        panic!("{e:?}");
    };
    assert!(bytes < 10_000, "{bytes}");
    assert_eq!(window, Duration::from_secs(1));
    assert_eq!(floor, 10_000);
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "upstream sent {bytes} bytes in the last 1 s, below the floor of 10000 B/s \
             (upstream.min_body_rate)"
        )),
        "{text}"
    );
    assert!(text.contains("/v2/blob"), "{text}");
    assert_eq!(e.fault(), Fault::Upstream);
    assert!(!e.retryable());
    assert!(
        stream.next().await.is_none(),
        "the stream ends after an error"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test]
async fn a_body_above_the_floor_completes() {
    // 10 000 B/s (1000 bytes every 100 ms) for 3 s, against a floor of
    // 1000 B/s over 1 s: three whole windows are checked on the way.
    let (addr, _, task) = raw(|s| paced(s, 30_000, 1000, Duration::from_millis(100), 30)).await;
    let up = limited(
        addr,
        BodyRate {
            floor: 1000,
            window: Duration::from_secs(1),
        },
    );
    let resp = up.send(UpstreamRequest::get("/v2/blob")).await.unwrap();
    assert_eq!(body(&up, resp).await.unwrap().len(), 30_000);
    task.abort();
}

#[tokio::test]
async fn a_zero_floor_lets_a_trickle_through() {
    // The trickle of the first test, 1 s long, with the floor disabled.
    let (addr, _, task) = raw(|s| paced(s, 2000, 100, Duration::from_millis(100), 20)).await;
    let up = limited(
        addr,
        BodyRate {
            floor: 0,
            window: Duration::from_millis(200),
        },
    );
    let resp = up.send(UpstreamRequest::get("/v2/blob")).await.unwrap();
    assert_eq!(body(&up, resp).await.unwrap().len(), 2000);
    task.abort();
}

#[tokio::test]
async fn time_the_consumer_spends_elsewhere_is_not_counted() {
    // Upstream sends 160 KiB in 16 KiB pieces 20 ms apart (about 0.2 s of
    // waiting); the consumer takes 300 ms over each chunk. Over the wall
    // clock that is about 50 KB/s, far below the floor; over the time
    // spent waiting on upstream it is far above it.
    let (addr, _, task) =
        raw(|s| paced(s, 160 * 1024, 16 * 1024, Duration::from_millis(20), 10)).await;
    let up = limited(
        addr,
        BodyRate {
            floor: 150_000,
            window: Duration::from_secs(1),
        },
    );
    let resp = up.send(UpstreamRequest::get("/v2/blob")).await.unwrap();
    let mut stream = up.body_stream(resp);
    let mut got = 0;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        got += chunk.unwrap().len();
        chunks += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(got, 160 * 1024);
    assert!(
        chunks >= 4,
        "{chunks} chunks: the consumer was not busy for longer than a window"
    );
    task.abort();
}
