//! Filling the cache from upstream: one upstream fetch of a cold blob
//! however many devices ask at once, and wrong bytes for a digest never
//! reach a device as a success nor the cache.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Site, emulated,
    oci::{LINUX_AMD64, LayerSpec, Layout, sha256_file},
    registry::{self, Client, RegistryOptions, start_world},
    require_root,
};

const MIB: u64 = 1024 * 1024;

#[test]
fn concurrent_pulls_of_a_cold_blob_fetch_it_once() {
    require_root();
    // Eight clients on a 64 MiB layer; on an emulated CPU (VM runs) four on
    // 16 MiB, which still overlap the fill there.
    let (clients, size) = if emulated() {
        (4, 16 * MIB)
    } else {
        (8, 64 * MIB)
    };
    let site = Site::new("oci-single-flight").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let t = Instant::now();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(size, 51)], "big")
        .unwrap();
    eprintln!("{} MiB layer generated in {:?}", size / MIB, t.elapsed());
    w.registry
        .push(&layout, "big", &img.manifest, "v1")
        .unwrap();
    let layer = &img.layers[0];
    let path = format!("/v2/big/blobs/{}", layer.digest);
    let gw = &w.gw;

    let t = Instant::now();
    let responses = thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| s.spawn(|| w.device.get(&path)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    eprintln!("{clients} concurrent pulls took {:?}", t.elapsed());
    for r in responses {
        let r = gw.must(r);
        assert!(r.complete() && r.code == 200, "{}", r.describe());
        assert_eq!(r.body_len(), layer.size, "{}", r.describe());
        assert_eq!(gw.must(r.body_digest()), layer.digest);
    }

    let upstream = w.registry.requests_from_gateway("GET", &path).unwrap();
    assert_eq!(
        upstream.len(),
        1,
        "upstream GETs of the blob for {clients} clients: {upstream:?}"
    );
    let records = gw.must(gw.wait_requests("GET", &path, clients));
    assert_eq!(records.len(), clients, "{records:?}");
    for r in &records {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["bytes"], layer.size, "{r}");
        assert!(r["cache"] == "miss" || r["cache"] == "hit", "{r}");
    }
    assert!(
        records.iter().any(|r| r["cache"] == "miss"),
        "no record of the fill: {records:?}"
    );
}

#[test]
fn wrong_bytes_from_upstream_are_neither_served_nor_stored() {
    require_root();
    let site = Site::new("oci-wrong-bytes").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(4 * MIB, 61)], "corrupt")
        .unwrap();
    w.registry
        .push(&layout, "app", &img.manifest, "v1")
        .unwrap();
    let layer = &img.layers[0];
    let path = format!("/v2/app/blobs/{}", layer.digest);
    let gw = &w.gw;
    let original = w.registry.corrupt_blob(&layer.digest).unwrap();

    // curl, over both protocols: an error, an incomplete body or a
    // non-200, never a clean 200.
    for flag in ["--http1.1", "--http2"] {
        let bad = gw.must(w.device.curl(&[flag, &Client::url(&path)]));
        eprintln!("{flag}: the device saw {}", bad.describe());
        assert!(
            !(bad.complete() && bad.code == 200),
            "{flag}: the device got the wrong bytes as a success: {}",
            bad.describe()
        );
    }
    // skopeo fails too.
    let (out, _) = gw.must(w.device.try_skopeo_copy("app:v1", false));
    assert!(
        !out.success(),
        "skopeo copy succeeded with a corrupted layer"
    );

    let records = gw.must(gw.wait_requests("GET", &path, 1));
    assert!(
        records.iter().all(|r| r["fault"] == "upstream"),
        "wrong bytes not blamed on upstream: {records:?}"
    );
    // Nothing was stored under the digest, and no temp file is left.
    let named = gw.must(gw.cache_files_named(&layer.digest));
    assert!(named.is_empty(), "cache files for the digest: {named:?}");
    let without = gw.must(gw.cache_totals());
    assert!(
        without.bytes < layer.size,
        "the cache holds {} bytes: the corrupted blob counted\n{}",
        without.bytes,
        gw.must(gw.cache_ls())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tmp = gw.must(gw.cache_tmp_files());
        if tmp.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "temp files left: {tmp:?}");
        thread::sleep(Duration::from_millis(100));
    }

    // With the right bytes upstream again, the same pulls work and the blob
    // is stored: the positive control for the checks above.
    w.registry.restore_blob(&layer.digest, &original).unwrap();
    let good = gw.must(w.device.get(&path));
    assert!(good.complete() && good.code == 200, "{}", good.describe());
    assert_eq!(gw.must(good.body_digest()), layer.digest);
    let copied = gw.must(w.device.skopeo_copy("app:v1", false));
    gw.must(copied.check_image(&img));
    // (skopeo's failed attempt may not have fetched the config: count
    // the layer, not the number of blobs.)
    let with = gw.must(gw.cache_totals());
    assert!(
        with.blobs > without.blobs && with.bytes >= without.bytes + layer.size,
        "{without:?} -> {with:?}\n{}",
        gw.must(gw.cache_ls())
    );
    let named = gw.must(gw.cache_files_named(&layer.digest));
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(gw.must(sha256_file(&named[0])), layer.digest);
    // Each failed attempt went upstream again: no failure was cached.
    let upstream = w.registry.requests_from_gateway("GET", &path).unwrap();
    assert!(upstream.len() >= 2, "{upstream:?}");
}

#[test]
fn range_requests_are_served_while_a_fill_is_in_progress() {
    require_root();
    let site = Site::new("oci-range-fill").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(8 * MIB, 91)], "range")
        .unwrap();
    w.registry
        .push(&layout, "app", &img.manifest, "v1")
        .unwrap();
    let layer = &img.layers[0];
    let whole = layout.read_blob(&layer.digest).unwrap();
    let path = format!("/v2/app/blobs/{}", layer.digest);
    let url = Client::url(&path);
    let gw = &w.gw;
    // About 4 s for the blob: the fill is observably in progress.
    registry::throttle_upstream(&site, "16mbit").unwrap();

    thread::scope(|s| {
        let full = s.spawn(|| w.device.get(&path));
        // The fill has started once its temp file exists.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.must(gw.cache_tmp_files()).is_empty() {
            assert!(Instant::now() < deadline, "no fill started");
            thread::sleep(Duration::from_millis(20));
        }
        let size = whole.len();
        for (first, last) in [(1000, 1999), (size - 1000, size - 1)] {
            let r = gw.must(w.device.curl(&["-r", &format!("{first}-{last}"), &url]));
            assert_eq!(
                r.code,
                206,
                "range {first}-{last} during the fill: {}\nrecords: {:?}",
                r.describe(),
                gw.requests_for("GET", &path)
            );
            assert_eq!(r.body(), whole[first..=last], "{}", r.describe());
        }
        let full = gw.must(full.join().unwrap());
        assert!(full.complete() && full.code == 200, "{}", full.describe());
        assert_eq!(gw.must(full.body_digest()), layer.digest);
    });
    let upstream = w.registry.requests_from_gateway("GET", &path).unwrap();
    assert_eq!(upstream.len(), 1, "upstream GETs: {upstream:?}");
}
