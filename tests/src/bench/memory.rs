//! (f) Resident memory: the gateway freshly started and idle, then holding
//! many open connections from the device, each one TLS-terminated with one
//! `GET /v2/` answered and kept alive; nginx the same way, for reference.
//!
//! The connections are opened one after another and memory is read at once,
//! well within the 15 s a keep-alive connection may idle; the count of
//! established connections on the server side is checked at that moment.

use std::{net::SocketAddr, sync::Arc, thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use rustls::ClientConfig;

use super::{
    Bench,
    proc::{rss_tree, status_kb},
    progress,
    stats::{Better, Figure},
    tlsclient::{self, Http},
    world::PEER_NGINX,
};
use crate::{
    netns::in_ns,
    registry::{ADDR_V4, HOST},
};

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let n = b.opts.conns;
    b.report.method(
        "f",
        format!(
            "Memory: VmRSS of the gateway process 1 s after a fresh start (its cache on \
             disk kept), then with {n} connections from the device open at once, each a \
             full TLS handshake plus one `GET /v2/` answered, kept alive; nginx (master + \
             workers) measured the same way for reference."
        ),
    );
    let cfg = tlsclient::verifying_config(&b.gw.site_ca)?;
    let nginx_cfg = tlsclient::verifying_config(&b.pki.ca_pem)?;
    let name_conns = format!("resident memory with {n} open TLS connections");
    let mut gw_idle = Figure::new(
        "f",
        "resident memory, idle",
        "gateway",
        "MiB",
        Better::Lower,
    );
    let mut gw_busy = Figure::new("f", name_conns.clone(), "gateway", "MiB", Better::Lower);
    let mut gw_per = Figure::new(
        "f",
        "memory per open connection",
        "gateway",
        "KiB",
        Better::Lower,
    );
    let mut ng_idle = Figure::new("f", "resident memory, idle", "nginx", "MiB", Better::Lower);
    let mut ng_busy = Figure::new("f", name_conns, "nginx", "MiB", Better::Lower);
    for run in 0..b.opts.runs {
        b.gw.restart()?;
        thread::sleep(Duration::from_secs(1));
        let pid = b.gw.pid()?;
        let idle = status_kb(pid, "VmRSS")?;
        let (conns, per) = open(&b.site.dev_ns, SocketAddr::from((ADDR_V4, 443)), &cfg, n)?;
        let busy = status_kb(pid, "VmRSS")?;
        let established = count_established(&b.site.gw_ns)?;
        drop(conns);
        ensure!(
            established >= n,
            "only {established} connections established on the gateway side, {n} opened"
        );
        progress(format!(
            "(f) run {}/{} gateway: idle {:.1} MiB, {n} connections {:.1} MiB ({:.1} ms per connection opened)",
            run + 1,
            b.opts.runs,
            idle as f64 / MIB,
            busy as f64 / MIB,
            per * 1000.0
        ));
        gw_idle.samples.push(idle as f64 / MIB);
        gw_busy.samples.push(busy as f64 / MIB);
        gw_per
            .samples
            .push((busy.saturating_sub(idle)) as f64 / 1024.0 / n as f64);

        b.nginx.restart_empty()?;
        thread::sleep(Duration::from_secs(1));
        let npid = b.nginx.pid().context("nginx not running")?;
        let idle = rss_tree(npid)?;
        let (conns, per) = open(
            &b.site.dev_ns,
            SocketAddr::from((PEER_NGINX, 443)),
            &nginx_cfg,
            n,
        )?;
        let busy = rss_tree(npid)?;
        drop(conns);
        progress(format!(
            "(f) run {}/{} nginx: idle {:.1} MiB, {n} connections {:.1} MiB ({:.1} ms per connection opened)",
            run + 1,
            b.opts.runs,
            idle as f64 / MIB,
            busy as f64 / MIB,
            per * 1000.0
        ));
        ng_idle.samples.push(idle as f64 / MIB);
        ng_busy.samples.push(busy as f64 / MIB);
    }
    let m = gw_busy.summary();
    b.report.check(
        "f",
        &format!("under 64 MiB with {n} connections"),
        format!("{:.1} MiB (spread {:.1}–{:.1})", m.median, m.min, m.max),
        m.median < 64.0,
    );
    for f in [gw_idle, gw_busy, gw_per, ng_idle, ng_busy] {
        b.report.add(f);
    }
    Ok(())
}

/// Client threads opening the connections: together they open 1,000 in a
/// second or two, well inside the server's 15 s keep-alive idle time.
const OPENERS: usize = 8;

/// Opens `n` keep-alive TLS connections from namespace `ns`, each with one
/// `GET /v2/` answered 200; returns them and the mean seconds one took.
fn open(ns: &str, addr: SocketAddr, cfg: &Arc<ClientConfig>, n: usize) -> Result<(Vec<Http>, f64)> {
    let t0 = std::time::Instant::now();
    let conns = in_ns(ns, || -> Result<Vec<Http>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..OPENERS)
                .map(|t| {
                    s.spawn(move || -> Result<Vec<Http>> {
                        let mut out = Vec::new();
                        for i in (t..n).step_by(OPENERS) {
                            let tls = tlsclient::connect(addr, HOST, cfg)
                                .with_context(|| format!("opening connection {i} to {addr}"))?;
                            let mut http = Http::new(tls, HOST);
                            let head = http.request("GET", "/v2/", "*/*")?;
                            ensure!(
                                head.status == 200,
                                "GET /v2/ on connection {i} answered {}",
                                head.status
                            );
                            out.push(http);
                        }
                        Ok(out)
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(n);
            for h in handles {
                all.extend(h.join().map_err(|_| anyhow::anyhow!("opener panicked"))??);
            }
            Ok(all)
        })
    })??;
    let per = t0.elapsed().as_secs_f64() * OPENERS as f64 / n.max(1) as f64;
    Ok((conns, per))
}

/// Established TCP connections in namespace `ns` with local port 443 (the
/// gateway's transparent sockets keep the device's original destination).
fn count_established(ns: &str) -> Result<usize> {
    let out = crate::netns::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "ss",
        "-Htn",
        "state",
        "established",
        "( sport = :443 )",
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}
