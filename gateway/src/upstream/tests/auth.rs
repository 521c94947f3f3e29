//! The token dance, the token cache and Basic challenges.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{HeaderValue, StatusCode, header::ACCEPT};

use super::*;
use crate::upstream::{Fault, UpstreamRequest};

const SCOPE: &str = "repository:library/nginx:pull";
const ENCODED_SCOPE: &str = "scope=repository%3Alibrary%2Fnginx%3Apull";

fn manifest_request() -> UpstreamRequest {
    UpstreamRequest::get("/v2/library/nginx/manifests/1.27")
        .with_scope(SCOPE)
        .with_header(
            ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        )
        .with_header(
            ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        )
}

/// A registry that wants `Bearer <token>` and challenges with `challenge`
/// otherwise.
async fn bearer_registry(token: &'static str, challenge: String) -> Server {
    Server::start(move |s| {
        if s.header("authorization") == Some(&format!("Bearer {token}")) {
            ok("manifest")
        } else {
            reply(401, &[("www-authenticate", &challenge)], "{}")
        }
    })
    .await
}

fn docker_challenge(tokens: &Server) -> String {
    format!(
        r#"Bearer realm="{}/token",service="registry.test",scope="{SCOPE}""#,
        tokens.url()
    )
}

#[tokio::test]
async fn token_dance_with_credentials_on_a_second_host_and_cache() {
    let tokens = Server::start(|_| ok(r#"{"token":"tok-1","expires_in":300}"#)).await;
    let registry = bearer_registry("tok-1", docker_challenge(&tokens)).await;
    let dir = tempfile::tempdir().unwrap();
    let site = with_password(site(&registry.url()), dir.path(), PASSWORD);
    let up = upstream(&site);

    let resp = up.send(manifest_request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(&up, resp).await.unwrap(), "manifest");

    let t = tokens.seen();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].path(), "/token");
    assert_eq!(t[0].header("authorization"), Some(basic(PASSWORD).as_str()));
    assert!(
        t[0].query().contains("service=registry.test"),
        "{}",
        t[0].query()
    );
    assert!(t[0].query().contains(ENCODED_SCOPE), "{}", t[0].query());

    let r = registry.seen();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].header("authorization"), None);
    assert_eq!(r[1].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(r[1].path(), "/v2/library/nginx/manifests/1.27");
    let accepts: Vec<_> = r[1].headers.get_all(ACCEPT).iter().collect();
    assert_eq!(accepts.len(), 2, "{accepts:?}");

    // Same scope again, also through a clone: the cached token goes with
    // the first request, the token service is not asked again.
    for up in [up.clone(), up] {
        let resp = up.send(manifest_request()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(tokens.hits(), 1);
    let r = registry.seen();
    assert_eq!(r.len(), 4);
    assert_eq!(r[2].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(r[3].header("authorization"), Some("Bearer tok-1"));
}

#[tokio::test]
async fn anonymous_token_uses_access_token_and_the_scope_hint() {
    let tokens = Server::start(|_| ok(r#"{"access_token":"anon-tok"}"#)).await;
    // No scope in the challenge: the request's hint is used.
    let challenge = format!(
        r#"bearer realm="{}/token",service="registry.test""#,
        tokens.url()
    );
    let registry = bearer_registry("anon-tok", challenge).await;
    let up = upstream(&site(&registry.url()));

    let resp = up.send(manifest_request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let t = tokens.seen();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].header("authorization"), None);
    assert!(t[0].query().contains(ENCODED_SCOPE), "{}", t[0].query());
    assert_eq!(
        registry.seen()[1].header("authorization"),
        Some("Bearer anon-tok")
    );
}

#[tokio::test]
async fn expired_token_is_fetched_again() {
    let count = Arc::new(AtomicUsize::new(0));
    let tokens = Server::start({
        let count = count.clone();
        move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            ok(r#"{"token":"short","expires_in":1}"#)
        }
    })
    .await;
    let registry = bearer_registry("short", docker_challenge(&tokens)).await;
    let up = upstream(&site(&registry.url()));
    assert_eq!(up.send(manifest_request()).await.unwrap().status(), 200);
    // Refreshed a quarter of the lifetime early: after 0.75 s.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(up.send(manifest_request()).await.unwrap().status(), 200);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rejected_token_gives_the_401_then_a_new_token_on_the_next_request() {
    let issued = Arc::new(AtomicUsize::new(0));
    let tokens = Server::start({
        let issued = issued.clone();
        move |_| {
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            ok(&format!(r#"{{"token":"tok-{n}","expires_in":300}}"#))
        }
    })
    .await;
    // Only the second token is good.
    let registry = bearer_registry("tok-2", docker_challenge(&tokens)).await;
    let up = upstream(&site(&registry.url()));

    let resp = up.send(manifest_request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(registry.hits(), 2, "one answer to the challenge, no loop");

    let resp = up.send(manifest_request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let r = registry.seen();
    assert_eq!(r[2].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(r[3].header("authorization"), Some("Bearer tok-2"));
    assert_eq!(tokens.hits(), 2);
}

#[tokio::test]
async fn token_service_refusal_returns_the_registry_401() {
    let tokens = Server::start(|_| reply(401, &[], "denied")).await;
    let registry = bearer_registry("never", docker_challenge(&tokens)).await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&with_password(site(&registry.url()), dir.path(), "wrong"));
    let resp = up.send(manifest_request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(tokens.hits(), 1);
    assert_eq!(registry.hits(), 1);
}

#[tokio::test]
async fn token_service_down_is_a_retryable_upstream_error() {
    let tokens = Server::start(|_| reply(503, &[], "")).await;
    let registry = bearer_registry("never", docker_challenge(&tokens)).await;
    let up = upstream(&site(&registry.url()));
    let e = up.send(manifest_request()).await.unwrap_err();
    assert!(
        matches!(e, UpstreamError::TokenStatus { status, .. } if status == 503),
        "{e:?}"
    );
    assert_eq!(e.fault(), Fault::Upstream);
    assert!(e.retryable());
    assert_eq!(
        tokens.hits(),
        3,
        "503 from the token service is retried too"
    );
}

#[tokio::test]
async fn garbage_token_response_is_an_error() {
    let tokens = Server::start(|_| ok("<html>login</html>")).await;
    let registry = bearer_registry("never", docker_challenge(&tokens)).await;
    let up = upstream(&site(&registry.url()));
    let e = up.send(manifest_request()).await.unwrap_err();
    assert!(matches!(e, UpstreamError::TokenJson { .. }), "{e:?}");
    assert!(!e.retryable());

    let bad_realm = bearer_registry("never", r#"Bearer realm="ftp://x/token""#.into()).await;
    let up = upstream(&site(&bad_realm.url()));
    let e = up.send(manifest_request()).await.unwrap_err();
    assert!(matches!(e, UpstreamError::BadRealm { .. }), "{e:?}");
}

/// A registry that wants Basic `puller:PASSWORD`.
async fn basic_registry() -> Server {
    Server::start(|s| {
        if s.header("authorization") == Some(basic(PASSWORD).as_str()) {
            ok("v2")
        } else {
            reply(
                401,
                &[("www-authenticate", r#"Basic realm="registry""#)],
                "",
            )
        }
    })
    .await
}

#[tokio::test]
async fn basic_challenge_is_answered_once_and_remembered() {
    let registry = basic_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&with_password(site(&registry.url()), dir.path(), PASSWORD));
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(registry.hits(), 2);
    // Later requests send the credentials at once.
    let resp = up.send(UpstreamRequest::head("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let r = registry.seen();
    assert_eq!(r.len(), 3);
    assert_eq!(r[2].method, http::Method::HEAD);
    assert_eq!(r[2].header("authorization"), Some(basic(PASSWORD).as_str()));
}

#[tokio::test]
async fn basic_challenge_without_or_with_wrong_credentials_returns_the_401() {
    let registry = basic_registry().await;
    let up = upstream(&site(&registry.url()));
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(registry.hits(), 1);

    let registry = basic_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&with_password(site(&registry.url()), dir.path(), "wrong"));
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(registry.hits(), 2);
}

#[tokio::test]
async fn forbidden_is_returned_as_a_response() {
    let registry = Server::start(|_| reply(403, &[], "denied")).await;
    let up = upstream(&site(&registry.url()));
    let resp = up
        .send(UpstreamRequest::get("/v2/x/manifests/a"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(registry.hits(), 1);
}

/// A token service that counts its callers and a registry challenging
/// with its realm at `realm_host`.
async fn realm_on(realm_host: &str) -> (Server, Server) {
    let tokens = Server::start(|_| ok(r#"{"token":"tok-r"}"#)).await;
    let challenge = format!(
        r#"Bearer realm="http://{realm_host}:{}/token",service="registry.test""#,
        tokens.addr.port()
    );
    (tokens, bearer_registry("tok-r", challenge).await)
}

#[tokio::test]
async fn a_token_realm_on_a_loopback_literal_is_refused() {
    let (tokens, registry) = realm_on("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    // The upstream is `localhost`: 127.0.0.1 is not its host.
    let site = site(&format!("http://localhost:{}", registry.addr.port()));
    let up = upstream(&with_password(site, dir.path(), PASSWORD));
    let e = up.send(manifest_request()).await.unwrap_err();
    assert!(
        matches!(&e, UpstreamError::RefusedTarget { what: "token realm", host, reason, .. }
            if host == "127.0.0.1" && reason == "is a loopback address"),
        "{e:?}"
    );
    assert_eq!(e.fault(), Fault::Upstream);
    assert!(!e.retryable());
    assert_eq!(tokens.hits(), 0, "the credentials never left");
}

#[tokio::test]
async fn a_token_realm_named_by_a_name_resolving_to_loopback_is_refused_unless_listed() {
    let (tokens, registry) = realm_on("localhost").await;
    let up = upstream(&site(&registry.url()));
    let e = up.send(manifest_request()).await.unwrap_err();
    assert!(
        matches!(&e, UpstreamError::RefusedTarget { what: "token realm", host, reason, .. }
            if host == "localhost" && reason.contains("resolves only to refused addresses")),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("redirect_hosts"), "{text}");
    assert_eq!(tokens.hits(), 0);

    let mut listed = site(&registry.url());
    listed.redirect_hosts = vec!["localhost".into()];
    let up = upstream(&listed);
    let resp = up.send(manifest_request()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(tokens.hits(), 1);
}
