//! Part 3 of the demo: a second site, the way a real one looks. Its device
//! is configured with nothing but the site CA: its resolv.conf names a
//! resolver that would give wrong answers, its hosts file names nothing,
//! its NTP server is an upstream address, and a stock containerd pulls
//! `docker.io/library/app:1` from an upstream shaped like Docker Hub
//! (token service, CDN redirects). The gateway answers its names and its
//! time, passes the WFM and the identity service through, and serves the
//! pull; the audit trail shows each step.

use std::{
    io::Read as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_tests::{
    Gateway, GatewayConfig, Site,
    containerd::Containerd,
    device, dns,
    hub::{self, Hub, HubOptions},
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{
        Registry, RegistryOptions,
        netns_etc::{self, NetnsEtc},
        oci_gateway::{ca_export, cli},
    },
    site::{addr, v4},
};

use super::{kernel_path, steps::Steps, trail};

const REFERENCE: &str = "docker.io/library/app:1";
const MIS: &str = "mis.site.example";
const MIS_PORT: u16 = 8080;

pub fn run(steps: &mut Steps) {
    let site = match Site::new("demo-real") {
        Ok(s) => s,
        Err(e) => {
            steps.run("build the second site", || Err(e));
            return;
        }
    };
    println!(
        "site {}: device {} (no names, resolver {}, only the site CA trusted)",
        site.prefix,
        addr::DEV_V4,
        hub::RESOLVER_V4
    );
    let Some(reg) = steps.run_with(
        "upstream: the registry, and Docker Hub's shape beside it (registry-1.docker.io, auth.docker.io, the CDN)",
        || {
            let r = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options())?;
            Ok((r, "docker-registry holds the content".to_owned()))
        },
    ) else {
        return;
    };
    let Some(hub) = steps.run_with("start the hub and push library/app:1", || {
        let hub = Hub::start(&reg, HubOptions::default())?;
        let mut layout = Layout::create(&site.tmp_dir().join("src"))?;
        let img = layout.image(LINUX_AMD64, &[LayerSpec::gzip(4 << 20, 31)], "app")?;
        layout.tag(&img.manifest, "1")?;
        reg.push(&layout, "library/app", &img.manifest, "1")?;
        let shown = format!(
            "registry-1.docker.io {}: tokens from {} (Basic credentials required), blobs redirected to {}\npushed library/app:1 = {}",
            hub::REGISTRY_V4,
            hub::REALM,
            hub::CDN_HOST,
            img.manifest.digest
        );
        Ok(((hub, img.manifest.digest), shown))
    }) else {
        return;
    };
    let (hub, digest) = hub;
    let Some(mut gw) = steps.run_with(
        "the gateway: passthrough for the WFM and the identity service, DNS and time on, the hub as a site",
        || start_gateway(&site, &hub),
    ) else {
        return;
    };
    let Some(site_ca) = steps.run_with("gateway ca export: the device's one trust anchor", || {
        let pem = ca_export(&gw)?;
        Ok((
            pem,
            "written to the device's /etc/ssl/certs/ca-certificates.crt".to_owned(),
        ))
    }) else {
        return;
    };
    let dev_etc = NetnsEtc::create(
        &site.dev_ns,
        &[
            ("hosts", netns_etc::hosts_file(&[])),
            ("resolv.conf", format!("nameserver {}\n", hub::RESOLVER_V4)),
            ("ssl/certs/ca-certificates.crt", site_ca),
        ],
    );
    let _dev_etc = match dev_etc {
        Ok(e) => e,
        Err(e) => {
            steps.run("write the device's /etc", || Err(e));
            return;
        }
    };

    let resolver = IpAddr::V4(hub::RESOLVER_V4);
    steps.run(
        &format!("device asks its resolver {resolver} (dig): answered by the gateway, or refused"),
        || {
            let mut shown = Vec::new();
            for (name, qtype, want) in [
                (hub::REGISTRY_HOST, "A", "NOERROR"),
                ("wfm.site.example", "A", "NOERROR"),
                (MIS, "A", "NOERROR"),
                ("example.com", "A", "NXDOMAIN"),
                ("c2.exfil.example.net", "TXT", "NXDOMAIN"),
            ] {
                let d = dns::dig(&site, resolver, name, qtype, false)?;
                ensure!(d.status == want, "{name} {qtype}: {}\n{}", d.status, d.raw);
                shown.push(format!(
                    "{name:<24} {qtype:<4} {:<9} {}",
                    d.status,
                    d.answers
                        .iter()
                        .map(|(_, data)| data.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            ensure!(hub.resolver.queries()? == 0, "the wrong resolver was asked");
            shown.push("the resolver the device was given never saw a query".into());
            Ok(shown.join("\n"))
        },
    );
    steps.run(
        &format!("device sets its clock from {} (chronyd -Q)", addr::UP_V4),
        || {
            let q = dns::chrony_query(&site, IpAddr::V4(addr::UP_V4), &site.tmp_dir().join("chrony"))?;
            let synced = dns::host_clock_synchronised();
            let last = q.output.lines().rev().nth(1).unwrap_or_default().to_owned();
            match (synced, q.offset_secs) {
                (true, Some(off)) => Ok(format!("answered by the gateway: offset {off:+.6} s\n{last}")),
                (false, None) => Ok(format!(
                    "the gateway host's clock is not synchronised (adjtimex), so the gateway says so (stratum 16) and chronyd keeps its own time:\n{last}"
                )),
                _ => bail!("chronyd's result does not match the host clock's state:\n{}", q.output),
            }
        },
    );
    steps.run("device reaches the WFM and the identity service (passthrough)", || {
        let wfm = v4(addr::UP_V4, addr::MANAGER_PORT);
        let echo = device::manager_echo(&site, wfm, 4096)?;
        let mis = v4(addr::UP_V4, MIS_PORT);
        let mut s = device::connect_ok(&site, mis)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut banner = Vec::new();
        let _ = s.read_to_end(&mut banner);
        ensure!(banner == b"open\n", "the identity service said {banner:?}");
        Ok(format!(
            "wfm.site.example {wfm}: {} bytes echoed, untouched\n{MIS} {mis}: its banner, untouched",
            echo.received
        ))
    });
    steps.run(
        &format!("containerd (stock config) pulls {REFERENCE}"),
        || {
            let ctd = Containerd::start(&site.dev_ns, &site.tmp_dir().join("ctd"))?;
            let started = Instant::now();
            ctd.pull(REFERENCE)?;
            let row = ctd.image(REFERENCE)?.context("no image after the pull")?;
            ensure!(row.digest == digest, "pulled {} not {digest}", row.digest);
            Ok(format!(
                "{REFERENCE} = {} in {:.1} s: the device asked the gateway for registry-1.docker.io; the gateway did the token dance with its own credentials and followed the CDN redirect",
                row.digest,
                started.elapsed().as_secs_f64()
            ))
        },
    );
    steps.run("the audit trail of these first minutes", || {
        let records = gw.audit()?;
        let mut out = vec![trail::header()];
        for r in records.iter().filter(|r| {
            matches!(
                r["event"].as_str(),
                Some(
                    "dns.answered" | "dns.refused" | "time.served" | "flow.passthrough" | "request"
                )
            )
        }) {
            out.push(trail::line(r));
        }
        ensure!(out.len() > 5, "too few records: {}", out.len());
        Ok(out.join("\n"))
    });
    steps.run("stop the second gateway, uninstall", || {
        kernel_path::stop(&site, &mut gw)
    });
}

fn start_gateway<'s>(site: &'s Site, hub: &Hub<'_>) -> Result<(Gateway<'s>, String)> {
    let tmp = site.tmp_dir();
    let q = |p: &std::path::Path| serde_json::Value::String(p.to_string_lossy().into_owned());
    let mut config = GatewayConfig::for_site(site);
    config.extra_yaml.push_str(&format!(
        "passthrough:\n  - name: \"{MIS}\"\n    addresses: [\"{}:{MIS_PORT}\"]\ntls:\n  ca_dir: {}\nsites:\n{}cache:\n  dir: {}\n",
        addr::UP_V4,
        q(&tmp.join("ca")),
        hub.site_entry().yaml(),
        q(&tmp.join("cache")),
    ));
    let shown = config.to_yaml();
    let mut gw = Gateway::prepare(site, config)?;
    let init = cli(&gw, &["ca", "init"])?;
    ensure!(init.success(), "gateway ca init: {}", init.stderr.trim());
    gw.restart()?;
    Ok((gw, format!("gateway.yaml:\n{}", shown.trim_end())))
}
