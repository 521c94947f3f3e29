//! The gateway config a test writes, with the site's defaults.
//!
//! Rendered as YAML by hand (every string double-quoted, which YAML reads
//! like JSON) so that the tests do not depend on the gateway's serde types:
//! the file is what an admin would write.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf};

use crate::site::Site;

/// Every key the harness sets. Fields are public: a test changes what it
/// needs (e.g. `allow_dhcp`, `interfaces`) before starting a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `devices.interfaces`
    pub interfaces: Vec<String>,
    /// `devices.allow_dhcp`
    pub allow_dhcp: bool,
    /// `devices.dhcp_servers`
    pub dhcp_servers: Vec<std::net::IpAddr>,
    /// `manager.name`
    pub manager_name: String,
    /// `manager.addresses`
    pub manager_addresses: Vec<SocketAddr>,
    /// `intercept.tcp_ports`
    pub tcp_ports: Vec<u16>,
    /// `proxy.port`
    pub proxy_port: u16,
    /// `proxy.max_connections` and `proxy.max_connections_per_device`,
    /// when a test needs other caps than the defaults.
    pub max_connections: Option<(usize, usize)>,
    /// `proxy.first_bytes_timeout_secs`, when a test holds silent
    /// connections longer than the default allows.
    pub first_bytes_timeout_secs: Option<u64>,
    /// `upstream.<key>: <value>` pairs (`body_idle_secs`, `min_body_rate`,
    /// ...), when a test needs other upstream timeouts or progress floor
    /// than the defaults.
    pub upstream: Vec<(&'static str, u64)>,
    /// `audit.path`
    pub audit_path: PathBuf,
    /// `state_dir`
    pub state_dir: PathBuf,
    /// `kernel.pin_path`
    pub pin_path: PathBuf,
    /// `kernel.drop_event_interval_ms`
    pub drop_event_interval_ms: u64,
    /// `kernel.attach`: `auto` (None), `tcx` or `netlink`.
    pub attach: Option<&'static str>,
    /// Appended verbatim (extra top-level keys for a test of its own).
    pub extra_yaml: String,
    /// Appended verbatim under `devices:` (indented keys such as
    /// `groups:`).
    pub devices_yaml: String,
}

/// The default policy-routing table (`kernel.route_table`), as documented
/// by the gateway's config.
pub const DEFAULT_ROUTE_TABLE: u32 = 4747;

impl GatewayConfig {
    /// The default config for `site`, its files in the site's temp dir.
    pub fn for_site(site: &Site) -> Self {
        let dir = site.tmp_dir();
        Self {
            interfaces: vec![site.gw_dev_if.clone()],
            allow_dhcp: false,
            dhcp_servers: Vec::new(),
            manager_name: "wfm.site.example".to_owned(),
            manager_addresses: site.manager_addrs().to_vec(),
            tcp_ports: vec![80, 443],
            proxy_port: 15001,
            max_connections: None,
            first_bytes_timeout_secs: None,
            upstream: Vec::new(),
            audit_path: dir.join("audit.jsonl"),
            state_dir: dir.join("state"),
            pin_path: site.pin_path(),
            drop_event_interval_ms: 1000,
            attach: None,
            extra_yaml: String::new(),
            devices_yaml: String::new(),
        }
    }

    pub fn to_yaml(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let list = |items: Vec<String>| format!("[{}]", items.join(", "));
        let mut y = String::new();
        // `writeln!` into a String cannot fail.
        let _ = writeln!(y, "devices:");
        let _ = writeln!(
            y,
            "  interfaces: {}",
            list(self.interfaces.iter().map(|i| q(i)).collect())
        );
        let _ = writeln!(y, "  allow_dhcp: {}", self.allow_dhcp);
        if !self.dhcp_servers.is_empty() {
            let _ = writeln!(
                y,
                "  dhcp_servers: {}",
                list(
                    self.dhcp_servers
                        .iter()
                        .map(|a| q(&a.to_string()))
                        .collect()
                )
            );
        }
        y.push_str(&self.devices_yaml);
        let _ = writeln!(y, "manager:");
        let _ = writeln!(y, "  name: {}", q(&self.manager_name));
        let addrs = self
            .manager_addresses
            .iter()
            .map(|a| q(&a.to_string()))
            .collect();
        let _ = writeln!(y, "  addresses: {}", list(addrs));
        let _ = writeln!(y, "intercept:");
        let _ = writeln!(
            y,
            "  tcp_ports: {}",
            list(self.tcp_ports.iter().map(u16::to_string).collect())
        );
        let _ = writeln!(y, "proxy:");
        let _ = writeln!(y, "  port: {}", self.proxy_port);
        if let Some((total, per_device)) = self.max_connections {
            let _ = writeln!(y, "  max_connections: {total}");
            let _ = writeln!(y, "  max_connections_per_device: {per_device}");
        }
        if let Some(secs) = self.first_bytes_timeout_secs {
            let _ = writeln!(y, "  first_bytes_timeout_secs: {secs}");
        }
        if !self.upstream.is_empty() {
            let _ = writeln!(y, "upstream:");
            for (key, value) in &self.upstream {
                let _ = writeln!(y, "  {key}: {value}");
            }
        }
        let _ = writeln!(y, "audit:");
        let _ = writeln!(y, "  path: {}", q(&self.audit_path.to_string_lossy()));
        let _ = writeln!(y, "state_dir: {}", q(&self.state_dir.to_string_lossy()));
        let _ = writeln!(y, "kernel:");
        let _ = writeln!(y, "  pin_path: {}", q(&self.pin_path.to_string_lossy()));
        let _ = writeln!(
            y,
            "  drop_event_interval_ms: {}",
            self.drop_event_interval_ms
        );
        if let Some(attach) = self.attach {
            let _ = writeln!(y, "  attach: {attach}");
        }
        y.push_str(&self.extra_yaml);
        y
    }
}
