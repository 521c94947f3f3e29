//! Pure policy: what to do with a redirected connection.
//!
//! Passthrough goes only to a configured manager address, and only when
//! the device's original destination *is* that address: the device cannot
//! name where a passthrough goes. Everything else is denied until the
//! proxy can terminate it.

use std::net::SocketAddr;

use crate::config::Config;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Splice bytes to this configured manager address.
    Passthrough { upstream: SocketAddr },
    /// Read the first bytes (ClientHello or HTTP request) and decide by
    /// name.
    Inspect,
    /// Close and audit.
    Deny { reason: &'static str },
}

/// Why a connection was denied: its destination matches no rule.
pub const DENY_NO_RULE: &str = "no_rule_for_destination";
/// A ClientHello without a server name: nothing to match a site on.
pub const DENY_NO_SNI: &str = "no_sni";
/// A ClientHello for a name that is not a configured site.
pub const DENY_SNI_NOT_ALLOWED: &str = "sni_not_allowed";

#[derive(Clone, Debug)]
pub struct Policy {
    managers: Vec<SocketAddr>,
    /// Lowercase site host names.
    sites: Vec<String>,
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        Self {
            managers: config
                .manager_addresses()
                .into_iter()
                .map(canonical)
                .collect(),
            sites: config
                .sites
                .iter()
                .map(|s| s.host.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Decides on a TLS connection by its server name: the configured site
    /// host it names, or the reason to refuse it. No certificate is minted
    /// for a refused name.
    pub fn decide_sni(&self, sni: Option<&str>) -> Result<String, &'static str> {
        let Some(name) = sni else {
            return Err(DENY_NO_SNI);
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.sites.contains(&name) {
            Ok(name)
        } else {
            Err(DENY_SNI_NOT_ALLOWED)
        }
    }

    /// Decides on a connection from its original destination.
    pub fn decide(&self, original_dst: SocketAddr) -> Decision {
        let dst = canonical(original_dst);
        match self.managers.iter().find(|m| **m == dst) {
            // The configured value, not the device's: equal here, but the
            // address connected to is always one read from the config.
            Some(m) => Decision::Passthrough { upstream: *m },
            None if self.sites.is_empty() => Decision::Deny {
                reason: DENY_NO_RULE,
            },
            None => Decision::Inspect,
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) compare as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            &Config::parse(
                "devices: {interfaces: [dev0]}\nmanager: {name: wfm.example, addresses: [\"10.0.0.5:443\", \"[fd00::5]:8443\"]}\n",
            )
            .expect("config"),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn manager_address_passes_through_to_itself() {
        let p = policy();
        assert_eq!(
            p.decide(addr("10.0.0.5:443")),
            Decision::Passthrough {
                upstream: addr("10.0.0.5:443")
            }
        );
        assert_eq!(
            p.decide(addr("[fd00::5]:8443")),
            Decision::Passthrough {
                upstream: addr("[fd00::5]:8443")
            }
        );
        assert_eq!(
            p.decide(addr("[::ffff:10.0.0.5]:443")),
            Decision::Passthrough {
                upstream: addr("10.0.0.5:443")
            }
        );
    }

    #[test]
    fn with_sites_other_destinations_are_inspected_by_name() {
        let p = Policy::new(
            &Config::parse(
                "devices: {interfaces: [dev0]}\nmanager: {name: wfm.example, addresses: [\"10.0.0.5:443\"]}\nsites: [{host: Registry.Example.Test, kind: oci}]\n",
            )
            .expect("config"),
        );
        assert_eq!(p.decide(addr("203.0.113.1:443")), Decision::Inspect);
        assert!(matches!(
            p.decide(addr("10.0.0.5:443")),
            Decision::Passthrough { .. }
        ));
        assert_eq!(
            p.decide_sni(Some("registry.example.test.")),
            Ok("registry.example.test".into())
        );
        assert_eq!(
            p.decide_sni(Some("REGISTRY.example.test")),
            Ok("registry.example.test".into())
        );
        assert_eq!(
            p.decide_sni(Some("evil.example.test")),
            Err(DENY_SNI_NOT_ALLOWED)
        );
        assert_eq!(p.decide_sni(Some("wfm.example")), Err(DENY_SNI_NOT_ALLOWED));
        assert_eq!(p.decide_sni(None), Err(DENY_NO_SNI));
    }

    #[test]
    fn other_destinations_are_denied() {
        let p = policy();
        for dst in [
            "10.0.0.5:80",
            "10.0.0.6:443",
            "[fd00::5]:443",
            "203.0.113.1:443",
        ] {
            assert_eq!(
                p.decide(addr(dst)),
                Decision::Deny {
                    reason: DENY_NO_RULE
                },
                "{dst}"
            );
        }
    }
}
