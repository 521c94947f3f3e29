//! The site CA: created once per site by `gateway ca init`, exported to the
//! devices' trust stores, and loaded by the daemon to sign leaves.
//!
//! The CA is name-constrained (RFC 5280 section 4.2.1.10) to the domains
//! it was created for (`--permit`, plus the site hosts they do not cover),
//! and excludes every IPv4 and IPv6 address, so devices that install it
//! trust it for those names only. Successors and retirement: `rotation`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

use super::{
    TlsError,
    files::{self, Visibility},
    names,
};

/// The CA certificate, PEM, mode 0644.
pub const CERT_FILE: &str = "ca.pem";
/// The CA private key, PKCS#8 PEM, mode 0600.
pub const KEY_FILE: &str = "ca.key";

const COMMON_NAME: &str = "Margo site gateway CA";
const LIFETIME: time::Duration = time::Duration::days(3650);
/// Tolerates devices whose clocks run a little behind the gateway's.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// What `init` created, for the operator.
#[derive(Debug, Clone)]
pub struct CaSummary {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint_sha256: String,
    /// The permitted dNSName subtrees, as written into the certificate.
    pub permitted: Vec<String>,
    pub not_after: OffsetDateTime,
}

/// Creates the site CA in `ca_dir`, constrained to `names` (site hosts or
/// permitted domains, see [`super::permit::constraints`]). Refuses to
/// replace an existing CA unless `force`; a forced init also drops a
/// pending successor (`next/`), which was made for the CA it replaces.
pub fn init(ca_dir: &Path, names: &[String], force: bool) -> Result<CaSummary, TlsError> {
    let permitted = permitted_names(names)?;
    let cert_path = ca_dir.join(CERT_FILE);
    let key_path = ca_dir.join(KEY_FILE);
    if !force {
        for path in [&cert_path, &key_path] {
            let exists = path
                .try_exists()
                .map_err(TlsError::io("check for an existing CA at", path))?;
            if exists {
                return Err(TlsError::CaExists { path: path.clone() });
            }
        }
    }
    let generated = Generated::new(&permitted, &cert_path)?;
    files::create_private_dir(ca_dir)?;
    generated.write(ca_dir)?;
    if force {
        super::rotation::drop_successor(ca_dir)?;
    }
    tracing::info!(
        cert = %cert_path.display(),
        fingerprint_sha256 = %generated.facts.fingerprint,
        permitted = ?generated.facts.permitted,
        "site CA created"
    );
    Ok(generated.summary(ca_dir))
}

/// A freshly generated CA pair, not yet on disk.
pub(super) struct Generated {
    key_pem: String,
    cert_pem: String,
    facts: Facts,
}

impl Generated {
    /// A new key and a self-signed certificate constrained to `permitted`
    /// (canonical, non-empty). `path` names the certificate in errors.
    pub(super) fn new(permitted: &[String], path: &Path) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Generate {
                what: "the CA key",
                source,
            }
        })?;
        let cert = ca_params(permitted)
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "the CA certificate",
                source,
            })?;
        // Read back what was written, so the summary shows the certificate itself.
        let facts = Facts::parse(cert.der(), path)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            facts,
        })
    }

    /// Writes the pair into `dir` (which exists), each file atomically.
    pub(super) fn write(&self, dir: &Path) -> Result<(), TlsError> {
        // Key first: a crash between the renames leaves a pair that `load`
        // reports as mismatched rather than an old key under a new certificate.
        files::write_atomic(dir, KEY_FILE, self.key_pem.as_bytes(), Visibility::Private)?;
        files::write_atomic(dir, CERT_FILE, self.cert_pem.as_bytes(), Visibility::Public)?;
        files::sync_dir(dir)
    }

    pub(super) fn summary(&self, dir: &Path) -> CaSummary {
        CaSummary {
            cert_path: dir.join(CERT_FILE),
            key_path: dir.join(KEY_FILE),
            fingerprint_sha256: self.facts.fingerprint.clone(),
            permitted: self.facts.permitted.clone(),
            not_after: self.facts.not_after,
        }
    }
}

/// The CA certificate PEM, as devices should install it.
pub fn export(ca_dir: &Path) -> Result<String, TlsError> {
    files::read_text(&ca_dir.join(CERT_FILE))
}

fn permitted_names(names: &[String]) -> Result<Vec<String>, TlsError> {
    super::permit::constraints(&[], names)
}

fn ca_params(permitted: &[String]) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + LIFETIME;
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted
            .iter()
            .map(|h| GeneralSubtree::DnsName(h.clone()))
            .collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    params
}

/// The loaded site CA: its certificate and a signer for leaves.
pub struct SiteCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    facts: Facts,
}

