//! Metrics and status (issue 12 items 1 and 5): a running gateway with an
//! OCI site serves `/metrics` on its admin listener (requests by site and
//! cache status after a device pulled a manifest twice), promtool finds
//! the exposition clean,
//! a real Prometheus scrapes it and answers queries over the gateway's
//! series, devices cannot reach the listener, the kernel counters are per
//! device interface (the gateway guards two; drops on one leave the
//! other's counters alone), and `gateway status` shows the running
//! daemon's state (the last refusals among it).
//!
//! The admin listener is put on the gateway's upstream-side address (a
//! "management interface") rather than loopback, so that the device check
//! means something: that address is routable from the device, and only
//! the kernel path keeps the device from it.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::{IpAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use gateway_tests::{
    GatewayConfig, Site,
    bench::world::{PEER_DEVICE, PEER_NGINX, PeerLink},
    device, dns, gateway, in_ns,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    prometheus,
    registry::{HOST, OciKeys, Registry, RegistryOptions, oci_gateway::start_oci_gateway_with},
    require_root,
    site::{addr, v4},
};

const ADMIN_PORT: u16 = 9747;
const PROMETHEUS_PORT: u16 = 9090;
/// Prometheus starts, scrapes every second and answers: generous for a
/// TCG VM, and only ever waited out when something is wrong.
const SCRAPE_WAIT: Duration = Duration::from_secs(90);
const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// The kernel program's count of `counter` on `interface`.
fn kernel(text: &str, interface: &str, counter: &str) -> f64 {
    let verdict = counter.split('_').next().unwrap();
    sample(
        text,
        &format!(
            "margo_gateway_kernel_packets_total{{interface=\"{interface}\",verdict=\"{verdict}\",counter=\"{counter}\"}}"
        ),
    )
}

