//! The upstream client configuration: system roots plus an extra CA file.

use std::sync::Arc;

use super::{HOST, test_ca};
use crate::tls::{LeafResolver, TlsError, client_config, server_config};

#[tokio::test]
async fn extra_ca_file_is_trusted() {
    let t = test_ca(&[HOST]);
    let config = client_config(Some(&t.dir.path().join("ca.pem"))).expect("client config");
    assert!(
        config.alpn_protocols.is_empty(),
        "ALPN is the HTTP client's business"
    );

    // The upstream here is a gateway-style server under the test CA: the
    // handshake succeeds only if the extra file's CA is a root.
    let hosts = vec![HOST.to_owned()];
    let resolver = Arc::new(LeafResolver::new(
        t.ca.clone(),
        hosts,
        std::time::Duration::from_secs(60),
        4,
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(resolver).expect("server config"));
    let connector = tokio_rustls::TlsConnector::from(config);
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = rustls::pki_types::ServerName::try_from(HOST).expect("name");
    let (client, server) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
    client.expect("client trusts the extra CA");
    server.expect("server side");
}

#[test]
fn missing_or_empty_ca_files_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.pem");
    let err = client_config(Some(&missing)).expect_err("missing file");
    assert!(matches!(err, TlsError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").expect("write");
    let err = client_config(Some(&empty)).expect_err("no certificate");
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.pem"), "{err}");
}

#[test]
fn system_roots_alone() {
    // Depends on the machine: either there are system roots, or the
    // error says how to get some.
    match client_config(None) {
        Ok(config) => assert!(config.alpn_protocols.is_empty()),
        Err(err) => {
            assert!(matches!(err, TlsError::NoRoots), "{err:?}");
            println!("no system roots here: {err}");
        }
    }
}
