//! Replacing the site CA without a day when devices distrust the gateway:
//! `gateway ca rotate` makes a successor beside the active CA, devices are
//! given both (`gateway ca export --all`), then `gateway ca activate`
//! makes the successor sign the leaves and retires the old one.
//!
//! Layout of `tls.ca_dir`:
//! - `ca.pem`, `ca.key`: the active CA, the only one the daemon loads;
//! - `next/ca.pem`, `next/ca.key`: the pending successor (dir 0700);
//! - `retired/<first 16 hex of its SHA-256>/ca.pem, ca.key`: CAs that
//!   `activate` replaced, kept until the operator deletes them.
//!
//! Every file is written to a temporary and renamed; a successor is built
//! in a temporary directory renamed to `next/`, so a crash never leaves a
//! half successor. `activate` copies the active pair to `retired/` first,
//! then renames the key and then the certificate into place: a crash
//! between those two renames is recognised (by [`super::SiteCa::load`] and
//! by `activate` itself, which finishes the job when run again).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use rcgen::KeyPair;

use super::{
    TlsError,
    ca::{self, CERT_FILE, CaSummary, CertFacts, Generated, KEY_FILE},
    files::{self, Visibility},
    permit,
};

/// The pending successor's directory, under `tls.ca_dir`.
pub const NEXT_DIR: &str = "next";
/// Where `activate` keeps the CAs it replaced, under `tls.ca_dir`.
pub const RETIRED_DIR: &str = "retired";

/// Creates the successor CA in `ca_dir/next/`, constrained to `permits`
/// (checked, see [`permit::parse`]; empty: the active CA's permitted
/// domains) plus the site `hosts` they do not cover. Needs an active CA;
/// refuses to replace a pending successor unless `force`.
pub fn rotate(
    ca_dir: &Path,
    permits: &[String],
    hosts: &[String],
    force: bool,
) -> Result<CaSummary, TlsError> {
    let active = ca::read_cert(&ca_dir.join(CERT_FILE))?;
    let next = ca_dir.join(NEXT_DIR);
    if exists(&next)? && !force {
        return Err(TlsError::SuccessorExists { path: next });
    }
    let base = if permits.is_empty() {
        active.permitted()
    } else {
        permits
    };
    let permitted = permit::constraints(base, hosts)?;
    let generated = Generated::new(&permitted, &next.join(CERT_FILE))?;

    let tmp = ca_dir.join(format!(".{NEXT_DIR}.{}.tmp", std::process::id()));
    remove_dir_if_exists(&tmp)?;
    files::create_private_dir(&tmp)?;
    let written = generated.write(&tmp).and_then(|()| {
        if force {
            drop_successor(ca_dir)?;
        }
        fs::rename(&tmp, &next).map_err(TlsError::io("rename into place", &next))?;
        files::sync_dir(ca_dir)
    });
    if written.is_err() {
        // Best effort: the error being returned is the one worth reporting.
        let _ = fs::remove_dir_all(&tmp);
    }
    written?;
    let summary = generated.summary(&next);
    tracing::info!(
        cert = %summary.cert_path.display(),
        fingerprint_sha256 = %summary.fingerprint_sha256,
        "site CA successor created"
    );
    Ok(summary)
}

/// What `activate` did.
#[derive(Debug)]
pub struct Activated {
    /// The CA now active (the former successor).
    pub active: CertFacts,
    /// Where the replaced CA was kept, when there was one.
    pub retired: Option<PathBuf>,
}

/// Makes the pending successor the active CA; the active one is copied to
/// `retired/` first. Refuses when there is no successor or it does not
/// cover every site host in `hosts` (the gateway would then refuse to
/// start), and checks the successor (key mode, key matches certificate,
/// validity) before anything is touched. Finishes an activation a crash
/// interrupted.
pub fn activate(ca_dir: &Path, hosts: &[String]) -> Result<Activated, TlsError> {
    let next = ca_dir.join(NEXT_DIR);
    let next_cert = next.join(CERT_FILE);
    let next_key = next.join(KEY_FILE);
    if !exists(&next_cert)? {
        return Err(TlsError::NoSuccessor { path: next });
    }
    let successor = ca::read_cert(&next_cert)?;
    if let Some(host) = hosts.iter().find(|h| !successor.permits(h)) {
        return Err(TlsError::SuccessorOmits {
            host: host.clone(),
            permitted: successor.permitted().join(", "),
            path: next_cert,
        });
    }
    let mut retired = None;
    if exists(&next_key)? {
        super::SiteCa::load(&next)?;
        retired = retire_active(ca_dir)?;
        rename(&next_key, &ca_dir.join(KEY_FILE))?;
    } else if !active_key_matches(ca_dir, &next_cert)? {
        return Err(TlsError::SuccessorIncomplete { path: next });
    }
    rename(&next_cert, &ca_dir.join(CERT_FILE))?;
    files::sync_dir(ca_dir)?;
    fs::remove_dir(&next).map_err(TlsError::io("remove", &next))?;
    files::sync_dir(ca_dir)?;
    // What the daemon will load, checked the way it will load it.
    let active = super::SiteCa::load(ca_dir)?;
    tracing::info!(
        fingerprint_sha256 = %active.fingerprint_sha256(),
        retired = ?retired,
        "site CA successor activated"
    );
    Ok(Activated {
        active: ca::read_cert(&ca_dir.join(CERT_FILE))?,
        retired,
    })
}

/// The certificates devices should trust: the active CA's PEM, then the
/// pending successor's when there is one.
pub fn export_all(ca_dir: &Path) -> Result<Vec<String>, TlsError> {
    let mut pems = vec![ca::export(ca_dir)?];
    let next_cert = ca_dir.join(NEXT_DIR).join(CERT_FILE);
    if exists(&next_cert)? {
        pems.push(files::read_text(&next_cert)?);
    }
    Ok(pems)
}

