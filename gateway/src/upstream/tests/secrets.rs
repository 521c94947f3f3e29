//! Passwords, tokens and signed CDN URLs never show in logs, errors or
//! Debug output.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use base64::Engine as _;

use super::*;
use crate::upstream::{Secret, UpstreamCredentials, UpstreamRequest};

const TOKEN: &str = "tok-Zq8sEcReT";
const SIGNATURE: &str = "SIGsecret77";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("puller:{PASSWORD}"));
    for secret in [PASSWORD, encoded.as_str(), TOKEN, SIGNATURE] {
        assert!(!text.contains(secret), "{what} leaks {secret}: {text}");
    }
}

#[tokio::test]
async fn no_secret_in_logs_errors_or_debug() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cdn = Server::start(|_| ok("blob")).await;
    let tokens = Server::start(|_| ok(&format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#))).await;
    let challenge = format!(
        r#"Bearer realm="{}/token",service="registry.test",scope="repository:a/b:pull""#,
        tokens.url()
    );
    let cdn_url = cdn.url();
    let registry = Server::start(move |s| {
        if s.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return reply(401, &[("www-authenticate", &challenge)], "");
        }
        match s.path() {
            "/v2/a/b/blobs/sha256:aa" => reply(
                307,
                &[("location", &format!("{cdn_url}/b?sig={SIGNATURE}"))],
                "",
            ),
            // A loop through signed URLs, for an error that names one.
            _ => reply(302, &[("location", &format!("/loop?sig={SIGNATURE}"))], ""),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = with_password(site(&registry.url()), dir.path(), PASSWORD);
    let up = upstream(&site);
    assert_clean("Upstream Debug", &format!("{up:?}"));
    assert!(format!("{up:?}").contains("puller"));

    let req = UpstreamRequest::get("/v2/a/b/blobs/sha256:aa").with_scope("repository:a/b:pull");
    assert_clean("request Debug", &format!("{req:?}"));
    let resp = up.send(req).await.unwrap();
    assert_clean("response Debug", &format!("{resp:?}"));
    assert_eq!(body(&up, resp).await.unwrap(), "blob");
    assert_eq!(cdn.seen()[0].header("authorization"), None);

    let e = up
        .send(UpstreamRequest::get("/v2/a/b/manifests/x").with_scope("repository:a/b:pull"))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::TooManyRedirects { .. }), "{e:?}");
    assert_clean("redirect error", &all_text(&e));

    // Token service failures and garbage.
    for reply_body in [
        format!(r#"["{TOKEN}"]"#),
        format!(r#""{TOKEN}""#),
        TOKEN.to_owned(),
    ] {
        let tokens = Server::start(move |_| ok(&reply_body)).await;
        let challenge = format!(r#"Bearer realm="{}/t""#, tokens.url());
        let registry =
            Server::start(move |_| reply(401, &[("www-authenticate", &challenge)], "")).await;
        let up = upstream(&with_password(site_for(&registry), dir.path(), PASSWORD));
        let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
        assert_clean("token error", &all_text(&e));
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("upstream token issued"), "{logs}");
    assert!(logs.contains("following upstream redirect"), "{logs}");
    assert_clean("logs", &logs);
}

fn site_for(server: &Server) -> crate::config::Site {
    site(&server.url())
}

#[test]
fn secret_and_credentials_print_stars() {
    let c = UpstreamCredentials::new("puller", Secret::new(PASSWORD));
    assert_clean("credentials Debug", &format!("{c:?}"));
    assert_clean("header Debug", &format!("{:?}", c.basic_header()));
    assert_eq!(format!("{}", c.password()), "***");
}
