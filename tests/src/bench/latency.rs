//! (d) Manifest `HEAD` latency through the gateway vs direct: one
//! keep-alive TLS connection each, requests one after the other, every
//! request timed from the first byte written to the end of the headers.

use std::{net::SocketAddr, time::Instant};

use anyhow::{Result, ensure};

use super::{
    Bench, progress, rotated,
    stats::{Better, Figure, percentile},
    tlsclient::{self, Http},
};
use crate::{
    netns::in_ns,
    oci::ACCEPT_MANIFESTS,
    registry::{ADDR_V4, HOST},
};

/// Requests before timing starts (connection, caches, branch predictors).
const WARMUP: usize = 50;

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let path = b.warm.manifest_path();
    let n = b.opts.head_requests;
    b.report.method(
        "d",
        format!(
            "Manifest HEAD by tag (`{path}`) on one keep-alive HTTP/1.1 TLS connection \
             (rustls client), {n} requests one after another per run after {WARMUP} \
             untimed ones; through the gateway from the device namespace (the tag is \
             fresh in its cache: `tag_ttl` 5 min), and directly to the registry from the \
             gateway namespace. Added latency is the gateway's percentile minus the \
             direct one, run by run."
        ),
    );
    let gw_cfg = tlsclient::verifying_config(&b.gw.site_ca)?;
    let direct_cfg = tlsclient::verifying_config(&b.registry.ca_pem)?;
    let subjects: [(&str, String, std::sync::Arc<rustls::ClientConfig>); 2] = [
        ("gateway", b.site.dev_ns.clone(), gw_cfg),
        ("direct", b.site.gw_ns.clone(), direct_cfg),
    ];
    let mut p50: Vec<Figure> = subjects
        .iter()
        .map(|(s, _, _)| Figure::new("d", "manifest HEAD latency p50", *s, "ms", Better::Lower))
        .collect();
    let mut p99: Vec<Figure> = subjects
        .iter()
        .map(|(s, _, _)| Figure::new("d", "manifest HEAD latency p99", *s, "ms", Better::Lower))
        .collect();
    let target = SocketAddr::from((ADDR_V4, 443));
    for run in 0..b.opts.runs {
        let order: Vec<usize> = (0..subjects.len()).collect();
        for i in rotated(&order, run) {
            let (label, ns, cfg) = &subjects[i];
            let samples = in_ns(ns, || -> Result<Vec<f64>> {
                let tls = tlsclient::connect(target, HOST, cfg)?;
                let mut http = Http::new(tls, HOST);
                let mut out = Vec::with_capacity(n);
                for k in 0..WARMUP + n {
                    let t = Instant::now();
                    let head = http.request("HEAD", &path, ACCEPT_MANIFESTS)?;
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    ensure!(
                        head.status == 200,
                        "{label}: HEAD {path} answered {}",
                        head.status
                    );
                    if k >= WARMUP {
                        out.push(ms);
                    }
                }
                Ok(out)
            })??;
            let (a, z) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
            progress(format!(
                "(d) run {}/{} {label}: p50 {a:.3} ms, p99 {z:.3} ms",
                run + 1,
                b.opts.runs
            ));
            p50[i].samples.push(a);
            p99[i].samples.push(z);
        }
    }
    let added = |figs: &[Figure], name: &str| {
        let mut f = Figure::new("d", name, "gateway − direct", "ms", Better::Lower);
        f.samples = figs[0]
            .samples
            .iter()
            .zip(&figs[1].samples)
            .map(|(g, d)| g - d)
            .collect();
        f
    };
    let added50 = added(&p50, "manifest HEAD added latency p50");
    let added99 = added(&p99, "manifest HEAD added latency p99");
    let m = added50.summary();
    b.report.check(
        "d",
        "added p50 under 0.5 ms",
        format!("{:.3} ms (spread {:.3}–{:.3})", m.median, m.min, m.max),
        m.median < 0.5,
    );
    for f in p50.into_iter().chain(p99).chain([added50, added99]) {
        b.report.add(f);
    }
    first_request(b)
}

/// New connections per run for the first-request latency.
const NEW_CONNS: usize = 100;

/// A new connection's cost to a device: TCP connect, full TLS handshake
/// (verified) and a first `GET /v2/`, one connection after another: the
/// gateway vs nginx vs the registry itself.
fn first_request(b: &mut Bench<'_, '_>) -> Result<()> {
    let n = if b.opts.smoke { 10 } else { NEW_CONNS };
    b.report.method(
        "d",
        format!(
            "First request on a new connection: TCP connect, verified TLS handshake and \
             `GET /v2/`, timed to the end of the response, {n} connections one after \
             another per run: the gateway, nginx, and the registry directly (from the \
             gateway namespace)."
        ),
    );
    let subjects = [
        (
            "gateway",
            b.site.dev_ns.clone(),
            SocketAddr::from((ADDR_V4, 443)),
            tlsclient::verifying_config(&b.gw.site_ca)?,
        ),
        (
            "nginx",
            b.site.dev_ns.clone(),
            SocketAddr::from((super::world::PEER_NGINX, 443)),
            tlsclient::verifying_config(&b.pki.ca_pem)?,
        ),
        (
            "direct",
            b.site.gw_ns.clone(),
            SocketAddr::from((ADDR_V4, 443)),
            tlsclient::verifying_config(&b.registry.ca_pem)?,
        ),
    ];
    let mut figs: Vec<Figure> = subjects
        .iter()
        .map(|(s, ..)| {
            Figure::new(
                "d",
                "new connection + first request p50",
                *s,
                "ms",
                Better::Lower,
            )
        })
        .collect();
    for run in 0..b.opts.runs {
        for i in rotated(&[0usize, 1, 2], run) {
            let (label, ns, addr, cfg) = &subjects[i];
            let samples = in_ns(ns, || -> Result<Vec<f64>> {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    let tls = tlsclient::connect(*addr, HOST, cfg)?;
                    let mut http = Http::new(tls, HOST);
                    let head = http.request("GET", "/v2/", "*/*")?;
                    out.push(t.elapsed().as_secs_f64() * 1000.0);
                    ensure!(
                        head.status == 200,
                        "{label}: GET /v2/ answered {}",
                        head.status
                    );
                }
                Ok(out)
            })??;
            let p = percentile(&samples, 50.0);
            progress(format!(
                "(d) run {}/{} {label}: new connection + first request p50 {p:.2} ms",
                run + 1,
                b.opts.runs
            ));
            figs[i].samples.push(p);
        }
    }
    for f in figs {
        b.report.add(f);
    }
    Ok(())
}
