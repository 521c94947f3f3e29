//! Part 1 of the demo, the kernel path: passthrough to the manager, drops
//! in the kernel, a denied interception; and the clean stop at the end.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_tests::{
    Gateway, Site, audit,
    config::DEFAULT_ROUTE_TABLE,
    device, kernel,
    site::{addr, v4},
    tls,
};

use super::steps::Steps;

/// Part 1: what the kernel path lets through, drops and hands the proxy.
pub fn kernel_path(steps: &mut Steps, site: &Site, gw: &Gateway<'_>) {
    // The dropped flows' device addresses, to wait for exactly their records.
    let mut udp_from: Option<SocketAddr> = None;
    let mut tcp_from: Option<SocketAddr> = None;
    steps.run(
        "device -> manager 10.77.2.2:443 (passed through untouched)",
        || {
            let e = device::manager_echo(site, v4(addr::UP_V4, addr::MANAGER_PORT), 64 * 1024)?;
            ensure!(
                site.servers.manager.get() == 1,
                "the manager saw {} connections",
                site.servers.manager.get()
            );
            Ok(format!(
                "from {}: banner \"manager\" read, {} random bytes echoed byte for byte",
                e.device, e.sent
            ))
        },
    );
    steps.run(
        "device -> 10.77.2.2:8080 (not intercepted: dropped)",
        || {
            site.warm_neighbors()?;
            let dropped = device::expect_connect_timeout(site, v4(addr::UP_V4, 8080))?;
            ensure!(
                site.servers.service_8080.get() == 0,
                "the service on 8080 accepted a connection"
            );
            tcp_from = Some(dropped.device);
            Ok(format!(
                "from {}: connect timed out after {:.1?}; the service on 8080 saw 0 connections",
                dropped.device, dropped.took
            ))
        },
    );
    steps.run("device -> udp 10.77.2.2:5353 (UDP: dropped)", || {
        let dst = v4(addr::UP_V4, addr::UDP_ECHO_PORT);
        let sock = device::udp_socket(site, 0, dst)?;
        sock.send(b"hello?")?;
        ensure!(
            device::udp_reply(&sock, Duration::from_secs(1))?.is_none(),
            "the echo answered"
        );
        ensure!(
            site.servers.udp_echo.get() == 0,
            "the echo received a datagram"
        );
        let from = sock.local_addr()?;
        udp_from = Some(from);
        Ok(format!(
            "from {from}: no reply within 1 s; the echo saw 0 datagrams"
        ))
    });
    steps.run(
        "device -> 10.77.9.9:443 claiming the manager's name (intercepted, denied)",
        || {
            let dst = v4(addr::UNROUTED_V4, 443);
            let mut s = device::connect_ok(site, dst)?;
            let local = s.local_addr()?;
            let _ = std::io::Write::write_all(&mut s, &tls::client_hello("wfm.site.example"));
            let got = device::read_until_closed(&mut s, Duration::from_secs(5))?;
            ensure!(
                !String::from_utf8_lossy(&got).contains("manager"),
                "tunnelled to the manager"
            );
            ensure!(
                site.servers.tcp_accepts() == 1,
                "an upstream server saw the connection"
            );
            gw.wait_audit(
                |r| audit::is_flow(r, "flow.denied", local, dst),
                Duration::from_secs(10),
            )?;
            Ok(format!(
                "from {local}: handshake accepted by the gateway's listener, closed after {} bytes; nothing upstream saw it",
                got.len()
            ))
        },
    );
    steps.run(
        "waiting for the drop records (flushed by the daemon)",
        || {
            let start = Instant::now();
            let udp_from = udp_from.context("no UDP flow to wait for (step failed)")?;
            let tcp_from = tcp_from.context("no TCP flow to wait for (step failed)")?;
            let tcp_dst = v4(addr::UP_V4, 8080);
            let udp_dst = v4(addr::UP_V4, addr::UDP_ECHO_PORT);
            gw.wait_audit_all(
                |rs| {
                    rs.iter().any(|r| {
                        audit::is_flow(r, "flow.dropped", tcp_from, tcp_dst)
                            && r["reason"] == "port_not_intercepted"
                    }) && rs.iter().any(|r| {
                        audit::is_flow(r, "flow.dropped", udp_from, udp_dst)
                            && r["reason"] == "protocol_not_allowed"
                    })
                },
                Duration::from_secs(10),
            )?;
            Ok(format!(
                "TCP to 8080 and UDP to 5353 both recorded after {:.1?}",
                start.elapsed()
            ))
        },
    );
    steps.run("kernel counters (gateway status --json)", || {
        let status = gw.status()?;
        let counters = status["counters"]
            .as_object()
            .context("no counters in status")?;
        Ok(counters
            .iter()
            .filter(|(_, v)| v.as_u64() != Some(0))
            .map(|(k, v)| format!("{k:<22} {v}"))
            .collect::<Vec<_>>()
            .join("\n"))
    });
}

/// SIGTERM (the program keeps guarding), then `gateway uninstall`: nothing
/// of the gateway may be left in the kernel.
pub fn stop(site: &Site, gw: &mut Gateway<'_>) -> Result<String> {
    let programs = kernel::attached(site, &site.gw_dev_if)?;
    let status = gw.sigterm(Duration::from_secs(10))?;
    ensure!(status.code() == Some(0), "exit status {status}");
    let guarding = kernel::attached(site, &site.gw_dev_if)?;
    ensure!(
        guarding == programs,
        "SIGTERM changed the attachment: {programs:?} -> {guarding:?}"
    );
    gw.uninstall()?;
    let left = kernel::attached(site, &site.gw_dev_if)?;
    let pins = kernel::files_under(&site.pin_path())?;
    let rules = kernel::fwmark_rules(site)?;
    let routes = kernel::table_routes(site, DEFAULT_ROUTE_TABLE)?;
    if !(left.is_empty() && pins.is_empty() && rules.is_empty() && routes.is_empty()) {
        bail!("left behind: attached {left:?}, pins {pins:?}, rules {rules:?}, routes {routes:?}");
    }
    for p in &programs {
        ensure!(
            kernel::wait_prog_gone(p.id, Duration::from_secs(5))?,
            "program {} still loaded",
            p.id
        );
    }
    Ok(format!(
        "SIGTERM: exit status 0, program still attached and guarding (fail closed)\ngateway uninstall: programs {:?} unloaded; no attachment, pin, fwmark rule or table {DEFAULT_ROUTE_TABLE} route left",
        programs.iter().map(|p| p.id).collect::<Vec<_>>()
    ))
}

pub fn show_attached(site: &Site) {
    match kernel::attached(site, &site.gw_dev_if) {
        Ok(a) => {
            for p in a {
                println!(
                    "  attached on {} ingress via {}: program {} ({})",
                    site.gw_dev_if, p.via, p.id, p.name
                );
            }
        }
        Err(e) => println!("  (could not query attachments: {e:#})"),
    }
}
