//! Redirects: credentials stay with the configured origin, hops are
//! bounded.

use http::{HeaderValue, StatusCode, header::RANGE};

use super::*;
use crate::upstream::{MAX_REDIRECTS, ResponseMeta, UpstreamRequest};

/// A registry that wants Basic credentials, sends blob `aa` to `cdn` and
/// blob `bb` to another path of its own.
async fn registry_with_cdn(cdn: String) -> Server {
    Server::start(move |s| {
        if s.header("authorization") != Some(basic(PASSWORD).as_str()) {
            return reply(401, &[("www-authenticate", r#"Basic realm="r""#)], "");
        }
        match s.path() {
            "/v2/lib/app/blobs/sha256:aa" => reply(
                307,
                &[(
                    "location",
                    &format!("{cdn}/blobs/aa?X-Amz-Signature=SECRETSIG&expires=1"),
                )],
                "",
            ),
            "/v2/lib/app/blobs/sha256:bb" => reply(302, &[("location", "./sha256:bb-real")], ""),
            "/v2/lib/app/blobs/sha256:bb-real" => ok("same-origin blob"),
            _ => reply(404, &[], ""),
        }
    })
    .await
}

#[tokio::test]
async fn redirect_to_another_origin_drops_authorization() {
    let cdn = Server::start(|_| reply(206, &[("content-range", "bytes 0-3/10")], "blob")).await;
    let registry = registry_with_cdn(cdn.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&with_password(site(&registry.url()), dir.path(), PASSWORD));

    let req = UpstreamRequest::get("/v2/lib/app/blobs/sha256:aa")
        .with_header(RANGE, HeaderValue::from_static("bytes=0-3"));
    let resp = up.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let meta = resp.extensions().get::<ResponseMeta>().cloned().unwrap();
    assert_eq!(meta.redirects, 1);
    assert!(!meta.same_origin);
    assert!(!meta.url.contains("SECRETSIG"), "{}", meta.url);
    assert_eq!(body(&up, resp).await.unwrap(), "blob");

    let c = cdn.seen();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].header("authorization"), None);
    assert_eq!(c[0].header("range"), Some("bytes=0-3"));
    assert_eq!(c[0].path(), "/blobs/aa");
    assert!(c[0].query().contains("X-Amz-Signature=SECRETSIG"));

    let r = registry.seen();
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].header("authorization"), Some(basic(PASSWORD).as_str()));
}

#[tokio::test]
async fn redirect_to_the_same_origin_keeps_authorization() {
    let registry = registry_with_cdn("http://127.0.0.1:9".into()).await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&with_password(site(&registry.url()), dir.path(), PASSWORD));
    let resp = up
        .send(UpstreamRequest::get("/v2/lib/app/blobs/sha256:bb"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let meta = resp.extensions().get::<ResponseMeta>().cloned().unwrap();
    assert!(meta.same_origin);
    assert_eq!(meta.redirects, 1);
    assert_eq!(body(&up, resp).await.unwrap(), "same-origin blob");
    let last = registry.seen().pop().unwrap();
    assert_eq!(last.path(), "/v2/lib/app/blobs/sha256:bb-real");
    assert_eq!(last.header("authorization"), Some(basic(PASSWORD).as_str()));
}

/// `/r/N` redirects to `/r/N+1` until `/r/limit`, which answers 200.
async fn chain(limit: usize) -> Server {
    Server::start(move |s| {
        let n: usize = s.path().trim_start_matches("/r/").parse().unwrap_or(0);
        if n >= limit {
            ok("end")
        } else {
            let status = [301, 302, 303, 307, 308][n % 5];
            reply(status, &[("location", &format!("/r/{}", n + 1))], "")
        }
    })
    .await
}

#[tokio::test]
async fn five_redirects_are_followed() {
    let server = chain(MAX_REDIRECTS).await;
    let up = upstream(&site(&server.url()));
    let resp = up.send(UpstreamRequest::head("/r/0")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.extensions().get::<ResponseMeta>().unwrap().redirects,
        MAX_REDIRECTS
    );
    let seen = server.seen();
    assert_eq!(seen.len(), MAX_REDIRECTS + 1);
    assert!(seen.iter().all(|s| s.method == http::Method::HEAD));
}

#[tokio::test]
async fn a_redirect_loop_is_an_error() {
    let server = chain(usize::MAX).await;
    let up = upstream(&site(&server.url()));
    let e = up.send(UpstreamRequest::get("/r/0")).await.unwrap_err();
    assert!(
        matches!(e, UpstreamError::TooManyRedirects { max, .. } if max == MAX_REDIRECTS),
        "{e:?}"
    );
    assert!(!e.retryable());
    assert_eq!(server.hits(), MAX_REDIRECTS + 1);
}

#[tokio::test]
async fn redirect_without_location_is_an_error() {
    let server = Server::start(|_| reply(302, &[], "")).await;
    let up = upstream(&site(&server.url()));
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::BadRedirect { .. }), "{e:?}");
    let server = Server::start(|_| reply(302, &[("location", "ftp://x/y")], "")).await;
    let up = upstream(&site(&server.url()));
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::BadRedirect { .. }), "{e:?}");
}

