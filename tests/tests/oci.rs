//! The OCI pull-through cache with real clients: skopeo, podman and curl on
//! the device, trusting only the site CA, against the distribution
//! registry upstream. Images come out byte for byte as they were pushed,
//! from the cache when the upstream link is cut, Helm charts too, and the
//! registry's credentials stay with the gateway.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use gateway_tests::{
    Site, incidental,
    oci::{self, ImageIndex, LINUX_AMD64, LINUX_ARM64, LayerSpec, Layout},
    registry::{self, Client, Credentials, RegistryOptions, World, start_world},
    require_root,
};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

/// A two-platform index (amd64: a gzip and a plain tar layer; arm64: one
/// gzip layer) pushed as `app:multi`, its amd64 image also as `app:v1`.
fn push_app(w: &World<'_>) -> (Layout, ImageIndex) {
    let site = w.registry.site();
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let amd = layout
        .image(
            LINUX_AMD64,
            &[
                LayerSpec::gzip(incidental(MIB), 11),
                LayerSpec::tar(incidental(6 * MIB), 12),
            ],
            "amd64",
        )
        .unwrap();
    let arm = layout
        .image(
            LINUX_ARM64,
            &[LayerSpec::gzip(incidental(MIB), 13)],
            "arm64",
        )
        .unwrap();
    let index = layout.index(&[amd.clone(), arm]).unwrap();
    layout.tag(&index.index, "multi").unwrap();
    w.registry
        .push(&layout, "app", &index.index, "multi")
        .unwrap();
    w.registry
        .push(&layout, "app", &amd.manifest, "v1")
        .unwrap();
    (layout, index)
}

/// Every `request` record came from the device for the registry's host.
fn assert_from_device(records: &[Value]) {
    for r in records {
        assert_eq!(r["host"], registry::HOST, "{r}");
        let device = r["device"].as_str().unwrap_or_default();
        assert!(device.starts_with("10.77.1.2"), "device {device}: {r}");
    }
}

