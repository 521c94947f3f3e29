//! Stalls, broken bodies, transient statuses, refused connections and
//! requests the client refuses to send.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use http::{HeaderValue, Method, StatusCode, header::AUTHORIZATION};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::upstream::{Fault, UpstreamRequest, Waiting};

/// A raw TCP server: for each connection, reads the request head and
/// runs `then` (write, stall, close). Returns the address and the number
/// of connections accepted.
pub(super) async fn raw<F, Fut>(then: F) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::spawn(then(stream));
            }
        }
    });
    (addr, accepted, task)
}

pub(super) async fn hold(stream: tokio::net::TcpStream) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(stream);
}

#[tokio::test]
async fn stall_before_headers_times_out() {
    let (addr, accepted, task) = raw(hold).await;
    let timeouts = Timeouts {
        response_headers: Duration::from_millis(300),
        ..fast()
    };
    let up = Upstream::with_timeouts(&site(&format!("http://{addr}")), timeouts).unwrap();
    let started = Instant::now();
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(e, UpstreamError::Timeout { waiting: Waiting::Headers, after, .. } if after == Duration::from_millis(300)),
        "{e:?}"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(e.fault(), Fault::Upstream);
    assert!(e.retryable());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a timeout is not retried"
    );
    task.abort();
}

#[tokio::test]
async fn stall_after_headers_fails_the_body_stream() {
    let (addr, _, task) = raw(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
            .await;
        hold(s).await;
    })
    .await;
    let timeouts = Timeouts {
        body_idle: Duration::from_millis(300),
        ..fast()
    };
    let up = Upstream::with_timeouts(&site(&format!("http://{addr}")), timeouts).unwrap();
    let resp = up.send(UpstreamRequest::get("/v2/blob")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    let mut stream = up.body_stream(resp);
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"abc");
    let e = stream.next().await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            UpstreamError::Timeout {
                waiting: Waiting::Body,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("/v2/blob"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        stream.next().await.is_none(),
        "the stream ends after an error"
    );
    task.abort();
}

#[tokio::test]
async fn time_the_consumer_spends_elsewhere_is_not_a_stall() {
    let (addr, _, task) = raw(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nabc")
            .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = s.write_all(b"def").await;
        hold(s).await;
    })
    .await;
    let timeouts = Timeouts {
        body_idle: Duration::from_millis(600),
        ..fast()
    };
    let up = Upstream::with_timeouts(&site(&format!("http://{addr}")), timeouts).unwrap();
    let resp = up.send(UpstreamRequest::get("/v2/blob")).await.unwrap();
    let mut stream = up.body_stream(resp);
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"abc");
    // Busy writing elsewhere for 500 ms; upstream sends the rest at
    // 800 ms, 300 ms into this wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"def");
    assert!(stream.next().await.is_none());
    task.abort();
}

#[tokio::test]
async fn a_body_one_byte_short_is_an_error() {
    let (addr, _, task) = raw(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabc")
            .await;
        let _ = s.shutdown().await;
    })
    .await;
    let up = upstream(&site(&format!("http://{addr}")));
    let resp = up.send(UpstreamRequest::get("/v2/blob")).await.unwrap();
    let e = body(&up, resp).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Body { .. }), "{e:?}");
    assert!(e.retryable());
    task.abort();
}

#[tokio::test]
async fn transient_status_is_retried() {
    let count = Arc::new(AtomicUsize::new(0));
    let server = Server::start({
        let count = count.clone();
        move |_| match count.fetch_add(1, Ordering::SeqCst) {
            0 => reply(503, &[], "busy"),
            1 => reply(502, &[], "bad gateway"),
            _ => ok("fine"),
        }
    })
    .await;
    let up = upstream(&site(&server.url()));
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(&up, resp).await.unwrap(), "fine");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn retries_are_bounded_and_then_the_status_is_returned() {
    let server = Server::start(|_| reply(504, &[], "")).await;
    let up = upstream(&site(&server.url()));
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(server.hits(), 3, "two retries");
}

#[tokio::test]
async fn rate_limits_and_client_errors_are_not_retried() {
    for status in [429, 404, 500] {
        let server = Server::start(move |_| reply(status, &[("retry-after", "5")], "")).await;
        let up = upstream(&site(&server.url()));
        let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(server.hits(), 1, "{status}");
    }
}

