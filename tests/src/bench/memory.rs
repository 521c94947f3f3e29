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

/// The connection count of issue 5's target, read on the way to `conns`.
const FIRST_STAGE: usize = 1000;

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let n = b.opts.conns;
    // Memory is read after the first 1,000 (issue 5's target) and after all
    // `n` (issue 15's); with fewer, only at `n`.
    let stages: Vec<usize> = if n > FIRST_STAGE {
        vec![FIRST_STAGE, n]
    } else {
        vec![n]
    };
    b.report.method(
        "f",
        format!(
            "Memory: VmRSS of the gateway process 1 s after a fresh start (its cache on \
             disk kept), then with {} connections from the device open at once, each a \
             full TLS handshake plus one `GET /v2/` answered, kept alive; nginx (master + \
             workers) measured the same way for reference. Memory per connection is the \
             growth from idle to {n} connections, divided by {n}.",
            stages
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" and then ")
        ),
    );
    // One verified connection to each server proves its chain; the rest
    // skip the client's checks so that 10,000 open within the servers'
    // 15 s keep-alive idle time on two shared cores (the server's side of
    // each handshake is the same either way).
    let gw_cfg = tlsclient::verifying_config(&b.gw.site_ca)?;
    let nginx_cfg = tlsclient::verifying_config(&b.pki.ca_pem)?;
    let blind = tlsclient::blind_config()?;
    let mut gw = Subject::new("gateway", &stages);
    let mut ng = Subject::new("nginx", &stages);
    for run in 0..b.opts.runs {
        for server in [Server::Gateway, Server::Nginx] {
            // Restarted fresh, 1 s to settle; then its address, the config
            // that checks its chain, and how to read its resident memory.
            let (subject, addr, verified, rss): (_, _, _, Box<dyn Fn() -> Result<u64>>) =
                match server {
                    Server::Gateway => {
                        b.gw.restart()?;
                        thread::sleep(Duration::from_secs(1));
                        let pid = b.gw.pid()?;
                        let rss = Box::new(move || status_kb(pid, "VmRSS"));
                        (&mut gw, (ADDR_V4, 443), &gw_cfg, rss)
                    }
                    Server::Nginx => {
                        b.nginx.restart_empty()?;
                        thread::sleep(Duration::from_secs(1));
                        let pid = b.nginx.pid().context("nginx not running")?;
                        let rss = Box::new(move || rss_tree(pid));
                        (&mut ng, (PEER_NGINX, 443), &nginx_cfg, rss)
                    }
                };
            let conns = subject.measure(
                run,
                b.opts.runs,
                &stages,
                &b.site.dev_ns,
                SocketAddr::from(addr),
                [verified, &blind],
                rss,
            )?;
            if let Server::Gateway = server {
                // The gateway's side holds them all (nginx's sockets are
                // counted by its own RSS growth).
                let established = count_established(&b.site.gw_ns)?;
                ensure!(
                    established >= n,
                    "only {established} connections established on the gateway side, {n} opened"
                );
            }
            drop(conns);
        }
    }
    for (i, &count) in stages.iter().enumerate() {
        let m = gw.busy[i].summary();
        // Issue 5: 64 MiB with 1,000; issue 15: 256 MiB with 10,000.
        let limit = if count > FIRST_STAGE { 256.0 } else { 64.0 };
        b.report.check(
            "f",
            &format!("under {limit:.0} MiB with {count} connections"),
            format!("{:.1} MiB (spread {:.1}–{:.1})", m.median, m.min, m.max),
            m.median < limit,
        );
    }
    for f in gw.into_figures().into_iter().chain(ng.into_figures()) {
        b.report.add(f);
    }
    Ok(())
}

/// The servers measured, in each run's order.
#[derive(Clone, Copy)]
enum Server {
    Gateway,
    Nginx,
}

/// One server's figures: idle, at each stage, and per connection at the
/// last stage.
struct Subject {
    name: &'static str,
    idle: Figure,
    busy: Vec<Figure>,
    per: Figure,
}

impl Subject {
    fn new(name: &'static str, stages: &[usize]) -> Self {
        Self {
            name,
            idle: Figure::new("f", "resident memory, idle", name, "MiB", Better::Lower),
            busy: stages
                .iter()
                .map(|n| {
                    Figure::new(
                        "f",
                        format!("resident memory with {n} open TLS connections"),
                        name,
                        "MiB",
                        Better::Lower,
                    )
                })
                .collect(),
            per: Figure::new(
                "f",
                "memory per open connection",
                name,
                "KiB",
                Better::Lower,
            ),
        }
    }

    /// Checks the server's chain on one connection (closed again), reads
    /// `rss` idle, then opens `stages` connections (the counts `new` was
    /// given) to `addr` with the blind config, reading it at each; returns
    /// the connections (still open).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    fn measure(
        &mut self,
        run: usize,
        runs: usize,
        stages: &[usize],
        ns: &str,
        addr: SocketAddr,
        [verified, blind]: [&Arc<ClientConfig>; 2],
        rss: Box<dyn Fn() -> Result<u64>>,
    ) -> Result<Vec<Http>> {
        in_ns(ns, || tlsclient::connect(addr, HOST, verified))?
            .with_context(|| format!("a verified connection to {}", self.name))?;
        let idle = rss()?;
        let mut conns = Vec::new();
        let mut line = format!(
            "(f) run {}/{runs} {}: idle {:.1} MiB",
            run + 1,
            self.name,
            idle as f64 / MIB
        );
        let mut busy = idle;
        for (i, &count) in stages.iter().enumerate() {
            let (more, per) = open(ns, addr, blind, count - conns.len())?;
            conns.extend(more);
            busy = rss()?;
            self.busy[i].samples.push(busy as f64 / MIB);
            line.push_str(&format!(
                ", {count} connections {:.1} MiB ({:.1} ms per connection opened)",
                busy as f64 / MIB,
                per * 1000.0
            ));
        }
        progress(line);
        self.idle.samples.push(idle as f64 / MIB);
        let n = stages.last().copied().unwrap_or(1).max(1);
        self.per
            .samples
            .push(busy.saturating_sub(idle) as f64 / 1024.0 / n as f64);
        Ok(conns)
    }

    fn into_figures(self) -> Vec<Figure> {
        let mut out = vec![self.idle];
        out.extend(self.busy);
        out.push(self.per);
        out
    }
}

/// Client threads opening the connections: together they open 10,000 in
/// a few seconds, well inside the server's 15 s keep-alive idle time.
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
