//! TLS for the gateway: the site CA, leaf certificates minted under it for
//! the configured site hosts, the rustls server and upstream client
//! configurations, and a ClientHello peeker for routing decisions.
//!
//! Security contract (EXPECTATIONS.md, "Security checks"):
//! - a leaf is minted only for a configured site host, single-flight per
//!   name, under a global rate limit, into a bounded cache;
//! - the site CA carries X.509 name constraints (permitted dNSName subtrees
//!   for the site hosts, every IP address excluded), so even a stolen CA
//!   key cannot impersonate any other name to a verifier that enforces them;
//! - the CA key file is created mode 0600, refused when group or others can
//!   read it, and never logged.

use std::{io, path::PathBuf, time::Duration};

use time::OffsetDateTime;

pub mod ca;
pub mod client;
mod files;
pub mod identity;
mod leaf;
mod limit;
mod lru;
mod names;
pub mod permit;
pub mod resolver;
pub mod rotation;
pub mod sni;

#[cfg(test)]
mod tests;

pub use ca::{CaSummary, SiteCa, export, init};
pub use client::client_config;
pub use resolver::{LeafResolver, LeafStats, server_config};
pub use sni::{ClientHelloInfo, Peek, parse_client_hello};

/// What went wrong with the site CA, a leaf or a TLS configuration. Each
/// message says what to check; the underlying error is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} not found: run `gateway ca init --config FILE` to create the site CA",
        path.display()
    )]
    CaMissing { path: PathBuf },
    #[error(
        "a site CA already exists at {}; pass --force to replace it \
         (every device trusting the old CA must then be given the new one)",
        path.display()
    )]
    CaExists { path: PathBuf },
    #[error("no site hosts to constrain the CA to: configure at least one `sites[].host`")]
    NoHosts,
    #[error("site host `{host}` cannot be named in the CA: {reason}")]
    InvalidHost { host: String, reason: &'static str },
    #[error("--permit `{domain}`: {reason}")]
    InvalidPermit {
        domain: String,
        reason: &'static str,
    },
    #[error(
        "a successor CA is already pending in {}: devices may already trust it; \
         activate it with `gateway ca activate`, or pass --force to replace it",
        path.display()
    )]
    SuccessorExists { path: PathBuf },
    #[error(
        "no successor CA is pending in {}: create one with `gateway ca rotate --config FILE` \
         and have every device trust `gateway ca export --all` first",
        path.display()
    )]
    NoSuccessor { path: PathBuf },
    #[error(
        "{} holds a certificate without its key, and the active key is not that \
         certificate's: create a new successor with `gateway ca rotate --force`",
        path.display()
    )]
    SuccessorIncomplete { path: PathBuf },
    #[error(
        "the successor CA in {} does not cover site host `{host}` (it permits {permitted}), \
         so the gateway could not serve it: re-create the successor with \
         `gateway ca rotate --force --permit …` naming a domain that covers it",
        path.display()
    )]
    SuccessorOmits {
        host: String,
        permitted: String,
        path: PathBuf,
    },
    #[error(
        "the site CA in {} is half activated (a `gateway ca activate` was interrupted): \
         run `gateway ca activate` again to finish it",
        dir.display()
    )]
    ActivateInterrupted { dir: PathBuf },
    #[error("could not generate {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "{} is readable by group or others (mode {mode:03o}): run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{} is not a PKCS#8 PEM private key", path.display())]
    KeyParse {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "{} does not belong to the certificate in {}: re-create the pair with \
         `gateway ca init --force`",
        key.display(),
        cert.display()
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: {problem}", path.display())]
    CaCertificate {
        path: PathBuf,
        problem: &'static str,
    },
    #[error(
        "{} has no permitted dNSName name constraints, so it could sign for any \
         name: re-create it with `gateway ca init --force`",
        path.display()
    )]
    CaNotConstrained { path: PathBuf },
    #[error(
        "{} is valid from {not_before} to {not_after}, which excludes now: check \
         the clock, or re-create it with `gateway ca init --force`",
        path.display()
    )]
    CaNotValidNow {
        path: PathBuf,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("leaf validity {validity:?} is too long to express as a certificate date")]
    LeafValidity { validity: Duration },
    #[error("could not sign a leaf certificate for `{host}`")]
    Mint {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("rustls refused the key of the leaf certificate for `{host}`")]
    LeafKey {
        host: String,
        #[source]
        source: rustls::Error,
    },
    #[error("could not build the TLS {side} configuration")]
    Config {
        side: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "no upstream trust anchors: the system store has none usable (install \
         the ca-certificates package or set SSL_CERT_FILE) and no extra CA file \
         was given"
    )]
    NoRoots,
    #[error("cannot verify client certificates against {}: {reason}", path.display())]
    ClientVerifier { path: PathBuf, reason: String },
    #[error("{} holds no PEM private key", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{} holds no PEM `CERTIFICATE` block", path.display())]
    NoCertificate { path: PathBuf },
    #[error("a certificate in {} is not usable as a trust anchor", path.display())]
    BadTrustAnchor {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// The crypto provider every configuration here is built with: the
/// workspace enables rustls without a process-default provider.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
