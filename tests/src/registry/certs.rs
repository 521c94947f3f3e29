//! The upstream registry's PKI: a test CA and a server certificate signed by
//! it. The gateway trusts the CA through `sites[].ca_file`; devices never
//! see it (they trust only the gateway's site CA). The hub
//! ([`crate::hub`]) uses one such PKI for its three names, and serves its
//! token endpoint with rustls from the DER forms.

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM texts of the CA and of the server's certificate and key.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The server certificate and its key (PKCS#8), DER.
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

/// A fresh CA and a server certificate for `names` (DNS names or IPs).
pub fn server_pki(names: &[&str]) -> Result<Pki> {
    let ca_key = KeyPair::generate().context("generating the test CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "gateway-tests upstream registry CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("self-signing the test CA")?;

    let key = KeyPair::generate().context("generating the server key")?;
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .context("server certificate names")?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("server"),
    );
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::from_params(&ca, &ca_key);
    let cert = leaf
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}
