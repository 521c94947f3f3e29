//! ICMP errors from the device side: path-MTU discovery works for the
//! gateway's own connections (a device's "fragmentation needed" or "packet
//! too big" about a segment the gateway sent reaches the gateway's stack
//! and lowers the path MTU), while errors about anything else, and ICMP
//! that is no error, die at the gateway's ingress.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Gateway, Site, device,
    netns::{in_ns, ip},
    require_root,
    site::{addr, v4, v6},
};
use socket2::{Domain, Protocol, Socket, Type};

const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_RECV_QUEUE: libc::c_int = 1;

/// The next sequence number the device expects from the gateway on
/// `stream` (its `rcv_nxt`): what a genuine error about the gateway's
/// next segment quotes, and what the stack's window check accepts. Read
/// through TCP repair mode, then left again.
fn rcv_nxt(stream: &std::net::TcpStream) -> u32 {
    let fd = stream.as_raw_fd();
    let set = |opt: libc::c_int, val: libc::c_int| {
        // SAFETY: a valid socket and a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                std::ptr::from_ref(&val).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            r,
            0,
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        );
    };
    set(TCP_REPAIR, 1);
    set(TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    let mut seq: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: `seq` and `len` outlive the call and match the option's size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_QUEUE_SEQ,
            std::ptr::from_mut(&mut seq).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
    set(TCP_REPAIR, 0);
    seq
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The first 8 bytes of a TCP header: ports and sequence number.
fn tcp_quote(from: SocketAddr, to: SocketAddr, seq: u32) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&from.port().to_be_bytes());
    t.extend_from_slice(&to.port().to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t
}

/// An ICMP error (`kind`: type, code) about a segment `from` → `to`
/// (addresses of one family), with `mtu` in the MTU field, sent from the
/// device to `to_addr`: raw, so the device's kernel adds only the outer
/// IP header.
fn send_icmp_error(
    site: &Site,
    kind: (u8, u8),
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    mtu: u32,
) {
    send_icmp_error_cut(site, kind, from, to, seq, mtu, usize::MAX);
}

/// [`send_icmp_error`] with the message cut to `len` bytes.
fn send_icmp_error_cut(
    site: &Site,
    kind: (u8, u8),
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    mtu: u32,
    len: usize,
) {
    let quote = tcp_quote(from, to, seq);
    let (domain, proto, msg) = match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut inner = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
            inner.extend_from_slice(&src.octets());
            inner.extend_from_slice(&dst.octets());
            let sum = checksum(&inner);
            inner[10..12].copy_from_slice(&sum.to_be_bytes());
            inner.extend_from_slice(&quote);
            let mut msg = vec![kind.0, kind.1, 0, 0, 0, 0];
            msg.extend_from_slice(&u16::try_from(mtu).unwrap().to_be_bytes());
            msg.extend_from_slice(&inner);
            let sum = checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
            (Domain::IPV4, Protocol::ICMPV4, msg)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut inner = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
            inner.extend_from_slice(&src.octets());
            inner.extend_from_slice(&dst.octets());
            inner.extend_from_slice(&quote);
            // The kernel fills in an ICMPv6 raw socket's checksum.
            let mut msg = vec![kind.0, kind.1, 0, 0];
            msg.extend_from_slice(&mtu.to_be_bytes());
            msg.extend_from_slice(&inner);
            (Domain::IPV6, Protocol::ICMPV6, msg)
        }
        _ => panic!("one family"),
    };
    let msg = &msg[..msg.len().min(len)];
    // The outer destination: the address the device believes it talks to.
    let dst = SocketAddr::new(from.ip(), 0);
    in_ns(&site.dev_ns, || {
        let sock = Socket::new(domain, Type::RAW, Some(proto)).unwrap();
        sock.send_to(msg, &dst.into()).unwrap();
    })
    .unwrap();
}

