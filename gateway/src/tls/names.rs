//! Host names as the CA, the resolver and the peeker compare them: ASCII
//! lowercase without the root's trailing dot, so that `Registry.Example.`
//! and `registry.example` are one name everywhere.

use rustls::pki_types::ServerName;

/// The canonical form of a DNS name (no validation).
pub(crate) fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Checks a configured site host and returns its canonical form.
pub(crate) fn site_host(host: &str) -> Result<String, &'static str> {
    match ServerName::try_from(host) {
        Ok(ServerName::DnsName(_)) => Ok(normalize(host)),
        // The CA excludes every IP address, so a leaf for one would never verify.
        Ok(ServerName::IpAddress(_)) => Err("an IP address cannot be a site host"),
        Ok(_) | Err(_) => Err("it is not a DNS name (wildcards are not supported)"),
    }
}

/// RFC 5280 section 4.2.1.10 dNSName constraint matching on canonical
/// names: `host` is within `constraint` when it equals it or ends with
/// `.` + constraint; a constraint with a leading dot matches only
/// subdomains. Label-wise, so `evilregistry.example` is not within
/// `registry.example`.
pub(crate) fn within(host: &str, constraint: &str) -> bool {
    if constraint.is_empty() {
        // An empty dNSName constraint matches every name (RFC 5280).
        return true;
    }
    if constraint.starts_with('.') {
        return host.len() > constraint.len() && host.ends_with(constraint);
    }
    host == constraint
        || host
            .strip_suffix(constraint)
            .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_is_label_wise() {
        assert!(within("registry.example.test", "registry.example.test"));
        assert!(within("eu.registry.example.test", "registry.example.test"));
        assert!(!within(
            "evilregistry.example.test",
            "registry.example.test"
        ));
        assert!(!within("example.test", "registry.example.test"));
        assert!(!within(".registry.example.test", "registry.example.test"));
        assert!(within("a.example.test", ".example.test"));
        assert!(!within("example.test", ".example.test"));
        assert!(within("anything", ""));
    }

    #[test]
    fn site_hosts_are_canonical_dns_names() {
        assert_eq!(
            site_host("Registry.Example.TEST."),
            Ok("registry.example.test".into())
        );
        assert!(site_host("10.0.0.1").is_err());
        assert!(site_host("::1").is_err());
        assert!(site_host("*.example.test").is_err());
        assert!(site_host("").is_err());
        assert!(site_host("bad host").is_err());
    }
}
