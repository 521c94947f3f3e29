//! Mutual TLS between gateways: a child gateway presents a client
//! certificate its parent's CA issued (`gateway ca issue-client`), and the
//! parent names the child in its audit records by that certificate.
//!
//! The client certificate carries the child's name as its common name
//! only, with no subjectAltName: the site CA is name-constrained to
//! dNSName subtrees and excludes every IP address, and a name in the
//! subject's CN is outside those constraints (RFC 5280 applies them to
//! SAN entries of the constrained form), so a child called `site-a`
//! needs no DNS name of its own.

use std::{path::Path, sync::Arc, time::Duration};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, PrivateKeyDer},
};
use time::OffsetDateTime;

use super::{SiteCa, TlsError, files};

/// Tolerates child clocks that run a little behind the parent's.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// X.520 ub-common-name.
const MAX_NAME: usize = 64;

/// A client certificate chain and its private key, read from PEM files.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    // Hand-written so that no formatting can reach the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("name", &self.chain.first().and_then(peer_name))
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Reads `cert` (PEM, the leaf first) and `key` (PEM), refusing a key
    /// file that group or others may read, as the site CA's key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(cert).map_err(TlsError::io("read the client certificate", cert))?;
        let chain = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(TlsError::io("parse the PEM in", cert))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.to_owned(),
            });
        }
        // A missing key is reported as such, not as a missing site CA.
        std::fs::metadata(key).map_err(TlsError::io("read the client key", key))?;
        let text = files::read_private(key)?;
        let key_der = rustls_pemfile::private_key(&mut text.as_bytes())
            .map_err(TlsError::io("parse the PEM in", key))?
            .ok_or_else(|| TlsError::NoPrivateKey {
                path: key.to_owned(),
            })?;
        Ok(Self {
            chain,
            key: key_der,
        })
    }

    /// The name the parent will see (the certificate's CN).
    pub fn name(&self) -> Option<String> {
        self.chain.first().and_then(peer_name)
    }
}

/// [`super::client_config`] that also presents `identity` when the server
/// asks for a client certificate.
pub fn client_config_with_identity(
    extra_ca_file: Option<&Path>,
    identity: &ClientIdentity,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            side: "client",
            source,
        })?
        .with_root_certificates(super::client::roots(extra_ca_file)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|source| TlsError::Config {
            side: "client",
            source,
        })?;
    Ok(Arc::new(config))
}

/// The trust anchors for children's client certificates: every
/// certificate in `path` (PEM), and nothing else (no system roots).
pub fn client_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    super::client::add_pem_file(&mut roots, path)?;
    Ok(roots)
}

/// The server side of the children listener: TLS 1.3 and 1.2, ALPN `h2`
/// then `http/1.1`, the leaf for `children.server_name` from `resolver`,
/// and a client certificate required, verified against `client_ca`
/// (without one, or with one from another CA, the handshake fails).
pub fn children_server_config(
    resolver: Arc<super::LeafResolver>,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let roots = Arc::new(client_roots(client_ca)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::ClientVerifier {
                path: client_ca.to_owned(),
                reason: e.to_string(),
            })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Config {
            side: "server",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The child's name in a client certificate: its subject CN, else its
/// first dNSName.
pub fn peer_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}

/// Whether `name` may be a child's name: letters, digits, `-`, `_`, `.`,
/// 1 to 64 characters (it is written into audit records and file names).
pub fn valid_child_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

/// A client certificate for the child `name`, signed by the site CA, valid
/// for `validity` (never past the CA): (certificate PEM, key PEM).
pub fn issue_client(
    ca: &SiteCa,
    name: &str,
    validity: Duration,
) -> Result<(String, String), TlsError> {
    let failed = |source| TlsError::Generate {
        what: "the client certificate",
        source,
    };
    let now = OffsetDateTime::now_utc();
    let not_after = super::leaf::not_after(ca, now, validity)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = Vec::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let cert = params.signed_by(&key, ca.issuer()).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a child's certificate (`NAME.pem`, 0644) and key (`NAME.key`,
/// 0600 from the moment it exists) into `dir`, created 0700 if missing.
pub fn write_client(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    files::create_private_dir(dir)?;
    let key = files::write_atomic(
        dir,
        &format!("{name}.key"),
        key_pem.as_bytes(),
        files::Visibility::Private,
    )?;
    let cert = files::write_atomic(
        dir,
        &format!("{name}.pem"),
        cert_pem.as_bytes(),
        files::Visibility::Public,
    )?;
    files::sync_dir(dir)?;
    Ok((cert, key))
}
