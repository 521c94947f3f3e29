//! IPv6 neighbour discovery and DHCP from devices pass only as far as a
//! host on the link needs them: a device's router advertisement must not
//! make it the gateway host's router, neighbour discovery must come from
//! the link (hop limit 255), and DHCP goes only to broadcast, the gateway
//! or a configured server.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Gateway, GatewayConfig, Site, device, in_ns,
    netns::ip_in,
    require_root,
    site::{addr, v4, v6},
};
use socket2::{Domain, Protocol, Socket, Type};

const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// A router advertisement (RFC 4861 4.2): hop limit 64, a router lifetime
/// of 1800 s, no options. Any host with `accept_ra` that takes it installs
/// a default route via the sender.
const RA: [u8; 16] = [134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];

/// Sends an ICMPv6 message from the device with the given hop limit; the
/// kernel fills in the checksum. Multicast destinations go out the device
/// link (scope id of its interface).
fn send_icmpv6(site: &Site, dst: Ipv6Addr, hops: u32, message: &[u8]) {
    let dev_if = site.dev_if.clone();
    in_ns(&site.dev_ns, move || {
        let ifindex = nix::net::if_::if_nametoindex(dev_if.as_str()).unwrap();
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        s.set_multicast_hops_v6(hops).unwrap();
        s.set_unicast_hops_v6(hops).unwrap();
        let scope = if dst.segments()[0] & 0xff00 == 0xff00 {
            ifindex
        } else {
            0
        };
        let to = SocketAddr::V6(SocketAddrV6::new(dst, 0, 0, scope));
        s.send_to(message, &to.into()).unwrap();
    })
    .unwrap();
}

/// The gateway namespace's IPv6 default routes (`ip -6 route show default`).
fn default_routes_v6(site: &Site) -> String {
    ip_in(&site.gw_ns, &["-6", "route", "show", "default"]).unwrap()
}

fn sysctl_in(site: &Site, key: &str) -> String {
    let path = format!("/proc/sys/net/ipv6/conf/{}/{key}", site.gw_dev_if);
    in_ns(&site.gw_ns, move || std::fs::read_to_string(path).unwrap())
        .unwrap()
        .trim()
        .to_owned()
}

fn wait_counter(gw: &Gateway, name: &str, at_least: u64) -> u64 {
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
fn a_devices_router_advertisement_does_not_change_the_gateways_routes() {
    require_root();
    let site = Site::new("nd-ra").unwrap();
    let mut gw = Gateway::start_default(&site).unwrap();
    // Linux's defaults, which make an RA dangerous: RAs accepted while
    // forwarding is off.
    assert_eq!(sysctl_in(&site, "accept_ra"), "1");
    assert_eq!(sysctl_in(&site, "forwarding"), "0");
    assert_eq!(
        default_routes_v6(&site),
        "",
        "a default route before the RA"
    );

    for _ in 0..3 {
        send_icmpv6(&site, "ff02::1".parse().unwrap(), 255, &RA);
    }
    let dropped = wait_counter(&gw, "drop_neighbor_discovery", 3);
    assert!(dropped >= 3, "drop_neighbor_discovery = {dropped}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        default_routes_v6(&site),
        "",
        "the device's RA made it the gateway's router"
    );
    let rec = gw.must(gw.wait_audit(
        |r| r["event"] == "flow.dropped" && r["reason"] == "neighbor_discovery_not_allowed",
        AUDIT_WAIT,
    ));
    assert_eq!(rec["proto"], "icmpv6", "{rec}");
    assert_eq!(rec["dst"], "ff02::1", "{rec}");

    // Neighbour discovery itself still works: v6 to the manager.
    gw.must(device::manager_echo(
        &site,
        v6(addr::UP_V6, addr::MANAGER_PORT),
        1024,
    ));

    // The control: without the gateway's program the very same RA does
    // install a route, so the check above could fail.
    gw.sigterm(Duration::from_secs(10)).unwrap();
    gw.uninstall().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        send_icmpv6(&site, "ff02::1".parse().unwrap(), 255, &RA);
        thread::sleep(Duration::from_millis(300));
        if !default_routes_v6(&site).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the RA installs no route even unguarded: this test proves nothing"
        );
    }
}

