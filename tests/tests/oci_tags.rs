//! Tags are mutable: a moved tag is seen once `cache.tag_ttl` has passed,
//! not before; the cache and its index survive a restart, and a tag whose
//! TTL ran out while upstream is unreachable is served stale.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Site,
    bench::tlsclient::{self, Http},
    emulated, in_ns,
    oci::{LINUX_AMD64, LayerSpec, Layout, sha256_digest},
    registry::{self, RegistryOptions, start_world},
    require_root,
};

/// The tag TTL of the first test: long enough for its own steps (a pull,
/// a tag move, a pull) to fit inside, which on an emulated CPU (VM runs)
/// takes a few seconds.
fn ttl() -> Duration {
    Duration::from_secs(if emulated() { 12 } else { 3 })
}

#[test]
fn moved_tag_is_seen_after_the_ttl_and_not_before() {
    require_root();
    let site = Site::new("oci-tag-ttl").unwrap();
    let ttl = ttl();
    let w = start_world(
        &site,
        RegistryOptions::default(),
        &format!("{}s", ttl.as_secs()),
    )
    .unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let a = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(64 * 1024, 71)], "A")
        .unwrap();
    let b = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(64 * 1024, 72)], "B")
        .unwrap();
    w.registry.push(&layout, "app", &a.manifest, "v1").unwrap();
    // B is upstream already, by digest: moving the tag is then one PUT.
    w.registry
        .push(&layout, "app", &b.manifest, &b.manifest.digest)
        .unwrap();
    let gw = &w.gw;
    let path = "/v2/app/manifests/v1";
    let pull = || {
        let r = gw.must(w.device.get(path));
        assert_eq!(r.code, 200, "{}", r.describe());
        let digest = sha256_digest(&r.body());
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.as_str()),
            "{}",
            r.describe()
        );
        digest
    };

    // The fill happens between these two instants: `filling` bounds the
    // tag's age from above (the too-slow check below), `filled` from below
    // (the wait for it to expire: under emulation the first pull alone can
    // take longer than any fixed margin).
    let filling = Instant::now();
    assert_eq!(pull(), a.manifest.digest);
    let filled = Instant::now();
    w.registry
        .put_manifest(&layout, "app", &b.manifest, "v1")
        .unwrap();
    assert_eq!(pull(), a.manifest.digest, "tag revalidated before its TTL");
    let early = filling.elapsed();
    let upstream_asked = || {
        ["GET", "HEAD"]
            .iter()
            .map(|m| w.registry.requests_from_gateway(m, path).unwrap().len())
            .sum::<usize>()
    };
    // Only the fill went upstream: the second pull was served locally.
    assert_eq!(
        upstream_asked(),
        1,
        "{:?}",
        w.registry.access_log().unwrap()
    );
    assert!(
        early < ttl,
        "the test took {early:?} to move the tag: longer than the TTL, so it proves nothing"
    );

    thread::sleep((ttl + Duration::from_millis(700)).saturating_sub(filled.elapsed()));
    assert_eq!(
        pull(),
        b.manifest.digest,
        "moved tag not seen after the TTL"
    );

    let records = gw.must(gw.wait_requests("GET", path, 3));
    assert_eq!(records[0]["cache"], "miss", "{}", records[0]);
    assert_eq!(records[1]["cache"], "hit", "{}", records[1]);
    assert!(
        records[2]["cache"] == "revalidated" || records[2]["cache"] == "miss",
        "{}",
        records[2]
    );
    // After the TTL upstream was asked again (HEAD, GET, or both).
    assert!(upstream_asked() >= 2);
}

#[test]
fn cache_and_index_survive_a_restart_and_serve_stale_offline() {
    require_root();
    let site = Site::new("oci-restart").unwrap();
    let mut w = start_world(&site, RegistryOptions::default(), "2s").unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(
            LINUX_AMD64,
            &[LayerSpec::gzip(512 * 1024, 81), LayerSpec::tar(2 << 20, 82)],
            "restart",
        )
        .unwrap();
    w.registry
        .push(&layout, "app", &img.manifest, "v1")
        .unwrap();
    let pulled = w.gw.must(w.device.skopeo_copy("app:v1", false));
    w.gw.must(pulled.check_image(&img));

    // A device's connection kept alive after a request (what containerd
    // and podman do between pulls) must not hold the stop until it idles
    // out (`proxy.idle_timeout_secs`, 120 s): it is closed at once.
    let mut kept = w.gw.must(
        in_ns(&site.dev_ns, || -> anyhow::Result<Http> {
            let tls = tlsclient::connect(
                SocketAddr::from((registry::ADDR_V4, 443)),
                registry::HOST,
                &tlsclient::blind_config()?,
            )?;
            Ok(Http::new(tls, registry::HOST))
        })
        .and_then(|r| r),
    );
    let head = w.gw.must(kept.request("GET", "/v2/", "*/*"));
    assert_eq!(head.status, 200, "{head:?}");

    let status = w.gw.gw.sigterm(Duration::from_secs(20));
    let status = w.gw.must(status);
    assert!(status.success(), "gateway exited {status} on SIGTERM");
    let closed = kept.request("GET", "/v2/", "*/*");
    assert!(
        closed.is_err(),
        "the kept-alive connection outlived the daemon: {closed:?}"
    );
    let restarted = w.gw.gw.restart();
    w.gw.must(restarted);
    let before = w.gw.requests().unwrap().len();
    registry::cut_upstream(&site).unwrap();
    // Past the TTL: the tag must be revalidated, upstream is gone, and the
    // last good copy is served.
    thread::sleep(Duration::from_millis(2500));

    let gw = &w.gw;
    let dev = gw.must(gw.device());
    let again = gw.must(dev.skopeo_copy("app:v1", false));
    assert_eq!(gw.must(again.tagged("pulled")), img.manifest);
    gw.must(again.check_image(&img));

    let after: Vec<_> = gw.must(gw.requests()).split_off(before);
    let tag: Vec<_> = after
        .iter()
        .filter(|r| r["path"] == "/v2/app/manifests/v1")
        .collect();
    assert!(
        !tag.is_empty(),
        "no record of the tag after restart: {after:?}"
    );
    for r in &tag {
        assert_eq!(r["status"], 200, "{r}");
        assert!(
            r["cache"] == "stale" || r["cache"] == "hit",
            "tag after restart, upstream cut: {r}"
        );
    }
    assert!(
        tag.iter().any(|r| r["cache"] == "stale"),
        "TTL ran out with upstream down, yet no stale record: {tag:?}"
    );
    for blob in img.blob_digests() {
        let path = format!("/v2/app/blobs/{blob}");
        let recs: Vec<_> = after.iter().filter(|r| r["path"] == path).collect();
        assert!(!recs.is_empty(), "no record for {path}");
        assert!(recs.iter().all(|r| r["cache"] == "hit"), "{recs:?}");
    }
}
