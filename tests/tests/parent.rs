//! Parent (regional) gateways: two site gateways whose registry site's
//! `upstream` is a regional gateway's `children` listener, reached over
//! mutual TLS with client certificates the regional gateway's CA issued.
//! Devices of both sites pull the same image with skopeo; the origin
//! registry (behind the regional gateway only) sees one fetch per blob.
//!
//! ```text
//!  A-dev ── A-gw ──10.77.21.0/24──┐
//!                                 R-gw (children: 10.77.21.2, 10.77.22.2 :8443) ── R-up: registry
//!  B-dev ── B-gw ──10.77.22.0/24──┘
//! ```

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use gateway_tests::{
    Gateway, GatewayConfig, Site, incidental,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{
        self, OciKeys, Registry, RegistryOptions,
        curl::{CurlResponse, curl},
        netns_etc::{NetnsEtc, RESOLV_CONF, hosts_file},
        oci_gateway::{OciGateway, cli, start_oci_gateway_with},
    },
    require_root,
};
use serde_json::Value;

const PARENT: &str = "regional.test";
const PARENT_PORT: u16 = 8443;
const KIB: u64 = 1024;

/// A child site's gateway: its registry site fed by the parent at
/// `parent_ip`, presenting `name`'s client certificate from `certs`. With
/// `check_key_mode`, first shows that the gateway refuses to run (exit 64,
/// naming the key) while the key file is readable by others.
fn start_child<'s>(
    site: &'s Site,
    parent_ip: &str,
    parent_ca: &Path,
    certs: &Path,
    name: &str,
    check_key_mode: bool,
) -> (OciGateway<'s>, Vec<NetnsEtc>) {
    // The child's gateway resolves the parent; its device resolves the
    // registry's name (to any address: the gateway intercepts it).
    let etc = vec![
        NetnsEtc::create(
            &site.gw_ns,
            &[
                ("hosts", hosts_file(&[(PARENT, parent_ip.to_owned())])),
                ("resolv.conf", RESOLV_CONF.to_owned()),
            ],
        )
        .unwrap(),
        NetnsEtc::create(
            &site.dev_ns,
            &[
                (
                    "hosts",
                    hosts_file(&[(registry::HOST, registry::ADDR_V4.to_string())]),
                ),
                ("resolv.conf", RESOLV_CONF.to_owned()),
            ],
        )
        .unwrap(),
    ];
    let dir = site.tmp_dir();
    let keys = OciKeys {
        ca_dir: dir.join("ca"),
        cache_dir: dir.join("cache"),
        upstream: format!("https://{PARENT}:{PARENT_PORT}"),
        ca_file: parent_ca.to_owned(),
        credentials: None,
        max_size: "1GiB".to_owned(),
        tag_ttl: "5m".to_owned(),
    };
    let q = |p: PathBuf| Value::String(p.to_string_lossy().into_owned()).to_string();
    let mut config = GatewayConfig::for_site(site);
    config.extra_yaml.push_str(&format!(
        "tls:\n  ca_dir: {}\nsites:\n  - host: {}\n    kind: oci\n    upstream: {}\n    ca_file: {}\n    client_cert: {}\n    client_key: {}\ncache:\n  dir: {}\n  max_size: 1GiB\n",
        q(keys.ca_dir.clone()),
        registry::HOST,
        keys.upstream,
        q(parent_ca.to_owned()),
        q(certs.join(format!("{name}.pem"))),
        q(certs.join(format!("{name}.key"))),
        q(keys.cache_dir.clone()),
    ));
    if check_key_mode {
        let key = certs.join(format!("{name}.key"));
        let mode = |m| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o644);
        let (status, stderr) =
            Gateway::run_to_exit(site, config.clone(), Duration::from_secs(30)).unwrap();
        assert_eq!(status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("`sites[0].client_key`"), "{stderr}");
        mode(0o600);
    }
    (start_oci_gateway_with(site, keys, config).unwrap(), etc)
}

/// curl from `ns` to the parent's children listener at `ip`, trusting the
/// parent's CA; `extra` adds options (a client certificate, headers).
fn curl_parent(site: &Site, ns: &str, ip: &str, ca: &Path, extra: &[&str]) -> CurlResponse {
    let mut args: Vec<String> = vec![
        "--cacert".into(),
        ca.to_string_lossy().into_owned(),
        "--resolve".into(),
        format!("{PARENT}:{PARENT_PORT}:{ip}"),
        "--max-time".into(),
        "20".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("https://{PARENT}:{PARENT_PORT}/v2/"));
    curl(
        ns,
        &site.tmp_dir().join("curl-parent"),
        &args,
        Duration::from_secs(30),
    )
    .unwrap()
}

