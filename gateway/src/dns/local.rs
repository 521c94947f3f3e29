//! The gateway's own addresses on its device interfaces, which site hosts
//! resolve to: a device then connects to the gateway itself.
//!
//! Read with `getifaddrs` and kept for a few seconds, so that a burst of
//! queries costs one netlink dump, and a renumbered interface is seen
//! quickly.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{ifaddrs::getifaddrs, net::if_::if_nametoindex};

use super::answer::LocalAddrs;

/// How long a reading of the interfaces' addresses is used.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// One address of a device interface, with its prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IfAddr {
    ifindex: u32,
    ip: IpAddr,
    prefix: u8,
}

pub struct Interfaces {
    names: Vec<String>,
    /// Shared, not copied, by each query that reads it.
    cache: Mutex<Option<(Instant, Arc<Vec<IfAddr>>)>>,
}

impl Interfaces {
    pub fn new(names: &[String]) -> Self {
        Self {
            names: names.to_vec(),
            cache: Mutex::new(None),
        }
    }

    /// The addresses to answer with for a device at `device` whose query
    /// came in on `ifindex` (when known, for UDP): that interface's if it
    /// is a device interface, else the one whose subnet holds the device,
    /// else those of every device interface.
    pub fn for_device(&self, ifindex: Option<u32>, device: IpAddr) -> LocalAddrs {
        let all = self.read();
        select(&all, ifindex, device.to_canonical())
    }

    fn read(&self) -> Arc<Vec<IfAddr>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, addrs)) = cache.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return addrs.clone();
        }
        let addrs = Arc::new(read_interfaces(&self.names));
        *cache = Some((Instant::now(), addrs.clone()));
        addrs
    }
}

fn select(all: &[IfAddr], ifindex: Option<u32>, device: IpAddr) -> LocalAddrs {
    let chosen: Option<u32> = ifindex
        .filter(|i| all.iter().any(|a| a.ifindex == *i))
        .or_else(|| {
            all.iter()
                .find(|a| same_subnet(a.ip, device, a.prefix))
                .map(|a| a.ifindex)
        });
    let mut out = LocalAddrs::default();
    for a in all.iter().filter(|a| chosen.is_none_or(|i| a.ifindex == i)) {
        match a.ip {
            IpAddr::V4(v4) if !out.v4.contains(&v4) => out.v4.push(v4),
            // A link-local address is useless without the interface's
            // scope, which an AAAA record cannot carry.
            IpAddr::V6(v6) if !is_link_local(v6) && !out.v6.contains(&v6) => out.v6.push(v6),
            _ => {}
        }
    }
    out
}

/// Every address of the interfaces `names` (the kernel program's `LOCAL`
/// table needs the gateway's own addresses too).
pub fn addresses(names: &[String]) -> Vec<IpAddr> {
    read_interfaces(names).into_iter().map(|a| a.ip).collect()
}

/// The subnets of the interfaces `names` (network address, prefix
/// length): the default of the prefixes devices may send from.
pub fn subnets(names: &[String]) -> Vec<(IpAddr, u8)> {
    let mut out: Vec<(IpAddr, u8)> = Vec::new();
    for a in read_interfaces(names) {
        let net = network(a.ip, a.prefix);
        if !out.contains(&(net, a.prefix)) {
            out.push((net, a.prefix));
        }
    }
    out
}

/// `ip` with the bits past `prefix` cleared.
pub fn network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

fn read_interfaces(names: &[String]) -> Vec<IfAddr> {
    let addrs = match getifaddrs() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the device interfaces' addresses");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for ifa in addrs {
        if !names.contains(&ifa.interface_name) {
            continue;
        }
        let Ok(ifindex) = if_nametoindex(ifa.interface_name.as_str()) else {
            continue;
        };
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            out.push(IfAddr {
                ifindex,
                ip: IpAddr::V4(a.ip()),
                prefix: u32::from(m.ip()).count_ones() as u8,
            });
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            out.push(IfAddr {
                ifindex,
                ip: IpAddr::V6(a.ip()),
                prefix: u128::from(m.ip()).count_ones() as u8,
            });
        }
    }
    out
}

fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn is_link_local(v6: Ipv6Addr) -> bool {
    v6.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn addrs() -> Vec<IfAddr> {
        let a = |ifindex, ip: &str, prefix| IfAddr {
            ifindex,
            ip: ip.parse().expect("ip"),
            prefix,
        };
        vec![
            a(3, "10.77.1.1", 24),
            a(3, "fd77:1::1", 64),
            a(3, "fe80::1", 64),
            a(4, "10.88.0.1", 16),
        ]
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("v4")
    }

    #[test]
    fn the_query_interface_wins_then_the_devices_subnet_then_all() {
        let all = addrs();
        let dev: IpAddr = "10.88.3.4".parse().expect("ip");
        // The interface the query came in on, whatever the device's address.
        let got = select(&all, Some(3), dev);
        assert_eq!(got.v4, [v4("10.77.1.1")]);
        assert_eq!(got.v6, ["fd77:1::1".parse::<Ipv6Addr>().expect("v6")]);
        // Unknown interface (TCP): the subnet that holds the device.
        assert_eq!(select(&all, None, dev).v4, [v4("10.88.0.1")]);
        assert_eq!(select(&all, Some(99), dev).v4, [v4("10.88.0.1")]);
        // A routed device: every device interface's addresses.
        let far: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(
            select(&all, None, far).v4,
            [v4("10.77.1.1"), v4("10.88.0.1")]
        );
    }

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(network(ip("10.77.1.2"), 24), ip("10.77.1.0"));
        assert_eq!(network(ip("10.77.1.2"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("fd77:1::2"), 64), ip("fd77:1::"));
        assert_eq!(network(ip("fe80::1:2:3:4"), 64), ip("fe80::"));
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(same_subnet(ip("10.77.1.1"), ip("10.77.1.200"), 24));
        assert!(!same_subnet(ip("10.77.1.1"), ip("10.77.2.1"), 24));
        assert!(same_subnet(ip("10.77.1.1"), ip("192.0.2.1"), 0));
        assert!(same_subnet(ip("fd77:1::1"), ip("fd77:1::2"), 64));
        assert!(!same_subnet(ip("fd77:1::1"), ip("fd77:2::1"), 64));
        assert!(!same_subnet(ip("10.77.1.1"), ip("fd77:1::1"), 0));
    }

    #[test]
    fn reads_real_interfaces_without_panicking() {
        // `lo` exists everywhere; its address is 127.0.0.1/8.
        let got = read_interfaces(&["lo".to_owned()]);
        assert!(
            got.iter().all(|a| a.ip.is_loopback()),
            "only lo's addresses: {got:?}"
        );
    }
}
