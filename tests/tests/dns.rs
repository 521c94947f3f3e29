//! DNS for devices: every query to port 53, UDP or TCP, v4 or v6, to any
//! address, is answered by the gateway itself. Site hosts resolve to the
//! gateway, passthrough services to their addresses, other types of those
//! names to an empty answer, and every other name is NXDOMAIN, audited and
//! rate limited. Real client: `dig` from the device namespace, asking
//! addresses where no DNS server runs.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{net::IpAddr, time::Duration};

use gateway_tests::{
    Gateway, GatewayConfig, Site, dns,
    registry::{HOST, OciKeys, Registry, RegistryOptions, oci_gateway::start_oci_gateway_with},
    require_root,
    site::{addr, v4, v6},
};

const AUDIT_WAIT: Duration = Duration::from_secs(10);
/// The second passthrough service of these tests: the Margo identity
/// service, on the upstream host.
const MIS: &str = "mis.site.example";
const MIS_PORT: u16 = 8443;

fn services_yaml() -> String {
    format!(
        "passthrough:\n  - name: \"{MIS}\"\n    addresses: [\"{}:{MIS_PORT}\", \"[{}]:{MIS_PORT}\"]\n",
        addr::UP_V4,
        addr::UP_V6
    )
}

/// Resolver addresses a device might be configured with: the upstream
/// host (no DNS server there), an address that exists upstream but has no
/// route from the gateway, and the upstream host's v6 address.
fn resolvers() -> [IpAddr; 3] {
    [
        IpAddr::V4(addr::UP_V4),
        IpAddr::V4(addr::UNROUTED_V4),
        IpAddr::V6(addr::UP_V6),
    ]
}

