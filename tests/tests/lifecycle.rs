//! The daemon's lifecycle: killed, it fails closed (pinned programs keep
//! dropping) and a restart adopts what it left; stopped cleanly, it leaves
//! nothing behind in the kernel.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{io::Read as _, time::Duration};

use gateway_tests::{
    Gateway, Site,
    config::{DEFAULT_ROUTE_TABLE, GatewayConfig},
    device,
    kernel::{self, Attached},
    require_root,
    site::{addr, v4},
};

fn attached(gw: &Gateway) -> Vec<Attached> {
    let site = gw.site();
    gw.must(kernel::attached(site, &site.gw_dev_if))
}

/// Starts a gateway attaching with `attach` (`None`: the kernel's
/// default, TCX from 6.6, a netlink clsact filter before) and checks which
/// path was taken.
fn start<'s>(site: &'s Site, attach: Option<&'static str>) -> Gateway<'s> {
    let mut cfg = GatewayConfig::for_site(site);
    cfg.attach = attach;
    let gw = Gateway::start(site, cfg).unwrap();
    let via: Vec<&str> = attached(&gw).iter().map(|a| a.via).collect();
    let expected = match attach {
        Some("netlink") => "tc",
        _ if kernel::kernel_has_tcx() => "tcx",
        _ => "tc",
    };
    assert_eq!(
        via,
        [expected],
        "kernel.attach: {attach:?} on this kernel must attach through {expected}"
    );
    gw
}

#[test]
fn sigkill_fails_closed_and_restart_adopts_the_pinned_program() {
    fail_closed_then_adopted("fail-closed", None);
}

/// The netlink (`clsact`) path, which kernels before 6.6 take, on this
/// kernel too.
#[test]
fn netlink_path_fails_closed_and_restart_adopts_it() {
    fail_closed_then_adopted("fail-closed-nl", Some("netlink"));
}

#[test]
fn sigterm_keeps_guarding_and_uninstall_removes_everything() {
    clean_stop("clean-stop", None);
}

#[test]
fn netlink_path_sigterm_keeps_guarding_and_uninstall_removes_everything() {
    clean_stop("clean-stop-nl", Some("netlink"));
}

fn fail_closed_then_adopted(name: &str, attach: Option<&'static str>) {
    require_root();
    let site = Site::new(name).unwrap();
    let mut gw = start(&site, attach);
    let manager = v4(addr::UP_V4, addr::MANAGER_PORT);
    gw.must(device::manager_echo(&site, manager, 4096));
    let before = attached(&gw);
    assert_eq!(
        before.len(),
        1,
        "expected one program on {}: {before:?}",
        site.gw_dev_if
    );

    let killed = gw.sigkill();
    gw.must(killed);

    // Fail closed: nothing gets through while the daemon is down.
    gw.must(site.warm_neighbors());
    gw.must(device::expect_connect_timeout(&site, manager));
    gw.must(device::expect_connect_timeout(&site, v4(addr::UP_V4, 8080)));
    assert_eq!(
        site.servers.manager.get(),
        1,
        "the manager was reached with the daemon down"
    );
    assert_eq!(site.servers.service_8080.get(), 0);
    let pins = kernel::files_under(&site.pin_path()).unwrap();
    assert!(
        !pins.is_empty(),
        "no pins left in {} after SIGKILL",
        site.pin_path().display()
    );
    let while_down = attached(&gw);
    assert_eq!(
        while_down, before,
        "the attachment changed while the daemon was down"
    );

    let restarted = gw.restart();
    gw.must(restarted);
    gw.must(device::manager_echo(&site, manager, 4096));
    assert_eq!(site.servers.manager.get(), 2);
    let after = attached(&gw);
    assert_eq!(
        after.len(),
        1,
        "expected exactly one program after restart: {after:?}"
    );
    assert_eq!(
        after[0].id, before[0].id,
        "restart replaced the pinned program instead of adopting it"
    );
}

