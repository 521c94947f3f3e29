//! Checks of the configuration against the host it runs on.

use super::{Config, ConfigError};
use crate::tls::rotation::HostCheck;

impl Config {
    /// Checks what only the running host can tell: every device-facing
    /// interface exists in this network namespace, the admin listener is
    /// not on one of their addresses, the upstream proxies' password files
    /// are readable and private, and the site CA on disk (if created yet)
    /// and its pending successor cover every site host.
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
            .check_not_on_devices(&crate::dns::interface_addresses(&self.devices.interfaces))?;
        self.check_upstream_proxy_files()?;
        self.check_store_secret()?;
        self.check_children_files()?;
        self.check_site_ca()
    }

    /// `cache.store`'s secret is readable (and its file private).
    pub(super) fn check_store_secret(&self) -> Result<(), ConfigError> {
        if let Some(store) = &self.cache.store {
            store
                .secret()
                .map_err(|e| ConfigError::invalid(store.secret_key(), e.to_string()))?;
        }
        Ok(())
    }

    /// A site host outside the CA's name constraints would get a leaf that
    /// every device rejects; refused here with the way to grow the CA.
    fn check_site_ca(&self) -> Result<(), ConfigError> {
        if self.sites.is_empty() {
            return Ok(());
        }
        let hosts: Vec<String> = self.sites.iter().map(|s| s.host.clone()).collect();
        match crate::tls::rotation::check_hosts(&self.tls.ca_dir, &hosts) {
            Ok(()) => Ok(()),
            Err(HostCheck::Outside { index, message }) => Err(ConfigError::Invalid {
                key: format!("sites[{index}].host"),
                message,
            }),
            Err(HostCheck::Unreadable(e)) => Err(ConfigError::Invalid {
                key: "tls.ca_dir".to_owned(),
                message: format!("cannot check the site CA: {e}"),
            }),
        }
    }
}
