//! Spoofing: packets from sources outside the devices' prefixes (default:
//! the device interfaces' own subnets) are dropped, and a segment claiming
//! to come from a passthrough service's address is let in only if it
//! belongs to a connection of the gateway's.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Gateway, GatewayConfig, Site, dns, in_ns,
    netns::ip_in,
    require_root,
    site::{addr, v4, v6},
};
use socket2::{Domain, Protocol, Socket, Type};

const AUDIT_WAIT: Duration = Duration::from_secs(10);
const SPOOF_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const SPOOF_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);

/// Gives the device a second address outside the site's device subnet,
/// as a device forging its source would use.
fn add_foreign_addresses(site: &Site) {
    ip_in(
        &site.dev_ns,
        &[
            "addr",
            "add",
            &format!("{SPOOF_V4}/32"),
            "dev",
            &site.dev_if,
        ],
    )
    .unwrap();
    ip_in(
        &site.dev_ns,
        &[
            "addr",
            "add",
            &format!("{SPOOF_V6}/128"),
            "dev",
            &site.dev_if,
            "nodad",
        ],
    )
    .unwrap();
}

/// A TCP connect from `src` to `dst` in the device namespace: whether it
/// came up within 2 s.
fn connects_from(site: &Site, src: IpAddr, dst: SocketAddr) -> bool {
    in_ns(&site.dev_ns, move || {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect_timeout(&dst.into(), Duration::from_secs(2))
            .is_ok()
    })
    .unwrap()
}

fn dns_from(site: &Site, src: IpAddr, server: SocketAddr) -> Option<Vec<u8>> {
    in_ns(&site.dev_ns, move || {
        let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&dns::query_bytes(5, "wfm.site.example", 1), server)
            .unwrap();
        let mut buf = [0u8; 512];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    })
    .unwrap()
}

fn counter_after(gw: &Gateway, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = gw.must(gw.counter(name));
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sources_outside_the_device_subnets_are_dropped() {
    require_root();
    let site = Site::new("src-spoof").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    add_foreign_addresses(&site);
    gw.must(site.warm_neighbors());
    let manager = v4(addr::UP_V4, addr::MANAGER_PORT);
    // The device's own address works...
    assert!(connects_from(&site, addr::DEV_V4.into(), manager));
    let deadline = Instant::now() + Duration::from_secs(5);
    while site.servers.manager.get() < 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        site.servers.manager.get(),
        1,
        "the real device never reached the manager"
    );
    // ...a forged one does not, for TCP or for DNS, v4 or v6.
    assert!(!connects_from(&site, SPOOF_V4.into(), manager));
    assert!(!connects_from(
        &site,
        SPOOF_V6.into(),
        v6(addr::UP_V6, addr::MANAGER_PORT)
    ));
    assert!(dns_from(&site, SPOOF_V4.into(), v4(addr::UP_V4, 53)).is_none());
    assert!(dns_from(&site, SPOOF_V6.into(), v6(addr::UP_V6, 53)).is_none());
    assert_eq!(
        site.servers.manager.get(),
        1,
        "a forged source reached the manager"
    );
    let dropped = counter_after(&gw, "drop_source_not_allowed", 4);
    assert!(dropped >= 4, "drop_source_not_allowed = {dropped}");
    let rec = gw.must(gw.wait_audit(
        |r| {
            r["event"] == "flow.dropped"
                && r["reason"] == "source_not_allowed"
                && r["device"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(&SPOOF_V4.to_string()))
        },
        AUDIT_WAIT,
    ));
    assert_eq!(rec["dst"], manager.to_string(), "{rec}");
    // The real address still resolves names.
    assert!(dns_from(&site, addr::DEV_V4.into(), v4(addr::UP_V4, 53)).is_some());
}

#[test]
fn configured_prefixes_replace_the_interface_subnets() {
    require_root();
    let site = Site::new("src-prefix").unwrap();
    let config = GatewayConfig::for_site(&site);
    let yaml = config.to_yaml().replace(
        "  allow_dhcp: false\n",
        &format!("  allow_dhcp: false\n  prefixes: [\"{SPOOF_V4}/24\"]\n"),
    );
    let mut gw = Gateway::prepare(&site, config).unwrap();
    std::fs::write(gw.config_path(), yaml).unwrap();
    gw.restart().unwrap();
    add_foreign_addresses(&site);
    // Answers to the other prefix go back over the device link.
    ip_in(
        &site.gw_ns,
        &[
            "route",
            "add",
            &format!("{SPOOF_V4}/32"),
            "dev",
            &site.gw_dev_if,
        ],
    )
    .unwrap();
    gw.must(site.warm_neighbors());
    assert!(dns_from(&site, SPOOF_V4.into(), v4(addr::UP_V4, 53)).is_some());
    assert!(dns_from(&site, addr::DEV_V4.into(), v4(addr::UP_V4, 53)).is_none());
}

/// A TCP header (no options) with only ACK set; the checksum is left zero:
/// the kernel program judges packets before any checksum is verified.
fn ack_segment(sport: u16, dport: u16) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes());
    h[8..12].copy_from_slice(&1u32.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x10;
    h[14..16].copy_from_slice(&1024u16.to_be_bytes());
    h
}

#[test]
fn segments_from_a_passthrough_address_need_a_connection_of_the_gateways() {
    require_root();
    let site = Site::new("src-manager").unwrap();
    let mut config = GatewayConfig::for_site(&site);
    // A passthrough service that sits on the device link itself.
    let service = v4(addr::DEV_V4, 7000);
    config.extra_yaml.push_str(&format!(
        "passthrough:\n  - name: \"local.site.example\"\n    addresses: [\"{service}\"]\n"
    ));
    let gw = Gateway::start(&site, config).unwrap();
    gw.must(site.warm_neighbors());
    let before = gw.must(gw.counter("drop_source_not_allowed"));
    let marked = gw.must(gw.counter("mark_segment"));
    // The device claims to be that service answering some connection of
    // the gateway's that does not exist.
    in_ns(&site.dev_ns, || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).unwrap();
        s.bind(&SocketAddr::new(addr::DEV_V4.into(), 0).into())
            .unwrap();
        let to = SocketAddr::new(addr::GW_DEV_V4.into(), 0);
        for dport in [40000u16, 40001, 40002] {
            s.send_to(&ack_segment(service.port(), dport), &to.into())
                .unwrap();
        }
    })
    .unwrap();
    let after = counter_after(&gw, "drop_source_not_allowed", before + 3);
    assert!(
        after >= before + 3,
        "drop_source_not_allowed {before} -> {after}"
    );
    assert_eq!(
        gw.must(gw.counter("mark_segment")),
        marked,
        "a forged segment was marked for local delivery"
    );
}
