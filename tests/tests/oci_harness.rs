//! Self-test of the OCI harness, without a gateway: the registry runs with
//! TLS in the upstream namespace, generated images, an index and a Helm
//! chart push to it, and real clients in the gateway namespace pull them
//! back byte for byte. Also checks the fault the gateway tests rely on (a
//! corrupted blob is served as is) and that the harness leaves nothing
//! behind.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::Path, process::Command, time::Instant};

use gateway_tests::{
    Site, incidental,
    oci::{LINUX_AMD64, LINUX_ARM64, LayerSpec, Layout, MT_HELM_CHART, sha256_digest},
    registry::{self, Client, Credentials, Registry, RegistryOptions},
    require_root,
};

const MIB: u64 = 1024 * 1024;

#[test]
fn registry_round_trip_from_the_gateway_namespace() {
    require_root();
    let site = Site::new("oci-harness").unwrap();
    let t = Instant::now();
    let reg = Registry::start(&site, RegistryOptions::default()).unwrap();
    eprintln!("registry up in {:?}", t.elapsed());

    // Reachable by name over TLS from the gateway namespace, and the device
    // namespace resolves the same name to the same address.
    let direct = Client::direct(&reg).unwrap();
    let v2 = direct.get("/v2/").unwrap();
    assert_eq!(v2.code, 200, "{}", v2.describe());
    let getent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &site.dev_ns,
            "getent",
            "hosts",
            registry::HOST,
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&getent.stdout);
    assert!(line.starts_with("10.77.2.3 "), "device resolves {line:?}");

    let t = Instant::now();
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let amd = layout
        .image(
            LINUX_AMD64,
            &[
                LayerSpec::gzip(incidental(MIB), 1),
                LayerSpec::tar(incidental(8 * MIB), 2),
            ],
            "amd64",
        )
        .unwrap();
    let arm = layout
        .image(LINUX_ARM64, &[LayerSpec::gzip(incidental(MIB), 3)], "arm64")
        .unwrap();
    let index = layout.index(&[amd.clone(), arm.clone()]).unwrap();
    let chart = layout.helm_chart("demo", "0.1.0", 4).unwrap();
    layout.tag(&amd.manifest, "v1").unwrap();
    eprintln!("generated in {:?}", t.elapsed());

    let t = Instant::now();
    reg.push(&layout, "app", &amd.manifest, "v1").unwrap();
    reg.push(&layout, "multi", &index.index, "latest").unwrap();
    reg.push(&layout, "charts/demo", &chart.manifest, "0.1.0")
        .unwrap();
    eprintln!("pushed in {:?}", t.elapsed());

    // skopeo sees the pushed manifest bytes.
    let raw = direct.skopeo_inspect_raw("app:v1").unwrap();
    assert_eq!(sha256_digest(&raw), amd.manifest.digest);
    assert_eq!(raw, layout.read_blob(&amd.manifest.digest).unwrap());

    // skopeo copy: byte-identical image.
    let t = Instant::now();
    let pulled = direct.skopeo_copy("app:v1", false).unwrap();
    assert_eq!(pulled.tagged("pulled").unwrap(), amd.manifest);
    pulled.check_image(&amd).unwrap();
    pulled.verify_blobs().unwrap();
    eprintln!("skopeo copy in {:?}", t.elapsed());

    // skopeo copy --all of the index: the index and both images.
    let all = direct.skopeo_copy("multi:latest", true).unwrap();
    assert_eq!(all.tagged("pulled").unwrap(), index.index);
    all.check_image(&amd).unwrap();
    all.check_image(&arm).unwrap();
    // Without --all, the host's platform (amd64) is picked from the index.
    let one = direct.skopeo_copy("multi:latest", false).unwrap();
    assert_eq!(one.tagged("pulled").unwrap(), amd.manifest);

    // podman pull: the image id is the config digest, the layers are the
    // pushed diff ids, the digest is the manifest's.
    let t = Instant::now();
    let inspect = direct.podman_pull("app:v1").unwrap();
    assert_eq!(
        format!("sha256:{}", inspect["Id"].as_str().unwrap()),
        amd.config.digest,
        "{inspect}"
    );
    assert_eq!(inspect["Digest"], amd.manifest.digest.as_str(), "{inspect}");
    let layers: Vec<String> = inspect["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(layers, amd.diff_ids);
    eprintln!("podman pull in {:?}", t.elapsed());

    // The Helm chart, by tag and by digest, with curl.
    for reference in ["0.1.0", chart.manifest.digest.as_str()] {
        let m = direct
            .get(&format!("/v2/charts/demo/manifests/{reference}"))
            .unwrap();
        assert_eq!(m.code, 200, "{}", m.describe());
        assert_eq!(m.body(), layout.read_blob(&chart.manifest.digest).unwrap());
    }
    let blob = direct
        .get(&format!("/v2/charts/demo/blobs/{}", chart.chart.digest))
        .unwrap();
    assert_eq!(blob.code, 200, "{}", blob.describe());
    assert_eq!(blob.body_digest().unwrap(), chart.chart.digest);
    assert_eq!(chart.chart.media_type, MT_HELM_CHART);
    // skopeo copies the chart artifact as well (its config type is not an
    // image's, but nothing needs converting).
    let chart_copy = direct.skopeo_copy("charts/demo:0.1.0", false).unwrap();
    assert_eq!(chart_copy.tagged("pulled").unwrap(), chart.manifest);
    chart_copy.verify_blobs().unwrap();

    // The access log counts the clients' requests, attributed to the
    // gateway namespace's address.
    let big = &amd.layers[1];
    let gets = reg
        .requests_from_gateway("GET", &format!("/v2/app/blobs/{}", big.digest))
        .unwrap();
    // skopeo copy twice (v1, multi without --all pulls from "multi"), podman once.
    assert!(!gets.is_empty(), "{:?}", reg.access_log().unwrap());
    assert!(gets.iter().all(|l| l.status == 200 && l.bytes == big.size));

    // What the tools wrote under /var/lib (their blob-info cache) landed in
    // the client's overlay, not in the host's /var/lib.
    eprintln!("tools wrote under /var/lib: {:?}", direct.var_lib_writes());
}