#[test]
fn names_are_answered_by_the_gateway_over_udp_and_tcp_v4_and_v6() {
    require_root();
    let site = Site::new("dns-answers").unwrap();
    let registry = Registry::start(&site, RegistryOptions::default()).unwrap();
    let keys = OciKeys::for_registry(&registry, "5m");
    let mut config = keys.config(&site);
    config.extra_yaml.push_str(&services_yaml());
    let gw = start_oci_gateway_with(&site, keys, config).unwrap();
    let gw = &gw.gw;

    for server in resolvers() {
        for tcp in [false, true] {
            let how = format!("@{server} {}", if tcp { "tcp" } else { "udp" });
            // A site host: the gateway's own address on the device link.
            let a = gw.must(dns::dig(&site, server, HOST, "A", tcp));
            assert_eq!(a.status, "NOERROR", "{how}: {}", a.raw);
            assert_eq!(
                a.data("A"),
                [addr::GW_DEV_V4.to_string()],
                "{how}: {}",
                a.raw
            );
            assert!(a.flags.contains(&"aa".to_owned()), "{how}: {}", a.raw);
            // dig checks the source of the answer: it came from where it asked.
            assert!(
                a.server.starts_with(&format!("{server}#53")),
                "{how}: {}",
                a.raw
            );
            let aaaa = gw.must(dns::dig(&site, server, HOST, "AAAA", tcp));
            assert_eq!(aaaa.data("AAAA"), [addr::GW_DEV_V6.to_string()], "{how}");
            // Passthrough services: their configured addresses.
            let wfm = gw.must(dns::dig(&site, server, "wfm.site.example", "A", tcp));
            assert_eq!(
                wfm.data("A"),
                [addr::UP_V4.to_string()],
                "{how}: {}",
                wfm.raw
            );
            let mis = gw.must(dns::dig(&site, server, MIS, "AAAA", tcp));
            assert_eq!(
                mis.data("AAAA"),
                [addr::UP_V6.to_string()],
                "{how}: {}",
                mis.raw
            );
            // Another record type of an allowed name: empty, no error.
            let https = gw.must(dns::dig(&site, server, HOST, "HTTPS", tcp));
            assert_eq!(https.status, "NOERROR", "{how}: {}", https.raw);
            assert!(https.answers.is_empty(), "{how}: {}", https.raw);
            // Anything else: NXDOMAIN.
            let other = gw.must(dns::dig(&site, server, "example.com", "A", tcp));
            assert_eq!(other.status, "NXDOMAIN", "{how}: {}", other.raw);
        }
    }

    // Every refusal is in the audit with device, name and type.
    let refused = gw.must(gw.wait_audit_all(
        |rs| {
            rs.iter()
                .filter(|r| r["event"] == "dns.refused" && r["name"] == "example.com")
                .count()
                >= 6
        },
        AUDIT_WAIT,
    ));
    let refused: Vec<_> = refused
        .iter()
        .filter(|r| r["event"] == "dns.refused")
        .collect();
    for r in &refused {
        assert_eq!(r["qtype"], "A", "{r}");
        assert_eq!(r["reason"], "name_not_allowed", "{r}");
        let device = r["device"].as_str().unwrap();
        assert!(
            device.starts_with(&format!("{}:", addr::DEV_V4))
                || device.starts_with(&format!("[{}]:", addr::DEV_V6)),
            "{r}"
        );
        assert!(r["dst"].as_str().unwrap().ends_with(":53"), "{r}");
    }
    assert!(refused.iter().any(|r| r["proto"] == "udp"));
    assert!(refused.iter().any(|r| r["proto"] == "tcp"));
    // Answered names are audited too, once per device, name and type.
    let answered = gw.must(gw.wait_audit(
        |r| r["event"] == "dns.answered" && r["name"] == HOST && r["qtype"] == "A",
        AUDIT_WAIT,
    ));
    assert_eq!(answered["detail"], "1 record(s)", "{answered}");
    // `gateway flows` reads this real log: per device, the refused name
    // with its count and the answered site host.
    let config = gw.config_path().to_string_lossy().into_owned();
    let out = gw
        .command(&["flows", "--config", &config, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let device = flows["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == addr::DEV_V4.to_string())
        .unwrap_or_else(|| panic!("no {} in {flows:#}", addr::DEV_V4));
    let row = |side: &str, name: &str| {
        device[side]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "dns" && r["name"] == name && r["qtype"] == "A")
            .cloned()
            .unwrap_or_else(|| panic!("no {side} dns {name} A in {device:#}"))
    };
    // As many as the log holds for this address (suppressed included).
    let logged: u64 = gw
        .must(gw.audit())
        .iter()
        .filter(|r| r["event"] == "dns.refused" && r["name"] == "example.com")
        .filter(|r| {
            r["device"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}:", addr::DEV_V4))
        })
        .map(|r| 1 + r["suppressed"].as_u64().unwrap_or(0))
        .sum();
    assert!(logged >= 4, "two servers, UDP and TCP: {logged}");
    assert_eq!(row("refused", "example.com")["count"], logged, "{device:#}");
    assert_eq!(row("refused", "example.com")["reason"], "name_not_allowed");
    assert!(row("reached", HOST)["count"].as_u64().unwrap() >= 1);
    assert_eq!(flows["lines"]["not_understood"], 0, "{flows:#}");
    // UDP went through the kernel's DNS assignment; TCP through the
    // listener like any intercepted port.
    let assigned = gw.must(gw.counter("assign_dns"));
    assert!(assigned >= 18, "assign_dns = {assigned}");
}

#[test]
fn a_flood_of_refused_names_is_rate_limited_in_the_audit() {
    require_root();
    let site = Site::new("dns-flood").unwrap();
    let mut config = GatewayConfig::for_site(&site);
    config.extra_yaml.push_str(&services_yaml());
    let gw = Gateway::start(&site, config).unwrap();
    let dst = v4(addr::UP_V4, 53);
    // Names a device tunnelling data through DNS would send.
    let started = std::time::Instant::now();
    for i in 0..60u16 {
        let q = dns::query_bytes(i, &format!("chunk{i}.exfil.example.net"), 16);
        let (answer, from) = gw
            .must(dns::udp_exchange(&site, dst, &q, Duration::from_secs(3)))
            .unwrap_or_else(|| panic!("no answer to query {i}\n{}", gw.diagnostics()));
        assert_eq!(from, dst, "the answer comes from the address asked");
        assert_eq!(dns::rcode(&answer), Some(3), "NXDOMAIN");
        assert_eq!(&answer[..2], &i.to_be_bytes(), "the query's id");
    }
    let flood = started.elapsed();
    // After the budget refills, the next record says how many were left out.
    std::thread::sleep(Duration::from_millis(2100));
    let q = dns::query_bytes(999, "last.exfil.example.net", 16);
    gw.must(dns::udp_exchange(&site, dst, &q, Duration::from_secs(3)))
        .expect("an answer");
    let records = gw.must(gw.wait_audit_all(
        |rs| {
            rs.iter()
                .any(|r| r["event"] == "dns.refused" && r["name"] == "last.exfil.example.net")
        },
        AUDIT_WAIT,
    ));
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "dns.refused")
        .collect();
    // The budget: 10 at once, then one per 2 s of the flood (however long
    // this machine took to send it), then the last one.
    let allowed = 10 + flood.as_secs() as usize / 2 + 2;
    assert!(
        refused.len() >= 10 && refused.len() <= allowed,
        "{} dns.refused records for 61 queries sent over {flood:?} (at most {allowed})",
        refused.len()
    );
    let last = refused.last().unwrap();
    assert_eq!(last["name"], "last.exfil.example.net");
    assert_eq!(last["qtype"], "TXT");
    // Nothing is lost: every query is a record or counted in a later
    // record's `suppressed`.
    let suppressed: u64 = refused
        .iter()
        .map(|r| r["suppressed"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        refused.len() as u64 + suppressed,
        61,
        "records {} + suppressed {suppressed}",
        refused.len()
    );
}

#[test]
fn garbage_gets_formerr_or_nothing_and_the_responder_keeps_answering() {
    require_root();
    let site = Site::new("dns-garbage").unwrap();
    let mut gw = Gateway::start_default(&site).unwrap();
    let dst = v6(addr::UP_V6, 53);
    // Too short for a header: no answer at all.
    let none = gw.must(dns::udp_exchange(
        &site,
        dst,
        &[0x12, 0x34, 0x01],
        Duration::from_secs(1),
    ));
    assert!(none.is_none(), "{none:?}");
    // A header promising a question that is not there: FORMERR.
    let bad = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 9, b'x'];
    let (answer, _) = gw
        .must(dns::udp_exchange(&site, dst, &bad, Duration::from_secs(3)))
        .expect("FORMERR");
    assert_eq!(&answer[..2], &[0xab, 0xcd]);
    assert_eq!(dns::rcode(&answer), Some(1), "FORMERR");
    // A response is never answered (no ping-pong between responders).
    let mut response = dns::query_bytes(7, "wfm.site.example", 1);
    response[2] |= 0x80;
    let none = gw.must(dns::udp_exchange(
        &site,
        dst,
        &response,
        Duration::from_secs(1),
    ));
    assert!(none.is_none(), "{none:?}");
    // Still answering.
    let ok = gw.must(dns::dig(
        &site,
        IpAddr::V6(addr::UP_V6),
        "wfm.site.example",
        "AAAA",
        false,
    ));
    assert_eq!(ok.data("AAAA"), [addr::UP_V6.to_string()], "{}", ok.raw);
    let rec = gw.must(gw.wait_audit(
        |r| r["event"] == "dns.refused" && r["reason"] == "malformed_query",
        AUDIT_WAIT,
    ));
    assert_eq!(rec["fault"], "device", "{rec}");
    assert!(gw.is_running(), "the gateway died:\n{}", gw.diagnostics());
}

#[test]
fn with_dns_disabled_queries_are_dropped_in_the_kernel() {
    require_root();
    let site = Site::new("dns-off").unwrap();
    let mut config = GatewayConfig::for_site(&site);
    config.extra_yaml.push_str("dns:\n  enabled: false\n");
    let gw = Gateway::start(&site, config).unwrap();
    let dst = v4(addr::UP_V4, 53);
    let q = dns::query_bytes(1, "wfm.site.example", 1);
    let got = gw.must(dns::udp_exchange(&site, dst, &q, Duration::from_secs(1)));
    assert!(got.is_none(), "answered with DNS disabled: {got:?}");
    let rec = gw.must(gw.wait_audit(
        |r| r["event"] == "flow.dropped" && r["dst"] == dst.to_string(),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["proto"], "udp", "{rec}");
    assert_eq!(gw.must(gw.counter("assign_dns")), 0);
    // DNS over TCP is not intercepted either: the SYN is dropped.
    let dropped = gw.must(gateway_tests::device::expect_connect_timeout(&site, dst));
    let rec = gw.must(gw.wait_audit(
        |r| gateway_tests::audit::is_flow(r, "flow.dropped", dropped.device, dst),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["proto"], "tcp", "{rec}");
}
