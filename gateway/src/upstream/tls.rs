//! The TLS client configuration for upstream connections: the system
//! roots plus a site's optional extra CA file.
//!
//! A stand-in for `crate::tls::client_config`, which owns this once it
//! lands; the behaviour is meant to be the same.

use std::{io::BufReader, path::Path, path::PathBuf, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

/// Internal faults (trust anchors on disk); none is helped by a retry.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    #[error("cannot read the CA file {path} (check sites[].ca_file)")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no PEM certificate")]
    NoCertificates { path: PathBuf },
    #[error("certificate {index} in the CA file {path} is not a usable trust anchor")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("the ring crypto provider offers none of the default TLS versions")]
    Versions(#[source] rustls::Error),
}

/// System roots plus the PEM certificates in `extra_ca`, with the ring
/// provider and rustls' safe default protocol versions. No ALPN is set:
/// the connector sets it.
pub(crate) fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::warn!(
            errors = native.errors.len(),
            "some system trust anchors could not be loaded"
        );
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system trust anchors");
    if let Some(path) = extra_ca {
        add_pem_file(&mut roots, path)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsConfigError> {
    let read_err = |source| TlsConfigError::ReadCa {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut count = 0;
    for (index, cert) in rustls_pemfile::certs(&mut BufReader::new(file)).enumerate() {
        let cert = cert.map_err(read_err)?;
        roots
            .add(cert)
            .map_err(|source| TlsConfigError::BadCertificate {
                path: path.to_owned(),
                index,
                source,
            })?;
        count += 1;
    }
    if count == 0 {
        return Err(TlsConfigError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(())
}
