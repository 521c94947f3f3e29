//! The kernel's drops: TCP to ports that are not intercepted and every UDP
//! datagram die at the gateway's ingress, silently for the device, counted
//! and audited (at most once per flow per interval).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Gateway, GatewayConfig, Site, audit, device, require_root,
    site::{addr, v4, v6},
};
use serde_json::Value;

const AUDIT_WAIT: Duration = Duration::from_secs(10);

#[test]
fn tcp_to_ports_not_intercepted_times_out() {
    require_root();
    let site = Site::new("drop-tcp").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    gw.must(site.warm_neighbors());
    let targets = [
        v4(addr::UP_V4, 8080),
        v4(addr::UP_V4, 22),
        v6(addr::UP_V6, 8080),
    ];
    let mut attempts = Vec::new();
    for dst in targets {
        let dropped = gw.must(device::expect_connect_timeout(&site, dst));
        assert!(
            dropped.took < Duration::from_secs(3),
            "{dst}: timing out took {:?}",
            dropped.took
        );
        attempts.push((dropped.device, dst));
    }
    assert_eq!(
        site.servers.service_8080.get(),
        0,
        "8080 accepted a connection"
    );
    assert_eq!(site.servers.service_22.get(), 0, "22 accepted a connection");
    for (device_addr, dst) in attempts {
        let rec = gw.must(gw.wait_audit(
            |r| audit::is_flow(r, "flow.dropped", device_addr, dst),
            AUDIT_WAIT,
        ));
        assert_eq!(rec["reason"], "port_not_intercepted", "{rec}");
        assert_eq!(rec["proto"], "tcp", "{rec}");
        // The SYN and at least its first retransmission.
        assert!(rec["packets"].as_u64().unwrap_or(0) >= 1, "{rec}");
        assert!(
            rec["ts"].as_str().is_some_and(gateway_tests::is_rfc3339),
            "{rec}"
        );
    }
    let n = gw.must(gw.counter("drop_not_intercepted"));
    assert!(n > 0, "drop_not_intercepted = {n}");
}

#[test]
fn udp_gets_no_reply_and_is_audited() {
    require_root();
    let site = Site::new("drop-udp").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    for dst in [
        v4(addr::UP_V4, addr::UDP_ECHO_PORT),
        v6(addr::UP_V6, addr::UDP_ECHO_PORT),
    ] {
        let sock = gw.must(device::udp_socket(&site, 0, dst));
        let device_addr = sock.local_addr().unwrap();
        sock.send(b"is anyone there?").unwrap();
        let reply = gw.must(device::udp_reply(&sock, Duration::from_secs(1)));
        assert!(reply.is_none(), "{dst} answered: {reply:?}");
        let rec = gw.must(gw.wait_audit(
            |r| audit::is_flow(r, "flow.dropped", device_addr, dst),
            AUDIT_WAIT,
        ));
        assert_eq!(rec["reason"], "protocol_not_allowed", "{rec}");
        assert_eq!(rec["proto"], "udp", "{rec}");
        assert!(rec["packets"].as_u64().unwrap_or(0) >= 1, "{rec}");
    }
    assert_eq!(
        site.servers.udp_echo.get(),
        0,
        "the udp echo received a datagram"
    );
    let n = gw.must(gw.counter("drop_protocol"));
    assert!(n > 0, "drop_protocol = {n}");
}

#[test]
fn a_udp_flood_is_aggregated_in_the_audit() {
    require_root();
    const SENT: u64 = 500;
    let site = Site::new("drop-flood").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    // Resolve the gateway first: the neighbour queue would drop most of a
    // burst sent while resolution is pending.
    gw.must(site.warm_neighbors());
    let dst = v4(addr::UP_V4, addr::UDP_ECHO_PORT);
    let sock = gw.must(device::udp_socket(&site, 0, dst));
    let device_addr = sock.local_addr().unwrap();
    for i in 0..SENT {
        sock.send(&i.to_be_bytes()).unwrap();
    }
    let flow = |records: &[Value]| -> (usize, u64) {
        let recs: Vec<&Value> = records
            .iter()
            .filter(|r| audit::is_flow(r, "flow.dropped", device_addr, dst))
            .collect();
        (recs.len(), audit::packets(&recs))
    };
    gw.must(gw.wait_audit_all(|rs| flow(rs).1 >= SENT - 10, Duration::from_secs(15)));
    // Let any late flush land before counting records.
    thread::sleep(Duration::from_millis(2500));
    let (records, packets) = flow(&gw.must(gw.audit()));
    assert!(
        records <= 5,
        "{records} drop records for one flow of {SENT} datagrams\n{}",
        gw.diagnostics()
    );
    assert!(
        (SENT - 10..=SENT).contains(&packets),
        "packets sum {packets}, sent {SENT}\n{}",
        gw.diagnostics()
    );
    let n = gw.must(gw.counter("drop_protocol"));
    assert!(n >= SENT, "drop_protocol = {n} < {SENT}");
    assert_eq!(site.servers.udp_echo.get(), 0);
}

/// Flow records of their own past the burst: the gateway's budget
/// (`gateway/src/ebpf/budget.rs`: 200 at once, then 20 per second).
const RECORD_BURST: f64 = 200.0;
const RECORDS_PER_SEC: f64 = 20.0;

