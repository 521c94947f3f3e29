//! One audit line, read back: what device, what destination, which side
//! (reached or refused), and what it counts for.
//!
//! The line is parsed leniently (unknown fields are ignored, so a newer
//! gateway's log still reads) but a line without a parseable `ts` and
//! `event` is not understood. The text fields used as keys are cut to
//! [`KEY_TEXT_MAX`] bytes: the log already cuts them at 1 KiB, and a key
//! is held for the whole run.

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
};

use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Longest text kept in a key, in bytes.
pub const KEY_TEXT_MAX: usize = 256;

/// The fields of an audit record a report uses (see `audit::Record`).
#[derive(Debug, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    device: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dst: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    proto: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    packets: Option<u64>,
    #[serde(default)]
    bytes_up: Option<u64>,
    #[serde(default)]
    bytes_down: Option<u64>,
    #[serde(borrow, default)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    qtype: Option<Cow<'a, str>>,
    #[serde(default)]
    suppressed: Option<u64>,
    #[serde(borrow, default)]
    host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(borrow, default)]
    fault: Option<Cow<'a, str>>,
}

/// Reached or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Reached,
    Refused,
}

/// What kind of destination a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A passthrough service (`flow.passthrough`).
    Passthrough,
    /// A site and repository (`request`).
    Site,
    /// A DNS name (`dns.answered`, `dns.refused`).
    Dns,
    /// The gateway's NTP answer (`time.served`).
    Time,
    /// A connection the proxy refused (`flow.denied`).
    Connection,
    /// Packets the kernel dropped (`flow.dropped`).
    Dropped,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::Site => "site",
            Self::Dns => "dns",
            Self::Time => "time",
            Self::Connection => "connection",
            Self::Dropped => "dropped",
        }
    }
}

/// A destination, as far as the record names it. Absent parts are `None`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub service: Option<Box<str>>,
    /// The site host (a request's Host, or the SNI of a refused TLS flow).
    pub site: Option<Box<str>>,
    pub repository: Option<Box<str>>,
    /// A DNS name and its record type.
    pub name: Option<Box<str>>,
    pub qtype: Option<Box<str>>,
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub proto: Option<Box<str>>,
    pub reason: Option<Box<str>>,
}

impl Key {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            service: None,
            site: None,
            repository: None,
            name: None,
            qtype: None,
            address: None,
            port: None,
            proto: None,
            reason: None,
        }
    }

    /// The destination in a few words, for tables and the picture
    /// (unescaped: renderers escape it).
    pub fn destination(&self) -> String {
        let mut out = String::new();
        let addr = match (self.address, self.port) {
            (Some(IpAddr::V6(a)), Some(p)) => Some(format!("[{a}]:{p}")),
            (Some(a), Some(p)) => Some(format!("{a}:{p}")),
            (Some(a), None) => Some(a.to_string()),
            (None, _) => None,
        };
        match self.kind {
            Kind::Passthrough => out.push_str(self.service.as_deref().unwrap_or("?")),
            Kind::Site => {
                out.push_str(self.site.as_deref().unwrap_or("(no host)"));
                if let Some(r) = &self.repository {
                    out.push('/');
                    out.push_str(r);
                }
            }
            Kind::Dns => {
                out.push_str(self.name.as_deref().unwrap_or("(no name)"));
                if let Some(q) = &self.qtype {
                    out.push(' ');
                    out.push_str(q);
                }
            }
            Kind::Time => out.push_str(addr.as_deref().unwrap_or("ntp")),
            Kind::Connection | Kind::Dropped => {
                out.push_str(addr.as_deref().unwrap_or("(many flows)"));
                if let Some(p) = &self.proto {
                    out.push('/');
                    out.push_str(p);
                }
                if let Some(s) = &self.site {
                    out.push_str(" name ");
                    out.push_str(s);
                }
            }
        }
        out
    }
}

/// What one record adds to its key's row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    /// Attempts: one, plus those the gateway's rate limits left out.
    pub count: u64,
    pub packets: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Flows or requests that ended in error (a fault, a status >= 400).
    pub errors: u64,
}

/// A record about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub ts: OffsetDateTime,
    pub device: IpAddr,
    pub side: Side,
    pub key: Key,
    pub amount: Amount,
}

/// What a line turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Device(Box<Observation>),
    /// `gateway.start`, `gateway.stop`, `config.reloaded`,
    /// `config.reload_failed`: about the gateway, not a device.
    Gateway(OffsetDateTime),
    /// A device record whose `device` is missing or not an address.
    NoDevice,
    /// Not JSON, no `ts` or `event`, a `ts` that is not RFC 3339, or an
    /// event this reader does not know.
    NotUnderstood,
}