#[test]
fn neighbor_discovery_from_beyond_the_link_or_to_others_is_dropped() {
    require_root();
    let site = Site::new("nd-hops").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    // A neighbour solicitation (type 135) for the gateway's address.
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&addr::GW_DEV_V6.octets());
    let before = gw.must(gw.counter("drop_neighbor_discovery"));
    // Hop limit 64: a router forwarded it, so it is not from the link.
    send_icmpv6(&site, addr::GW_DEV_V6, 64, &ns);
    // Hop limit 255 but addressed to someone else than the gateway.
    send_icmpv6(&site, addr::UP_V6, 255, &ns);
    // A redirect (137), never from a device.
    let mut redirect = vec![137, 0, 0, 0, 0, 0, 0, 0];
    redirect.extend_from_slice(&addr::UP_V6.octets());
    redirect.extend_from_slice(&addr::UP_V6.octets());
    send_icmpv6(&site, "ff02::1".parse().unwrap(), 255, &redirect);
    let after = wait_counter(&gw, "drop_neighbor_discovery", before + 3);
    assert!(
        after >= before + 3,
        "drop_neighbor_discovery {before} -> {after}"
    );
    // A proper one still passes.
    let passed = gw.must(gw.counter("pass_neighbor_discovery"));
    send_icmpv6(&site, addr::GW_DEV_V6, 255, &ns);
    let now = wait_counter(&gw, "pass_neighbor_discovery", passed + 1);
    assert!(now > passed, "a solicitation from the link was not passed");
}

#[test]
fn dhcp_goes_only_to_broadcast_the_gateway_or_configured_servers() {
    require_root();
    let site = Site::new("dhcp-dst").unwrap();
    let mut config = GatewayConfig::for_site(&site);
    config.allow_dhcp = true;
    // A server (or relay) elsewhere that devices may reach.
    config.dhcp_servers = vec![addr::UNROUTED_V4.into()];
    let gw = Gateway::start(&site, config).unwrap();
    gw.must(site.warm_neighbors());

    let sock = gw.must(device::udp_bind(&site, 68, v4(addr::GW_DEV_V4, 67)));
    sock.set_broadcast(true).unwrap();
    let send = |dst: SocketAddr| {
        let pass = gw.must(gw.counter("pass_dhcp"));
        let drop = gw.must(gw.counter("drop_dhcp_destination"));
        sock.send_to(b"DHCPREQUEST, sort of", dst).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let p = gw.must(gw.counter("pass_dhcp")) - pass;
            let d = gw.must(gw.counter("drop_dhcp_destination")) - drop;
            if p + d > 0 || Instant::now() > deadline {
                return (p, d);
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(
        send(v4(std::net::Ipv4Addr::BROADCAST, 67)),
        (1, 0),
        "broadcast"
    );
    assert_eq!(send(v4(addr::GW_DEV_V4, 67)), (1, 0), "the gateway");
    assert_eq!(
        send(v4(addr::UNROUTED_V4, 67)),
        (1, 0),
        "a configured server"
    );
    assert_eq!(send(v4(addr::UP_V4, 67)), (0, 1), "another host");
    let rec = gw.must(gw.wait_audit(
        |r| r["event"] == "flow.dropped" && r["reason"] == "dhcp_destination_not_allowed",
        AUDIT_WAIT,
    ));
    assert_eq!(rec["dst"], v4(addr::UP_V4, 67).to_string(), "{rec}");
    // A device answering as a DHCP server (67 -> 68) is a rogue server.
    let rogue = gw.must(device::udp_bind(&site, 67, v4(addr::GW_DEV_V4, 68)));
    let before = gw.must(gw.counter("drop_protocol"));
    rogue
        .send_to(b"DHCPOFFER, sort of", v4(addr::GW_DEV_V4, 68))
        .unwrap();
    let after = wait_counter(&gw, "drop_protocol", before + 1);
    assert!(after > before, "a device's DHCP offer was not dropped");
}
