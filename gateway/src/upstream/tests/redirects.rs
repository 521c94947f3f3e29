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
