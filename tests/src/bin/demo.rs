//! `cargo xtask demo`: a site in network namespaces, the gateway guarding
//! it, and what a device can and cannot do, shown step by step. Exits
//! non-zero if any step does not behave as shown.
//!
//! Part 1 is the kernel path: passthrough to the manager, drops, a denied
//! interception. Part 2 ([`demo::image`], [`demo::pulls`]) serves the site's registry: an
//! image pushed upstream, the gateway restarted with the site configured,
//! and a device pulling it cold, warm and with the upstream link cut. Then
//! the audit trail, `gateway cache ls`, and a clean stop.

use std::{process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, ensure};
use gateway_tests::{
    Gateway, GatewayConfig, Site,
    registry::{self, Registry, RegistryOptions},
    site::addr,
};
use serde_json::Value;

#[path = "../demo/mod.rs"]
mod demo;

use demo::{
    image, kernel_path,
    pulls::Pulls,
    steps::{Steps, secs},
    trail,
};

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the demo needs root (CAP_NET_ADMIN, CAP_BPF): run `cargo xtask demo` as root");
        return ExitCode::FAILURE;
    }
    let start = Instant::now();
    let outcome = run_demo();
    let took = secs(start.elapsed());
    match outcome {
        Ok(0) => {
            println!("\ndemo: every step behaved as shown ({took})");
            ExitCode::SUCCESS
        }
        Ok(failed) => {
            println!("\ndemo: {failed} step(s) did not behave as shown ({took})");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("\ndemo aborted after {took}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo() -> Result<usize> {
    println!("== Margo transparent egress gateway: demo ==");
    let site = Site::new("demo").context("building the site")?;
    println!(
        "site {}: namespaces {}, {}, {}",
        site.prefix, site.dev_ns, site.gw_ns, site.up_ns
    );
    println!(
        "  device   {} {}/24 {}/64 (default route via the gateway)",
        site.dev_if,
        addr::DEV_V4,
        addr::DEV_V6
    );
    println!(
        "  gateway  {} {} | {} {} (no default route, forwarding off)",
        site.gw_dev_if,
        addr::GW_DEV_V4,
        site.gw_up_if,
        addr::GW_UP_V4
    );
    println!(
        "  upstream {} {}: manager :443, services :8080 :22, udp echo :5353; {} unrouted",
        site.up_if,
        addr::UP_V4,
        addr::UNROUTED_V4
    );

    let failed = {
        let mut steps = Steps::default();
        let config = GatewayConfig::for_site(&site);
        println!(
            "\ngateway config ({}):",
            site.tmp_dir().join("gateway.yaml").display()
        );
        for line in config.to_yaml().lines() {
            println!("  {line}");
        }
        let mut gw = Gateway::start(&site, config).context("starting the gateway")?;
        println!("\ngateway ready (pid {})", gw.pid().unwrap_or(0));
        kernel_path::show_attached(&site);

        steps.section("Part 1: the kernel path (manager passthrough, drops, denied interception)");
        kernel_path::kernel_path(&mut steps, &site, &gw);

        steps.section(&format!(
            "Part 2: {} served from the gateway's verified cache",
            registry::HOST
        ));
        let registry = steps.run_with(
            &format!(
                "upstream: start the registry {} ({}:443, TLS under its own CA)",
                registry::HOST,
                registry::ADDR_V4
            ),
            || {
                let r = Registry::start(&site, RegistryOptions::default())?;
                let shown = format!(
                    "docker-registry (pid {}) in {}, storage {}",
                    r.pid().unwrap_or(0),
                    site.up_ns,
                    r.storage.display()
                );
                Ok((r, shown))
            },
        );
        let pushed = match &registry {
            Some(r) => steps.run_with(
                &format!(
                    "push {}/{}:{} (a two-platform index, a 16 MiB layer)",
                    registry::HOST,
                    image::REPO,
                    image::TAG
                ),
                || image::push_image(r),
            ),
            None => None,
        };
        let mut world = match (&registry, &pushed) {
            (Some(r), Some(_)) => steps.run_with(
                "configure the site: sites + cache in gateway.yaml, site CA, restart",
                || image::configure(&site, r, &mut gw),
            ),
            _ => None,
        };
        let cold =
            "(a) cold pull through the gateway: every document and blob a miss, fetched once";
        let warm = "(b) warm pull: every request a cache hit, nothing reaches the registry";
        let offline =
            "(c) pull with the upstream link cut: served from the cache; then the link is restored";
        match (&registry, &pushed, &world) {
            (Some(reg), Some(pushed), Some((ogw, device))) => {
                let p = Pulls {
                    site: &site,
                    gw: ogw,
                    registry: reg,
                    pushed,
                };
                let cold_started = steps.run_with(cold, || p.cold(device));
                steps.run(warm, || p.warm());
                match cold_started {
                    Some(t) => {
                        steps.run(offline, || p.offline(t));
                    }
                    None => steps.skip(offline, "the cold pull failed"),
                }
            }
            _ => {
                for title in [cold, warm, offline] {
                    steps.skip(title, "the site is not configured");
                }
            }
        }

        steps.section(
            "Part 3: a device's first minutes on a real site (names, time, WFM, identity service, containerd by name)",
        );
        demo::real_site::run(&mut steps);

        steps.section("The audit trail");
        let active = match world.as_mut() {
            Some((ogw, _)) => &mut ogw.gw,
            None => &mut gw,
        };
        steps.run(
            "request and flow.* records (gateway.start/stop for context), in log order",
            || audit_trail(active, pushed.is_some()),
        );
        if let Some((ogw, _)) = &world {
            steps.run("gateway cache ls", || ogw.cache_ls());
        }
        let active = match world.as_mut() {
            Some((ogw, _)) => &mut ogw.gw,
            None => &mut gw,
        };
        steps.run(
            "SIGTERM: the gateway stops and its program keeps guarding; gateway uninstall removes it",
            || kernel_path::stop(&site, active),
        );
        steps.failed()
    };
    let prefix = site.prefix.clone();
    drop(site);
    let left = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0);
    println!("\nsite {prefix} removed ({left} namespaces left)");
    Ok(failed + usize::from(left != 0))
}

/// The audit log, one compact line per record; with the registry part
/// run, every cache label the pulls produced must be there.
fn audit_trail(gw: &Gateway<'_>, pulled: bool) -> Result<String> {
    let records = gw.audit()?;
    let shown: Vec<&Value> = records
        .iter()
        .filter(|r| {
            let e = r["event"].as_str().unwrap_or_default();
            e == "request" || e.starts_with("flow.") || e.starts_with("gateway.")
        })
        .collect();
    let count = |event: &str| {
        records
            .iter()
            .filter(|r| r["event"].as_str().is_some_and(|e| e.starts_with(event)))
            .count()
    };
    let label = |l: &str| {
        records
            .iter()
            .filter(|r| r["event"] == "request" && r["cache"] == l)
            .count()
    };
    if pulled {
        for l in ["miss", "hit", "stale", "revalidated"] {
            ensure!(label(l) > 0, "no request record with cache {l}");
        }
    }
    let mut out = vec![
        format!(
            "{} records: {} request (miss {}, hit {}, stale {}, revalidated {}), {} flow.*",
            records.len(),
            count("request"),
            label("miss"),
            label("hit"),
            label("stale"),
            label("revalidated"),
            count("flow.")
        ),
        format!("log: {}", gw.config.audit_path.display()),
        trail::header(),
    ];
    out.extend(shown.iter().map(|r| trail::line(r)));
    Ok(out.join("\n"))
}
