//! The client side of upstream connections: the system trust anchors plus
//! a site's extra CA file. ALPN is left to the HTTP client.

use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};

use super::{TlsError, provider};

/// A TLS client configuration trusting the system roots and, when given,
/// every certificate in the PEM file `extra_ca_file`.
pub fn client_config(extra_ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            side: "client",
            source,
        })?
        .with_root_certificates(roots(extra_ca_file)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system roots plus every certificate in `extra_ca_file`.
pub(super) fn roots(extra_ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unparsable system certificates are skipped: one bad file in
    // /etc/ssl/certs must not take every upstream down.
    let (_, skipped) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if skipped > 0 {
        tracing::debug!(
            skipped,
            "system trust anchors rustls cannot use were skipped"
        );
    }
    if let Some(path) = extra_ca_file {
        add_pem_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// The system store, read once per process: it is hundreds of files, and
/// one configuration is built per upstream.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "could not read part of the system trust store");
        }
        found.certs
    })
}

pub(super) fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let pem = std::fs::read(path).map_err(TlsError::io("read the CA file", path))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::io("parse the PEM in", path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::BadTrustAnchor {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}
