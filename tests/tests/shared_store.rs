//! Two gateways sharing a cache tier on a real three-node Garage cluster
//! (issue 16): what one gateway filled, the other serves without its
//! upstream; two gateways missing one blob at once fetch it upstream once;
//! a dead store node changes nothing (quorum 2 of 3); a store cut off from
//! both gateways leaves them serving what they hold, saying so, until it
//! comes back.
//!
//! ```text
//!  device A ─ gateway A ─────────── registry (site A's upstream)
//!                │  └─ store link ┐      │
//!                │            {A}-st ─ s1 s2 s3 (Garage)
//!  device B ─ gateway B ─ store link ┘   │
//!                └──── shared upstream link ┘
//! ```
//!
//! One test function: the cluster and both gateways start once (this runs
//! in the TCG VMs too, where each process start costs).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Site, emulated,
    garage::Garage,
    incidental,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{
        CurlResponse, Registry, RegistryOptions,
        oci_gateway::{OciGateway, OciKeys, start_oci_gateway_with},
    },
    require_root,
    site::addr,
};

const MIB: u64 = 1024 * 1024;
/// The admin listener (`/metrics`), on each gateway's upstream-side
/// address (never reachable from its devices).
const ADMIN_PORT: u16 = 9464;
/// Gateway A uses node s1 as its endpoint, B uses s2; s3 is the one killed.
const NODE_A: usize = 0;
const NODE_B: usize = 1;
const NODE_KILLED: usize = 2;

/// A gateway of `site` for the shared registry, its store endpoint node
/// `node`, its state in `site`'s temp dir.
fn start_gateway<'s>(
    site: &'s Site,
    registry: &Registry<'_>,
    garage: &Garage,
    node: usize,
) -> OciGateway<'s> {
    let mut keys = OciKeys::for_registry(registry, "5m");
    keys.ca_dir = site.tmp_dir().join("ca");
    keys.cache_dir = site.tmp_dir().join("cache");
    let mut config = keys.config(site);
    // Right after the `cache:` block that `keys` ends with.
    config.extra_yaml.push_str(&garage.store_yaml(node));
    if emulated() {
        // Under TCG a store call just after a node was killed (Garage's
        // own calls to the dead node time out first) outlasted the 5 s
        // default deadline in one CI run (xtask/src/setup/garage.rs): a
        // wider deadline there, which step 5 waits out instead.
        config.extra_yaml.push_str("    timeout: 15s\n");
    }
    config.extra_yaml.push_str(&format!(
        "admin:\n  listen: \"{}:{ADMIN_PORT}\"\n",
        addr::GW_UP_V4
    ));
    start_oci_gateway_with(site, keys, config).unwrap()
}

/// `/metrics` of `gw`'s site, from its gateway namespace.
fn metrics(gw: &OciGateway<'_>) -> String {
    let (code, text) = gw
        .gw
        .site()
        .curl_in_gw(&format!("http://{}:{ADMIN_PORT}/metrics", addr::GW_UP_V4));
    assert_eq!(code, 200, "{text}");
    text
}

/// The value of the metric line that starts with `series` (name and
/// labels as exposed), if any.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether `gw`'s status and metrics say the store is reachable (`Some`
/// when both agree, `None` while they differ).
fn store_up(gw: &OciGateway<'_>) -> Option<bool> {
    let status = gw.must(gw.gw.status());
    let in_status = status["daemon"]["store"]["reachable"]
        .as_bool()
        .unwrap_or_else(|| panic!("status has no daemon.store.reachable: {status}"));
    let text = metrics(gw);
    let gauge = metric(&text, "margo_gateway_store_up")
        .unwrap_or_else(|| panic!("no margo_gateway_store_up in /metrics:\n{text}"));
    (in_status == (gauge == 1.0)).then_some(in_status)
}