#[test]
fn corrupted_blob_is_served_as_is_until_restored() {
    require_root();
    let site = Site::new("oci-harness-corrupt").unwrap();
    let reg = Registry::start(&site, RegistryOptions::default()).unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(MIB, 5)], "c")
        .unwrap();
    reg.push(&layout, "app", &img.manifest, "v1").unwrap();
    let layer = &img.layers[0];
    let direct = Client::direct(&reg).unwrap();
    let path = format!("/v2/app/blobs/{}", layer.digest);

    let original = reg.corrupt_blob(&layer.digest).unwrap();
    let bad = direct.get(&path).unwrap();
    assert_eq!(bad.code, 200, "{}", bad.describe());
    assert_eq!(bad.body_len(), layer.size);
    assert_ne!(bad.body_digest().unwrap(), layer.digest);
    // A verifying client refuses it.
    let (out, _) = direct.try_skopeo_copy("app:v1", false).unwrap();
    assert!(!out.success(), "skopeo accepted a corrupted blob");

    reg.restore_blob(&layer.digest, &original).unwrap();
    let good = direct.get(&path).unwrap();
    assert_eq!(good.body_digest().unwrap(), layer.digest);
    direct
        .skopeo_copy("app:v1", false)
        .unwrap()
        .check_image(&img)
        .unwrap();
}

#[test]
fn htpasswd_registry_demands_credentials() {
    require_root();
    let site = Site::new("oci-harness-auth").unwrap();
    let creds = Credentials::random();
    let reg = Registry::start(
        &site,
        RegistryOptions {
            credentials: Some(creds.clone()),
        },
    )
    .unwrap();
    let pw = std::fs::read_to_string(reg.password_file.as_ref().unwrap()).unwrap();
    assert_eq!(pw.trim_end(), creds.password);

    // Anonymous: refused with a basic challenge.
    let anon = registry::curl::curl(
        &site.gw_ns,
        &site.tmp_dir().join("anon"),
        &[
            "--cacert".into(),
            reg.ca_pem.to_string_lossy().into_owned(),
            "https://registry.example.test/v2/".into(),
        ],
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(anon.code, 401, "{}", anon.describe());
    let challenge = anon.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic"), "{challenge}");

    // With the credentials: push and pull.
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(64 * 1024, 6)], "auth")
        .unwrap();
    reg.push(&layout, "private/app", &img.manifest, "v1")
        .unwrap();
    let direct = Client::direct(&reg).unwrap();
    direct
        .skopeo_copy("private/app:v1", false)
        .unwrap()
        .check_image(&img)
        .unwrap();
}

#[test]
fn registry_leaves_nothing_behind() {
    require_root();
    let site = Site::new("oci-harness-drop").unwrap();
    let etc = [
        Path::new("/etc/netns").join(&site.gw_ns),
        Path::new("/etc/netns").join(&site.dev_ns),
    ];
    let pid;
    {
        let reg = Registry::start(&site, RegistryOptions::default()).unwrap();
        pid = reg.pid().unwrap();
        for dir in &etc {
            let hosts = std::fs::read_to_string(dir.join("hosts")).unwrap();
            assert!(hosts.contains("10.77.2.3 registry.example.test"), "{hosts}");
        }
        let addrs = gateway_tests::netns::ip_in(&site.up_ns, &["addr", "show", "dev", &site.up_if])
            .unwrap();
        assert!(addrs.contains("10.77.2.3/24"), "{addrs}");
    }
    for dir in &etc {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "registry pid {pid} still alive"
    );
    let addrs =
        gateway_tests::netns::ip_in(&site.up_ns, &["addr", "show", "dev", &site.up_if]).unwrap();
    assert!(!addrs.contains("10.77.2.3"), "{addrs}");
}
