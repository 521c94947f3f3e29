//! Mutual TLS between a child gateway and its parent: real handshakes over
//! in-memory streams with the configurations the gateway builds.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use super::test_ca;
use crate::tls::{
    LeafResolver, TlsError,
    identity::{
        ClientIdentity, children_server_config, client_config_with_identity, issue_client,
        peer_name, valid_child_name, write_client,
    },
};

const PARENT: &str = "parent.example.test";

/// Issues `name` under `ca` into `dir`, and loads it as a child would.
fn child(ca: &crate::tls::SiteCa, dir: &Path, name: &str) -> ClientIdentity {
    let (cert, key) = issue_client(ca, name, Duration::from_secs(3600)).expect("issue");
    let (cert, key) = write_client(dir, name, &cert, &key).expect("write");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private from the start");
    ClientIdentity::load(&cert, &key).expect("load")
}

/// One handshake: the child (trusting `parent_ca_file`, presenting
/// `identity` if any) against the parent's children listener. The
/// server's result, and the name the parent read from the certificate.
async fn handshake(
    parent: &super::TestCa,
    identity: Option<&ClientIdentity>,
) -> Result<Option<String>, String> {
    let ca_file = parent.dir.path().join("ca.pem");
    let client = match identity {
        Some(id) => client_config_with_identity(Some(&ca_file), id).expect("client config"),
        None => crate::tls::client_config(Some(&ca_file)).expect("client config"),
    };
    let resolver = Arc::new(LeafResolver::new(
        parent.ca.clone(),
        vec![PARENT.to_owned()],
        Duration::from_secs(600),
        4,
    ));
    let server = children_server_config(resolver, &ca_file).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = rustls::pki_types::ServerName::try_from(PARENT).expect("name");
    let (_client, server) = tokio::join!(
        async {
            // TLS 1.3: the client finishes before the server has checked
            // its certificate; a refusal reaches it on the next read.
            let mut tls = connector.connect(name, c).await?;
            use tokio::io::AsyncReadExt as _;
            let mut b = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_millis(200), tls.read(&mut b)).await;
            Ok::<_, std::io::Error>(())
        },
        acceptor.accept(s)
    );
    match server {
        Ok(tls) => Ok(tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(peer_name)),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn a_child_with_the_parents_certificate_is_accepted_and_named() {
    let parent = test_ca(&[PARENT, "registry.example.test"]);
    let out = tempfile::tempdir().expect("tempdir");
    let id = child(&parent.ca, out.path(), "site-a");
    assert_eq!(id.name().as_deref(), Some("site-a"));
    assert_eq!(
        handshake(&parent, Some(&id)).await,
        Ok(Some("site-a".to_owned())),
        "a CN-only client certificate passes the CA's name constraints"
    );
}

#[tokio::test]
async fn no_certificate_or_a_foreign_one_is_refused() {
    let parent = test_ca(&[PARENT]);
    let e = handshake(&parent, None).await.expect_err("no certificate");
    assert!(e.contains("certificate"), "{e}");

    let other = test_ca(&[PARENT]);
    let out = tempfile::tempdir().expect("tempdir");
    let foreign = child(&other.ca, out.path(), "site-x");
    let e = handshake(&parent, Some(&foreign))
        .await
        .expect_err("another CA's certificate");
    assert!(e.contains("certificate"), "{e}");
}

#[test]
fn a_readable_key_or_a_missing_file_is_refused_with_its_path() {
    let parent = test_ca(&[PARENT]);
    let out = tempfile::tempdir().expect("tempdir");
    let _ = child(&parent.ca, out.path(), "site-a");
    let cert = out.path().join("site-a.pem");
    let key = out.path().join("site-a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = ClientIdentity::load(&cert, &key).expect_err("0644 key");
    assert!(matches!(e, TlsError::KeyPermissions { .. }), "{e:?}");
    let e = ClientIdentity::load(&cert, &out.path().join("gone.key")).expect_err("missing");
    assert!(e.to_string().contains("gone.key"), "{e}");
    assert!(
        !e.to_string().contains("ca init"),
        "not the CA's message: {e}"
    );
    let e = ClientIdentity::load(&key, &key).expect_err("a key is no certificate");
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
}

#[test]
fn child_names_are_plain() {
    assert!(valid_child_name("site-a"));
    assert!(valid_child_name("plant_3.line-2"));
    for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
        assert!(!valid_child_name(bad), "{bad:?}");
    }
}