#[test]
fn two_sites_under_one_regional_gateway_fetch_each_blob_once() {
    require_root();
    let (r, a, b) = (
        &Site::new("parent-r").unwrap(),
        &Site::new("parent-a").unwrap(),
        &Site::new("parent-b").unwrap(),
    );
    let link_a = r.link(&a.gw_ns, &r.gw_ns, 21).unwrap();
    let link_b = r.link(&b.gw_ns, &r.gw_ns, 22).unwrap();
    let (ip_a, ip_b) = (link_a.b_v4.to_string(), link_b.b_v4.to_string());

    // The origin: the real distribution registry behind R only, with an
    // image of a few small blobs.
    let reg = Registry::start(r, RegistryOptions::default()).unwrap();
    let layout = Layout::create(&r.tmp_dir().join("src")).unwrap();
    let image = layout
        .image(
            LINUX_AMD64,
            &[
                LayerSpec::gzip(incidental(256 * KIB), 31),
                LayerSpec::tar(incidental(512 * KIB), 32),
            ],
            "amd64",
        )
        .unwrap();
    reg.push(&layout, "app", &image.manifest, "v1").unwrap();

    // The regional gateway: its own registry site, and the children
    // listener on both links.
    let r_keys = OciKeys::for_registry(&reg, "5m");
    let mut r_config = r_keys.config(r);
    r_config.extra_yaml.push_str(&format!(
        "children:\n  listen: [\"{ip_a}:{PARENT_PORT}\", \"{ip_b}:{PARENT_PORT}\"]\n  server_name: {PARENT}\n"
    ));
    let parent = start_oci_gateway_with(r, r_keys, r_config).unwrap();
    let parent_ca = r.tmp_dir().join("parent-ca.pem");
    std::fs::write(&parent_ca, &parent.site_ca_pem).unwrap();
    let certs = r.tmp_dir().join("children");
    for name in ["site-a", "site-b"] {
        let out = cli(
            &parent.gw,
            &[
                "ca",
                "issue-client",
                "--name",
                name,
                "--out",
                &certs.to_string_lossy(),
            ],
        )
        .unwrap();
        assert!(out.success(), "issue-client {name}: {}", out.stderr.trim());
    }

    let (child_a, _etc_a) = start_child(a, &ip_a, &parent_ca, &certs, "site-a", false);
    let (child_b, _etc_b) = start_child(b, &ip_b, &parent_ca, &certs, "site-b", true);

    // Both sites' devices pull the image, A first (the parent fills), then
    // B (the parent serves from its cache). What the parent holds then:
    // the manifest is held as a blob too.
    let held =
        image.manifest.size + image.config.size + image.layers.iter().map(|l| l.size).sum::<u64>();
    let pull = |child: &OciGateway<'_>| {
        let device = child.device().unwrap();
        let pulled = child.gw.must(device.skopeo_copy("app:v1", false));
        assert_eq!(child.gw.must(pulled.tagged("pulled")), image.manifest);
        child.gw.must(pulled.check_image(&image));
        child.gw.must(pulled.verify_blobs());
    };
    pull(&child_a);
    // The parent commits a fill a moment after its last byte went out:
    // wait for it, so that B's requests find the blobs held rather than a
    // fill to follow (which would be single-flight too).
    let deadline = Instant::now() + Duration::from_secs(10);
    while parent.gw.must(parent.cache_totals()).bytes < held {
        assert!(Instant::now() < deadline, "the parent holds too little");
        std::thread::sleep(Duration::from_millis(100));
    }
    pull(&child_b);

    // The origin served each blob once, to the regional gateway only.
    let log = reg.access_log().unwrap();
    for blob in image.blob_digests() {
        let path = format!("/v2/app/blobs/{blob}");
        let gets: Vec<_> = log
            .iter()
            .filter(|l| l.method == "GET" && l.path == path)
            .collect();
        assert_eq!(gets.len(), 1, "origin GETs of {blob}: {gets:?}");
        assert_eq!(
            gets[0].remote,
            gateway_tests::site::addr::GW_UP_V4.to_string(),
            "{gets:?}"
        );
    }

    // The parent's records name the child by its certificate, never a
    // device; B's blobs came from the parent's cache.
    let records = parent.requests().unwrap();
    for blob in image.blob_digests() {
        let path = format!("/v2/app/blobs/{blob}");
        let of = |child: &str| -> Vec<&Value> {
            records
                .iter()
                .filter(|r| r["method"] == "GET" && r["path"] == path && r["child"] == child)
                .collect()
        };
        let (from_a, from_b) = (of("site-a"), of("site-b"));
        assert_eq!(from_a.len(), 1, "{records:#?}");
        assert_eq!(from_a[0]["cache"], "miss", "{}", from_a[0]);
        assert_eq!(from_b.len(), 1, "{records:#?}");
        assert_eq!(from_b[0]["cache"], "hit", "{}", from_b[0]);
        for r in from_a.iter().chain(&from_b) {
            assert_eq!(r["host"], registry::HOST, "{r}");
            assert!(r.get("device").is_none(), "{r}");
        }
    }

    // A child without a client certificate is refused in the handshake,
    // and audited; with its certificate, the same request is served.
    let no_cert = curl_parent(a, &a.gw_ns, &ip_a, &parent_ca, &[]);
    assert!(!no_cert.complete(), "{}", no_cert.describe());
    assert_eq!(no_cert.code, 0, "{}", no_cert.describe());
    parent.gw.must(parent.gw.wait_audit(
        |r| r["event"] == "flow.denied" && r["reason"] == "child_certificate_refused",
        Duration::from_secs(10),
    ));
    let cert = certs.join("site-a.pem").to_string_lossy().into_owned();
    let key = certs.join("site-a.key").to_string_lossy().into_owned();
    let with = |origin: &str| {
        let header = format!("gateway-origin-host: {origin}");
        curl_parent(
            a,
            &a.gw_ns,
            &ip_a,
            &parent_ca,
            &["--cert", &cert, "--key", &key, "-H", &header],
        )
    };
    let served = with(registry::HOST);
    assert_eq!(served.code, 200, "{}", served.describe());
    // A host the parent does not serve: refused, audited with the child.
    let other = with("other.example.test");
    assert_eq!(other.code, 403, "{}", other.describe());
    let refused = parent.gw.must(parent.gw.wait_audit(
        |r| r["reason"] == "origin_not_served",
        Duration::from_secs(10),
    ));
    assert_eq!(refused["child"], "site-a", "{refused}");
    assert_eq!(refused["host"], "other.example.test", "{refused}");
}
