//! The gateway's configuration: one YAML file.
//!
//! Every struct refuses unknown keys, so a typo is an error that names the
//! key instead of a setting silently ignored. [`Config::load`] parses and
//! validates; nothing is bound or attached before it returns `Ok`. The
//! documented example lives in `config/gateway.yaml` at the repository root.

mod admin;
mod children;
mod groups;
mod host;
mod kinds;
mod mirror;
mod proxy;
mod services;
mod sites;
mod store;
mod upstream;
mod validate;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use admin::{Admin, DEFAULT_ADMIN_LISTEN};
pub use children::Children;
pub use groups::{DEFAULT_GROUP, Group, GroupSite, network, repository_allowed};
pub use kinds::{glob_match, parse_sha256};
pub use mirror::{Mirror, Schedule, Window, until as mirror_until};
pub use proxy::{SiteProxy, UpstreamProxy, parse_proxy_url};
pub use services::{Dns, PassthroughService, Service, Time};
pub use sites::{Cache, Checksum, Credentials, Site, SiteKind, Tls};
pub use store::{DEFAULT_STORE_TIMEOUT, SecretError, Store};
pub use upstream::Upstream;
pub use validate::ConfigError;
pub(crate) use validate::is_dns_name;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub devices: Devices,
    /// The Workload Fleet Manager: one passthrough service, kept as its
    /// own key for the configs that name only it.
    #[serde(default)]
    pub manager: Option<Manager>,
    /// Services passed through untouched, beside `manager`.
    #[serde(default)]
    pub passthrough: Vec<PassthroughService>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub time: Time,
    #[serde(default)]
    pub intercept: Intercept,
    #[serde(default)]
    pub proxy: Proxy,
    /// Timeouts and the progress floor for the sites' registries.
    #[serde(default)]
    pub upstream: Upstream,
    /// The HTTP proxy upstream connections go through (CONNECT), unless a
    /// site says otherwise. Default none: the gateway connects directly.
    #[serde(default)]
    pub upstream_proxy: Option<UpstreamProxy>,
    #[serde(default)]
    pub audit: Audit,
    /// Where the daemon keeps its state (attachment records).
    /// Default `/var/lib/gateway`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub kernel: Kernel,
    #[serde(default)]
    pub tls: Tls,
    /// Artifact hosts the gateway terminates TLS for and serves.
    #[serde(default)]
    pub sites: Vec<Site>,
    #[serde(default)]
    pub cache: Cache,
    /// The admin listener (metrics and health probes).
    #[serde(default)]
    pub admin: Admin,
    /// Repositories fetched ahead of devices on a schedule (mirror.rs).
    #[serde(default)]
    pub mirror: Vec<Mirror>,
    /// This gateway as a parent of other gateways (children.rs). Default
    /// none.
    #[serde(default)]
    pub children: Option<Children>,
}

/// The device-facing side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// Interfaces devices send on; each gets the TC ingress program.
    /// Required, at least one; each must exist when the daemon starts.
    pub interfaces: Vec<String>,
    /// Pass DHCP from devices' clients (v4 68→67, v6 546→547) to the
    /// broadcast address, the DHCPv6 server groups, the gateway's own
    /// addresses and `dhcp_servers`. Default false.
    #[serde(default)]
    pub allow_dhcp: bool,
    /// DHCP servers devices may reach besides the gateway itself (`ip`).
    /// Default none.
    #[serde(default)]
    pub dhcp_servers: Vec<String>,
    /// The prefixes devices send from (`10.0.3.0/24`, `fd00:3::/64`);
    /// packets from any other source are spoofed and dropped. Default
    /// empty: the device interfaces' own subnets (re-read every few
    /// seconds). Link-local sources stay allowed for neighbour discovery.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Device groups: which sites, repositories and passthrough services
    /// devices may use, by source prefix (groups.rs). Default none: every
    /// device may use everything configured.
    #[serde(default)]
    pub groups: Vec<Group>,
}

/// `ip/len` with the address's family's length bound; host bits may be
/// set (they are cleared where used).
pub fn parse_prefix(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

impl Devices {
    /// `prefixes`, parsed as (network address, length) (validation
    /// guarantees they parse).
    pub fn prefix_list(&self) -> Vec<(std::net::IpAddr, u8)> {
        self.prefixes
            .iter()
            .filter_map(|p| parse_prefix(p))
            .collect()
    }

    /// `dhcp_servers`, parsed (validation guarantees they parse).
    pub fn dhcp_server_addresses(&self) -> Vec<std::net::IpAddr> {
        self.dhcp_servers
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }
}

/// The Workload Fleet Manager, whose device API passes through untouched
/// (the same as one entry of `passthrough:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manager {
    /// The DNS name the manager's certificate carries.
    pub name: String,
    /// Where passthrough connects: `ip:port` or `[ipv6]:port`. A device
    /// connection is passed through only when its original destination is
    /// one of these, and only to that same address.
    pub addresses: Vec<String>,
}

/// What the kernel program redirects to the proxy besides the manager.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intercept {
    /// TCP destination ports redirected whatever the address.
    /// Default `[80, 443]`.
    #[serde(default = "default_tcp_ports")]
    pub tcp_ports: Vec<u16>,
}

