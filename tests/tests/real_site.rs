//! A real site's device: nothing configured but the site CA in its trust
//! store. Its resolv.conf names a resolver that would give wrong answers,
//! its hosts file names nothing, and a stock containerd pulls
//! `docker.io/library/app:1` by name, online and then offline. The
//! upstream has Docker Hub's shape: the registry at registry-1.docker.io
//! sends for a bearer token from auth.docker.io (which wants the
//! credentials only the gateway holds) and redirects blob GETs to a CDN
//! host; the device needs neither name.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{net::IpAddr, time::Duration};

use gateway_tests::{
    Gateway, GatewayConfig, Site,
    containerd::Containerd,
    hub::{self, Hub, HubOptions},
    incidental,
    oci::{LINUX_AMD64, LayerSpec, Layout, sha256_digest},
    registry::{
        self, Registry, RegistryOptions,
        netns_etc::{self, NetnsEtc},
        oci_gateway::{ca_export, cli},
    },
    require_root,
    site::addr,
};

const MIB: u64 = 1024 * 1024;
const REFERENCE: &str = "docker.io/library/app:1";
const AUDIT_WAIT: Duration = Duration::from_secs(10);

#[test]
fn an_unconfigured_containerd_pulls_by_name_through_the_gateway_online_and_offline() {
    require_root();
    let site = Site::new("real-site").unwrap();
    let reg = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options()).unwrap();
    // Anonymous token requests are refused: only the gateway's
    // credentials get a token.
    let hub = Hub::start(&reg, HubOptions::default()).unwrap();
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(
            LINUX_AMD64,
            &[
                LayerSpec::gzip(incidental(MIB), 21),
                LayerSpec::tar(incidental(2 * MIB), 22),
            ],
            "app",
        )
        .unwrap();
    layout.tag(&img.manifest, "1").unwrap();
    reg.push(&layout, "library/app", &img.manifest, "1")
        .unwrap();

    // The gateway: the hub as its one site, with the credentials.
    let tmp = site.tmp_dir();
    let q = |p: &std::path::Path| serde_json::Value::String(p.to_string_lossy().into_owned());
    let mut config = GatewayConfig::for_site(&site);
    config.extra_yaml.push_str(&format!(
        "tls:\n  ca_dir: {}\nsites:\n{}cache:\n  dir: {}\n  tag_ttl: \"2s\"\n",
        q(&tmp.join("ca")),
        hub.site_entry().yaml(),
        q(&tmp.join("cache")),
    ));
    let mut gw = Gateway::prepare(&site, config).unwrap();
    let init = cli(&gw, &["ca", "init"]).unwrap();
    assert!(init.success(), "ca init: {}", init.stderr);
    gw.restart().unwrap();
    let site_ca = gw.must(ca_export(&gw));

    // The device: no names, a wrong resolver, only the site CA.
    let _dev_etc = NetnsEtc::create(
        &site.dev_ns,
        &[
            ("hosts", netns_etc::hosts_file(&[])),
            ("resolv.conf", format!("nameserver {}\n", hub::RESOLVER_V4)),
            ("ssl/certs/ca-certificates.crt", site_ca.clone()),
        ],
    )
    .unwrap();
    let ctd = Containerd::start(&site.dev_ns, &tmp.join("ctd")).unwrap();
    let pulled = ctd.pull(REFERENCE);
    pulled.unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", gw.diagnostics(), hub.diagnostics()));

    // Byte for byte what was pushed.
    let row = ctd.image(REFERENCE).unwrap().unwrap();
    assert_eq!(row.digest, img.manifest.digest);
    let all: Vec<String> = std::iter::once(img.manifest.digest.clone())
        .chain(img.blob_digests())
        .collect();
    for d in &all {
        let got = ctd.content_get(d).unwrap();
        assert_eq!(sha256_digest(&got), *d);
        assert_eq!(got, layout.read_blob(d).unwrap(), "{d}");
    }

    // The device asked the gateway, not the resolver it was given: the
    // name resolved to the gateway (audited), and nothing but the gateway
    // fetched anything upstream.
    let answered = gw.must(gw.wait_audit(
        |r| r["event"] == "dns.answered" && r["name"] == hub::REGISTRY_HOST,
        AUDIT_WAIT,
    ));
    assert_eq!(
        answered["dst"],
        format!("{}:53", hub::RESOLVER_V4),
        "{answered}"
    );
    assert_eq!(
        hub.resolver.queries().unwrap(),
        0,
        "the wrong resolver was asked"
    );
    let tokens = hub.tokens();
    assert!(!tokens.is_empty(), "{}", hub.diagnostics());
    for t in &tokens {
        assert_eq!(t.user.as_deref(), Some("puller"), "{t:?}");
        assert_eq!(t.remote.ip(), IpAddr::V4(addr::GW_UP_V4), "{t:?}");
    }
    for d in img.blob_digests() {
        let fetches = hub.cdn_blob_fetches(&d).unwrap();
        assert_eq!(fetches.len(), 1, "{d}: one CDN fetch, by the gateway");
        assert_eq!(fetches[0].remote, addr::GW_UP_V4.to_string());
    }
    let requests = gw.must(gw.audit());
    let blob_gets: Vec<_> = requests
        .iter()
        .filter(|r| {
            r["event"] == "request"
                && r["host"] == hub::REGISTRY_HOST
                && r["path"].as_str().is_some_and(|p| p.contains("/blobs/"))
        })
        .collect();
    assert!(blob_gets.len() >= img.layers.len(), "{blob_gets:?}");

    // Offline: the image removed from containerd, the upstream link cut,
    // the tag older than its TTL. The same pull works from the cache.
    ctd.remove_image(REFERENCE).unwrap();
    registry::cut_upstream(&site).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let cdn_before = hub.cdn_access_log().unwrap().len();
    let again = ctd.pull(REFERENCE);
    again.unwrap_or_else(|e| panic!("offline: {e:#}\n{}", gw.diagnostics()));
    for d in &all {
        assert_eq!(
            ctd.content_get(d).unwrap(),
            layout.read_blob(d).unwrap(),
            "{d}"
        );
    }
    assert_eq!(hub.cdn_access_log().unwrap().len(), cdn_before);
    let stale = gw.must(gw.wait_audit(
        |r| r["event"] == "request" && r["cache"] == "stale" && r["host"] == hub::REGISTRY_HOST,
        AUDIT_WAIT,
    ));
    assert_eq!(stale["fault"], "upstream", "{stale}");
}
