//! The audit record and its JSON shape.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Event {
    /// The daemon is ready: kernel path installed, listener accepting.
    #[serde(rename = "gateway.start")]
    GatewayStart,
    /// The daemon stopped cleanly and removed what it installed.
    #[serde(rename = "gateway.stop")]
    GatewayStop,
    /// A device connection spliced to the manager.
    #[serde(rename = "flow.passthrough")]
    FlowPassthrough,
    /// A redirected connection refused by policy.
    #[serde(rename = "flow.denied")]
    FlowDenied,
    /// Packets dropped in the kernel, summed per flow.
    #[serde(rename = "flow.dropped")]
    FlowDropped,
    /// One HTTP request served on a terminated connection.
    #[serde(rename = "request")]
    Request,
    /// A device's DNS query answered with addresses (or an empty answer
    /// for another record type of an allowed name). At most one record
    /// per device, name and type per minute.
    #[serde(rename = "dns.answered")]
    DnsAnswered,
    /// A device's DNS query for a name the site does not allow: answered
    /// NXDOMAIN. Rate limited per device; `suppressed` counts the queries
    /// left out since the previous record.
    #[serde(rename = "dns.refused")]
    DnsRefused,
    /// A device's NTP request answered from the host clock. At most one
    /// record per device per ten minutes.
    #[serde(rename = "time.served")]
    TimeServed,
    /// A config reload applied (SIGHUP, `gateway reload`); `detail` says
    /// what changed.
    #[serde(rename = "config.reloaded")]
    ConfigReloaded,
    /// A config reload refused: the old configuration keeps running;
    /// `detail` says why.
    #[serde(rename = "config.reload_failed")]
    ConfigReloadFailed,
    /// A mirror run of one repository ended (`host`, `name`: the
    /// repository, `bytes` fetched, `duration_ms`; `detail` counts the
    /// tags synced and unchanged and the blobs fetched).
    #[serde(rename = "mirror.synced")]
    MirrorSynced,
    /// A mirror run of one repository failed, wholly or for some tags
    /// (`detail` says which and why).
    #[serde(rename = "mirror.failed")]
    MirrorFailed,
}

/// Whose fault it was when a flow or request ended in error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// The device: what it sent, or its going away.
    Device,
    /// The upstream registry, its token service or a CDN it redirected to.
    Upstream,
    /// The gateway itself: a disk error, a bug, its configuration.
    Internal,
    /// A bound of the gateway's own: a full cache, too many fills, a blob
    /// over `cache.max_blob_size`.
    Local,
}

impl Fault {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
            Self::Local => "local",
        }
    }
}

impl From<crate::upstream::Fault> for Fault {
    fn from(f: crate::upstream::Fault) -> Self {
        match f {
            crate::upstream::Fault::Upstream => Self::Upstream,
            crate::upstream::Fault::Internal => Self::Internal,
        }
    }
}

impl From<crate::cache::FailCause> for Fault {
    fn from(c: crate::cache::FailCause) -> Self {
        use crate::cache::FailCause;
        match c {
            FailCause::Status(_) | FailCause::Upstream => Self::Upstream,
            FailCause::TooLarge | FailCause::NoSpace => Self::Local,
            FailCause::Internal => Self::Internal,
        }
    }
}

/// What the cache did for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Served from the cache after upstream failed to revalidate it.
    Stale,
    /// Upstream confirmed the cached copy.
    Revalidated,
    /// Passed to upstream without the cache.
    Bypass,
}

/// Where a request's content came from, when not from upstream or the
/// local cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The shared store (`cache.store`) filled the local cache.
    Store,
}

/// One audit line. Absent fields are omitted from the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub ts: String,
    pub event: Event,
    /// The device's `ip:port` (or `ip` for protocols without ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The original destination `ip:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// On a parent gateway: the child gateway that asked (its client
    /// certificate's name), in place of a device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `ip-N` or `ethertype-0xNNNN`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The device-facing interface the packets arrived on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// Bytes from the device to the far end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Bytes from the far end to the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Passthrough: the service the connection was spliced to (its
    /// configured name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The device's group (`devices.groups`), when groups are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// DNS: the name asked for, and the record type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    /// Records of the same kind left out by rate limiting since the
    /// previous one written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// Requests: the site host (SNI and Host), method, path, status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Requests: body bytes sent to the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Requests: `hit`, `miss`, `stale`, `revalidated` or `bypass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
    /// Requests: milliseconds spent waiting on upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<u64>,
    /// Requests: where a fill's bytes came from when not from upstream:
    /// `store` (the shared cache tier, `cache.store`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Who was at fault when a flow ended in error: `device`, `upstream`,
    /// `internal` or `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Free text for humans (errors, versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    /// A record stamped now.
    pub fn new(event: Event) -> Self {
        Self::at(event, OffsetDateTime::now_utc())
    }

    pub fn at(event: Event, ts: OffsetDateTime) -> Self {
        Self {
            ts: ts
                .format(&Rfc3339)
                .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z")),
            event,
            device: None,
            dst: None,
            child: None,
            proto: None,
            reason: None,
            interface: None,
            packets: None,
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
            service: None,
            group: None,
            name: None,
            qtype: None,
            suppressed: None,
            host: None,
            method: None,
            path: None,
            status: None,
            bytes: None,
            cache: None,
            upstream_ms: None,
            source: None,
            fault: None,
            detail: None,
        }
    }

    /// Sets device, destination and protocol of a TCP connection.
    pub fn tcp(mut self, device: SocketAddr, dst: SocketAddr) -> Self {
        self.device = Some(addr_text(device));
        self.dst = Some(addr_text(dst));
        self.proto = Some("tcp".into());
        self
    }

    /// Sets device, destination and protocol of a UDP exchange.
    pub fn udp(mut self, device: SocketAddr, dst: SocketAddr) -> Self {
        self.device = Some(addr_text(device));
        self.dst = Some(addr_text(dst));
        self.proto = Some("udp".into());
        self
    }

    /// Cuts every text field that may carry what a device or upstream
    /// sent to at most `max` bytes, marking what was left out.
    pub fn truncate_fields(&mut self, max: usize) {
        for field in [
            &mut self.path,
            &mut self.host,
            &mut self.method,
            &mut self.name,
            &mut self.qtype,
            &mut self.detail,
            &mut self.reason,
            &mut self.service,
            &mut self.child,
        ]
        .into_iter()
        .flatten()
        {
            if field.len() > max {
                let mut end = max;
                while !field.is_char_boundary(end) {
                    end -= 1;
                }
                let cut = field.len() - end;
                field.truncate(end);
                field.push_str(&format!("…[{cut} bytes cut]"));
            }
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// `ip:port`, or `[ipv6]:port`; IPv4-mapped IPv6 addresses are shown as
/// IPv4, as devices sent them.
pub fn addr_text(addr: SocketAddr) -> String {
    ip_port_text(addr.ip(), Some(addr.port()))
}

/// `ip:port` or, without a port, the bare address.
pub fn ip_port_text(ip: IpAddr, port: Option<u16>) -> String {
    let ip = ip.to_canonical();
    match (ip, port) {
        (ip, None) => ip.to_string(),
        (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
        (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
    }
}
