//! (c) Full TLS handshakes per second: the gateway with leaves minted under
//! its site CA, for 1 name and for many distinct names, vs nginx with one
//! static P-256 certificate.
//!
//! Client threads in the device namespace run connect, full handshake (no
//! resumption), close_notify, and wait for the server to close, in a loop
//! for a fixed time. Two figures per burst: handshakes per wall second, and
//! handshakes per CPU-second of the server process (its own user + system
//! time over the burst; nginx: master and workers), which is the per-core
//! rate whatever the clients cost on the shared cores.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustls::ClientConfig;

use super::{
    Bench,
    proc::{cpu_seconds, cpu_seconds_tree},
    progress, rotated,
    stats::{Better, Figure, ratio},
    tlsclient::{blind_config, handshake_and_close, verifying_config},
    world::{BenchGateway, PEER_NGINX, bench_host},
};
use crate::{
    netns::in_ns,
    registry::{ADDR_V4, HOST},
};

/// What one burst did.
struct Burst {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    wall: f64,
    server_cpu: f64,
}

impl Burst {
    fn per_wall_second(&self) -> f64 {
        self.ok as f64 / self.wall
    }

    fn per_cpu_second(&self) -> f64 {
        self.ok as f64 / self.server_cpu.max(0.01)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    GatewayOne,
    GatewayMany,
    NginxOne,
    NginxMany,
}

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let names_n = b.opts.names;
    b.report.method(
        "c",
        format!(
            "Handshakes: {} client threads in the device namespace loop for {} s per burst: \
             TCP connect, full TLS 1.3 handshake (X25519, ECDSA P-256, no resumption; the \
             client skips certificate checks so that its CPU goes to the handshake, after one \
             verified handshake per configuration), close_notify, and wait for the server's \
             close. Rates are per wall second and per CPU-second of the server process \
             (`/proc/<pid>/stat`; nginx: master + workers). The 1-name figures run against \
             the gateway configured with its one site; the {names_n}-name figures against \
             the gateway re-created with {names_n} more site names (its CA then carries \
             {names_n} name constraints; as a root the devices hold, it is not sent), all leaves minted \
             beforehand, cycling through the names; its 1-name figure is measured again \
             there for the ratio. nginx serves one static certificate whatever the name.",
            b.opts.handshake_threads, b.opts.handshake_secs
        ),
    );
    let blind = blind_config()?;
    let gw_addr = SocketAddr::from((ADDR_V4, 443));
    let nginx_addr = SocketAddr::from((PEER_NGINX, 443));
    let dev = b.site.dev_ns.clone();
    let one = vec![HOST.to_owned()];
    // Verified once each: the minted chain and nginx's certificate are good.
    let gw_verify = verifying_config(&b.gw.site_ca)?;
    let nginx_verify = verifying_config(&b.pki.ca_pem)?;
    in_ns(&dev, || handshake_and_close(gw_addr, HOST, &gw_verify))?
        .context("verified handshake with the gateway")?;
    in_ns(&dev, || {
        handshake_and_close(nginx_addr, HOST, &nginx_verify)
    })?
    .context("verified handshake with nginx")?;

    // Phase 1: the gateway with one site.
    let mut p1: Vec<(Case, Figure, Figure)> =
        [(Case::GatewayOne, "gateway"), (Case::NginxOne, "nginx")]
            .into_iter()
            .map(|(c, s)| figs(c, s, "1 name", "one site"))
            .collect();
    for run in 0..b.opts.runs {
        for i in rotated(&[0usize, 1], run) {
            let case = p1[i].0;
            let (addr, pid, tree) = match case {
                Case::GatewayOne => (gw_addr, b.gw.pid()?, false),
                _ => (
                    nginx_addr,
                    b.nginx.pid().context("nginx not running")?,
                    true,
                ),
            };
            let perf = if case == Case::GatewayOne {
                b.perf("handshake-1-name", run)?
            } else {
                None
            };
            let r = burst(b, &dev, addr, &one, &blind, pid, tree)?;
            drop(perf);
            record(&mut p1[i], &r, run, b.opts.runs, &mut b.report.notes);
        }
    }

    // Phase 2: the gateway re-created with many names.
    progress(format!(
        "(c) re-creating the gateway with {names_n} more site names"
    ));
    b.gw.stop()?;
    let gw_many = BenchGateway::start(b.site, b.registry, names_n, &b.dir.join("gateway-names"))?;
    b.gw = gw_many;
    let names: Vec<String> = (0..names_n).map(bench_host).collect();
    let many_verify = verifying_config(&b.gw.site_ca)?;
    for name in [&names[0], &names[names_n - 1]] {
        in_ns(&dev, || handshake_and_close(gw_addr, name, &many_verify))?
            .with_context(|| format!("verified handshake with the gateway for {name}"))?;
    }
    let first = first_contact(&dev, gw_addr, &names, &blind)?;
    let mut f = Figure::new(
        "c",
        format!("first handshake for each of {names_n} names (mints every leaf)"),
        "gateway",
        "s",
        Better::Lower,
    );
    f.samples.push(first);
    b.report.add(f);