impl SiteCa {
    /// Loads `ca.pem` and `ca.key` from `ca_dir`. Refuses a key file that
    /// group or others can read, a key that does not match the
    /// certificate, a certificate without dNSName name constraints and one
    /// outside its validity period.
    pub fn load(ca_dir: &Path) -> Result<Self, TlsError> {
        let cert_path = ca_dir.join(CERT_FILE);
        let key_path = ca_dir.join(KEY_FILE);
        let key_pem = files::read_private(&key_path)?;
        let cert = first_certificate(&files::read_text(&cert_path)?, &cert_path)?;
        let facts = Facts::parse(&cert, &cert_path)?;
        let now = OffsetDateTime::now_utc();
        if now < facts.not_before || now > facts.not_after {
            return Err(TlsError::CaNotValidNow {
                path: cert_path,
                not_before: facts.not_before,
                not_after: facts.not_after,
            });
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::KeyParse {
            path: key_path.clone(),
            source,
        })?;
        if key.public_key_raw() != facts.public_key.as_slice() {
            if super::rotation::activation_interrupted(ca_dir) {
                return Err(TlsError::ActivateInterrupted {
                    dir: ca_dir.to_owned(),
                });
            }
            return Err(TlsError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|_| TlsError::CaCertificate {
            path: cert_path,
            problem: "rcgen cannot sign with this certificate as issuer",
        })?;
        Ok(Self {
            cert,
            issuer,
            facts,
        })
    }

    /// Whether a leaf for `host` verifies under the CA's name constraints
    /// (equal to, or a subdomain of, a permitted name and not excluded).
    pub fn permits(&self, host: &str) -> bool {
        self.facts.permits(host)
    }

    /// The permitted dNSName subtrees the CA was created for.
    pub fn permitted(&self) -> &[String] {
        &self.facts.permitted
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Whether the CA is a root (see [`Facts::self_signed`]): leaves are
    /// then served alone.
    pub fn is_root(&self) -> bool {
        self.facts.self_signed
    }

    pub fn fingerprint_sha256(&self) -> &str {
        &self.facts.fingerprint
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.facts.not_after
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

impl std::fmt::Debug for SiteCa {
    // Hand-written so that no formatting of a SiteCa can reach the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCa")
            .field("fingerprint_sha256", &self.facts.fingerprint)
            .field("permitted", &self.facts.permitted)
            .field("not_after", &self.facts.not_after)
            .finish_non_exhaustive()
    }
}

fn first_certificate(pem: &str, path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    match rustls_pemfile::certs(&mut pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(source)) => Err(TlsError::io("parse the PEM in", path)(source)),
        None => Err(TlsError::NoCertificate {
            path: path.to_owned(),
        }),
    }
}

/// Reads the certificate at `path` (no key needed): what it permits, for
/// `check-config`, `ca rotate` and the operator.
pub fn read_cert(path: &Path) -> Result<CertFacts, TlsError> {
    let der = first_certificate(&files::read_text(path)?, path)?;
    Ok(CertFacts(Facts::parse(&der, path)?))
}

/// A CA certificate's name constraints and identity.
#[derive(Debug)]
pub struct CertFacts(Facts);

impl CertFacts {
    /// As [`SiteCa::permits`].
    pub fn permits(&self, host: &str) -> bool {
        self.0.permits(host)
    }

    pub fn permitted(&self) -> &[String] {
        &self.0.permitted
    }

    pub fn fingerprint_sha256(&self) -> &str {
        &self.0.fingerprint
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.0.not_after
    }

    pub(super) fn public_key(&self) -> &[u8] {
        &self.0.public_key
    }
}

/// What the daemon needs to know from the CA certificate.
#[derive(Debug)]
struct Facts {
    permitted: Vec<String>,
    excluded: Vec<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    public_key: Vec<u8>,
    fingerprint: String,
    /// Issued by itself (a root): devices hold it as their trust anchor,
    /// so leaves are served without it (RFC 8446, 4.4.2). An operator's
    /// CA issued by another one is served after the leaf.
    self_signed: bool,
}

impl Facts {
    fn permits(&self, host: &str) -> bool {
        let host = names::normalize(host);
        self.permitted.iter().any(|c| names::within(&host, c))
            && !self.excluded.iter().any(|c| names::within(&host, c))
    }

    fn parse(der: &[u8], path: &Path) -> Result<Self, TlsError> {
        let problem = |problem| TlsError::CaCertificate {
            path: path.to_owned(),
            problem,
        };
        let (rest, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| problem("not a DER X.509 certificate"))?;
        if !rest.is_empty() {
            return Err(problem("trailing bytes after the certificate"));
        }
        if !x509.is_ca() {
            return Err(problem(
                "not a CA certificate (basicConstraints cA is not set)",
            ));
        }
        let (permitted, excluded) =
            dns_constraints(&x509).map_err(|_| problem("its name constraints do not parse"))?;
        if permitted.is_empty() {
            return Err(TlsError::CaNotConstrained {
                path: path.to_owned(),
            });
        }
        let validity = x509.validity();
        Ok(Self {
            permitted,
            excluded,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            public_key: x509.public_key().subject_public_key.data.to_vec(),
            fingerprint: hex::encode(Sha256::digest(der)),
            self_signed: self_signed(&x509),
        })
    }
}

/// Subject and issuer are the same name, and an authority key identifier,
/// if there is one, names the certificate's own key: the certificate can
/// only be a trust anchor, never an intermediate a device needs sent.
fn self_signed(x509: &X509Certificate<'_>) -> bool {
    use x509_parser::extensions::ParsedExtension;
    if x509.subject().as_raw() != x509.issuer().as_raw() {
        return false;
    }
    let mut own = None;
    let mut authority = None;
    for ext in x509.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => own = Some(k.0),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                authority = a.key_identifier.as_ref().map(|k| k.0);
            }
            _ => {}
        }
    }
    match authority {
        None => true,
        Some(a) => own == Some(a),
    }
}

/// The permitted and excluded dNSName subtrees, canonical.
fn dns_constraints(
    x509: &X509Certificate<'_>,
) -> Result<(Vec<String>, Vec<String>), x509_parser::error::X509Error> {
    let Some(ext) = x509.name_constraints()? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let dns = |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
        subtrees
            .iter()
            .flatten()
            .filter_map(|s| match s.base {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    Ok((
        dns(&ext.value.permitted_subtrees),
        dns(&ext.value.excluded_subtrees),
    ))
}