fn podman_matches(inspect: &Value, image: &oci::Image) {
    assert_eq!(
        format!("sha256:{}", inspect["Id"].as_str().unwrap_or_default()),
        image.config.digest,
        "{inspect}"
    );
    assert_eq!(
        inspect["Digest"],
        image.manifest.digest.as_str(),
        "{inspect}"
    );
    let layers: Vec<&str> = inspect["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(layers, image.diff_ids, "{inspect}");
}

#[test]
fn skopeo_and_podman_pull_byte_identical_images() {
    require_root();
    let site = Site::new("oci-pull").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let (_layout, index) = push_app(&w);
    let amd = index.image(LINUX_AMD64).unwrap();
    let gw = &w.gw;

    // The index and both images, with every digest preserved.
    let all = gw.must(w.device.skopeo_copy("app:multi", true));
    assert_eq!(gw.must(all.tagged("pulled")), index.index);
    for image in &index.images {
        gw.must(all.check_image(image));
    }
    gw.must(all.verify_blobs());
    // A single image by tag.
    let one = gw.must(w.device.skopeo_copy("app:v1", false));
    assert_eq!(gw.must(one.tagged("pulled")), amd.manifest);
    gw.must(one.check_image(amd));
    // podman stores what was pushed: image id = config digest, layers = diff ids.
    let inspect = gw.must(w.device.podman_pull("app:v1"));
    podman_matches(&inspect, amd);

    // The first fetch of each blob was a miss, every later one a hit, and
    // upstream saw each blob once.
    for blob in amd.blob_digests() {
        let path = format!("/v2/app/blobs/{blob}");
        let records = gw.must(gw.wait_requests("GET", &path, 2));
        assert_from_device(&records);
        assert_eq!(records[0]["cache"], "miss", "{}", records[0]);
        for r in &records[1..] {
            assert_eq!(r["cache"], "hit", "{r}");
        }
        assert!(records.iter().all(|r| r["status"] == 200), "{records:?}");
        let upstream = w.registry.requests_from_gateway("GET", &path).unwrap();
        assert_eq!(upstream.len(), 1, "upstream GETs of {path}: {upstream:?}");
    }
    let tag = gw.must(gw.wait_requests("GET", "/v2/app/manifests/v1", 2));
    assert_eq!(tag[0]["cache"], "miss", "{}", tag[0]);
    assert_eq!(tag.last().unwrap()["cache"], "hit", "{tag:?}");
}

#[test]
fn pulls_succeed_from_the_cache_with_the_upstream_link_cut() {
    require_root();
    let site = Site::new("oci-offline").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let (_layout, index) = push_app(&w);
    let amd = index.image(LINUX_AMD64).unwrap();
    let gw = &w.gw;
    gw.must(w.device.skopeo_copy("app:multi", true));
    gw.must(w.device.podman_pull("app:v1"));
    let before = w.gw.requests().unwrap().len();
    let upstream_before = w.registry.access_log().unwrap().len();

    registry::cut_upstream(&site).unwrap();

    // Fresh clients: nothing of their own cached.
    let dev = gw.must(gw.device());
    let all = gw.must(dev.skopeo_copy("app:multi", true));
    assert_eq!(gw.must(all.tagged("pulled")), index.index);
    for image in &index.images {
        gw.must(all.check_image(image));
    }
    let by_digest = gw.must(dev.skopeo_copy(&format!("app@{}", amd.manifest.digest), false));
    gw.must(by_digest.check_image(amd));
    podman_matches(&gw.must(dev.podman_pull("app:v1")), amd);

    let after: Vec<Value> = gw.must(gw.requests()).split_off(before);
    assert!(!after.is_empty());
    assert_from_device(&after);
    for r in &after {
        if r["path"] != "/v2/" {
            assert_eq!(r["cache"], "hit", "offline request not a hit: {r}");
        }
        assert!(r["status"] == 200, "{r}");
    }
    assert_eq!(
        w.registry.access_log().unwrap().len(),
        upstream_before,
        "the registry was reached with the link down"
    );
}

#[test]
fn helm_chart_by_tag_and_by_digest_is_byte_identical() {
    require_root();
    let site = Site::new("oci-helm").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let chart = layout.helm_chart("edge-app", "1.2.3", 21).unwrap();
    w.registry
        .push(&layout, "charts/edge-app", &chart.manifest, "1.2.3")
        .unwrap();
    let gw = &w.gw;
    let manifest_bytes = layout.read_blob(&chart.manifest.digest).unwrap();

    for reference in ["1.2.3", chart.manifest.digest.as_str()] {
        let m = gw.must(
            w.device
                .get(&format!("/v2/charts/edge-app/manifests/{reference}")),
        );
        assert_eq!(m.code, 200, "{}", m.describe());
        assert!(m.complete(), "{}", m.describe());
        assert_eq!(m.body(), manifest_bytes, "manifest by {reference}");
        assert_eq!(
            m.header("content-type"),
            Some(oci::MT_MANIFEST),
            "{}",
            m.describe()
        );
        assert_eq!(
            m.header("docker-content-digest"),
            Some(chart.manifest.digest.as_str()),
            "{}",
            m.describe()
        );
    }
    for blob in [&chart.config, &chart.chart] {
        let b = gw.must(
            w.device
                .get(&format!("/v2/charts/edge-app/blobs/{}", blob.digest)),
        );
        assert_eq!(b.code, 200, "{}", b.describe());
        assert_eq!(gw.must(b.body_digest()), blob.digest);
        assert_eq!(b.body(), layout.read_blob(&blob.digest).unwrap());
    }
    // skopeo copies the artifact as is.
    let copied = gw.must(w.device.skopeo_copy("charts/edge-app:1.2.3", false));
    assert_eq!(gw.must(copied.tagged("pulled")), chart.manifest);
    gw.must(copied.verify_blobs());

    let tag = gw.must(gw.wait_requests("GET", "/v2/charts/edge-app/manifests/1.2.3", 2));
    assert_from_device(&tag);
    assert_eq!(tag[0]["cache"], "miss", "{}", tag[0]);
    let by_digest = gw.must(gw.wait_requests(
        "GET",
        &format!("/v2/charts/edge-app/manifests/{}", chart.manifest.digest),
        1,
    ));
    // Fetched by tag first, so held by digest already.
    assert_eq!(by_digest[0]["cache"], "hit", "{}", by_digest[0]);
}

#[test]
fn seeded_content_is_pinned_and_served_offline() {
    require_root();
    let site = Site::new("oci-seed").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let (_layout, index) = push_app(&w);
    let gw = &w.gw;

    // Seeded while the gateway runs, before any device asked.
    let seed = gw.must(gw.cache_seed("app:multi"));
    assert!(
        seed.success(),
        "`gateway cache seed` failed ({}): {}",
        seed.status,
        seed.stderr.trim()
    );
    let ls = gw.must(gw.cache_ls());
    let totals = gw.must(gw.cache_totals());
    let blobs: usize = index.images.iter().map(|i| i.blob_digests().len()).sum();
    assert!(
        totals.blobs as usize >= blobs,
        "{blobs} blobs seeded, cache holds {totals:?}:\n{ls}"
    );
    assert!(!ls.contains(" 0 pinned"), "nothing pinned:\n{ls}");

    registry::cut_upstream(&site).unwrap();
    let all = gw.must(w.device.skopeo_copy("app:multi", true));
    assert_eq!(gw.must(all.tagged("pulled")), index.index);
    for image in &index.images {
        gw.must(all.check_image(image));
    }
    let records = gw.must(gw.requests());
    assert!(!records.is_empty());
    assert_from_device(&records);
    for r in records.iter().filter(|r| r["path"] != "/v2/") {
        assert_eq!(r["cache"], "hit", "not served from the seed: {r}");
    }
}

#[test]
fn head_range_and_tags_list_through_the_gateway() {
    require_root();
    let site = Site::new("oci-head").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(256 * 1024, 31)], "head")
        .unwrap();
    layout.tag(&img.manifest, "v1").unwrap();
    for tag in ["v1", "v2"] {
        w.registry.push(&layout, "app", &img.manifest, tag).unwrap();
    }
    let gw = &w.gw;

    // /v2/ is answered by the gateway itself, without credentials.
    let v2 = gw.must(w.device.get("/v2/"));
    assert_eq!(v2.code, 200, "{}", v2.describe());

    for reference in ["v1", img.manifest.digest.as_str()] {
        let h = gw.must(w.device.head(&format!("/v2/app/manifests/{reference}")));
        assert_eq!(h.code, 200, "{}", h.describe());
        assert_eq!(
            h.header("docker-content-digest"),
            Some(img.manifest.digest.as_str()),
            "{}",
            h.describe()
        );
        assert_eq!(
            h.header("content-length"),
            Some(img.manifest.size.to_string().as_str()),
            "{}",
            h.describe()
        );
    }
    let layer = &img.layers[0];
    let h = gw.must(w.device.head(&format!("/v2/app/blobs/{}", layer.digest)));
    assert_eq!(h.code, 200, "{}", h.describe());
    assert_eq!(
        h.header("content-length"),
        Some(layer.size.to_string().as_str()),
        "{}",
        h.describe()
    );
    // A range of the blob. Cold, a server may answer 200 with the whole
    // blob (RFC 9110 lets it ignore Range); cached, it is 206 with exactly
    // those bytes.
    let whole = layout.read_blob(&layer.digest).unwrap();
    let blob_url = Client::url(&format!("/v2/app/blobs/{}", layer.digest));
    let range = || gw.must(w.device.curl(&["-r", "1000-1999", &blob_url]));
    let cold = range();
    match cold.code {
        206 => assert_eq!(cold.body(), whole[1000..2000], "{}", cold.describe()),
        200 => assert_eq!(cold.body(), whole, "{}", cold.describe()),
        _ => panic!("cold range: {}", cold.describe()),
    }
    let full = gw.must(w.device.get(&format!("/v2/app/blobs/{}", layer.digest)));
    assert_eq!(gw.must(full.body_digest()), layer.digest);
    // The device has the last byte a moment before the fill is committed
    // (file renamed, index written): wait until the daemon counts the blob.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gw.must(gw.cache_totals()).bytes < layer.size {
        assert!(
            std::time::Instant::now() < deadline,
            "blob never counted by `gateway cache ls`"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let cached = range();
    assert_eq!(
        cached.code,
        206,
        "cached range: {}\nrecords: {:?}",
        cached.describe(),
        gw.requests_for("GET", &format!("/v2/app/blobs/{}", layer.digest))
    );
    assert_eq!(cached.body(), whole[1000..2000], "{}", cached.describe());
    assert_eq!(
        cached.header("content-range"),
        Some(format!("bytes 1000-1999/{}", layer.size).as_str()),
        "{}",
        cached.describe()
    );

    let tags = gw.must(w.device.get("/v2/app/tags/list"));
    assert_eq!(tags.code, 200, "{}", tags.describe());
    let doc: Value = serde_json::from_slice(&tags.body()).unwrap();
    assert_eq!(doc["name"], "app", "{doc}");
    let mut names: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["v1", "v2"], "{doc}");

    // An unknown manifest is a 404 from upstream, passed on.
    let missing = gw.must(w.device.get("/v2/app/manifests/nope"));
    assert_eq!(missing.code, 404, "{}", missing.describe());

    let heads = gw.must(gw.wait_requests("HEAD", "/v2/app/manifests/v1", 1));
    assert_from_device(&heads);
    assert_eq!(heads[0]["status"], 200, "{}", heads[0]);
}