/// `ip route get` of the device's address in the gateway namespace, until
/// it names `mtu` or `wait` passes.
fn route_mtu(site: &Site, device: IpAddr, mtu: u32, wait: Duration) -> String {
    let family = if device.is_ipv4() { "-4" } else { "-6" };
    let deadline = Instant::now() + wait;
    loop {
        let out = ip(&[
            "-n",
            &site.gw_ns,
            family,
            "route",
            "get",
            &device.to_string(),
        ])
        .unwrap();
        if out.contains(&format!("mtu {mtu}")) || Instant::now() > deadline {
            return out;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (5 s at most) for a kernel counter to reach `at_least`.
fn wait_counter(gw: &Gateway, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = gw.must(gw.counter(name));
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {n}, expected at least {at_least}\n{}",
            gw.diagnostics()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn path_mtu_discovery_works_for_the_gateways_connections(manager: SocketAddr) {
    require_root();
    let site = Site::new("icmp-pmtu").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    gw.must(site.warm_neighbors());
    let (kind, mtu) = if manager.is_ipv4() {
        ((3, 4), 1280) // destination unreachable, fragmentation needed
    } else {
        ((2, 0), 1280) // packet too big
    };

    // A device's connection to the manager, held by the gateway (its
    // socket on the device side answers from the manager's address).
    let mut stream = gw.must(device::connect_ok(&site, manager));
    let device_addr = stream.local_addr().unwrap();
    // The manager greets first; once the greeting is read, nothing more
    // is in flight and the gateway's next sequence number is ours to quote.
    let mut greeting = [0u8; 8];
    std::io::Read::read_exact(&mut stream, &mut greeting).unwrap();
    assert_eq!(&greeting, b"manager\n");
    let seq = rcv_nxt(&stream);
    let before = route_mtu(&site, device_addr.ip(), mtu, Duration::ZERO);
    assert!(
        !before.contains(&format!("mtu {mtu}")),
        "the path MTU is already {mtu}: {before}"
    );

    // An error quoting a segment from a port the gateway does not hold
    // (a plain service's): dropped at ingress.
    let passed = gw.must(gw.counter("pass_icmp_error"));
    let dropped = gw.must(gw.counter("drop_protocol"));
    let service = SocketAddr::new(manager.ip(), addr::SERVICE_PORTS[0]);
    send_icmp_error(&site, kind, service, device_addr, seq, mtu);
    // And ICMP that is no error (an echo request).
    let echo = if manager.is_ipv4() { (8, 0) } else { (128, 0) };
    send_icmp_error(&site, echo, manager, device_addr, seq, 0);
    wait_counter(&gw, "drop_protocol", dropped + 2);
    assert_eq!(gw.must(gw.counter("pass_icmp_error")), passed);
    // An error whose quote is cut before the quoted addresses: malformed.
    let malformed = gw.must(gw.counter("drop_malformed"));
    send_icmp_error_cut(&site, kind, manager, device_addr, seq, mtu, 8 + 10);
    wait_counter(&gw, "drop_malformed", malformed + 1);
    assert_eq!(gw.must(gw.counter("pass_icmp_error")), passed);

    // The genuine error about the gateway's own connection passes, and
    // the gateway's stack lowers the path MTU to the device.
    send_icmp_error(&site, kind, manager, device_addr, seq, mtu);
    wait_counter(&gw, "pass_icmp_error", passed + 1);
    let after = route_mtu(&site, device_addr.ip(), mtu, Duration::from_secs(5));
    assert!(
        after.contains(&format!("mtu {mtu}")),
        "the gateway's path MTU to the device did not change: {after}\n{}",
        gw.diagnostics()
    );
    drop(stream);
}

#[test]
fn fragmentation_needed_reaches_the_gateways_own_connection_v4() {
    path_mtu_discovery_works_for_the_gateways_connections(v4(addr::UP_V4, addr::MANAGER_PORT));
}

#[test]
fn packet_too_big_reaches_the_gateways_own_connection_v6() {
    path_mtu_discovery_works_for_the_gateways_connections(v6(addr::UP_V6, addr::MANAGER_PORT));
}
