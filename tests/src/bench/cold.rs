//! (b) Cold: a blob nobody holds yet, pulled by 1 client and by several at
//! once: the gateway vs the distribution registry as a pull-through cache
//! vs nginx with `proxy_cache_lock`. Before every pull the subject is
//! restarted with an empty cache; the origin keeps serving the same bytes.
//!
//! Upstream traffic is counted twice: the `GET`s of the blob in the
//! origin's access log, and the bytes received on the gateway namespace's
//! upstream link (every peer sits in that namespace), which also catches
//! transfers still running when the clients are done (distribution's
//! background fill).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{
    Bench,
    distribution::PullThrough,
    progress, rotated,
    stats::{Better, Figure, ratio},
    transfer_timeout,
    warm::plural,
    world::{PEER_DISTRIBUTION, rx_bytes},
};
use crate::site::addr;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    Gateway,
    Distribution,
    Nginx,
}

impl Subject {
    fn label(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Distribution => "distribution",
            Self::Nginx => "nginx",
        }
    }
}

/// One subject's figures for one client count.
struct Figs {
    slowest: Figure,
    median_client: Figure,
    gets: Figure,
    upstream_mib: Figure,
}

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let size = b.cold.size;
    let path = b.cold.path();
    let n_many = b.opts.cold_clients;
    b.report.method(
        "b",
        format!(
            "Cold: `GET` of one {} blob that the subject does not hold (restarted with an \
             empty cache before every pull), by 1 client and by {n_many} clients started at \
             once (`curl --http1.1` in the device namespace). nginx has `proxy_cache_lock on` \
             with lock timeout and age raised to 1 h (docker-registry-proxy uses 880 s), so \
             it fetches once and the others wait; the distribution registry runs with \
             `proxy.remoteurl`. Upstream GETs are counted in the origin's access log, \
             upstream bytes on the gateway namespace's upstream link after traffic settles.",
            b.size_text()
        ),
    );
    let mut pull = PullThrough::start(
        &b.site.gw_ns,
        &b.dir.join("distribution"),
        PEER_DISTRIBUTION,
        &b.pki,
        &b.registry.url(),
        &b.registry.ca_pem,
    )?;
    let subjects = [Subject::Gateway, Subject::Distribution, Subject::Nginx];
    let counts = [1usize, n_many];
    let mut figs: Vec<Vec<Figs>> = counts
        .iter()
        .map(|&n| {
            subjects
                .iter()
                .map(|s| {
                    let name = |what: &str| {
                        format!("cold {}, {n} client{}: {what}", b.size_text(), plural(n))
                    };
                    Figs {
                        slowest: Figure::new(
                            "b",
                            name("slowest client"),
                            s.label(),
                            "s",
                            Better::Lower,
                        ),
                        median_client: Figure::new(
                            "b",
                            name("median client"),
                            s.label(),
                            "s",
                            Better::Lower,
                        ),
                        gets: Figure::new(
                            "b",
                            name("upstream GETs"),
                            s.label(),
                            "GETs",
                            Better::Lower,
                        ),
                        upstream_mib: Figure::new(
                            "b",
                            name("upstream bytes"),
                            s.label(),
                            "MiB",
                            Better::Lower,
                        ),
                    }
                })
                .collect()
        })
        .collect();

    for run in 0..b.opts.runs {
        for (ci, &n) in counts.iter().enumerate() {
            let order: Vec<(usize, Subject)> = subjects.iter().copied().enumerate().collect();
            for (si, subject) in rotated(&order, run) {
                let r = pull_cold(b, &mut pull, subject, &path, n, size, run)?;
                progress(format!(
                    "(b) run {}/{} {n} client(s) {}: slowest {:.2}s, median {:.2}s, {} upstream GET(s), {:.0} MiB upstream",
                    run + 1,
                    b.opts.runs,
                    subject.label(),
                    r.slowest,
                    r.median,
                    r.gets,
                    r.upstream_bytes as f64 / MIB
                ));
                let f = &mut figs[ci][si];
                f.slowest.samples.push(r.slowest);
                f.median_client.samples.push(r.median);
                f.gets.samples.push(r.gets as f64);
                f.upstream_mib.samples.push(r.upstream_bytes as f64 / MIB);
            }
        }
    }
    pull.stop();

    // Figures, then the ratios the targets are about.
    for (ci, _) in counts.iter().enumerate() {
        for f in &figs[ci] {
            for fig in [&f.slowest, &f.median_client, &f.gets, &f.upstream_mib] {
                b.report.add(fig.clone());
            }
        }
    }
    let mut gw_scaling = None;
    for (si, s) in subjects.iter().enumerate() {
        let scaling = ratio(
            "b",
            format!("cold: slowest of {n_many} clients vs 1 client"),
            &figs[1][si].slowest,
            &figs[0][si].slowest,
            Better::Lower,
        );
        let mut scaling = scaling;
        scaling.subject = format!("{} ({n_many} / 1)", s.label());
        if *s == Subject::Gateway {
            gw_scaling = Some(scaling.summary());
        }
        b.report.add(scaling);
    }
    for (ci, &n) in counts.iter().enumerate() {
        for si in [1, 2] {
            let r = ratio(
                "b",
                format!("cold, {n} client{}: slowest client time", plural(n)),
                &figs[ci][0].slowest,
                &figs[ci][si].slowest,
                Better::Lower,
            );
            let m = r.summary();
            b.report.check(
                "b",
                &format!(
                    "cold, {n} client{}: gateway beats {}",
                    plural(n),
                    subjects[si].label()
                ),
                format!(
                    "slowest-client time {:.2}× theirs (spread {:.2}–{:.2})",
                    m.median, m.min, m.max
                ),
                m.median < 1.0,
            );
            b.report.add(r);
        }
    }
    let gw_gets: Vec<f64> = figs
        .iter()
        .flat_map(|per_count| per_count[0].gets.samples.iter().copied())
        .collect();
    let max_gets = gw_gets.iter().copied().fold(0.0, f64::max);
    b.report.check(
        "b",
        "exactly one upstream fetch (gateway, every run)",
        format!("{max_gets:.0} GET(s) at most, over {} pulls", gw_gets.len()),
        gw_gets.iter().all(|&g| g == 1.0),
    );
    if let Some(m) = gw_scaling {
        b.report.check(
            "b",
            &format!("{n_many} clients finish within 1.2× the single client's time"),
            format!("{:.2}× (spread {:.2}–{:.2})", m.median, m.min, m.max),
            m.median <= 1.2,
        );
    }
    Ok(())
}