#[tokio::test]
async fn connection_refused_is_retried_then_a_retryable_upstream_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let timeouts = Timeouts {
        retry_backoff: vec![Duration::from_millis(100), Duration::from_millis(100)],
        ..fast()
    };
    let up = Upstream::with_timeouts(&site(&format!("http://{addr}")), timeouts).unwrap();
    let started = Instant::now();
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Request { .. }), "{e:?}");
    assert!(e.retryable());
    assert_eq!(e.fault(), Fault::Upstream);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "backoff applied"
    );
}

#[tokio::test]
async fn only_get_and_head_with_a_path_are_sent() {
    let server = Server::start(|_| ok("")).await;
    let up = upstream(&site(&server.url()));
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let e = up
            .send(UpstreamRequest::new(method, "/v2/"))
            .await
            .unwrap_err();
        assert!(matches!(e, UpstreamError::MethodNotAllowed { .. }), "{e:?}");
        assert_eq!(e.fault(), Fault::Internal);
        assert!(!e.retryable());
    }
    for target in ["v2/", "", "http://evil.example/v2/", "/v2/#frag", "/v2/ x"] {
        let e = up.send(UpstreamRequest::get(target)).await.unwrap_err();
        assert!(matches!(e, UpstreamError::InvalidTarget { .. }), "{e:?}");
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn caller_credentials_are_dropped_and_the_path_prefix_kept() {
    let server = Server::start(|_| ok("")).await;
    let up = upstream(&site(&format!("{}/mirror/", server.url())));
    let req = UpstreamRequest::get("/v2/lib/app/tags/list?n=10")
        .with_header(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer device-token"),
        )
        .with_header(http::header::COOKIE, HeaderValue::from_static("s=1"));
    up.send(req).await.unwrap();
    let s = &server.seen()[0];
    assert_eq!(s.header("authorization"), None);
    assert_eq!(s.header("cookie"), None);
    assert_eq!(s.uri.path(), "/mirror/v2/lib/app/tags/list");
    assert_eq!(s.query(), "n=10");
    assert!(
        s.header("user-agent")
            .is_some_and(|ua| ua.starts_with("margo-egress-gateway/"))
    );
    assert!(
        s.header("host")
            .is_some_and(|h| h == server.addr.to_string())
    );
}

#[tokio::test]
async fn bad_upstream_urls_are_internal_errors_that_hide_userinfo() {
    for url in [
        "ftp://registry.example",
        "https://user:pw-in-url@registry.example",
        "https://registry.example/?x=1",
        "not a url",
        "/relative",
    ] {
        let e = Upstream::new(&site(url), &[]).unwrap_err();
        assert!(
            matches!(e, UpstreamError::InvalidUpstreamUrl { .. }),
            "{url}: {e:?}"
        );
        assert_eq!(e.fault(), Fault::Internal);
        assert!(!all_text(&e).contains("pw-in-url"), "{e:?}");
    }
}

#[tokio::test]
async fn missing_password_file_and_ca_file_are_internal_errors() {
    let mut s = site("https://registry.example");
    s.credentials = Some(Credentials {
        username: "puller".into(),
        password_file: Some("/nonexistent/gateway-test/password".into()),
        password_env: None,
    });
    let e = Upstream::new(&s, &[]).unwrap_err();
    assert!(matches!(e, UpstreamError::Credentials { .. }), "{e:?}");
    assert!(all_text(&e).contains("/nonexistent/gateway-test/password"));
    assert_eq!(e.fault(), Fault::Internal);

    let mut s = site("https://registry.example");
    s.ca_file = Some("/nonexistent/gateway-test/ca.pem".into());
    let e = Upstream::new(&s, &[]).unwrap_err();
    assert!(matches!(e, UpstreamError::Tls { .. }), "{e:?}");
    assert!(!e.retryable());

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("ca.pem");
    std::fs::write(&empty, "not a pem\n").unwrap();
    s.ca_file = Some(empty);
    let e = Upstream::new(&s, &[]).unwrap_err();
    assert!(
        all_text(&e).contains("no PEM `CERTIFICATE` block"),
        "{}",
        all_text(&e)
    );
}
