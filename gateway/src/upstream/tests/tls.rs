//! Real TLS: a test CA from rcgen, a server on tokio-rustls, the client
//! trusting the CA through `ca_file`.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::upstream::{Fault, UpstreamRequest};

pub(super) struct TestPki {
    pub(super) ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

pub(super) fn pki() -> TestPki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gateway upstream test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        chain: vec![leaf_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

pub(super) fn acceptor(pki: &TestPki) -> tokio_rustls::TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.chain.clone(), pki.key.clone_key())
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn https_site(server: &Server, dir: &Path, pki: &TestPki) -> Site {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let mut s = site(&format!("https://{}", server.addr));
    s.ca_file = Some(ca);
    s
}

#[tokio::test]
async fn https_with_the_site_ca_negotiates_h2() {
    let pki = pki();
    let server = Server::start_with(Some(acceptor(&pki)), |_| ok("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&https_site(&server, dir.path(), &pki));
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(body(&up, resp).await.unwrap(), "{}");
    assert_eq!(server.seen()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn https_without_the_ca_is_a_final_upstream_error() {
    let pki = pki();
    let server = Server::start_with(Some(acceptor(&pki)), |_| ok("{}")).await;
    let up = upstream(&site(&format!("https://{}", server.addr)));
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Request { .. }), "{e:?}");
    assert_eq!(e.fault(), Fault::Upstream);
    assert!(
        !e.retryable(),
        "an untrusted certificate does not fix itself: {e:?}"
    );
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn https_upstream_refuses_plain_http_realm_and_redirect() {
    let pki = pki();
    let plain = Server::start(|_| ok(r#"{"token":"t"}"#)).await;
    let plain_url = plain.url();
    let server = Server::start_with(Some(acceptor(&pki)), move |s| match s.path() {
        "/v2/" => reply(
            401,
            &[(
                "www-authenticate",
                &format!(r#"Bearer realm="{plain_url}/token""#),
            )],
            "",
        ),
        _ => reply(302, &[("location", &format!("{plain_url}/blob"))], ""),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = with_password(https_site(&server, dir.path(), &pki), dir.path(), PASSWORD);
    let up = upstream(&site);

    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::BadRealm { .. }), "{e:?}");
    let e = up
        .send(UpstreamRequest::get("/v2/a/blobs/x"))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::InsecureRedirect { .. }), "{e:?}");
    assert_eq!(plain.hits(), 0, "nothing went out in clear");
}

/// A site whose upstream is a parent gateway (it has a client certificate)
/// names the origin it wants in every request to the parent; a site
/// without one never sends the header.
#[tokio::test]
async fn a_child_names_the_origin_to_its_parent_only() {
    let pki = pki();
    let server = Server::start_with(Some(acceptor(&pki)), |_| ok("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("parent-ca");
    crate::tls::init(&ca_dir, &["parent.test".to_owned()], false).unwrap();
    let ca = crate::tls::SiteCa::load(&ca_dir).unwrap();
    let (cert, key) =
        crate::tls::identity::issue_client(&ca, "site-a", std::time::Duration::from_secs(600))
            .unwrap();
    let (cert, key) =
        crate::tls::identity::write_client(dir.path(), "site-a", &cert, &key).unwrap();

    let mut child = https_site(&server, dir.path(), &pki);
    child.client_cert = Some(cert);
    child.client_key = Some(key);
    let up = upstream(&child);
    let resp = up
        .send(UpstreamRequest::get("/v2/a/manifests/1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let plain = upstream(&https_site(&server, dir.path(), &pki));
    plain.send(UpstreamRequest::get("/v2/")).await.unwrap();

    let seen = server.seen();
    assert_eq!(seen[0].header("gateway-origin-host"), Some("registry.test"));
    assert_eq!(seen[1].header("gateway-origin-host"), None);
}
