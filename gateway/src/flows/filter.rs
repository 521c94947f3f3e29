//! The time window (`--since`, `--until`) and device prefixes
//! (`--device`) a report is limited to.

use std::net::IpAddr;

use thiserror::Error;
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use super::FlowsArgs;

#[derive(Debug, Error)]
pub enum FilterError {
    #[error(
        "{flag} {value:?} is neither a duration back from now (1h, 30min, 2days) nor an RFC 3339 time (2026-11-30T06:00:00Z)"
    )]
    When { flag: &'static str, value: String },
    #[error("--device {value:?} is not a prefix (10.0.3.0/24, fd00:3::/64) or an address")]
    Device { value: String },
    #[error("--since ({since}) is not before --until ({until}): the window is empty")]
    EmptyWindow { since: String, until: String },
}

/// What records a report keeps.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Inclusive.
    pub since: Option<OffsetDateTime>,
    /// Exclusive.
    pub until: Option<OffsetDateTime>,
    /// Network addresses (host bits cleared) and lengths; empty: all.
    pub prefixes: Vec<(IpAddr, u8)>,
}

impl Filter {
    pub fn from_args(args: &FlowsArgs, now: OffsetDateTime) -> Result<Self, FilterError> {
        let since = args
            .since
            .as_deref()
            .map(|v| parse_when("--since", v, now))
            .transpose()?;
        let until = args
            .until
            .as_deref()
            .map(|v| parse_when("--until", v, now))
            .transpose()?;
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            return Err(FilterError::EmptyWindow {
                since: super::json::ts(s),
                until: super::json::ts(u),
            });
        }
        let prefixes = args
            .devices
            .iter()
            .map(|d| parse_cidr(d).ok_or_else(|| FilterError::Device { value: d.clone() }))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            since,
            until,
            prefixes,
        })
    }

    pub fn in_window(&self, ts: OffsetDateTime) -> bool {
        self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts < u)
    }

    pub fn wants_device(&self, ip: IpAddr) -> bool {
        self.prefixes.is_empty()
            || self
                .prefixes
                .iter()
                .any(|&(net, len)| contains(net, len, ip))
    }
}

/// `1h` (back from `now`) or an RFC 3339 time.
pub fn parse_when(
    flag: &'static str,
    value: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, FilterError> {
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(t);
    }
    let err = || FilterError::When {
        flag,
        value: value.to_owned(),
    };
    let d = humantime::parse_duration(value).map_err(|_| err())?;
    let d = Duration::try_from(d).map_err(|_| err())?;
    now.checked_sub(d).ok_or_else(err)
}

/// `ip/len` or a bare address (a prefix of one), host bits cleared.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match crate::config::parse_prefix(text) {
        Some(p) => p,
        None => {
            let ip: IpAddr = text.parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let canonical = ip.to_canonical();
    // `::ffff:10.0.0.0/104` means an IPv4 prefix; devices are recorded
    // in their canonical (IPv4) form.
    let len = if ip.is_ipv6() && canonical.is_ipv4() {
        len.saturating_sub(96)
    } else {
        len
    };
    let ip = canonical;
    Some((mask(ip, len), len))
}

fn contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    match (net, ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, len) == net,
        _ => false,
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}