/// The pending successor's certificate, if there is one.
pub fn successor(ca_dir: &Path) -> Result<Option<CertFacts>, TlsError> {
    let next_cert = ca_dir.join(NEXT_DIR).join(CERT_FILE);
    if !exists(&next_cert)? {
        return Ok(None);
    }
    ca::read_cert(&next_cert).map(Some)
}

/// Whether a site host is covered by the CAs on disk, for `check-config`.
#[derive(Debug)]
pub enum HostCheck {
    /// `hosts[index]` is not covered; `message` names the fix.
    Outside { index: usize, message: String },
    /// A CA certificate exists but cannot be read or parsed.
    Unreadable(TlsError),
}

/// Checks every site host against the active CA and the pending successor
/// (activating one that does not cover a site would break that site). No
/// CA yet is not an error here: the daemon says how to create one.
pub fn check_hosts(ca_dir: &Path, hosts: &[String]) -> Result<(), HostCheck> {
    let active_path = ca_dir.join(CERT_FILE);
    let active = match ca::read_cert(&active_path) {
        Ok(facts) => facts,
        Err(TlsError::CaMissing { .. }) => return Ok(()),
        Err(e) => return Err(HostCheck::Unreadable(e)),
    };
    let next = successor(ca_dir).map_err(HostCheck::Unreadable)?;
    for (index, host) in hosts.iter().enumerate() {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !active.permits(&host) {
            let fix = match &next {
                Some(n) if n.permits(&host) => format!(
                    "the pending successor CA ({}) covers it: once every device trusts it \
                     (`gateway ca export --all --config FILE`), run `gateway ca activate \
                     --config FILE`, then reload or restart the gateway",
                    ca_dir.join(NEXT_DIR).join(CERT_FILE).display()
                ),
                _ => format!(
                    "create a successor CA that covers it with `gateway ca rotate{} --config \
                     FILE --permit {}`, have every device trust `gateway ca export --all --config \
                     FILE`, then run `gateway ca activate --config FILE` and reload or restart \
                     the gateway \
                     (or re-create the CA with `gateway ca init --force --permit …`, after which \
                     every device must trust the new CA)",
                    if next.is_some() { " --force" } else { "" },
                    suggested(active.permitted(), &host),
                ),
            };
            return Err(HostCheck::Outside {
                index,
                message: format!(
                    "`{host}` is outside the site CA's permitted domains [{}] ({}), so devices \
                     would reject its certificate: {fix}",
                    active.permitted().join(", "),
                    active_path.display()
                ),
            });
        }
        if let Some(n) = next.as_ref().filter(|n| !n.permits(&host)) {
            return Err(HostCheck::Outside {
                index,
                message: format!(
                    "`{host}` is outside the pending successor CA's permitted domains [{}] \
                     ({}), so activating it would break this site: re-create the successor \
                     with `gateway ca rotate --force --config FILE --permit {}`",
                    n.permitted().join(", "),
                    ca_dir.join(NEXT_DIR).join(CERT_FILE).display(),
                    suggested(n.permitted(), &host),
                ),
            });
        }
    }
    Ok(())
}

/// The `--permit` list that keeps `current` and adds `host`.
fn suggested(current: &[String], host: &str) -> String {
    let mut list = current.to_vec();
    list.push(host.to_owned());
    list.join(",")
}

/// Removes a pending successor (a forced `init` or `rotate`).
pub(super) fn drop_successor(ca_dir: &Path) -> Result<(), TlsError> {
    remove_dir_if_exists(&ca_dir.join(NEXT_DIR))
}

/// Whether `ca_dir` looks like an `activate` stopped between its two
/// renames: the successor's certificate is still pending, its key is not.
pub(super) fn activation_interrupted(ca_dir: &Path) -> bool {
    let next = ca_dir.join(NEXT_DIR);
    next.join(CERT_FILE).exists() && !next.join(KEY_FILE).exists()
}

/// Copies the active pair to `retired/<id>/`; none active: nothing to keep.
fn retire_active(ca_dir: &Path) -> Result<Option<PathBuf>, TlsError> {
    let cert_path = ca_dir.join(CERT_FILE);
    let facts = match ca::read_cert(&cert_path) {
        Ok(f) => f,
        Err(TlsError::CaMissing { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let cert = files::read_text(&cert_path)?;
    let key = files::read_private(&ca_dir.join(KEY_FILE))?;
    let dir = ca_dir
        .join(RETIRED_DIR)
        .join(&facts.fingerprint_sha256()[..16]);
    files::create_private_dir(&dir)?;
    files::write_atomic(&dir, KEY_FILE, key.as_bytes(), Visibility::Private)?;
    files::write_atomic(&dir, CERT_FILE, cert.as_bytes(), Visibility::Public)?;
    files::sync_dir(&dir)?;
    if let Some(parent) = dir.parent() {
        files::sync_dir(parent)?;
    }
    Ok(Some(dir))
}

fn active_key_matches(ca_dir: &Path, next_cert: &Path) -> Result<bool, TlsError> {
    let key_path = ca_dir.join(KEY_FILE);
    let key = KeyPair::from_pem(&files::read_private(&key_path)?).map_err(|source| {
        TlsError::KeyParse {
            path: key_path,
            source,
        }
    })?;
    Ok(key.public_key_raw() == ca::read_cert(next_cert)?.public_key())
}

fn rename(from: &Path, to: &Path) -> Result<(), TlsError> {
    fs::rename(from, to).map_err(TlsError::io("rename into place", to))
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(TlsError::io("check for", path))
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), TlsError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TlsError::io("remove", dir)(e)),
    }
}
