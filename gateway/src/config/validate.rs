//! Validation of a parsed configuration, and its error type.
//!
//! Each error names the offending key (`manager.addresses[1]`) and says what
//! is wrong and what would be right; `main` turns any of them into exit
//! code 64 (EX_USAGE) before anything is bound or attached.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use thiserror::Error;

use super::Config;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// YAML that does not fit the schema: unknown key, wrong type, missing
    /// key. serde_yaml's message already names the key path.
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(super) fn from_yaml(e: serde_yaml::Error) -> Self {
        Self::Parse(e.to_string())
    }

    pub(super) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
const IFNAMSIZ_MAX: usize = 15;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_devices()?;
        self.validate_passthrough()?;
        self.validate_dns_and_time()?;
        self.validate_ports()?;
        self.validate_upstream()?;
        self.validate_upstream_proxies()?;
        self.validate_paths()?;
        self.validate_kernel()?;
        self.admin.validate(self.proxy.port)?;
        self.validate_sites()?;
        self.validate_kinds()?;
        self.validate_groups()?;
        self.validate_children()?;
        super::mirror::validate(
            &self.mirror,
            &self
                .sites
                .iter()
                .map(|s| (s.host.to_ascii_lowercase(), s.kind))
                .collect(),
        )
    }

    fn validate_sites(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            let key = format!("sites[{i}]");
            if !is_dns_name(&site.host) {
                return Err(ConfigError::invalid(
                    format!("{key}.host"),
                    format!("`{}` is not a DNS name", site.host),
                ));
            }
            if let Some(service) = passthrough_named(self, &site.host) {
                return Err(ConfigError::invalid(
                    format!("{key}.host"),
                    format!(
                        "is the name of passthrough service `{service}` (the manager or a `passthrough:` entry): it is passed through, never terminated"
                    ),
                ));
            }
            if !seen.insert(site.host.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    format!("{key}.host"),
                    format!("`{}` is listed twice", site.host),
                ));
            }
            let url = site.upstream_url();
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            let authority = rest.map(|r| r.split('/').next().unwrap_or(""));
            if authority.is_none_or(|a| a.is_empty() || a.contains('@')) {
                return Err(ConfigError::invalid(
                    format!("{key}.upstream"),
                    format!("`{url}` is not an http(s) URL like https://registry.example.com"),
                ));
            }
            if let Some(ca) = &site.ca_file
                && !ca.is_absolute()
            {
                return Err(ConfigError::invalid(
                    format!("{key}.ca_file"),
                    "must be an absolute path",
                ));
            }
            for (j, host) in site.redirect_hosts.iter().enumerate() {
                if !is_dns_name(host) && host.parse::<IpAddr>().is_err() {
                    return Err(ConfigError::invalid(
                        format!("{key}.redirect_hosts[{j}]"),
                        format!(
                            "`{host}` is not a DNS name or an IP address (no scheme, port, path or wildcard: cdn.example.com, 10.0.0.5, fd00::5)"
                        ),
                    ));
                }
            }
            if let Some(c) = &site.credentials {
                let key = format!("{key}.credentials");
                if url.starts_with("http://") {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "credentials for a plain http upstream (`{url}`) would cross the network in clear: use an https:// upstream"
                        ),
                    ));
                }
                match (&c.password_file, &c.password_env) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::invalid(
                            key,
                            "give password_file or password_env, not both",
                        ));
                    }
                    (None, None) => {
                        return Err(ConfigError::invalid(
                            key,
                            "needs password_file or password_env (the password is never written in the config)",
                        ));
                    }
                    (Some(p), None) if !p.is_absolute() => {
                        return Err(ConfigError::invalid(
                            format!("{key}.password_file"),
                            "must be an absolute path",
                        ));
                    }
                    _ => {}
                }
                if c.username.is_empty() {
                    return Err(ConfigError::invalid(format!("{key}.username"), "is empty"));
                }
            }
        }
        for (key, path) in [
            ("tls.ca_dir", &self.tls.ca_dir),
            ("cache.dir", &self.cache.dir),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{}` must be an absolute path", path.display()),
                ));
            }
        }
        self.validate_cache()?;
        if self.tls.leaf_cache == 0 {
            return Err(ConfigError::invalid("tls.leaf_cache", "must be at least 1"));
        }
        if self.tls.leaf_validity < std::time::Duration::from_secs(600) {
            return Err(ConfigError::invalid(
                "tls.leaf_validity",
                "must be at least 10m (leaves are re-minted before they expire)",
            ));
        }
        Ok(())
    }

    fn validate_cache(&self) -> Result<(), ConfigError> {
        let c = &self.cache;
        if c.max_size == 0 {
            return Err(ConfigError::invalid(
                "cache.max_size",
                "must be more than 0",
            ));
        }
        if let Some(blob) = c.max_blob_size
            && (blob == 0 || blob > c.max_size)
        {
            return Err(ConfigError::invalid(
                "cache.max_blob_size",
                format!(
                    "must be more than 0 and at most cache.max_size ({} bytes): a larger blob could never be stored",
                    c.max_size
                ),
            ));
        }
        if c.max_concurrent_fills == 0 {
            return Err(ConfigError::invalid(
                "cache.max_concurrent_fills",
                "must be at least 1",
            ));
        }
        if let Some(store) = &c.store {
            store.validate()?;
        }
        Ok(())
    }

    fn validate_devices(&self) -> Result<(), ConfigError> {
        let ifaces = &self.devices.interfaces;
        if ifaces.is_empty() {
            return Err(ConfigError::invalid(
                "devices.interfaces",
                "at least one device-facing interface is required",
            ));
        }
        for (i, text) in self.devices.dhcp_servers.iter().enumerate() {
            let ok = text
                .parse::<IpAddr>()
                .is_ok_and(|ip| !ip.is_unspecified() && !ip.is_multicast());
            if !ok {
                return Err(ConfigError::invalid(
                    format!("devices.dhcp_servers[{i}]"),
                    format!("`{text}` is not a unicast IP address (no port)"),
                ));
            }
        }
        for (i, text) in self.devices.prefixes.iter().enumerate() {
            if super::parse_prefix(text).is_none() {
                return Err(ConfigError::invalid(
                    format!("devices.prefixes[{i}]"),
                    format!("`{text}` is not a prefix: write 10.0.3.0/24 or fd00:3::/64"),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, name) in ifaces.iter().enumerate() {
            let key = format!("devices.interfaces[{i}]");
            if name.is_empty()
                || name.len() > IFNAMSIZ_MAX
                || name.contains(['/', ':'])
                || name.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "`{name}` is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"
                    ),
                ));
            }
            if !seen.insert(name) {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{name}` is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// The manager and the other passthrough services: DNS names and
    /// addresses, none listed twice anywhere.
    fn validate_passthrough(&self) -> Result<(), ConfigError> {
        let entries = self
            .manager
            .iter()
            .map(|m| ("manager".to_owned(), &m.name, &m.addresses))
            .chain(
                self.passthrough
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("passthrough[{i}]"), &p.name, &p.addresses)),
            );
        if self.manager.is_none() && self.passthrough.is_empty() {
            // Devices must reach their Workload Fleet Manager: a gateway
            // that passes nothing through is a config that forgot it.
            return Err(ConfigError::invalid(
                "passthrough",
                "no passthrough service: name the Workload Fleet Manager under `passthrough:` (or `manager:`)",
            ));
        }
        let mut names = HashSet::new();
        let mut seen = HashSet::new();
        for (key, name, addresses) in entries {
            if !is_dns_name(name) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("`{name}` is not a DNS name"),
                ));
            }
            if !names.insert(name.trim_end_matches('.').to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("`{name}` names another passthrough service too"),
                ));
            }
            if addresses.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.addresses"),
                    "at least one address (ip:port or [ipv6]:port) is required",
                ));
            }
            for (i, text) in addresses.iter().enumerate() {
                let key = format!("{key}.addresses[{i}]");
                let addr: SocketAddr = text.parse().map_err(|_| {
                    ConfigError::invalid(
                        &key,
                        format!("`{text}` is not an address: write ip:port, or [ipv6]:port"),
                    )
                })?;
                if addr.port() == 0 {
                    return Err(ConfigError::invalid(key, "port 0 cannot be connected to"));
                }
                if addr.ip().is_unspecified() || addr.ip().is_multicast() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{text}` is not a unicast address"),
                    ));
                }
                let canonical = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                if !seen.insert(canonical) {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "`{text}` is listed twice (each address belongs to one passthrough service)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_dns_and_time(&self) -> Result<(), ConfigError> {
        for (i, text) in self.dns.answer.iter().enumerate() {
            let ip: IpAddr = text.parse().map_err(|_| {
                ConfigError::invalid(
                    format!("dns.answer[{i}]"),
                    format!("`{text}` is not an IP address (write 10.0.0.1 or fd00::1, no port)"),
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(ConfigError::invalid(
                    format!("dns.answer[{i}]"),
                    format!("`{text}` is not an address devices can connect to"),
                ));
            }
        }
        if self.dns.ttl > 86_400 {
            return Err(ConfigError::invalid(
                "dns.ttl",
                "must be at most 86400 (one day)",
            ));
        }
        if let Some(s) = self.time.local_stratum
            && !(1..=15).contains(&s)
        {
            return Err(ConfigError::invalid(
                "time.local_stratum",
                "must be 1 to 15 (16 means unsynchronised)",
            ));
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), ConfigError> {
        if self.proxy.port == 0 {
            return Err(ConfigError::invalid("proxy.port", "must be 1 to 65535"));
        }
        let p = &self.proxy;
        for (key, v) in [
            ("proxy.max_connections", p.max_connections as u64),
            (
                "proxy.max_connections_per_device",
                p.max_connections_per_device as u64,
            ),
            ("proxy.first_bytes_timeout_secs", p.first_bytes_timeout_secs),
            ("proxy.idle_timeout_secs", p.idle_timeout_secs),
            ("proxy.passthrough_idle_secs", p.passthrough_idle_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if p.max_connections_per_device > p.max_connections {
            return Err(ConfigError::invalid(
                "proxy.max_connections_per_device",
                "is more than proxy.max_connections",
            ));
        }
        if self.proxy.connect_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "proxy.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        let mut seen = HashSet::new();
        for (i, port) in self.intercept.tcp_ports.iter().enumerate() {
            let key = format!("intercept.tcp_ports[{i}]");
            if *port == 0 {
                return Err(ConfigError::invalid(key, "port 0 is not a port"));
            }
            if *port == self.proxy.port {
                return Err(ConfigError::invalid(
                    key,
                    format!("{port} is the proxy's own port (proxy.port); pick another proxy.port"),
                ));
            }
            if !seen.insert(*port) {
                return Err(ConfigError::invalid(key, format!("{port} is listed twice")));
            }
        }
        Ok(())
    }

    fn validate_paths(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("audit.path", &self.audit.path),
            ("state_dir", &self.state_dir),
            ("kernel.pin_path", &self.kernel.pin_path),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{}` must be an absolute path", path.display()),
                ));
            }
        }
        if self.audit.path.file_name().is_none() {
            return Err(ConfigError::invalid("audit.path", "must name a file"));
        }
        Ok(())
    }

    fn validate_kernel(&self) -> Result<(), ConfigError> {
        let k = &self.kernel;
        if k.mark == 0 {
            return Err(ConfigError::invalid(
                "kernel.mark",
                "must not be 0 (0 means unmarked)",
            ));
        }
        // 0 is unspecified; 253-255 are the kernel's default, main and local.
        if matches!(k.route_table, 0 | 253..=255) {
            return Err(ConfigError::invalid(
                "kernel.route_table",
                format!(
                    "{} is reserved; pick a table of the gateway's own (1-252 or above 255)",
                    k.route_table
                ),
            ));
        }
        // 0 is the local rule, 32766 and 32767 are main and default.
        if k.rule_priority == 0 || k.rule_priority >= 32766 {
            return Err(ConfigError::invalid(
                "kernel.rule_priority",
                "must be 1 to 32765, before the main table's rule",
            ));
        }
        if k.drop_event_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "kernel.drop_event_interval_ms",
                "must be at least 1",
            ));
        }
        if k.drop_flush_secs == 0 {
            return Err(ConfigError::invalid(
                "kernel.drop_flush_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A DNS host name: dot-separated labels of letters, digits and hyphens,
/// 1 to 63 bytes each, 253 in all; no leading or trailing hyphen.
/// The passthrough service (manager or `passthrough:` entry) named `host`.
pub(super) fn passthrough_named(config: &Config, host: &str) -> Option<String> {
    let host = host.trim_end_matches('.');
    config
        .passthrough_services()
        .into_iter()
        .find(|p| p.name.trim_end_matches('.').eq_ignore_ascii_case(host))
        .map(|p| p.name)
}

pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
