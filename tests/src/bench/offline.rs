//! (g) No stall while upstream is down: a warm pull of a small image whose
//! tag is past `tag_ttl`, with the upstream link up and with it cut, with
//! `cache.stale_while_revalidate` set (the last good copy is served at once
//! and revalidated in the background) and without it (the default: the tag
//! is revalidated before the answer, and with upstream down the stale copy
//! comes only after the upstream attempt gives up).

use std::{net::SocketAddr, time::Instant};

use anyhow::{Context as _, Result, ensure};

use super::{
    Bench, progress,
    stats::{Better, Figure, ratio},
    tlsclient::{self, Http},
    world::BenchGateway,
};
use crate::{
    netns::in_ns,
    oci::{ACCEPT_MANIFESTS, LINUX_AMD64, LayerSpec, Layout},
    registry::{self, ADDR_V4, HOST},
};

/// The image pulled: one layer of this many bytes (the demo image's order
/// of size, so that the tag's revalidation is what the pull waits on).
const LAYER_BYTES: u64 = 1 << 20;
const REPO: &str = "bench/offline";
/// `tag_ttl` of this section's gateways: every pull, a couple of seconds
/// after the one before, finds its tag past it.
const TAG_TTL: &str = "1s";
/// Between pulls: past `TAG_TTL` (whole seconds) with room to spare.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(2200);

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    b.report.method(
        "g",
        format!(
            "A warm pull of a one-layer image ({} layer): `GET` of the manifest by tag, the \
             config and the layer, on one new TLS connection from the device namespace \
             (rustls client), timed from connect to the last byte. The tag is past \
             `tag_ttl` ({TAG_TTL}) at every pull; the blobs are cached. Each run pulls \
             with the upstream link up, then with it cut (`ip link set down` on the \
             gateway's upstream veth), on a gateway with `stale_while_revalidate: 1h` and \
             on one with the default (0: revalidate before answering); with the link cut \
             a second pull follows the first at once (the default then serves the held \
             tag while it backs off).",
            super::size_text(LAYER_BYTES)
        ),
    );
    let layout = Layout::create(&b.dir.join("offline-layout"))?;
    let image = layout.image(LINUX_AMD64, &[LayerSpec::tar(LAYER_BYTES, 7)], REPO)?;
    b.registry
        .push(&layout, REPO, &image.manifest, "v1")
        .context("pushing the offline-section image")?;
    let paths = [
        format!("/v2/{REPO}/manifests/v1"),
        format!("/v2/{REPO}/blobs/{}", image.config.digest),
        format!("/v2/{REPO}/blobs/{}", image.layers[0].digest),
    ];

    let mut figures = Vec::new();
    let mut checks = Vec::new();
    for (label, swr) in [("stale_while_revalidate 1h", "1h"), ("default", "0s")] {
        b.gw.stop()?;
        let cache = format!("  tag_ttl: \"{TAG_TTL}\"\n  stale_while_revalidate: \"{swr}\"\n");
        let dir = b.dir.join(format!("gateway-offline-{swr}"));
        b.gw = BenchGateway::start_with_cache(b.site, b.registry, &dir, &cache)?;
        let cfg = tlsclient::verifying_config(&b.gw.site_ca)?;
        // Fill the cache (and the tag) once with upstream up.
        pull(b, &cfg, &paths)?;
        let name = format!("warm pull, {label}");
        let mut up = Figure::new("g", &name, "upstream up", "ms", Better::Lower);
        let mut cut = Figure::new("g", &name, "upstream cut", "ms", Better::Lower);
        let mut next = Figure::new("g", &name, "upstream cut, next pull", "ms", Better::Lower);
        for run in 0..b.opts.runs {
            std::thread::sleep(PAUSE);
            up.samples.push(pull(b, &cfg, &paths)?);
            registry::cut_upstream(b.site)?;
            std::thread::sleep(PAUSE);
            // The first pull of the outage, then one right after it.
            let first = pull(b, &cfg, &paths);
            let second = pull(b, &cfg, &paths);
            registry::restore_upstream(b.site)?;
            cut.samples.push(first?);
            next.samples.push(second?);
            progress(format!(
                "(g) run {}/{} {label}: up {:.1} ms, cut {:.1} ms, next {:.1} ms",
                run + 1,
                b.opts.runs,
                up.samples[run],
                cut.samples[run],
                next.samples[run]
            ));
        }
        let r_cut = ratio("g", format!("{name}: cut / up"), &cut, &up, Better::Lower);
        let r_next = ratio(
            "g",
            format!("{name}: next pull cut / up"),
            &next,
            &up,
            Better::Lower,
        );
        if swr != "0s" {
            let m = r_cut.summary();
            checks.push((
                "warm pull with upstream cut ≤ 1.2× with it up (stale_while_revalidate)",
                m,
            ));
        }
        figures.extend([up, cut, next, r_cut, r_next]);
    }
    for (target, m) in checks {
        b.report.check(
            "g",
            target,
            format!("{:.2}× (spread {:.2}–{:.2})", m.median, m.min, m.max),
            m.median <= 1.2,
        );
    }
    for f in figures {
        b.report.add(f);
    }
    drop(layout);
    let _ = std::fs::remove_dir_all(b.dir.join("offline-layout"));
    Ok(())
}

/// One pull on a new connection; milliseconds from connect to the last
/// byte of the layer.
fn pull(
    b: &Bench<'_, '_>,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
    paths: &[String],
) -> Result<f64> {
    let target = SocketAddr::from((ADDR_V4, 443));
    in_ns(&b.site.dev_ns, || -> Result<f64> {
        let t = Instant::now();
        let tls = tlsclient::connect(target, HOST, cfg)?;
        let mut http = Http::new(tls, HOST);
        for path in paths {
            let head = http.request("GET", path, ACCEPT_MANIFESTS)?;
            ensure!(
                head.status == 200,
                "GET {path} through the gateway answered {}",
                head.status
            );
        }
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    })?
}
