//! Time for devices: NTP requests to any address on UDP 123 are answered
//! by the gateway in server mode from the host's clock, and say so when
//! that clock is not synchronised. Real client: `chronyd -Q` (measure
//! once, never set the clock) from the device namespace, beside a raw
//! request for field-level checks.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{net::IpAddr, time::Duration};

use gateway_tests::{
    Gateway, GatewayConfig, Site, dns, require_root,
    site::{addr, v4, v6},
};

const AUDIT_WAIT: Duration = Duration::from_secs(10);

#[test]
fn ntp_is_answered_from_the_address_asked_with_the_host_clocks_state() {
    require_root();
    let site = Site::new("ntp-raw").unwrap();
    let gw = Gateway::start_default(&site).unwrap();
    let synced = dns::host_clock_synchronised();
    for dst in [
        v4(addr::UP_V4, 123),
        v4(addr::UNROUTED_V4, 123),
        v6(addr::UP_V6, 123),
    ] {
        let transmit = 0x1122_3344_5566_7788u64;
        let (reply, from) = gw
            .must(dns::udp_exchange(
                &site,
                dst,
                &dns::ntp_request(transmit),
                Duration::from_secs(3),
            ))
            .unwrap_or_else(|| panic!("no NTP answer from {dst}\n{}", gw.diagnostics()));
        assert_eq!(from, dst, "answered from the address asked");
        assert_eq!(reply.len(), 48);
        assert_eq!(reply[0] & 7, 4, "server mode");
        assert_eq!((reply[0] >> 3) & 7, 4, "version 4");
        assert_eq!(
            &reply[24..32],
            &transmit.to_be_bytes(),
            "origin = our transmit"
        );
        // Receive and transmit timestamps are the host's clock now.
        let now_ntp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 2_208_988_800;
        let tx_secs = u64::from(u32::from_be_bytes(reply[40..44].try_into().unwrap()));
        assert!(
            now_ntp.abs_diff(tx_secs) <= 2,
            "transmit {tx_secs} vs now {now_ntp}"
        );
        if synced {
            assert_ne!(
                reply[0] >> 6,
                3,
                "leap indicator 3 with a synchronised host"
            );
            assert!(reply[1] < 16, "stratum {}", reply[1]);
        } else {
            assert_eq!(reply[0] >> 6, 3, "leap indicator 3: unsynchronised");
            assert_eq!(reply[1], 16, "stratum 16: unsynchronised");
        }
    }
    // Anything but a client request gets nothing (no reflection).
    let mut server_mode = dns::ntp_request(1);
    server_mode[0] = (4 << 3) | 4;
    let none = gw.must(dns::udp_exchange(
        &site,
        v4(addr::UP_V4, 123),
        &server_mode,
        Duration::from_secs(1),
    ));
    assert!(none.is_none(), "{none:?}");
    let rec = gw.must(gw.wait_audit(|r| r["event"] == "time.served", AUDIT_WAIT));
    assert_eq!(
        rec["reason"],
        if synced {
            "synchronised"
        } else {
            "unsynchronised"
        },
        "{rec}"
    );
    let served = gw.must(gw.counter("assign_ntp"));
    assert!(served >= 4, "assign_ntp = {served}");
}

#[test]
fn chronyd_takes_the_time_only_when_the_gateway_may_give_it() {
    require_root();
    let site = Site::new("ntp-chrony").unwrap();
    let server = IpAddr::V4(addr::UP_V4);
    let gw = Gateway::start_default(&site).unwrap();
    let q = gw.must(dns::chrony_query(
        &site,
        server,
        &site.tmp_dir().join("chrony1"),
    ));
    eprintln!("chronyd -Q, default config:\n{}", q.output);
    if dns::host_clock_synchronised() {
        assert!(q.success, "chronyd -Q failed:\n{}", q.output);
        let offset = q
            .offset_secs
            .unwrap_or_else(|| panic!("no offset:\n{}", q.output));
        assert!(offset.abs() < 1.0, "offset {offset}:\n{}", q.output);
    } else {
        // An unsynchronised server is not a source: chronyd measures
        // nothing and says why.
        assert!(
            q.offset_secs.is_none(),
            "took an unsynchronised time:\n{}",
            q.output
        );
        assert!(
            q.output.contains("No suitable source"),
            "chronyd did not reject the source:\n{}",
            q.output
        );
        assert!(
            !q.success,
            "chronyd -Q succeeded against an unsynchronised server:\n{}",
            q.output
        );
    }
    drop(gw);

    // An air-gapped site's admin declares the host clock a source anyway.
    let mut config = GatewayConfig::for_site(&site);
    config.extra_yaml.push_str("time:\n  local_stratum: 10\n");
    let gw = Gateway::start(&site, config).unwrap();
    let q = gw.must(dns::chrony_query(
        &site,
        server,
        &site.tmp_dir().join("chrony2"),
    ));
    eprintln!("chronyd -Q, local_stratum 10:\n{}", q.output);
    assert!(
        q.success,
        "chronyd -Q failed:\n{}\n{}",
        q.output,
        gw.diagnostics()
    );
    let offset = q
        .offset_secs
        .unwrap_or_else(|| panic!("no offset:\n{}", q.output));
    assert!(offset.abs() < 1.0, "offset {offset}:\n{}", q.output);
}

#[test]
fn with_time_off_ntp_is_dropped_in_the_kernel() {
    require_root();
    let site = Site::new("ntp-off").unwrap();
    let mut config = GatewayConfig::for_site(&site);
    config.extra_yaml.push_str("time:\n  serve: false\n");
    let gw = Gateway::start(&site, config).unwrap();
    let dst = v4(addr::UP_V4, 123);
    let got = gw.must(dns::udp_exchange(
        &site,
        dst,
        &dns::ntp_request(1),
        Duration::from_secs(1),
    ));
    assert!(got.is_none(), "answered with time.serve off: {got:?}");
    let rec = gw.must(gw.wait_audit(
        |r| r["event"] == "flow.dropped" && r["dst"] == dst.to_string(),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["proto"], "udp", "{rec}");
    assert_eq!(gw.must(gw.counter("assign_ntp")), 0);
}
