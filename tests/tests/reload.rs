//! Live reload (issue 12 item 3): `gateway reload` and SIGHUP apply an
//! edited config to the running daemon. One world (registry, gateway,
//! device) for every step, so the test stays lean in emulated VMs:
//!
//! 1. a pull running across a reload completes with the right digest;
//! 2. the reload removes intercepted port 80 and adds 8080: after
//!    `gateway reload` returns, a device's connect to port 80 is dropped
//!    by the kernel (silent timeout, `flow.dropped`), one to 8080 reaches
//!    the gateway;
//! 3. a bad config (a key that does not validate, a setting that needs a
//!    restart) is refused with exit 64 naming the key, and the daemon
//!    keeps serving the old one;
//! 4. SIGHUP does what `gateway reload` does;
//! 5. a rotated password file is read again by a reload that changes no
//!    key (the registry requires credentials only the gateway holds).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Site, audit, device,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{self, Credentials, RegistryOptions, oci_gateway::cli, start_world},
    require_root,
    site::{addr, v4},
};

const MIB: u64 = 1024 * 1024;
const AUDIT_WAIT: Duration = Duration::from_secs(10);

#[test]
fn reload_applies_live_and_refuses_bad_configs() {
    require_root();
    let site = Site::new("reload").unwrap();
    let w = start_world(
        &site,
        RegistryOptions {
            credentials: Some(Credentials::random()),
        },
        "5m",
    )
    .unwrap();
    let gw = &w.gw;
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(8 * MIB, 47)], "reload")
        .unwrap();
    w.registry
        .push(&layout, "app", &img.manifest, "v1")
        .unwrap();
    let layer = &img.layers[0];
    let path = format!("/v2/app/blobs/{}", layer.digest);
    let config = gw.keys.config(&site);
    let write_config = |ports: &[u16], extra: &str| {
        let mut c = config.clone();
        c.tcp_ports = ports.to_vec();
        c.extra_yaml.push_str(extra);
        std::fs::write(gw.gw.config_path(), c.to_yaml()).unwrap();
    };
    let reload = || gw.must(cli(&gw.gw, &["reload"]));

    // (1) + (2): about 4 s for the blob, so the reload lands mid-pull.
    gw.must(registry::throttle_upstream(&site, "16mbit"));
    write_config(&[443, 8080], "");
    thread::scope(|s| {
        let pull = s.spawn(|| w.device.get(&path));
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.must(gw.cache_tmp_files()).is_empty() {
            assert!(Instant::now() < deadline, "no fill started");
            thread::sleep(Duration::from_millis(20));
        }
        let out = reload();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.success(),
            "gateway reload: {} {stdout} {}",
            out.status,
            out.stderr
        );
        assert!(
            stdout.contains("generation 2") && stdout.contains("changed: intercept"),
            "{stdout}"
        );
        // Still in progress when the reload returned: it spanned it.
        assert!(
            !gw.must(gw.cache_tmp_files()).is_empty(),
            "the fill ended before the reload: the pull did not span it"
        );
        let full = gw.must(pull.join().unwrap());
        assert!(full.complete() && full.code == 200, "{}", full.describe());
        assert_eq!(gw.must(full.body_digest()), layer.digest);
    });

    let port80 = v4(addr::UP_V4, 80);
    let port8080 = v4(addr::UP_V4, 8080);
    let dropped = gw.must(device::expect_connect_timeout(&site, port80));
    let rec = gw.must(gw.gw.wait_audit(
        |r| audit::is_flow(r, "flow.dropped", dropped.device, port80),
        AUDIT_WAIT,
    ));
    assert_eq!(rec["reason"], "port_not_intercepted", "{rec}");
    // 8080 is now redirected to the gateway (which refuses it by policy):
    // the connect completes instead of timing out, and never reaches the
    // service behind it.
    drop(gw.must(device::connect_ok(&site, port8080)));
    assert_eq!(site.servers.service_8080.get(), 0, "8080 reached upstream");
    let rec = gw.must(gw.gw.wait_audit(
        |r| r["event"] == "config.reloaded" && r["reason"] == "control",
        AUDIT_WAIT,
    ));
    let detail = rec["detail"].as_str().unwrap_or("");
    assert!(
        detail.starts_with("generation 2: changed: intercept"),
        "{rec}"
    );

    // (3) A file that does not validate: refused before the daemon is
    // asked, naming the key, as check-config does.
    write_config(&[443, 8080], "cache_size: 1\n");
    let out = reload();
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("cache_size"), "{}", out.stderr);
    // A setting bound at start: refused by the daemon.
    let mut moved = config.clone();
    moved.tcp_ports = vec![443, 8080];
    moved.proxy_port = 15002;
    std::fs::write(gw.gw.config_path(), moved.to_yaml()).unwrap();
    let out = reload();
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("proxy.port cannot change without a restart"),
        "{}",
        out.stderr
    );
    let rec = gw.must(
        gw.gw
            .wait_audit(|r| r["event"] == "config.reload_failed", AUDIT_WAIT),
    );
    assert!(
        rec["detail"]
            .as_str()
            .is_some_and(|d| d.contains("proxy.port")),
        "{rec}"
    );
    // The old one keeps serving: the blob (now cached), the same
    // generation, and port 8080 still redirected.
    let again = gw.must(w.device.get(&path));
    assert_eq!(again.code, 200, "{}", again.describe());
    assert_eq!(gw.must(again.body_digest()), layer.digest);
    assert_eq!(generation(gw), 2);

    // (4) SIGHUP: back to ports 80 and 443.
    write_config(&[80, 443], "");
    let pid = i32::try_from(gw.gw.pid().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let rec = gw.must(gw.gw.wait_audit(
        |r| r["event"] == "config.reloaded" && r["reason"] == "sighup",
        AUDIT_WAIT,
    ));
    assert!(
        rec["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("generation 3: changed: intercept")),
        "{rec}"
    );
    assert_eq!(generation(gw), 3);
    drop(gw.must(device::connect_ok(&site, port80)));
    gw.must(device::expect_connect_timeout(&site, port8080));
    let again = gw.must(w.device.get(&path));
    assert_eq!(again.code, 200, "{}", again.describe());

    // (5) The password file rotated to a wrong password: after a reload
    // the gateway's upstream requests carry it and fail; rotated back,
    // the next reload makes them succeed. The config blob was never
    // fetched, so each GET goes upstream.
    let password_file = gw.keys.credentials.as_ref().unwrap().1.clone();
    let right = std::fs::read_to_string(&password_file).unwrap();
    let config_blob = format!("/v2/app/blobs/{}", img.config.digest);
    std::fs::write(&password_file, "not-the-password\n").unwrap();
    let out = reload();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.success(), "{} {}", out.status, out.stderr);
    assert!(stdout.contains("generation 4, no key changed"), "{stdout}");
    let refused = gw.must(w.device.get(&config_blob));
    assert_ne!(refused.code, 200, "{}", refused.describe());
    let upstream = w
        .registry
        .requests_from_gateway("GET", &config_blob)
        .unwrap();
    assert!(
        !upstream.is_empty() && upstream.iter().all(|l| l.status == 401),
        "upstream GETs with the wrong password: {upstream:?}"
    );
    std::fs::write(&password_file, right).unwrap();
    let out = reload();
    assert!(out.success(), "{} {}", out.status, out.stderr);
    let fetched = gw.must(w.device.get(&config_blob));
    assert_eq!(fetched.code, 200, "{}", fetched.describe());
    assert_eq!(gw.must(fetched.body_digest()), img.config.digest);
    assert_eq!(generation(gw), 5);
}

fn generation(gw: &registry::OciGateway<'_>) -> u64 {
    let status = gw.must(gw.gw.status());
    status["daemon"]["config_generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no config generation in {status}"))
}
