//! (a) Warm: a cached blob over TLS, 1 client and many at once: the
//! gateway (serving from its verified cache) vs nginx (`proxy_cache` hit)
//! vs a direct transfer from the origin registry.

use anyhow::{Result, ensure};

use super::{
    Bench, BlobRef,
    curl::{Target, parallel_get},
    progress, rotated, size_text,
    stats::{Better, Figure, ratio},
    transfer_timeout,
};

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let targets = [b.target_gateway(), b.target_nginx(), b.target_direct()];
    b.report.method(
        "a",
        format!(
            "Warm: `GET` of one {} blob and of one {} blob, each cached beforehand by the \
             gateway (its verified cache) and by nginx (`proxy_cache` HIT, checked), by 1 \
             and by {} concurrent `curl --http1.1` processes in the device namespace (the \
             direct client in the gateway namespace), body discarded. Throughput is \
             clients × size / the slowest client's `time_total`.",
            b.size_text(),
            size_text(b.warm_small.size),
            b.opts.warm_clients
        ),
    );
    let blobs = [b.warm.clone(), b.warm_small.clone()];
    for blob in &blobs {
        warm_up(b, &targets, &blob.path(), blob.size)?;
    }
    for (i, blob) in blobs.iter().enumerate() {
        // The first (the issue-5 blob) keeps its figures' names.
        measure(b, &targets, blob, i == 0)?;
    }
    Ok(())
}

/// Both client counts for one blob, the subjects rotated run by run.
fn measure(
    b: &mut Bench<'_, '_>,
    targets: &[Target; 3],
    blob: &BlobRef,
    first: bool,
) -> Result<()> {
    let (size, path) = (blob.size, blob.path());
    let size_text = size_text(size);
    let counts = [1, b.opts.warm_clients];
    let mut figures: Vec<Vec<Figure>> = counts
        .iter()
        .map(|&n| {
            targets
                .iter()
                .map(|t| {
                    Figure::new(
                        "a",
                        format!("warm {size_text}, {n} client{}: throughput", plural(n)),
                        t.label,
                        "MiB/s",
                        Better::Higher,
                    )
                })
                .collect()
        })
        .collect();
    for run in 0..b.opts.runs {
        for (ci, &n) in counts.iter().enumerate() {
            for (ti, t) in rotated(&indexed(targets), run) {
                let perf = if first && t.label == "gateway" && n > 1 {
                    b.perf("warm-gateway", run)?
                } else {
                    None
                };
                let (downloads, _wall) =
                    parallel_get(&t, &path, n, size, transfer_timeout(size, n))?;
                drop(perf);
                let slowest = downloads.iter().map(|d| d.secs).fold(0.0, f64::max);
                let mibps = n as f64 * size as f64 / MIB / slowest;
                progress(format!(
                    "(a) run {}/{} {size_text}, {n} client(s) {}: {mibps:.0} MiB/s",
                    run + 1,
                    b.opts.runs,
                    t.label
                ));
                figures[ci][ti].samples.push(mibps);
            }
        }
    }
    for (ci, &n) in counts.iter().enumerate() {
        let [gw, nginx, direct] = [&figures[ci][0], &figures[ci][1], &figures[ci][2]];
        let clients = format!("{n} client{}", plural(n));
        // The first blob's ratios keep the names they had before the second
        // blob came; the second's name its size.
        let name = if first {
            format!("warm, {clients}: throughput")
        } else {
            format!("warm {size_text}, {clients}: throughput")
        };
        let vs_nginx = ratio("a", name.clone(), gw, nginx, Better::Higher);
        let vs_direct = ratio("a", name, gw, direct, Better::Higher);
        let m = vs_nginx.summary();
        let measured = format!("{:.2}× (spread {:.2}–{:.2})", m.median, m.min, m.max);
        if first {
            b.report.check(
                "a",
                &format!("warm throughput ≥ 1.0× nginx, {clients}"),
                measured.clone(),
                m.median >= 1.0,
            );
        }
        if n > 1 {
            // Issue 15 item 3b: many clients, both sizes.
            b.report.check(
                "a",
                &format!("warm {size_text}, {clients}: throughput ≥ 1.2× nginx"),
                measured,
                m.median >= 1.2,
            );
        }
        for f in [gw, nginx, direct] {
            b.report.add(f.clone());
        }
        b.report.add(vs_nginx);
        b.report.add(vs_direct);
    }
    Ok(())
}

/// Fills the caches: the gateway and nginx each fetch the blob, and pulls
/// repeat until one is a hit (nginx says so in `X-Cache-Status`, the
/// gateway in its audit record; a fill is published only after its fsync
/// and rename, so the pull right after the first may still follow it).
fn warm_up(b: &Bench<'_, '_>, targets: &[Target], path: &str, size: u64) -> Result<()> {
    for t in targets {
        let mut hit = false;
        for _ in 0..10 {
            let (d, _) = parallel_get(t, path, 1, size, transfer_timeout(size, 1))?;
            hit = match t.label {
                "nginx" => d[0].cache_status == "HIT",
                "gateway" => {
                    // The record is written when the body ends: give it a moment.
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    b.gw.gw
                        .audit()?
                        .iter()
                        .rev()
                        .find(|r| r["event"] == "request" && r["path"] == path)
                        .is_some_and(|r| r["cache"] == "hit")
                }
                _ => true,
            };
            if hit {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        ensure!(hit, "{} never served the warm blob from its cache", t.label);
    }
    Ok(())
}

fn indexed(targets: &[Target]) -> Vec<(usize, Target)> {
    targets.iter().cloned().enumerate().collect()
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