#[test]
fn a_flood_of_distinct_flows_is_budgeted_and_summarised() {
    require_root();
    // Every datagram to another port: each one a flow of its own.
    const SENT: u64 = 1500;
    let site = Site::new("drop-budget").unwrap();
    let mut gw = Gateway::start_default(&site).unwrap();
    gw.must(site.warm_neighbors());
    let first = v4(addr::UP_V4, 20000);
    let sock = gw.must(device::udp_bind(&site, 0, first));
    let device_ip = sock.local_addr().unwrap().ip().to_string();
    let started = Instant::now();
    for i in 0..SENT {
        let dst = v4(addr::UP_V4, 20000 + u16::try_from(i).unwrap());
        sock.send_to(b"x", dst).unwrap();
    }
    // SIGTERM flushes what is held, summaries included.
    let stopped = gw.sigterm(Duration::from_secs(20));
    let status = gw.must(stopped);
    let elapsed = started.elapsed().as_secs_f64();
    assert!(status.success(), "gateway exited with {status}");
    let records = gw.must(gw.audit());
    let from_device: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "flow.dropped")
        .filter(|r| {
            r["device"]
                .as_str()
                .is_some_and(|d| d == device_ip || d.starts_with(&format!("{device_ip}:")))
        })
        .collect();
    let (own, summaries): (Vec<&Value>, Vec<&Value>) = from_device
        .iter()
        .partition(|r| r["device"].as_str() != Some(device_ip.as_str()));
    let budget = RECORD_BURST + RECORDS_PER_SEC * elapsed;
    assert!(
        (own.len() as f64) <= budget,
        "{} records of their own in {elapsed:.1} s, budget {budget:.0}\n{}",
        own.len(),
        gw.diagnostics()
    );
    assert!(
        !summaries.is_empty() && summaries.iter().all(|r| r["suppressed"].as_u64() > Some(0)),
        "no summary of the flows left out: {summaries:?}"
    );
    // Exact accounting: every flow and every packet is in some record.
    // Only the flood's reason: the warm-up's retransmitted TCP SYN may
    // land in a summary of its own reason.
    let summaries: Vec<&Value> = summaries
        .into_iter()
        .filter(|r| r["reason"] == "protocol_not_allowed")
        .collect();
    let suppressed: u64 = summaries
        .iter()
        .filter_map(|r| r["suppressed"].as_u64())
        .sum();
    let lost = gw.must(gw.counter("events_lost"));
    assert_eq!(
        lost, 0,
        "the kernel lost events: the accounting below would be short"
    );
    // What else the device sent before the flood (neighbour warm-up) came
    // first, within the burst, so it has records of its own.
    let flood: Vec<&Value> = own
        .iter()
        .copied()
        .filter(|r| {
            r["dst"].as_str().is_some_and(|d| {
                d.parse::<std::net::SocketAddr>().is_ok_and(|a| {
                    a.ip() == first.ip()
                        && (first.port()..first.port() + SENT as u16).contains(&a.port())
                })
            })
        })
        .collect();
    assert_eq!(
        flood.len() as u64 + suppressed,
        SENT,
        "flows accounted for; summaries: {summaries:?}; others: {:?}",
        own.iter()
            .filter(|r| !flood.contains(r))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        audit::packets(&flood) + audit::packets(&summaries),
        SENT,
        "packets accounted for"
    );
}

/// Sends `n` DHCP-like datagrams from the device's port 68 to the
/// gateway's 67 and returns the counter deltas (pass_dhcp, drop_protocol)
/// once one of them moved by `n`.
fn dhcp_deltas(site: &Site, gw: &Gateway, n: u64) -> (u64, u64) {
    let dst = v4(addr::GW_DEV_V4, 67);
    let counters = || {
        (
            gw.must(gw.counter("pass_dhcp")),
            gw.must(gw.counter("drop_protocol")),
        )
    };
    let before = counters();
    let sock = gw.must(device::udp_bind(site, 68, dst));
    for _ in 0..n {
        sock.send_to(b"DHCPDISCOVER, sort of", dst).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = counters();
        let delta = (now.0 - before.0, now.1 - before.1);
        if delta.0 >= n || delta.1 >= n || Instant::now() > deadline {
            return delta;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dhcp_is_dropped_by_default() {
    require_root();
    let site = Site::new("dhcp-off").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    gw.must(site.warm_neighbors());
    let (pass, drop) = dhcp_deltas(&site, &gw, 5);
    assert_eq!(pass, 0, "pass_dhcp moved by {pass} with allow_dhcp false");
    assert!(
        drop >= 5,
        "drop_protocol moved by {drop}, sent 5\n{}",
        gw.diagnostics()
    );
    let dst = v4(addr::GW_DEV_V4, 67);
    let device_addr = v4(addr::DEV_V4, 68);
    let rec = gw.must(gw.wait_audit(
        |r| audit::is_flow(r, "flow.dropped", device_addr, dst),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["reason"], "protocol_not_allowed", "{rec}");
}

#[test]
fn dhcp_passes_when_allowed() {
    require_root();
    let site = Site::new("dhcp-on").unwrap();
    let mut config = GatewayConfig::for_site(&site);
    config.allow_dhcp = true;
    let gw = Gateway::start(&site, config).unwrap();
    gw.must(site.warm_neighbors());
    let (pass, drop) = dhcp_deltas(&site, &gw, 5);
    assert!(
        pass >= 5,
        "pass_dhcp moved by {pass}, sent 5\n{}",
        gw.diagnostics()
    );
    // Other device noise (e.g. MLD reports) may be dropped meanwhile, but
    // not our five datagrams.
    assert!(
        drop < 5,
        "drop_protocol moved by {drop} with allow_dhcp true"
    );
    thread::sleep(Duration::from_secs(2));
    let dst = v4(addr::GW_DEV_V4, 67);
    let dropped: Vec<Value> = gw
        .must(gw.audit())
        .into_iter()
        .filter(|r| audit::is_flow(r, "flow.dropped", v4(addr::DEV_V4, 68), dst))
        .collect();
    assert!(
        dropped.is_empty(),
        "DHCP was audited as dropped: {dropped:?}"
    );
}
