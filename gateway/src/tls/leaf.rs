//! Minting one leaf certificate under the site CA: a fresh P-256 key, the
//! host as its only name, serverAuth only, and the chain rustls serves.

use std::{sync::Arc, time::Duration};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::{
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};
use time::OffsetDateTime;

use super::{SiteCa, TlsError};

/// Tolerates devices whose clocks run a little behind the gateway's.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// X.520 ub-common-name: longer names go in the SAN only.
const MAX_COMMON_NAME: usize = 64;

/// A minted leaf and how long it is valid from now.
pub(crate) struct Leaf {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) lifetime: Duration,
}

/// The end of a certificate's validity: `validity` after `now`, but never
/// past the CA's own expiry (minted leaves and children's client
/// certificates alike).
pub(super) fn not_after(
    ca: &SiteCa,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<OffsetDateTime, TlsError> {
    Ok(time::Duration::try_from(validity)
        .ok()
        .and_then(|v| now.checked_add(v))
        .ok_or(TlsError::LeafValidity { validity })?
        .min(ca.not_after()))
}

/// Mints a certificate for `host` (canonical, already allowed) valid for
/// `validity` from now, but never past the CA's own expiry.
pub(crate) fn mint(ca: &SiteCa, host: &str, validity: Duration) -> Result<Leaf, TlsError> {
    let failed = |source| TlsError::Mint {
        host: host.to_owned(),
        source,
    };
    let now = OffsetDateTime::now_utc();
    let not_after = not_after(ca, now, validity)?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if host.len() <= MAX_COMMON_NAME {
        dn.push(DnType::CommonName, host);
    }
    params.distinguished_name = dn;
    // Built directly rather than through CertificateParams::new, which
    // would turn a name that parses as an address into an IP SAN.
    params.subject_alt_names = vec![SanType::DnsName(host.try_into().map_err(failed)?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let cert = params.signed_by(&key, ca.issuer()).map_err(failed)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
        TlsError::LeafKey {
            host: host.to_owned(),
            source,
        }
    })?;
    // A root CA is the devices' trust anchor and is not sent: with many
    // sites its name constraints make it the largest part of the
    // handshake (every byte hashed into the transcript and encrypted).
    let mut chain = vec![cert.der().clone()];
    if !ca.is_root() {
        chain.push(ca.cert_der().clone());
    }
    Ok(Leaf {
        key: Arc::new(CertifiedKey::new(chain, signer)),
        lifetime: (not_after - now).try_into().unwrap_or(Duration::ZERO),
    })
}
