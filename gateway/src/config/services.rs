//! The gateway's own services for devices: passthrough services (the
//! manager and any other endpoint whose traffic must not be inspected),
//! DNS and time.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// A service whose connections are spliced byte for byte to its
/// configured addresses: the Workload Fleet Manager, the Margo identity
/// service, an OTLP collector, any other mutual-TLS endpoint of the site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughService {
    /// The DNS name devices use for it. The gateway's DNS answers it with
    /// `addresses`, and audit records name the service by it.
    pub name: String,
    /// Where passthrough connects: `ip:port` or `[ipv6]:port`. A device
    /// connection is passed through only when its original destination is
    /// one of these, and only to that same address.
    pub addresses: Vec<String>,
}

/// A passthrough service with its addresses parsed (validation guarantees
/// they parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub addresses: Vec<SocketAddr>,
}

/// The DNS responder for devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Answer devices' DNS queries (UDP and TCP port 53, any destination
    /// address). Default true. When false, DNS from devices is dropped in
    /// the kernel like any other UDP.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Addresses given for every site host (`ip`, v4 or v6). Default
    /// empty: the gateway's own addresses on the device interface the
    /// query came in on, so answers work offline and on air-gapped sites.
    #[serde(default)]
    pub answer: Vec<String>,
    /// Time to live of every answer, seconds. Default 60.
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
}

/// The time server for devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// Answer NTP requests (UDP port 123, any destination address) from
    /// the host's clock. Default true. While the host clock is not
    /// synchronised (as `adjtimex` reports), answers say so (leap
    /// indicator 3, stratum 16) and clients do not take the time.
    #[serde(default = "yes")]
    pub serve: bool,
    /// Serve the host clock at this stratum (1 to 15) even while it is not
    /// synchronised, as chrony's `local stratum N` does: for air-gapped
    /// sites whose clock is set by hand or by a local reference that the
    /// kernel does not know about. Default none.
    #[serde(default)]
    pub local_stratum: Option<u8>,
}

fn yes() -> bool {
    true
}
fn default_dns_ttl() -> u32 {
    60
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            enabled: true,
            answer: Vec::new(),
            ttl: default_dns_ttl(),
        }
    }
}

impl Default for Time {
    fn default() -> Self {
        Self {
            serve: true,
            local_stratum: None,
        }
    }
}

impl Dns {
    /// `answer`, parsed (validation guarantees they parse).
    pub fn answer_addresses(&self) -> Vec<IpAddr> {
        self.answer.iter().filter_map(|a| a.parse().ok()).collect()
    }
}
