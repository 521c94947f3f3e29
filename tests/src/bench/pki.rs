//! The peers' PKI: one CA and one static P-256 server certificate for the
//! registry's name, shared by nginx and the distribution pull-through
//! cache. Clients of the peers trust this CA only.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// Files of the peers' PKI.
pub struct PeerPki {
    pub ca_pem: PathBuf,
    /// Leaf then CA, as nginx's `ssl_certificate` wants it (the gateway
    /// also sends its CA after the leaf, so both send two certificates).
    pub chain_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl PeerPki {
    /// Writes a fresh CA and a certificate for `host` into `dir`.
    pub fn create(dir: &Path, host: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "margo bench peers CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca
            .self_signed(&ca_key)
            .context("self-signing the peers' CA")?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut leaf = CertificateParams::new(vec![host.to_owned()])?;
        leaf.distinguished_name.push(DnType::CommonName, host);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&ca, &ca_key);
        let cert = leaf
            .signed_by(&key, &issuer)
            .context("signing the peers' certificate")?;

        let pki = Self {
            ca_pem: dir.join("peers-ca.pem"),
            chain_pem: dir.join("peers-chain.pem"),
            key_pem: dir.join("peers-key.pem"),
        };
        std::fs::write(&pki.ca_pem, ca_cert.pem())?;
        std::fs::write(&pki.chain_pem, format!("{}{}", cert.pem(), ca_cert.pem()))?;
        std::fs::write(&pki.key_pem, key.serialize_pem())?;
        Ok(pki)
    }
}