    let mut p2: Vec<(Case, Figure, Figure)> = vec![
        figs(
            Case::GatewayOne,
            "gateway",
            "1 name",
            &format!("{names_n} sites"),
        ),
        figs(
            Case::GatewayMany,
            "gateway",
            &format!("{names_n} names"),
            &format!("{names_n} sites"),
        ),
        figs(
            Case::NginxMany,
            "nginx",
            &format!("{names_n} names"),
            "static cert",
        ),
    ];
    for run in 0..b.opts.runs {
        for i in rotated(&[0usize, 1, 2], run) {
            let case = p2[i].0;
            let (addr, pid, tree, list) = match case {
                Case::GatewayOne => (gw_addr, b.gw.pid()?, false, &one),
                Case::GatewayMany => (gw_addr, b.gw.pid()?, false, &names),
                _ => (
                    nginx_addr,
                    b.nginx.pid().context("nginx not running")?,
                    true,
                    &names,
                ),
            };
            let perf = if case == Case::GatewayMany {
                b.perf("handshake-many-names", run)?
            } else {
                None
            };
            let r = burst(b, &dev, addr, list, &blind, pid, tree)?;
            drop(perf);
            record(&mut p2[i], &r, run, b.opts.runs, &mut b.report.notes);
        }
    }

    let gw1 = p1[0].2.summary();
    b.report.check(
        "c",
        "≥ 5,000 new handshakes per second per core, cached leaf",
        format!(
            "{:.0} per gateway CPU-second (spread {:.0}–{:.0})",
            gw1.median, gw1.min, gw1.max
        ),
        gw1.median >= 5000.0,
    );
    let many_vs_one = ratio(
        "c",
        format!("handshakes per CPU-second, {names_n} names vs 1 name"),
        &p2[1].2,
        &p2[0].2,
        Better::Higher,
    );
    let m = many_vs_one.summary();
    b.report.check(
        "c",
        &format!("{names_n}-name case within 2× of the 1-name case"),
        format!(
            "{:.2}× the 1-name rate (spread {:.2}–{:.2})",
            m.median, m.min, m.max
        ),
        m.median >= 0.5,
    );
    let vs_nginx = ratio(
        "c",
        "handshakes per CPU-second, 1 name",
        &p1[0].2,
        &p1[1].2,
        Better::Higher,
    );
    for (_, wall, cpu) in p1.into_iter().chain(p2) {
        b.report.add(wall);
        b.report.add(cpu);
    }
    b.report.add(vs_nginx);
    b.report.add(many_vs_one);
    Ok(())
}

fn figs(case: Case, subject: &str, names: &str, config: &str) -> (Case, Figure, Figure) {
    let subject = format!("{subject} ({config})");
    (
        case,
        Figure::new(
            "c",
            format!("TLS handshakes, {names}: per wall second"),
            subject.clone(),
            "/s",
            Better::Higher,
        ),
        Figure::new(
            "c",
            format!("TLS handshakes, {names}: per server CPU-second"),
            subject,
            "/cpu-s",
            Better::Higher,
        ),
    )
}

fn record(
    fig: &mut (Case, Figure, Figure),
    r: &Burst,
    run: usize,
    runs: usize,
    notes: &mut Vec<String>,
) {
    progress(format!(
        "(c) run {}/{runs} {} {}: {} ok, {} failed, {:.0}/s wall, {:.0}/cpu-s (server cpu {:.2}s)",
        run + 1,
        fig.1.subject,
        fig.1.name,
        r.ok,
        r.failed,
        r.per_wall_second(),
        r.per_cpu_second(),
        r.server_cpu
    ));
    if r.failed > 0 {
        notes.push(format!(
            "(c) {} — {}: {} of {} handshakes failed in run {}; first error: {}",
            fig.1.subject,
            fig.1.name,
            r.failed,
            r.ok + r.failed,
            run + 1,
            r.first_error.as_deref().unwrap_or("?")
        ));
    }
    fig.1.samples.push(r.per_wall_second());
    fig.2.samples.push(r.per_cpu_second());
}

fn burst(
    b: &Bench<'_, '_>,
    ns: &str,
    addr: SocketAddr,
    names: &[String],
    cfg: &Arc<ClientConfig>,
    server_pid: u32,
    tree: bool,
) -> Result<Burst> {
    let cpu = |pid| {
        if tree {
            cpu_seconds_tree(pid)
        } else {
            cpu_seconds(pid)
        }
    };
    let threads = b.opts.handshake_threads;
    let ok = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let first_error = Mutex::new(None::<String>);
    let cpu0 = cpu(server_pid)?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(b.opts.handshake_secs);
    in_ns(ns, || {
        std::thread::scope(|s| {
            for t in 0..threads {
                let (ok, failed, first_error) = (&ok, &failed, &first_error);
                s.spawn(move || {
                    let mut i = t;
                    while Instant::now() < deadline {
                        let name = &names[i % names.len()];
                        match handshake_and_close(addr, name, cfg) {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                                fe.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                        i += threads;
                    }
                });
            }
        });
    })?;
    let wall = t0.elapsed().as_secs_f64();
    let server_cpu = cpu(server_pid)? - cpu0;
    let r = Burst {
        ok: ok.into_inner(),
        failed: failed.into_inner(),
        first_error: first_error.into_inner().unwrap_or_else(|p| p.into_inner()),
        wall,
        server_cpu,
    };
    if r.ok == 0 {
        bail!(
            "no handshake succeeded with {addr}: {}",
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(r)
}

/// One handshake per name, in order, retrying a name the mint rate limit
/// refused; returns the seconds until every name had its leaf.
fn first_contact(
    ns: &str,
    addr: SocketAddr,
    names: &[String],
    cfg: &Arc<ClientConfig>,
) -> Result<f64> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(120);
    in_ns(ns, || -> Result<()> {
        for name in names {
            loop {
                match handshake_and_close(addr, name, cfg) {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(e).with_context(|| format!("no leaf for {name} after 120 s"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        Ok(())
    })??;
    let secs = t0.elapsed().as_secs_f64();
    progress(format!(
        "(c) first handshake for each of {} names: {secs:.2}s",
        names.len()
    ));
    Ok(secs)
}