#[test]
fn registry_credentials_stay_with_the_gateway() {
    require_root();
    let site = Site::new("oci-creds").unwrap();
    let creds = Credentials::random();
    let w = start_world(
        &site,
        RegistryOptions {
            credentials: Some(creds.clone()),
        },
        "5m",
    )
    .unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(512 * 1024, 41)], "private")
        .unwrap();
    w.registry
        .push(&layout, "private/app", &img.manifest, "v1")
        .unwrap();
    let gw = &w.gw;

    // The device has no credentials and needs none.
    let copied = gw.must(w.device.skopeo_copy("private/app:v1", false));
    gw.must(copied.check_image(&img));
    podman_matches(&gw.must(w.device.podman_pull("private/app:v1")), &img);
    let blob = gw.must(
        w.device
            .get(&format!("/v2/private/app/blobs/{}", img.layers[0].digest)),
    );
    assert_eq!(blob.code, 200, "{}", blob.describe());
    assert_eq!(gw.must(blob.body_digest()), img.layers[0].digest);

    // Upstream saw the gateway authenticate: authorized GETs of the blobs.
    let upstream = w
        .registry
        .requests_from_gateway(
            "GET",
            &format!("/v2/private/app/blobs/{}", img.layers[0].digest),
        )
        .unwrap();
    assert!(
        upstream.iter().any(|l| l.status == 200),
        "no authorized upstream GET: {upstream:?}"
    );
    let records = gw.must(gw.requests());
    assert!(
        records.iter().all(|r| r["status"] != 401),
        "a device saw 401: {records:?}"
    );

    // The password appears nowhere the gateway writes.
    let audit = std::fs::read_to_string(&gw.gw.config.audit_path).unwrap();
    assert!(
        !audit.contains(&creds.password),
        "the audit log holds the password"
    );
    assert!(
        !gw.gw.stderr().contains(&creds.password),
        "the gateway's stderr holds the password"
    );
    let config = std::fs::read_to_string(gw.gw.config_path()).unwrap();
    assert!(!config.contains(&creds.password));
    let ls = gw.must(gw.cache_ls());
    assert!(!ls.contains(&creds.password));
    for file in gateway_tests::kernel::files_under(&gw.keys.cache_dir).unwrap() {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(creds.password.len())
                .any(|win| win == creds.password.as_bytes()),
            "{} holds the password",
            file.display()
        );
    }
}

