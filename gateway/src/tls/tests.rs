//! Tests of the tls module as its users see it: a site CA in a temporary
//! directory, leaves checked by rustls' own verifier, real handshakes over
//! in-memory streams, and the peeker against ClientHellos rustls wrote.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use super::{SiteCa, init, provider};

mod ca;
mod client;
mod handshake;
mod identity;
mod permit;
mod resolver;
mod rotation;
mod sni;

pub(super) const HOST: &str = "registry.example.test";

/// A site CA in a temporary directory that lives as long as this value.
pub(super) struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca: Arc<SiteCa>,
}

pub(super) fn test_ca(hosts: &[&str]) -> TestCa {
    let dir = tempfile::tempdir().expect("temporary directory");
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    init(dir.path(), &hosts, false).expect("CA init");
    let ca = Arc::new(SiteCa::load(dir.path()).expect("CA load"));
    TestCa { dir, ca }
}

/// Roots holding only the site CA.
pub(super) fn ca_roots(ca: &SiteCa) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .expect("CA is a trust anchor");
    roots
}

/// Verifies `chain` for `name` as a rustls client trusting only `ca` would:
/// signatures, validity, SAN, EKU and the CA's name constraints.
pub(super) fn verify(
    ca: &SiteCa,
    chain: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(ca_roots(ca)), provider())
        .build()
        .expect("verifier");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let (leaf, rest) = chain.split_first().expect("non-empty chain");
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        .map(|_| ())
}

/// A client configuration trusting only `ca`, offering `alpn`.
pub(super) fn ca_client(ca: &SiteCa, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(ca_roots(ca))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