/// Reads one line (without its newline).
pub fn parse(line: &[u8]) -> Parsed {
    let Ok(raw) = serde_json::from_slice::<Raw<'_>>(line) else {
        return Parsed::NotUnderstood;
    };
    let Ok(ts) = OffsetDateTime::parse(&raw.ts, &Rfc3339) else {
        return Parsed::NotUnderstood;
    };
    let (side, mut key) = match &*raw.event {
        "gateway.start" | "gateway.stop" | "config.reloaded" | "config.reload_failed" => {
            return Parsed::Gateway(ts);
        }
        "flow.passthrough" => (Side::Reached, Key::new(Kind::Passthrough)),
        "request" if raw.reason.is_some() => (Side::Refused, Key::new(Kind::Site)),
        "request" => (Side::Reached, Key::new(Kind::Site)),
        "dns.answered" => (Side::Reached, Key::new(Kind::Dns)),
        "dns.refused" => (Side::Refused, Key::new(Kind::Dns)),
        "time.served" => (Side::Reached, Key::new(Kind::Time)),
        "flow.denied" => (Side::Refused, Key::new(Kind::Connection)),
        "flow.dropped" => (Side::Refused, Key::new(Kind::Dropped)),
        _ => return Parsed::NotUnderstood,
    };
    let Some(device) = raw.device.as_deref().and_then(ip_of) else {
        return Parsed::NoDevice;
    };
    let mut amount = Amount {
        count: 1 + raw.suppressed.unwrap_or(0),
        packets: raw.packets.unwrap_or(0),
        bytes_up: raw.bytes_up.unwrap_or(0),
        bytes_down: raw
            .bytes_down
            .unwrap_or(0)
            .saturating_add(raw.bytes.unwrap_or(0)),
        errors: 0,
    };
    let failed = raw.fault.is_some() || raw.status.is_some_and(|s| s >= 400);
    if side == Side::Reached && failed {
        amount.errors = amount.count;
    }
    match key.kind {
        Kind::Passthrough => key.service = cut(raw.service.as_deref()),
        Kind::Site => {
            key.site = cut(raw.host.as_deref());
            key.repository = cut(raw.path.as_deref().and_then(repository));
        }
        Kind::Dns => {
            key.name = cut(raw.name.as_deref());
            key.qtype = cut(raw.qtype.as_deref());
        }
        Kind::Time => (key.address, key.port) = endpoint(raw.dst.as_deref()),
        Kind::Connection | Kind::Dropped => {
            (key.address, key.port) = endpoint(raw.dst.as_deref());
            key.proto = cut(raw.proto.as_deref());
            // The SNI of a TLS connection refused for its name.
            key.site = cut(raw.host.as_deref());
        }
    }
    if side == Side::Refused {
        key.reason = cut(raw.reason.as_deref());
    }
    Parsed::Device(Box::new(Observation {
        ts,
        device,
        side,
        key,
        amount,
    }))
}

/// The address of `ip:port`, `[ipv6]:port` or a bare address, in its
/// canonical form (IPv4-mapped addresses as IPv4).
pub fn ip_of(text: &str) -> Option<IpAddr> {
    endpoint(Some(text)).0
}

fn endpoint(text: Option<&str>) -> (Option<IpAddr>, Option<u16>) {
    let Some(text) = text else {
        return (None, None);
    };
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return (Some(sa.ip().to_canonical()), Some(sa.port()));
    }
    (
        text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()),
        None,
    )
}

/// The repository an OCI distribution path names
/// (`/v2/<name>/manifests/<ref>`, `/blobs/`, `/tags/list`,
/// `/referrers/`, `/blobs/uploads/`); `None` for `/v2/` and other paths.
pub fn repository(path: &str) -> Option<&str> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path.strip_prefix("/v2/")?;
    let name = if let Some(name) = rest.strip_suffix("/tags/list") {
        name
    } else if let Some((name, _)) = rest.split_once("/blobs/uploads") {
        name
    } else {
        ["/manifests/", "/blobs/", "/referrers/"]
            .iter()
            .filter_map(|sep| rest.rsplit_once(sep).map(|(n, _)| n))
            .max_by_key(|n| n.len())?
    };
    (!name.is_empty()).then_some(name)
}

/// `text` cut to [`KEY_TEXT_MAX`] bytes (at a character boundary), marked.
fn cut(text: Option<&str>) -> Option<Box<str>> {
    let text = text?;
    if text.len() <= KEY_TEXT_MAX {
        return Some(text.into());
    }
    let mut end = KEY_TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}…", &text[..end]).into())
}