/// `gateway cache ARGS` against the running daemon.
fn cache_cmd(gw: &registry::OciGateway<'_>, args: &[&str]) -> registry::cmd::Outcome {
    let mut full = vec!["cache"];
    full.extend_from_slice(args);
    gw.must(registry::oci_gateway::cli(&gw.gw, &full))
}

fn cache_json(gw: &registry::OciGateway<'_>, args: &[&str]) -> Value {
    let out = cache_cmd(gw, args);
    assert!(
        out.success(),
        "{args:?} failed ({}): {}",
        out.status,
        out.stderr
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The cache management commands on what a device pulled, while the
/// daemon serves: `ls` lists the image's blobs under its tag, `pin` pins
/// them as held, `du` counts them, a blob rotted on disk is found by `verify` (exit 3), moved to
/// quarantine and fetched again by the next pull, and `rm` removes the
/// rest and the pin.
#[test]
fn cache_commands_list_count_verify_and_remove_a_pulled_image() {
    require_root();
    let site = Site::new("oci-cachecmd").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let (_layout, index) = push_app(&w);
    let amd = index.image(LINUX_AMD64).unwrap();
    let gw = &w.gw;
    gw.must(w.device.skopeo_copy("app:v1", false));

    let tag = format!("{}/app:v1", registry::HOST);
    let mut expected: Vec<&oci::Descriptor> = vec![&amd.manifest, &amd.config];
    expected.extend(&amd.layers);
    // A fill is published just after its last byte is verified and sent:
    // wait (bounded) until every blob is listed under the tag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ls = loop {
        let ls = cache_json(gw, &["ls", "--json"]);
        let named = |d: &oci::Descriptor| {
            ls["blob_list"].as_array().unwrap().iter().any(|b| {
                b["digest"] == d.digest.as_str()
                    && b["size"] == d.size
                    && b["referenced_by"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r == tag.as_str())
            })
        };
        if expected.iter().all(|d| named(d)) {
            break ls;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`cache ls` does not list every blob of {tag}: {ls:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let image_bytes: u64 = expected.iter().map(|d| d.size).sum();
    // Pinned from what is held, nothing fetched.
    let pin = cache_cmd(gw, &["pin", &tag]);
    assert!(pin.success(), "{}", pin.stderr);

    let du = cache_json(gw, &["du", "--json"]);
    let app = du["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == registry::HOST)
        .and_then(|s| {
            s["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["repository"] == "app")
        })
        .unwrap_or_else(|| panic!("no {}/app in `cache du`: {du:#}", registry::HOST));
    assert_eq!(app["total"]["bytes"], image_bytes, "{du:#}\n{ls:#}");
    assert_eq!(app["total"]["blobs"], expected.len(), "{du:#}");
    assert_eq!(du["pinned"]["bytes"], image_bytes, "{du:#}");

    // Rot in place: the 1 MiB layer keeps its size, one byte changes.
    let rotten = &amd.layers[0];
    let path = gw.keys.cache_dir.join("blobs/sha256").join(rotten.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let verify = cache_cmd(gw, &["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(3),
        "{}\n{}",
        verify.stdout_text(),
        verify.stderr
    );
    assert!(
        verify
            .stdout_text()
            .contains(&format!("damaged {}", rotten.digest)),
        "{}",
        verify.stdout_text()
    );
    let quarantined = gw.keys.cache_dir.join("quarantine").join(rotten.hex());
    assert_eq!(std::fs::read(&quarantined).unwrap(), bytes);
    assert!(!path.exists());

    // The next pull fetches it again and gets the right bytes.
    let blob_path = format!("/v2/app/blobs/{}", rotten.digest);
    let before = gw.must(gw.requests_for("GET", &blob_path)).len();
    let again = gw.must(w.device.skopeo_copy("app:v1", false));
    gw.must(again.check_image(amd));
    let records = gw.must(gw.wait_requests("GET", &blob_path, before + 1));
    assert_eq!(records[before]["cache"], "miss", "{}", records[before]);
    let verify = cache_cmd(gw, &["verify"]);
    assert!(
        verify.success(),
        "{}{}",
        verify.stdout_text(),
        verify.stderr
    );

    let rm = cache_cmd(gw, &["rm", &tag]);
    assert!(rm.success(), "{}", rm.stderr);
    assert!(
        rm.stdout_text().contains(&format!("forgot {tag}"))
            && rm.stdout_text().contains(&format!("unpinned {tag}")),
        "{}",
        rm.stdout_text()
    );
    let ls = cache_json(gw, &["ls", "--json"]);
    for d in &expected {
        assert!(
            !gw.keys
                .cache_dir
                .join("blobs/sha256")
                .join(d.hex())
                .exists(),
            "{} still on disk after `cache rm`: {ls:#}",
            d.digest
        );
    }
    assert!(
        ls["references"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["reference"].as_str().unwrap().starts_with("manifests/")),
        "{ls:#}"
    );
}
