//! Pure policy: what to do with a redirected connection.
//!
//! Passthrough goes only to a configured passthrough address (the manager
//! or another `passthrough:` service), and only when the device's original
//! destination *is* that address: the device cannot name where a
//! passthrough goes. DNS over TCP (port 53, any address) is answered by the
//! gateway itself. Everything else is inspected by name or denied.

pub mod groups;

use std::{net::SocketAddr, sync::Arc};

use gateway_common::DNS_PORT;

use crate::config::Config;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Splice bytes to this configured address of passthrough service
    /// `service`.
    Passthrough {
        upstream: SocketAddr,
        service: Arc<str>,
    },
    /// DNS over TCP: answered by the gateway's responder.
    Dns,
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
/// A site or passthrough service the device's group may not use.
pub const DENY_GROUP: &str = "group_not_allowed";

#[derive(Clone, Debug)]
pub struct Policy {
    /// Every passthrough address with its service's name.
    passthrough: Vec<(SocketAddr, Arc<str>)>,
    /// Whether TCP port 53 goes to the DNS responder.
    dns: bool,
    /// Lowercase site host names.
    sites: Vec<String>,
    /// `devices.groups`, when configured.
    pub groups: Option<Arc<groups::Groups>>,
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        Self {
            passthrough: config
                .passthrough_services()
                .into_iter()
                .flat_map(|s| {
                    let name: Arc<str> = Arc::from(s.name);
                    s.addresses
                        .into_iter()
                        .map(move |a| (canonical(a), name.clone()))
                })
                .collect(),
            dns: config.dns.enabled,
            sites: config.served_hosts(),
            groups: groups::Groups::new(config),
        }
    }

    /// The device's group's name, when groups are configured.
    pub fn group_of(&self, device: std::net::IpAddr) -> Option<Arc<str>> {
        self.groups.as_ref().map(|g| g.of(device).name.clone())
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
        match self.passthrough.iter().find(|(a, _)| *a == dst) {
            // The configured value, not the device's: equal here, but the
            // address connected to is always one read from the config.
            Some((a, name)) => Decision::Passthrough {
                upstream: *a,
                service: name.clone(),
            },
            None if self.dns && dst.port() == DNS_PORT => Decision::Dns,
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
        let through = |a: &str| Decision::Passthrough {
            upstream: addr(a),
            service: Arc::from("wfm.example"),
        };
        assert_eq!(p.decide(addr("10.0.0.5:443")), through("10.0.0.5:443"));
        assert_eq!(p.decide(addr("[fd00::5]:8443")), through("[fd00::5]:8443"));
        assert_eq!(
            p.decide(addr("[::ffff:10.0.0.5]:443")),
            through("10.0.0.5:443")
        );
    }

    #[test]
    fn each_passthrough_address_names_its_service() {
        let p = Policy::new(
            &Config::parse(
                "devices: {interfaces: [dev0]}\npassthrough: [{name: wfm.example, addresses: [\"10.0.0.5:443\"]}, {name: mis.example, addresses: [\"10.0.0.6:443\", \"[fd00::6]:443\"]}]\n",
            )
            .expect("config"),
        );
        for (dst, service) in [
            ("10.0.0.5:443", "wfm.example"),
            ("10.0.0.6:443", "mis.example"),
            ("[fd00::6]:443", "mis.example"),
        ] {
            assert_eq!(
                p.decide(addr(dst)),
                Decision::Passthrough {
                    upstream: addr(dst),
                    service: Arc::from(service)
                }
            );
        }
        // A service's name on another of its ports is not passed through.
        assert_eq!(
            p.decide(addr("10.0.0.6:8443")),
            Decision::Deny {
                reason: DENY_NO_RULE
            }
        );
    }

    #[test]
    fn tcp_port_53_goes_to_dns_unless_disabled() {
        let p = policy();
        assert_eq!(p.decide(addr("8.8.8.8:53")), Decision::Dns);
        assert_eq!(p.decide(addr("[2001:db8::53]:53")), Decision::Dns);
        let off = Policy::new(
            &Config::parse(
                "devices: {interfaces: [dev0]}\nmanager: {name: wfm.example, addresses: [\"10.0.0.5:443\"]}\ndns: {enabled: false}\n",
            )
            .expect("config"),
        );
        assert_eq!(
            off.decide(addr("8.8.8.8:53")),
            Decision::Deny {
                reason: DENY_NO_RULE
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
