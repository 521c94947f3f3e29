//! The proxy path: flows to the manager pass through byte for byte; other
//! intercepted flows are accepted by the gateway's own listener, keep their
//! original destination, and are denied without reaching anything upstream.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener},
    sync::mpsc,
    time::Duration,
};

use gateway_tests::{
    Gateway, GatewayConfig, Site, audit, device, is_rfc3339, require_root,
    site::{addr, v4, v6},
    tls,
};

const ECHO_LEN: usize = 64 * 1024;
const AUDIT_WAIT: Duration = Duration::from_secs(10);

fn passthrough(name: &str, dst: SocketAddr) {
    require_root();
    let site = Site::new(name).unwrap();
    let gw = Gateway::start_default(&site).unwrap();

    let echo = gw.must(device::manager_echo(&site, dst, ECHO_LEN));
    assert_eq!(
        site.servers.manager.get(),
        1,
        "the manager saw {} connections",
        site.servers.manager.get()
    );

    let rec = gw.must(gw.wait_audit(
        |r| audit::is_flow(r, "flow.passthrough", echo.device, dst),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["proto"], "tcp", "{rec}");
    assert_eq!(rec["service"], "wfm.site.example", "{rec}");
    assert_eq!(rec.get("fault"), None, "{rec}");
    assert_eq!(rec["device"], echo.device.to_string(), "{rec}");
    assert_eq!(rec["dst"], dst.to_string(), "{rec}");
    let up = rec["bytes_up"].as_u64().unwrap_or(0);
    let down = rec["bytes_down"].as_u64().unwrap_or(0);
    assert!(up >= ECHO_LEN as u64, "bytes_up {up} < {ECHO_LEN}: {rec}");
    assert!(
        down >= ECHO_LEN as u64 + 8,
        "bytes_down {down} < {}: {rec}",
        ECHO_LEN + 8
    );
    assert!(rec["duration_ms"].is_u64(), "duration_ms missing: {rec}");
    assert!(
        rec["ts"].as_str().is_some_and(is_rfc3339),
        "ts not RFC 3339: {rec}"
    );
    // The SYN was handed to the listener from the socket map; every later
    // segment (the handshake's ACK, 64 KiB of data, the FIN) was only
    // marked, and the stack delivered it to the accepted connection.
    let listener = gw.must(gw.counter("assign_listener"));
    assert!(listener >= 1, "assign_listener = {listener}");
    let marked = gw.must(gw.counter("mark_segment"));
    assert!(marked >= 3, "mark_segment = {marked}");
}

#[test]
fn passthrough_to_manager_v4() {
    passthrough("pass-v4", v4(addr::UP_V4, addr::MANAGER_PORT));
}

#[test]
fn passthrough_to_manager_v6() {
    passthrough("pass-v6", v6(addr::UP_V6, addr::MANAGER_PORT));
}

/// Several passthrough services: each connection goes to the configured
/// address the device asked for, and its audit record names the service.
#[test]
fn every_passthrough_service_is_spliced_and_named() {
    require_root();
    let site = Site::new("pass-services").unwrap();
    let mut config = GatewayConfig::for_site(&site);
    let mis_v4 = v4(addr::UP_V4, addr::SERVICE_PORTS[0]);
    let mis_v6 = v6(addr::UP_V6, addr::SERVICE_PORTS[0]);
    config.extra_yaml.push_str(&format!(
        "passthrough:\n  - name: \"mis.site.example\"\n    addresses: [\"{mis_v4}\", \"{mis_v6}\"]\n"
    ));
    let gw = Gateway::start(&site, config).unwrap();
    for dst in [mis_v4, mis_v6] {
        let mut stream = gw.must(device::connect_ok(&site, dst));
        let device_addr = stream.local_addr().unwrap();
        let got = gw.must(device::read_until_closed(
            &mut stream,
            Duration::from_secs(5),
        ));
        assert_eq!(got, b"open\n", "{dst}: the service's banner, spliced");
        drop(stream);
        let rec = gw.must(gw.wait_audit(
            |r| audit::is_flow(r, "flow.passthrough", device_addr, dst),
            AUDIT_WAIT,
        ));
        assert_eq!(rec["service"], "mis.site.example", "{rec}");
        assert_eq!(rec["bytes_down"], 5, "{rec}");
    }
    assert_eq!(site.servers.service(addr::SERVICE_PORTS[0]).get(), 2);
    // The manager still passes through beside it, under its own name.
    let dst = v4(addr::UP_V4, addr::MANAGER_PORT);
    let echo = gw.must(device::manager_echo(&site, dst, 1024));
    let rec = gw.must(gw.wait_audit(
        |r| audit::is_flow(r, "flow.passthrough", echo.device, dst),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["service"], "wfm.site.example", "{rec}");
}

/// What a device sends first: a ClientHello naming the manager on 443 (a
/// device trying to steer passthrough elsewhere), an HTTP request on 80.
fn first_bytes(dst: SocketAddr) -> Vec<u8> {
    if dst.port() == 443 {
        tls::client_hello("wfm.site.example")
    } else {
        b"GET / HTTP/1.1\r\nHost: wfm.site.example\r\n\r\n".to_vec()
    }
}

#[test]
fn intercepted_flows_keep_their_original_destination_and_are_denied() {
    require_root();
    let site = Site::new("intercept").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    let targets = [
        v4(addr::UP_V4, 80),
        // Exists upstream, no route from the gateway, and the manager's SNI:
        // it must not be tunnelled to the manager.
        v4(addr::UNROUTED_V4, 443),
        v6(addr::UP_V6, 80),
    ];
    for dst in targets {
        // The handshake completes: the gateway's transparent listener took it.
        let mut stream = gw.must(device::connect_ok(&site, dst));
        let device_addr = stream.local_addr().unwrap();
        // The gateway may already have closed: a failed write is fine.
        let _ = stream.write_all(&first_bytes(dst));
        let got = gw.must(device::read_until_closed(
            &mut stream,
            Duration::from_secs(5),
        ));
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains("manager\n") && !text.contains("open\n"),
            "{dst}: the device got an upstream server's answer: {text:?}"
        );
        let rec = gw.must(gw.wait_audit(
            |r| audit::is_flow(r, "flow.denied", device_addr, dst),
            AUDIT_WAIT,
        ));
        assert_eq!(rec["dst"], dst.to_string(), "{rec}");
        assert_eq!(rec["proto"], "tcp", "{rec}");
    }
    assert_eq!(
        site.servers.tcp_accepts(),
        0,
        "an intercepted flow reached an upstream server"
    );
    let assigned = gw.must(gw.counter("assign_listener"));
    assert!(
        assigned >= targets.len() as u64,
        "assign_listener = {assigned}"
    );
}

/// Flows that load the splice, on one gateway (each start costs seconds in
/// the emulated VMs):
/// - the manager echo, larger than any socket or pipe buffer on the way:
///   every byte arrives in order both ways, and the record counts exactly
///   what moved (the 8-byte banner included on the way down);
/// - a device that sends its whole request and its end at once, before
///   the manager has answered: all of it is delivered, then the end, and
///   the answer comes back;
/// - a manager that stops reading stops the device: the splice holds only
///   what the sockets' and its pipe's buffers hold (no queue that grows
///   without bound for a device to fill), and once the manager reads again
///   it gets every byte the device wrote, in order, and the end.
#[test]
fn large_early_and_stalled_flows_keep_every_byte() {
    require_root();
    const ECHO_BIG: usize = 16 << 20;
    const SINK_PORT: u16 = 9100;
    let site = Site::new("pass-load").unwrap();
    let sink = v4(addr::UP_V4, SINK_PORT);
    let mut config = GatewayConfig::for_site(&site);
    config.extra_yaml.push_str(&format!(
        "passthrough:\n  - name: \"sink.site.example\"\n    addresses: [\"{sink}\"]\n"
    ));
    let listener = gateway_tests::netns::in_ns(&site.up_ns, || TcpListener::bind(sink))
        .unwrap()
        .unwrap();
    let gw = Gateway::start(&site, config).unwrap();
    let manager = v4(addr::UP_V4, addr::MANAGER_PORT);

    // 1. The large echo.
    let echo = gw.must(device::manager_echo(&site, manager, ECHO_BIG));
    let rec = gw.must(gw.wait_audit(
        |r| audit::is_flow(r, "flow.passthrough", echo.device, manager),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["bytes_up"], ECHO_BIG as u64, "large echo: {rec}");
    assert_eq!(rec["bytes_down"], ECHO_BIG as u64 + 8, "large echo: {rec}");
    assert_eq!(rec.get("fault"), None, "large echo: {rec}");

    // 2. A request and its end at once.
    let data = device::random_bytes(1 << 20);
    let mut stream = gw.must(device::connect_ok(&site, manager));
    let device_addr = stream.local_addr().unwrap();
    stream.write_all(&data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let got = gw.must(device::read_until_closed(
        &mut stream,
        Duration::from_secs(10),
    ));
    assert_eq!(got.len(), data.len() + 8, "at once: banner and echo");
    assert_eq!(&got[..8], b"manager\n");
    assert!(
        got[8..] == data[..],
        "at once: the echo differs from what was sent"
    );
    let rec = gw.must(gw.wait_audit(
        |r| audit::is_flow(r, "flow.passthrough", device_addr, manager),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["bytes_up"], data.len() as u64, "at once: {rec}");

    // 3. The stalled manager.
    stalled_manager_stops_the_device(&site, &gw, listener, sink);
}

fn stalled_manager_stops_the_device(
    site: &Site,
    gw: &Gateway,
    listener: TcpListener,
    sink: SocketAddr,
) {
    /// Far above what the buffers on the way hold (a few MiB each at the
    /// kernel's defaults), far below what an unbounded queue takes in.
    const BOUND: usize = 64 << 20;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || -> Vec<u8> {
        let (mut s, _) = listener.accept().unwrap();
        // Reads nothing until the device is stuck.
        go_rx.recv().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut stream = gw.must(device::connect_ok(site, sink));
    let device_addr = stream.local_addr().unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let chunk = device::random_bytes(1 << 20);
    let mut sent: Vec<u8> = Vec::new();
    loop {
        match stream.write(&chunk) {
            Ok(n) => sent.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("writing to the stalled manager: {e}"),
        }
        assert!(
            sent.len() <= BOUND,
            "the device wrote {} MiB to a manager that reads nothing",
            sent.len() >> 20
        );
    }
    assert!(sent.len() >= 64 << 10, "only {} bytes taken", sent.len());
    go_tx.send(()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let got = reader.join().unwrap();
    assert_eq!(
        got.len(),
        sent.len(),
        "bytes the manager got, of those sent"
    );
    assert!(got == sent, "the manager's bytes differ from the device's");
    let rec = gw.must(gw.wait_audit(
        |r| audit::is_flow(r, "flow.passthrough", device_addr, sink),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["bytes_up"], sent.len() as u64, "stalled: {rec}");
}