struct PullResult {
    slowest: f64,
    median: f64,
    gets: usize,
    upstream_bytes: u64,
}

fn pull_cold(
    b: &mut Bench<'_, '_>,
    pull: &mut PullThrough,
    subject: Subject,
    path: &str,
    n: usize,
    size: u64,
    run: usize,
) -> Result<PullResult> {
    let target = match subject {
        Subject::Gateway => {
            b.gw.restart_empty()?;
            b.target_gateway()
        }
        Subject::Distribution => {
            pull.restart_empty()?;
            b.target_distribution()
        }
        Subject::Nginx => {
            b.nginx.restart_empty()?;
            b.target_nginx()
        }
    };
    // Let the restart's own upstream traffic (distribution's /v2/ probe) land.
    std::thread::sleep(Duration::from_millis(300));
    let perf = if subject == Subject::Gateway && n > 1 {
        b.perf("cold-gateway", run)?
    } else {
        None
    };
    let log_before = b.registry.access_log()?.len();
    let rx_before = rx_bytes(&b.site.gw_ns, &b.site.gw_up_if)?;
    let (downloads, _wall) =
        super::curl::parallel_get(&target, path, n, size, transfer_timeout(size, n * 2))?;
    settle(&b.site.gw_ns, &b.site.gw_up_if)?;
    drop(perf);
    let rx_after = rx_bytes(&b.site.gw_ns, &b.site.gw_up_if)?;
    let gw_addr = addr::GW_UP_V4.to_string();
    let gets = b.registry.access_log()?[log_before..]
        .iter()
        .filter(|l| l.method == "GET" && l.path == path && l.remote == gw_addr)
        .count();
    if gets == 0 {
        bail!(
            "{}: no upstream GET of {path} in the origin's access log",
            subject.label()
        );
    }
    let mut times: Vec<f64> = downloads.iter().map(|d| d.secs).collect();
    times.sort_by(f64::total_cmp);
    Ok(PullResult {
        slowest: times.last().copied().unwrap_or(f64::NAN),
        median: super::stats::percentile_sorted(&times, 50.0),
        gets,
        upstream_bytes: rx_after.saturating_sub(rx_before),
    })
}

/// Waits until the upstream link has been quiet for a second (bounded):
/// a background fill may still be running after the clients are done.
fn settle(ns: &str, dev: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = rx_bytes(ns, dev)?;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = rx_bytes(ns, dev)?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(1) {
            return Ok(());
        }
    }
    bail!("the upstream link never went quiet");
}