/// Waits until `gw` reports the store as `up` (status and metrics).
fn wait_store_up(gw: &OciGateway<'_>, up: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while store_up(gw) != Some(up) {
        assert!(
            Instant::now() < deadline,
            "the store never became {} for {}\n{}",
            if up { "reachable" } else { "unreachable" },
            gw.gw.site().prefix,
            gw.gw.diagnostics()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the store holds `digest` (`gw` uploads it after its fill,
/// in the background; its status says why not, if it never does).
fn wait_in_store(garage: &Garage, node: usize, digest: &str, gw: &OciGateway<'_>) {
    let key = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gw.must(garage.has_object(node, &key)) {
        assert!(
            Instant::now() < deadline,
            "{key} never reached the store\n{}",
            gw.gw.diagnostics()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn assert_blob(r: &CurlResponse, digest: &str, size: u64) {
    assert!(r.complete() && r.code == 200, "{}", r.describe());
    assert_eq!(r.body_len(), size, "{}", r.describe());
    assert_eq!(r.body_digest().unwrap(), digest, "{}", r.describe());
}

/// Limits what the registry's host sends towards both gateways (its link
/// to A and the shared link to B), so that a fill stays in flight long
/// enough for the other gateway to miss the same blob meanwhile.
fn throttle(ns: &str, devs: &[&str], rate: &str) {
    for dev in devs {
        let out = Command::new("tc")
            .args(["-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf"])
            .args(["rate", rate, "burst", "32kbit", "latency", "5s"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn two_gateways_share_a_garage_store() {
    require_root();
    let t0 = Instant::now();
    let mut site_a = Site::new("store-a").unwrap();
    let site_b = Site::new("store-b").unwrap();
    let mut garage = Garage::start(&mut site_a).unwrap();
    eprintln!("garage cluster up after {:?}", t0.elapsed());
    let registry = Registry::start(&site_a, RegistryOptions::default()).unwrap();
    let b_upstream = registry.share_with(&site_b, 30).unwrap();
    let store_a = garage.attach(&site_a, &site_a.gw_ns, 21).unwrap();
    let store_b = garage.attach(&site_a, &site_b.gw_ns, 22).unwrap();

    // Three images' worth of blobs: v1 for the fill and the pull from the
    // store, then one fresh layer each for the concurrent miss (v2) and
    // the dead node (v3).
    let layout = Layout::create(&site_a.tmp_dir().join("src")).unwrap();
    let small = incidental(MIB);
    let v1 = layout
        .image(
            LINUX_AMD64,
            &[LayerSpec::tar(small, 1), LayerSpec::tar(small / 2, 2)],
            "v1",
        )
        .unwrap();
    let race_size = incidental(4 * MIB);
    let v2 = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(race_size, 3)], "v2")
        .unwrap();
    let v3 = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(small, 4)], "v3")
        .unwrap();
    for (img, tag) in [(&v1, "v1"), (&v2, "v2"), (&v3, "v3")] {
        registry.push(&layout, "app", &img.manifest, tag).unwrap();
    }

    let gw_a = start_gateway(&site_a, &registry, &garage, NODE_A);
    let gw_b = start_gateway(&site_b, &registry, &garage, NODE_B);
    let dev_a = gw_a.device().unwrap();
    let dev_b = gw_b.device().unwrap();
    eprintln!("both gateways up after {:?}", t0.elapsed());
    for gw in [&gw_a, &gw_b] {
        wait_store_up(gw, true, Duration::from_secs(30));
    }

    // 1. A fills v1 from upstream; every blob reaches the store.
    let pulled = gw_a.must(dev_a.skopeo_copy("app:v1", false));
    gw_a.must(pulled.check_image(&v1));
    for blob in v1.blob_digests().iter().chain([&v1.manifest.digest]) {
        wait_in_store(&garage, NODE_A, blob, &gw_a);
    }

    // 2. B, its upstream cut, serves the whole pull from the store: the
    // tag through the shared ref, every blob and the manifest by digest.
    b_upstream.cut().unwrap();
    let pulled = gw_b.must(dev_b.skopeo_copy("app:v1", false));
    gw_b.must(pulled.check_image(&v1));
    let from_b = registry.access_log().unwrap();
    let b_remote = b_upstream.remote().to_string();
    assert!(
        from_b.iter().all(|l| l.remote != b_remote),
        "B reached the registry with its link cut: {from_b:?}"
    );
    for blob in v1.blob_digests() {
        let path = format!("/v2/app/blobs/{blob}");
        let records = gw_b.must(gw_b.wait_requests("GET", &path, 1));
        assert!(
            records
                .iter()
                .all(|r| r["status"] == 200 && r["source"] == "store"),
            "B's record of {path} does not say it came from the store: {records:?}"
        );
    }
    b_upstream.restore().unwrap();
    eprintln!("fill on A, pull from the store on B: {:?}", t0.elapsed());

    // 3. Both gateways miss v2's layer at the same moment: one upstream GET.
    let layer = &v2.layers[0];
    let path = format!("/v2/app/blobs/{}", layer.digest);
    let rate = if emulated() { "4mbit" } else { "16mbit" };
    let shaped = [site_a.up_if.as_str(), b_upstream.link.b_if.as_str()];
    throttle(&site_a.up_ns, &shaped, rate);
    let (ra, rb) = thread::scope(|s| {
        let a = s.spawn(|| dev_a.get(&path));
        let b = s.spawn(|| dev_b.get(&path));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_blob(&gw_a.must(ra), &layer.digest, layer.size);
    assert_blob(&gw_b.must(rb), &layer.digest, layer.size);
    let gets: Vec<_> = registry
        .access_log()
        .unwrap()
        .into_iter()
        .filter(|l| l.method == "GET" && l.path == path)
        .collect();
    assert_eq!(
        gets.len(),
        1,
        "upstream GETs of {path} by two gateways: {gets:?}"
    );
    for dev in shaped {
        let _ = Command::new("tc")
            .args(["-n", &site_a.up_ns, "qdisc", "del", "dev", dev, "root"])
            .status();
    }
    eprintln!("concurrent miss: {:?}", t0.elapsed());

    // 4. One node killed: A fills v3's layer (written to 2 of 3 nodes), B
    // serves it from the store with its upstream cut.
    garage.kill_node(NODE_KILLED).unwrap();
    let layer = &v3.layers[0];
    let path = format!("/v2/app/blobs/{}", layer.digest);
    assert_blob(&gw_a.must(dev_a.get(&path)), &layer.digest, layer.size);
    wait_in_store(&garage, NODE_A, &layer.digest, &gw_a);
    b_upstream.cut().unwrap();
    assert_blob(&gw_b.must(dev_b.get(&path)), &layer.digest, layer.size);
    eprintln!("node killed, fill and read: {:?}", t0.elapsed());

    // 5. The store cut off from both: each serves what it holds, and a
    // blob it does not hold from upstream (the first store call times out
    // and marks the store unreachable; none is tried after), says the
    // store is unreachable, and finds it again once it is back.
    b_upstream.restore().unwrap();
    store_a.cut().unwrap();
    store_b.cut().unwrap();
    let held = &v1.layers[0];
    let path = format!("/v2/app/blobs/{}", held.digest);
    // Both gateways at once: each waits out the store's deadline once.
    thread::scope(|s| {
        for (gw, dev, fresh) in [(&gw_a, &dev_a, &v2.config), (&gw_b, &dev_b, &v3.config)] {
            let path = &path;
            s.spawn(move || {
                assert_blob(&gw.must(dev.get(path)), &held.digest, held.size);
                let fresh_path = format!("/v2/app/blobs/{}", fresh.digest);
                assert_blob(&gw.must(dev.get(&fresh_path)), &fresh.digest, fresh.size);
                wait_store_up(gw, false, Duration::from_secs(30));
            });
        }
    });
    store_a.restore().unwrap();
    store_b.restore().unwrap();
    for gw in [&gw_a, &gw_b] {
        wait_store_up(gw, true, Duration::from_secs(30));
    }
    eprintln!("store cut and restored: {:?}", t0.elapsed());
}
