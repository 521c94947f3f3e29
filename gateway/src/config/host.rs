//! Checks of the configuration against the host it runs on.

use super::{Config, ConfigError};

impl Config {
    /// Checks what only the running host can tell: every device-facing
    /// interface exists in this network namespace, and the admin listener
    /// is not on one of their addresses.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        for (i, name) in self.devices.interfaces.iter().enumerate() {
            if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                return Err(ConfigError::Invalid {
                    key: format!("devices.interfaces[{i}]"),
                    message: format!(
                        "interface `{name}` does not exist in this network namespace (see `ip link`)"
                    ),
                });
            }
        }
        self.admin
            .check_not_on_devices(&crate::dns::interface_addresses(&self.devices.interfaces))
    }
}
