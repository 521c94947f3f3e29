//! The admin listener: `/metrics`, `/healthz` and `/readyz` for the site's
//! Prometheus and its probes. Never on a device interface.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;

/// The default admin address: loopback only, so nothing off the gateway
/// host reaches it unless the admin says so.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9747";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Serve the admin listener at all. Default true; `false` binds
    /// nothing.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// `ip:port` to listen on. Default `127.0.0.1:9747`. Not a wildcard
    /// address and not an address of a device interface (`check-config`
    /// refuses both): devices must never reach it.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_enabled() -> bool {
    true
}

fn default_listen() -> String {
    DEFAULT_ADMIN_LISTEN.to_owned()
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            listen: default_listen(),
        }
    }
}

impl Admin {
    /// The address to bind, when enabled (validation guarantees it parses).
    pub fn address(&self) -> Option<SocketAddr> {
        if !self.enabled {
            return None;
        }
        self.listen.parse().ok()
    }

    /// Shape only; [`Admin::check_not_on_devices`] needs the host.
    pub(super) fn validate(&self, proxy_port: u16) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!(
                    "`{}` is not ip:port (write {DEFAULT_ADMIN_LISTEN} or [::1]:9747)",
                    self.listen
                ),
            )
        })?;
        if addr.ip().is_unspecified() {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!(
                    "`{}` listens on every interface, the device interfaces too: name one address (loopback or a management interface's)",
                    self.listen
                ),
            ));
        }
        if addr.ip().is_multicast() {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!("`{}` is a multicast address", self.listen),
            ));
        }
        if addr.port() == 0 {
            return Err(ConfigError::invalid(
                "admin.listen",
                "the port must be 1 to 65535",
            ));
        }
        if addr.port() == proxy_port {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!("port {proxy_port} is the proxy's own port (proxy.port)"),
            ));
        }
        Ok(())
    }

    /// Refuses an address that belongs to a device interface
    /// (`device_addresses`): devices could reach the listener there.
    pub fn check_not_on_devices(
        &self,
        device_addresses: &[std::net::IpAddr],
    ) -> Result<(), ConfigError> {
        let Some(addr) = self.address() else {
            return Ok(());
        };
        let ip = addr.ip().to_canonical();
        if device_addresses.iter().any(|d| d.to_canonical() == ip) {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!(
                    "{ip} is an address of a device interface: devices could reach the admin listener; use loopback or a management interface"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "
devices:
  interfaces: [dev0]
manager:
  name: wfm.site.example
  addresses: [\"10.0.0.5:443\"]
";

    fn with(admin: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}admin:\n{admin}")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_admin_listener_defaults_to_loopback_and_can_be_switched_off() {
        let c = Config::parse(BASE).expect("base");
        assert_eq!(
            c.admin.address(),
            Some("127.0.0.1:9747".parse().expect("addr"))
        );
        let off = with("  enabled: false\n").expect("off");
        assert_eq!(off.admin.address(), None);
        // Off, the address is not even looked at.
        let off = with("  enabled: false\n  listen: nonsense\n").expect("off, bad address");
        assert_eq!(off.admin.address(), None);
        let v6 = with("  listen: \"[::1]:9100\"\n").expect("v6");
        assert_eq!(
            v6.admin.address(),
            Some("[::1]:9100".parse().expect("addr"))
        );
    }

    #[test]
    fn bad_admin_addresses_are_refused_naming_the_key() {
        for (listen, why) in [
            ("nonsense", "not ip:port"),
            ("127.0.0.1", "not ip:port"),
            ("0.0.0.0:9747", "every interface"),
            ("\"[::]:9747\"", "every interface"),
            ("127.0.0.1:0", "1 to 65535"),
            ("127.0.0.1:15001", "proxy's own port"),
            ("224.0.0.1:9747", "multicast"),
        ] {
            let e = with(&format!("  listen: {listen}\n")).expect_err(listen);
            assert!(e.contains("admin.listen"), "{listen}: {e}");
            assert!(e.contains(why), "{listen}: {e}");
        }
        let e = with("  port: 1\n").expect_err("unknown key");
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn an_address_of_a_device_interface_is_refused() {
        let c = with("  listen: 10.0.3.1:9747\n").expect("shape is fine");
        let devices = [
            "10.0.3.1".parse().expect("ip"),
            "fd00::1".parse().expect("ip"),
        ];
        let e = c
            .admin
            .check_not_on_devices(&devices)
            .expect_err("device address")
            .to_string();
        assert!(
            e.contains("admin.listen") && e.contains("device interface"),
            "{e}"
        );
        // A v4-mapped spelling is the same address.
        let c = with("  listen: \"[::ffff:10.0.3.1]:9747\"\n").expect("shape");
        assert!(c.admin.check_not_on_devices(&devices).is_err());
        let c = with("  listen: 127.0.0.1:9747\n").expect("loopback");
        assert!(c.admin.check_not_on_devices(&devices).is_ok());
        let off = with("  enabled: false\n  listen: 10.0.3.1:9747\n").expect("off");
        assert!(off.admin.check_not_on_devices(&devices).is_ok());
    }
}
