//! The domains a site CA may cover (`gateway ca init --permit …`): checked,
//! canonical, and merged with the configured site hosts into the CA's
//! permitted dNSName subtrees.
//!
//! A permitted domain covers itself and every name under it (RFC 5280
//! dNSName constraint), so `docker.io` lets the gateway later serve
//! `registry-1.docker.io` without a new CA on the devices. Refused: empty
//! names, IP addresses (every address is excluded from the CA), wildcards
//! and leading dots (a domain already covers its subdomains), and a single
//! label such as `com` or `corp`, which would cover a whole top-level
//! domain. There is no public-suffix list here, so `co.uk` is not refused:
//! name your own domain.

use super::{TlsError, names};

/// Splits comma lists, checks each domain and returns them canonical
/// (lowercase, no trailing dot), in order, without duplicates.
pub fn parse(args: &[String]) -> Result<Vec<String>, TlsError> {
    let mut out = Vec::new();
    for domain in args.iter().flat_map(|a| a.split(',')) {
        let domain = domain.trim();
        let name = check(domain).map_err(|reason| TlsError::InvalidPermit {
            domain: domain.to_owned(),
            reason,
        })?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn check(domain: &str) -> Result<String, &'static str> {
    if domain.is_empty() {
        return Err("it is empty");
    }
    if domain.starts_with('.') || domain.contains('*') {
        return Err("write the domain itself: it already covers every name under it");
    }
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address cannot be permitted: the CA excludes every address");
    }
    let name = names::site_host(domain)?;
    if !name.contains('.') {
        return Err("a single label would cover a whole top-level domain: name a domain under it");
    }
    Ok(name)
}

/// The CA's permitted subtrees: `permits` (already checked by [`parse`])
/// and then each site host not already covered by one of them. A name
/// covered by an earlier one is dropped, so the certificate lists each
/// subtree once.
pub fn constraints(permits: &[String], hosts: &[String]) -> Result<Vec<String>, TlsError> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !out.iter().any(|c| names::within(&name, c)) {
            // A wider name given later replaces the narrower ones it covers.
            out.retain(|c| !names::within(c, &name));
            out.push(name);
        }
    };
    for permit in permits {
        add(names::normalize(permit));
    }
    for host in hosts {
        let name = names::site_host(host).map_err(|reason| TlsError::InvalidHost {
            host: host.clone(),
            reason,
        })?;
        add(name);
    }
    if out.is_empty() {
        // No permitted subtree would leave every DNS name permitted.
        return Err(TlsError::NoHosts);
    }
    Ok(out)
}