fn clean_stop(name: &str, attach: Option<&'static str>) {
    require_root();
    let site = Site::new(name).unwrap();
    let mut gw = start(&site, attach);
    gw.must(device::manager_echo(
        &site,
        v4(addr::UP_V4, addr::MANAGER_PORT),
        1024,
    ));
    let programs = attached(&gw);
    assert!(
        !programs.is_empty(),
        "nothing attached on {}",
        site.gw_dev_if
    );
    // What the daemon installs, seen before the stop so that the checks
    // after it are not vacuous.
    assert!(
        !gw.must(kernel::fwmark_rules(&site)).is_empty(),
        "no fwmark rule while running"
    );
    assert!(
        !gw.must(kernel::table_routes(&site, DEFAULT_ROUTE_TABLE))
            .is_empty(),
        "table {DEFAULT_ROUTE_TABLE} empty while running"
    );
    assert!(
        !kernel::files_under(&site.pin_path()).unwrap().is_empty(),
        "no pins while running"
    );
    // With no site configured the daemon still answers on its control
    // socket (`gateway status`), and on the default admin listener
    // (loopback of its namespace) it is ready.
    let running = gw.must(gw.status());
    assert_eq!(running["daemon"]["config_generation"], 1, "{running}");
    let (code, body) = site.curl_in_gw("http://127.0.0.1:9747/readyz");
    assert_eq!(code, 200, "/readyz: {body}");

    // A manager flow left open (agents keep theirs for hours) must not
    // hold the stop: it is closed, with its bytes recorded.
    let mut held = gw.must(device::connect_ok(
        &site,
        v4(addr::UP_V4, addr::MANAGER_PORT),
    ));
    let mut banner = [0u8; 8];
    held.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"manager\n");
    let held_port = held.local_addr().unwrap().port();

    // A routine stop (every `systemctl restart` and upgrade) must not open
    // the site: the program stays attached and drops what it would hand to
    // the daemon.
    let stopped = gw.sigterm(Duration::from_secs(10));
    let status = gw.must(stopped);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        gw.stderr_tail(30)
    );
    assert_eq!(attached(&gw), programs, "the attachment changed at SIGTERM");
    let rest = gw.must(device::read_until_closed(&mut held, Duration::from_secs(2)));
    assert!(rest.is_empty(), "bytes after the banner: {rest:?}");
    let closed = gw
        .audit()
        .unwrap()
        .into_iter()
        .find(|r| {
            r["event"] == "flow.passthrough"
                && r["device"]
                    .as_str()
                    .is_some_and(|d| d.ends_with(&format!(":{held_port}")))
        })
        .expect("a record of the flow the stop closed");
    assert_eq!(
        closed["detail"], "closed: the gateway is stopping",
        "{closed}"
    );
    assert_eq!(closed["bytes_down"], 8, "{closed}");
    gw.must(site.warm_neighbors());
    let manager = v4(addr::UP_V4, addr::MANAGER_PORT);
    gw.must(device::expect_connect_timeout(&site, manager));
    gw.must(device::expect_connect_timeout(&site, v4(addr::UP_V4, 8080)));
    assert_eq!(
        site.servers.manager.get(),
        2,
        "the manager was reached after SIGTERM"
    );
    assert_eq!(site.servers.service_8080.get(), 0);
    // Names and time are not answered either: their socket is gone.
    let dns_query = gateway_tests::dns::query_bytes(1, "wfm.site.example", 1);
    let answer = gw.must(gateway_tests::dns::udp_exchange(
        &site,
        v4(addr::UP_V4, 53),
        &dns_query,
        Duration::from_secs(1),
    ));
    assert!(answer.is_none(), "DNS answered with the daemon stopped");
    assert!(gw.must(gw.counter("drop_no_listener")) >= 1);
    let stop = gw
        .audit()
        .unwrap()
        .into_iter()
        .find(|r| r["event"] == "gateway.stop")
        .expect("a gateway.stop record");
    assert_eq!(stop["reason"], "guarding", "{stop}");

    // A restart adopts the same program (no gap, no second attachment).
    let restarted = gw.restart();
    gw.must(restarted);
    assert_eq!(attached(&gw), programs, "restart did not adopt the program");
    gw.must(device::manager_echo(&site, manager, 1024));
    // Uninstall refuses while a daemon runs...
    let refused = gw.uninstall();
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("is running")),
        "uninstall with a daemon running: {refused:?}"
    );
    assert_eq!(attached(&gw), programs);
    let stopped = gw.sigterm(Duration::from_secs(10));
    gw.must(stopped);
    // ...and removes everything once it is stopped.
    let said = gw.must(gw.uninstall());
    assert!(said.contains("removed"), "{said}");

    let left = attached(&gw);
    assert!(left.is_empty(), "still attached after uninstall: {left:?}");
    let filters = kernel::tc_filter_lines(&site, &site.gw_dev_if).unwrap();
    assert!(filters.is_empty(), "tc filters left: {filters:?}");
    let pins = kernel::files_under(&site.pin_path()).unwrap();
    assert!(pins.is_empty(), "pins left: {pins:?}");
    let rules = kernel::fwmark_rules(&site).unwrap();
    assert!(rules.is_empty(), "fwmark rules left: {rules:?}");
    let routes = kernel::table_routes(&site, DEFAULT_ROUTE_TABLE).unwrap();
    assert!(
        routes.is_empty(),
        "routes left in table {DEFAULT_ROUTE_TABLE}: {routes:?}"
    );
    for p in &programs {
        assert!(
            kernel::wait_prog_gone(p.id, Duration::from_secs(5)).unwrap(),
            "program {} ({}) still loaded",
            p.id,
            p.name
        );
    }
    let stops = gw
        .audit()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "gateway.stop")
        .count();
    assert_eq!(stops, 2, "expected one gateway.stop record per stop");
    // Uninstalling again finds nothing and says so.
    let again = gw.must(gw.uninstall());
    assert!(again.contains("nothing was installed"), "{again}");
}
