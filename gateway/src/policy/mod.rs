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
    /// Close and audit.
    Deny { reason: &'static str },
}

/// Why a connection was denied: its destination matches no rule.
pub const DENY_NO_RULE: &str = "no_rule_for_destination";

#[derive(Clone, Debug)]
pub struct Policy {
    managers: Vec<SocketAddr>,
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        Self {
            managers: config
                .manager_addresses()
                .into_iter()
                .map(canonical)
                .collect(),
        }
    }

    /// Decides on a connection from its original destination.
    pub fn decide(&self, original_dst: SocketAddr) -> Decision {
        let dst = canonical(original_dst);
        match self.managers.iter().find(|m| **m == dst) {
            // The configured value, not the device's: equal here, but the
            // address connected to is always one read from the config.
            Some(m) => Decision::Passthrough { upstream: *m },
            None => Decision::Deny {
                reason: DENY_NO_RULE,
            },
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