/// The transparent listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// Port of the transparent listener (v4 and v6, wildcard address).
    /// Default 15001. Devices never see it: their packets keep their
    /// original destination.
    #[serde(default = "default_proxy_port")]
    pub port: u16,
    /// Seconds to wait for the manager to accept a passthrough connection.
    /// Default 10.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Connections the proxy holds at once, from all devices; more are
    /// closed at once and audited. Default 8192.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one device address may hold at once. Default 256.
    #[serde(default = "default_max_connections_per_device")]
    pub max_connections_per_device: usize,
    /// Seconds a device has, once connected, to send its first bytes (a
    /// ClientHello or a request line) and, on TLS, to finish the
    /// handshake. Default 10.
    #[serde(default = "default_first_bytes_timeout")]
    pub first_bytes_timeout_secs: u64,
    /// Seconds a terminated connection may go without a byte moving
    /// either way (idle keep-alive and HTTP/2 connections, a device that
    /// stops reading or sending). Longer than the upstream's own timeouts
    /// (`upstream.headers_timeout_secs`, `upstream.body_idle_secs`: checked),
    /// so a slow upstream is reported as such first. Default 120.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Seconds a passthrough connection may stay silent both ways before
    /// it is closed (TCP keepalive probes find vanished peers sooner).
    /// Default 600.
    #[serde(default = "default_passthrough_idle")]
    pub passthrough_idle_secs: u64,
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// JSON lines file, appended to; its directory is created.
    /// Default `/var/log/gateway/audit.jsonl`.
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
}

/// Kernel-side settings; the defaults suit a host running one gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Directory on a bpffs where programs, links and maps are pinned so
    /// that they keep guarding while the daemon is down.
    /// Default `/sys/fs/bpf/margo-gateway`; bpffs is mounted at
    /// `/sys/fs/bpf` if nothing is.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Firewall mark put on redirected packets. Default 0x4d47 (19783).
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// Routing table holding the `local` default routes. Default 4747.
    #[serde(default = "default_route_table")]
    pub route_table: u32,
    /// Priority of the `fwmark` policy-routing rule. Default 4747.
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
    /// Minimum milliseconds between two kernel drop events of one flow.
    /// Default 1000.
    #[serde(default = "default_drop_event_interval_ms")]
    pub drop_event_interval_ms: u64,
    /// Seconds over which drop events of one flow are summed into one
    /// audit record. Default 2.
    #[serde(default = "default_drop_flush_secs")]
    pub drop_flush_secs: u64,
    /// How the program is attached: `auto` (TCX on kernel 6.6 and newer,
    /// netlink `clsact` below), `tcx` or `netlink`. Default `auto`.
    #[serde(default)]
    pub attach: AttachMode,
}

/// See [`Kernel::attach`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Auto,
    Tcx,
    Netlink,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/gateway")
}
fn default_tcp_ports() -> Vec<u16> {
    vec![80, 443]
}
fn default_proxy_port() -> u16 {
    15001
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_max_connections() -> usize {
    8192
}
fn default_max_connections_per_device() -> usize {
    256
}
fn default_idle_timeout() -> u64 {
    120
}
fn default_first_bytes_timeout() -> u64 {
    10
}
fn default_passthrough_idle() -> u64 {
    600
}
fn default_audit_path() -> PathBuf {
    PathBuf::from("/var/log/gateway/audit.jsonl")
}
fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/margo-gateway")
}
fn default_mark() -> u32 {
    0x4d47
}
fn default_route_table() -> u32 {
    4747
}
fn default_rule_priority() -> u32 {
    4747
}
fn default_drop_event_interval_ms() -> u64 {
    1000
}
fn default_drop_flush_secs() -> u64 {
    2
}

impl Default for Intercept {
    fn default() -> Self {
        Self {
            tcp_ports: default_tcp_ports(),
        }
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            port: default_proxy_port(),
            connect_timeout_secs: default_connect_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_device: default_max_connections_per_device(),
            first_bytes_timeout_secs: default_first_bytes_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            passthrough_idle_secs: default_passthrough_idle(),
        }
    }
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            path: default_audit_path(),
        }
    }
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            pin_path: default_pin_path(),
            mark: default_mark(),
            route_table: default_route_table(),
            rule_priority: default_rule_priority(),
            drop_event_interval_ms: default_drop_event_interval_ms(),
            drop_flush_secs: default_drop_flush_secs(),
            attach: AttachMode::Auto,
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(ConfigError::from_yaml)?;
        config.validate()?;
        Ok(config)
    }

    /// The configured site for a host name (case-insensitive), if any.
    pub fn site(&self, host: &str) -> Option<&Site> {
        let host = host.trim_end_matches('.');
        self.sites
            .iter()
            .find(|s| s.host.eq_ignore_ascii_case(host))
    }

    /// Every passthrough service: `manager` first, then `passthrough`, with
    /// addresses parsed (validation guarantees they parse).
    pub fn passthrough_services(&self) -> Vec<Service> {
        let parse = |addrs: &[String]| -> Vec<SocketAddr> {
            addrs.iter().filter_map(|a| a.parse().ok()).collect()
        };
        self.manager
            .iter()
            .map(|m| Service {
                name: m.name.clone(),
                addresses: parse(&m.addresses),
            })
            .chain(self.passthrough.iter().map(|p| Service {
                name: p.name.clone(),
                addresses: parse(&p.addresses),
            }))
            .collect()
    }

    /// Every host the gateway terminates (sites' hosts and helm sites'
    /// chart hosts), lowercase, without a trailing dot.
    pub fn served_hosts(&self) -> Vec<String> {
        self.sites.iter().flat_map(Site::served_hosts).collect()
    }

    /// The site a served host belongs to.
    pub fn site_serving(&self, host: &str) -> Option<&Site> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.sites
            .iter()
            .find(|s| s.served_hosts().any(|h| h == host))
    }

    /// Every passthrough address, of every service.
    pub fn passthrough_addresses(&self) -> Vec<SocketAddr> {
        self.passthrough_services()
            .into_iter()
            .flat_map(|s| s.addresses)
            .collect()
    }
}

#[cfg(test)]
mod tests;
