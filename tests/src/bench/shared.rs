//! (i) The shared cache tier (issue 16): one blob through a gateway with
//! `cache.store` on a three-node Garage cluster, in three states of the
//! same run: held on the gateway's local disk, held only by the store
//! (the gateway restarted with an empty local cache), and held by nobody
//! (fetched from the origin).

use anyhow::{Context as _, Result, ensure};

use super::{
    Bench, curl, progress,
    stats::{Better, Figure, ratio},
    transfer_timeout,
    world::BenchGateway,
};

/// The store node the gateway uses as its endpoint.
const NODE: usize = 0;

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let garage = b
        .garage
        .context("(i) needs the Garage cluster the benchmark starts with it")?;
    b.report.method(
        "i",
        format!(
            "One {} blob (`GET`, one `curl --http1.1` from the device namespace, curl's \
             `time_total`) through a gateway whose `cache.store` is a three-node Garage \
             cluster (Garage 2.5 as setup builds it: its own crates at opt-level 0, its \
             dependencies at 1; replication 3; one LAN \
             hop from the gateway namespace through a router namespace). Each run: the blob \
             is deleted from the bucket and the gateway restarted with an empty local \
             cache, then pulled (origin: the registry, upstream of the gateway); once the \
             gateway has written it to the store, the gateway is restarted empty again and \
             the blob pulled (store), then pulled once more (local disk). The same order \
             every run: each state needs the one before it.",
            b.size_text()
        ),
    );
    b.gw.stop()?;
    let cache = format!("  tag_ttl: \"5m\"\n{}", garage.store_yaml(NODE));
    b.gw =
        BenchGateway::start_with_cache(b.site, b.registry, &b.dir.join("gateway-shared"), &cache)?;
    let blob = b.cold.clone();
    let path = blob.path();
    let key = format!("blobs/sha256/{}", blob.digest.trim_start_matches("sha256:"));
    let timeout = transfer_timeout(blob.size, 1);
    let name = format!("{} blob, one client", b.size_text());
    let mut origin = Figure::new("i", &name, "origin (no tier holds it)", "ms", Better::Lower);
    let mut store = Figure::new(
        "i",
        &name,
        "shared store (not on local disk)",
        "ms",
        Better::Lower,
    );
    let mut local = Figure::new("i", &name, "local disk", "ms", Better::Lower);
    for run in 0..b.opts.runs {
        let deleted = garage.s3(NODE, &["-X", "DELETE"], &key)?;
        ensure!(
            deleted.complete() && deleted.code == 204,
            "deleting {key} from the store: {}",
            deleted.describe()
        );
        b.gw.restart_empty()?;
        let target = b.target_gateway();
        let get = |fig: &mut Figure| -> Result<()> {
            let (d, _) = curl::parallel_get(&target, &path, 1, blob.size, timeout)?;
            fig.samples.push(d[0].secs * 1000.0);
            Ok(())
        };
        get(&mut origin)?;
        wait_in_store(garage, &key)?;
        b.gw.restart_empty()?;
        get(&mut store)?;
        get(&mut local)?;
        progress(format!(
            "(i) run {}/{}: origin {:.1} ms, store {:.1} ms, local {:.1} ms",
            run + 1,
            b.opts.runs,
            origin.samples[run],
            store.samples[run],
            local.samples[run]
        ));
    }
    let r_local = ratio(
        "i",
        format!("{name}: store / local"),
        &store,
        &local,
        Better::Lower,
    );
    let r_origin = ratio(
        "i",
        format!("{name}: store / origin"),
        &store,
        &origin,
        Better::Lower,
    );
    for f in [origin, store, local, r_local, r_origin] {
        b.report.add(f);
    }
    Ok(())
}

/// Waits (a minute at most) until the gateway's write-behind put `key` in
/// the store.
fn wait_in_store(garage: &crate::garage::Garage, key: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !garage.has_object(NODE, key)? {
        ensure!(
            std::time::Instant::now() < deadline,
            "the gateway never wrote {key} to the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