/// The value of the one sample line starting with `series`.
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no sample `{series}` in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_the_gateway_and_devices_cannot_reach_the_admin_listener() {
    require_root();
    let site = Site::new("metrics").unwrap();
    let admin = v4(addr::GW_UP_V4, ADMIN_PORT);

    // check-config refuses an admin address on the device interface.
    let mut on_device = GatewayConfig::for_site(&site);
    on_device.extra_yaml = format!("admin:\n  listen: \"{}:{ADMIN_PORT}\"\n", addr::GW_DEV_V4);
    let bad = site.tmp_dir().join("admin-on-device.yaml");
    std::fs::write(&bad, on_device.to_yaml()).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &site.gw_ns])
        .arg(gateway::binary().unwrap())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("admin.listen") && stderr.contains("device interface"),
        "{stderr}"
    );

    let registry = Registry::start(&site, RegistryOptions::default()).unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let image = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(4 * 1024, 81)], "A")
        .unwrap();
    registry
        .push(&layout, "app", &image.manifest, "v1")
        .unwrap();
    let keys = OciKeys::for_registry(&registry, "5m");
    // A second device interface (the benchmark's peer link: device
    // 10.77.3.2, gateway 10.77.3.1), guarded too: its counters must stay
    // apart from the first one's.
    let second = PeerLink::create(&site).unwrap();
    let mut config = keys.config(&site);
    config.interfaces.push(second.gw_if.clone());
    config
        .extra_yaml
        .push_str(&format!("admin:\n  listen: \"{admin}\"\n"));
    let oci = start_oci_gateway_with(&site, keys, config).unwrap();
    let client = oci.device().unwrap();
    let mut gw = oci.gw;

    // A device pulls a manifest twice: a miss, then a hit (tag TTL 5m).
    for _ in 0..2 {
        let r = gw.must(client.get("/v2/app/manifests/v1"));
        assert_eq!(r.code, 200, "{}", r.describe());
    }

    // Device traffic: a name refused, a name answered.
    let refused = gw.must(dns::dig(
        &site,
        IpAddr::V4(addr::UP_V4),
        "example.com",
        "A",
        false,
    ));
    assert_eq!(refused.status, "NXDOMAIN", "{}", refused.raw);
    let answered = gw.must(dns::dig(
        &site,
        IpAddr::V4(addr::UP_V4),
        "wfm.site.example",
        "A",
        false,
    ));
    assert_eq!(answered.status, "NOERROR", "{}", answered.raw);

    // The device cannot reach the admin listener: not at the address it
    // listens on (routable from the device), not at the gateway's
    // device-side address. Both SYNs are dropped by the kernel path.
    let dropped = gw.must(device::expect_connect_timeout(&site, admin));
    gw.must(device::expect_connect_timeout(
        &site,
        v4(addr::GW_DEV_V4, ADMIN_PORT),
    ));
    let admin_text = admin.to_string();
    let dropped_record = gw.must(gw.wait_audit(
        |r| r["event"] == "flow.dropped" && r["dst"] == admin_text.as_str(),
        AUDIT_WAIT,
    ));
    assert_eq!(
        dropped_record["reason"], "port_not_intercepted",
        "{dropped_record}"
    );
    assert_eq!(
        dropped_record["device"],
        dropped.device.to_string(),
        "{dropped_record}"
    );

    // One UDP datagram from the device over the second link: dropped
    // there (devices may not speak UDP but DNS and time). Its audit record
    // says the program has counted it.
    let on_second = v4(PEER_NGINX, 9);
    let sock = gw
        .must(in_ns(&site.dev_ns, || UdpSocket::bind(v4(PEER_DEVICE, 0))))
        .unwrap();
    sock.send_to(b"not on the first interface", on_second)
        .unwrap();
    let on_second_text = on_second.to_string();
    let second_record = gw.must(gw.wait_audit(
        |r| r["event"] == "flow.dropped" && r["dst"] == on_second_text.as_str(),
        AUDIT_WAIT,
    ));
    assert_eq!(
        second_record["interface"],
        second.gw_if.as_str(),
        "{second_record}"
    );

    // Scraped from the gateway namespace.
    let (code, text) = site.curl_in_gw(&format!("http://{admin}/metrics"));
    assert_eq!(code, 200, "{text}");
    assert!(
        sample(
            &text,
            "margo_gateway_dns_queries_total{result=\"refused\",transport=\"udp\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "margo_gateway_dns_queries_total{result=\"answered\",transport=\"udp\"}"
        ) >= 1.0,
        "{text}"
    );
    // Per interface: the two SYNs to the admin listener came over the
    // first link, the datagram over the second; nothing TCP came over the
    // second, so its not-intercepted count is still zero.
    let (first, second_if) = (site.gw_dev_if.as_str(), second.gw_if.as_str());
    assert!(
        kernel(&text, first, "drop_not_intercepted") >= 2.0,
        "{text}"
    );
    assert_eq!(
        kernel(&text, second_if, "drop_not_intercepted"),
        0.0,
        "{text}"
    );
    assert!(kernel(&text, second_if, "drop_protocol") >= 1.0, "{text}");
    // The fallback series is there, and nothing fell back.
    assert_eq!(kernel(&text, "other", "drop_protocol"), 0.0, "{text}");
    assert!(
        sample(
            &text,
            "margo_gateway_audit_records_total{outcome=\"written\"}"
        ) >= 1.0
    );
    assert_eq!(sample(&text, "margo_gateway_config_generation"), 1.0);
    for cache in ["miss", "hit"] {
        let series = format!(
            "margo_gateway_http_requests_total{{site=\"{HOST}\",method=\"GET\",status=\"2xx\",cache=\"{cache}\"}}"
        );
        assert!(sample(&text, &series) >= 1.0, "{text}");
    }
    assert!(sample(&text, "margo_gateway_tls_handshakes_total{result=\"ok\"}") >= 1.0);
    assert!(sample(&text, "margo_gateway_tls_leaves_minted_total") >= 1.0);
    assert!(sample(&text, "margo_gateway_upstream_received_bytes_total") > 0.0);
    assert!(sample(&text, "margo_gateway_cache_blobs") >= 1.0, "{text}");
    assert!(
        sample(&text, "margo_gateway_cache_size_bytes") > 0.0,
        "{text}"
    );
    for never in [
        addr::DEV_V4.to_string(),
        "example.com".to_owned(),
        "/v2/".to_owned(),
        "sha256:".to_owned(),
    ] {
        assert!(
            !text.contains(&never),
            "`{never}` is in the metrics:\n{text}"
        );
    }
    gateway_tests::prometheus::check_metrics(&text)
        .unwrap_or_else(|e| panic!("{e:#}\n--- exposition ---\n{text}"));
    assert_eq!(site.curl_in_gw(&format!("http://{admin}/healthz")).0, 200);
    assert_eq!(site.curl_in_gw(&format!("http://{admin}/readyz")).0, 200);
    assert_eq!(site.curl_in_gw(&format!("http://{admin}/other")).0, 404);

    // `gateway status` shows the running daemon, its refusals among it.
    let status = gw.must(gw.status());
    let d = &status["daemon"];
    assert_eq!(d["config_generation"], 1, "{status}");
    assert!(d["uptime_secs"].is_u64(), "{status}");
    assert!(d["open_connections"].is_u64(), "{status}");
    assert_eq!(d["passthrough"][0]["name"], "wfm.site.example", "{status}");
    assert_eq!(d["sites"][0]["host"], HOST, "{status}");
    assert_eq!(d["sites"][0]["requests"], 2, "{status}");
    assert_eq!(d["sites"][0]["hit_ratio"], 0.5, "{status}");
    assert!(d["cache"]["bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(d["cache"]["max_bytes"].as_u64().unwrap() > 0, "{status}");
    let refusals = d["recent_refusals"].as_array().unwrap();
    assert!(
        refusals
            .iter()
            .any(|r| r["destination"] == admin_text.as_str()
                && r["reason"] == "port_not_intercepted"),
        "{status}"
    );
    assert!(
        refusals
            .iter()
            .any(|r| r["event"] == "dns.refused" && r["destination"] == "example.com"),
        "{status}"
    );
    let config = gw.config_path().to_string_lossy().into_owned();
    let human = gw
        .command(&["status", "--config", &config])
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("config generation 1"), "{human}");
    assert!(
        human.contains(&format!("site {HOST}: 2 requests, hit ratio 50%")),
        "{human}"
    );
    assert!(human.contains("recent refusals (newest first"), "{human}");

    // A real Prometheus in the gateway namespace scrapes it.
    let dir = site.tmp_dir().join("prometheus");
    let mut prom = gw.must(prometheus::Prometheus::start(
        &site.gw_ns,
        &admin_text,
        PROMETHEUS_PORT,
        &dir,
    ));
    let up = gw.must(prom.wait_for("up{job=\"gateway\"} == 1", SCRAPE_WAIT));
    assert_eq!(up[0]["metric"]["instance"], admin_text.as_str(), "{up:?}");
    let dns = gw.must(prom.wait_for(
        "margo_gateway_dns_queries_total{result=\"refused\"} > 0",
        SCRAPE_WAIT,
    ));
    assert_eq!(dns[0]["metric"]["transport"], "udp", "{dns:?}");
    drop(prom);

    // Stopped: status says there is no daemon and still shows the kernel.
    let stopped = gw.sigterm(Duration::from_secs(10));
    assert!(stopped.is_ok(), "{stopped:?}\n{}", gw.diagnostics());
    let status = gw.must(gw.status());
    assert!(status["daemon"].is_null(), "{status}");
    assert_eq!(status["installed"], true, "{status}");
    assert!(status["counters"]["drop_not_intercepted"].as_u64().unwrap() >= 2);
    let per_if = |name: &str, counter: &str| {
        status["interfaces"][name]["counters"][counter]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} {counter} in {status}"))
    };
    assert!(per_if(first, "drop_not_intercepted") >= 2, "{status}");
    assert_eq!(per_if(second_if, "drop_not_intercepted"), 0, "{status}");
    assert!(per_if(second_if, "drop_protocol") >= 1, "{status}");
    let human = gw
        .command(&["status", "--config", &config])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("daemon: not running"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
}