/// What a compromised upstream would point the gateway at: a service on
/// the gateway host itself (127.0.0.1).
async fn internal_service() -> Server {
    Server::start(|_| ok("internal secrets")).await
}

/// An upstream whose every answer is a 302 to `location`.
async fn redirecting_to(location: String) -> Server {
    Server::start(move |_| reply(302, &[("location", &location)], "")).await
}

/// The port of a server's URL.
fn port(server: &Server) -> u16 {
    server.addr.port()
}

fn assert_refused(e: &UpstreamError, what: &str, host: &str, reason: &str) {
    match e {
        UpstreamError::RefusedTarget {
            what: w,
            host: h,
            reason: r,
            ..
        } => {
            assert_eq!(*w, what, "{e}");
            assert_eq!(h, host, "{e}");
            assert!(r.contains(reason), "{e}");
        }
        other => panic!("expected a refused target, got {other:?}"),
    }
    assert_eq!(e.fault(), crate::upstream::Fault::Upstream);
    assert!(!e.retryable());
    let text = e.to_string();
    assert!(
        text.contains(host) && text.contains("redirect_hosts"),
        "{text}"
    );
}

#[tokio::test]
async fn a_redirect_to_a_loopback_literal_is_refused() {
    let internal = internal_service().await;
    let registry = redirecting_to(format!("http://127.0.0.1:{}/admin", port(&internal))).await;
    // The upstream is named `localhost`: 127.0.0.1 is not its host.
    let up = upstream(&site(&format!("http://localhost:{}", port(&registry))));
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert_refused(&e, "redirect to", "127.0.0.1", "is a loopback address");
    assert_eq!(internal.hits(), 0);
    assert_eq!(registry.hits(), 1);

    // The same in IPv4-mapped IPv6 form.
    let registry = redirecting_to(format!(
        "http://[::ffff:127.0.0.1]:{}/admin",
        port(&internal)
    ))
    .await;
    let up = upstream(&site(&format!("http://localhost:{}", port(&registry))));
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert_refused(&e, "redirect to", "::ffff:127.0.0.1", "loopback");
    assert_eq!(internal.hits(), 0);
}

#[tokio::test]
async fn a_redirect_to_a_name_resolving_to_loopback_is_refused_without_retries() {
    let internal = internal_service().await;
    let registry = redirecting_to(format!("http://localhost:{}/admin", port(&internal))).await;
    let up = upstream(&site(&registry.url()));
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert_refused(
        &e,
        "redirect to",
        "localhost",
        "resolves only to refused addresses: 127.0.0.1 (loopback)",
    );
    assert_eq!(internal.hits(), 0);
    assert_eq!(registry.hits(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn a_redirect_to_a_listed_host_is_followed() {
    let internal = internal_service().await;
    // By name: `localhost` resolves to loopback, and the site allows it.
    let registry = redirecting_to(format!("http://localhost:{}/blob", port(&internal))).await;
    let mut s = site(&registry.url());
    s.redirect_hosts = vec!["LocalHost".into()];
    let up = upstream(&s);
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(&up, resp).await.unwrap(), "internal secrets");

    // By address: a loopback literal the site lists.
    let registry = redirecting_to(format!("http://127.0.0.1:{}/blob", port(&internal))).await;
    let mut s = site(&format!("http://localhost:{}", port(&registry)));
    s.redirect_hosts = vec!["127.0.0.1".into()];
    let up = upstream(&s);
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(internal.hits(), 2);
}

#[tokio::test]
async fn a_redirect_to_a_passthrough_address_is_refused() {
    let internal = internal_service().await;
    let registry = redirecting_to(format!("http://127.0.0.1:{}/", port(&internal))).await;
    let s = site(&format!("http://localhost:{}", port(&registry)));
    // The manager's address, on another port than the redirect's.
    let manager: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let up = Upstream::with_settings(&s, &[manager], fast()).unwrap();
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert_refused(
        &e,
        "redirect to",
        "127.0.0.1",
        "the address of a passthrough service",
    );
    assert_eq!(internal.hits(), 0);
}
