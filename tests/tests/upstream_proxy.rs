//! Upstream through a corporate proxy (issue 14 item 4), end to end with
//! real parts: Squid (tests/src/squid.rs) in the upstream namespace is the
//! gateway's only way out, in front of the hub harness (registry with
//! token auth at `auth.docker.io`, blobs redirected to a CDN host). The
//! gateway namespace has `prohibit` routes to the origins' addresses (in
//! that namespace only), so a direct connection fails at once and only
//! the tunnel through Squid reaches them.
//!
//! 1. A device pulls a manifest (the token dance) and a layer (the CDN
//!    redirect) through the gateway with curl, a file from a `files` site
//!    and a chart from a `helm` site (nginx behind the same Squid): the
//!    right bytes, and Squid's access log shows the gateway's
//!    authenticated CONNECTs to all five hosts.
//! 2. A wrong password in the proxy's password file, `gateway reload`:
//!    the next uncached pull fails with 502 and an error naming the proxy
//!    and its 407, in the device's answer, the audit record and `gateway
//!    status`; Squid logged the refused CONNECT.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    time::Duration,
};

use gateway_tests::{
    Gateway, GatewayConfig, Site, helm,
    hub::{self, Hub, HubOptions},
    in_ns, incidental,
    netns::ip_batch_in,
    nginx::{Nginx, NginxConfig, SiteAddress, TlsFiles},
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{
        self, Registry, RegistryOptions,
        clients::Client,
        curl::CurlResponse,
        oci_gateway::{ca_export, cli},
    },
    require_root,
    site::addr,
    squid::Squid,
};
use serde_json::Value;

const AUDIT_WAIT: Duration = Duration::from_secs(20);
/// A tunnel is logged when it closes: after a reload drops the old
/// clients' pools, which takes a moment under TCG.
const SQUID_LOG_WAIT: Duration = Duration::from_secs(60);
const KIB: u64 = 1024;
const PROXY_USER: &str = "gateway";
/// The files and helm sites' origin: nginx, reached only through Squid.
const FILES_HOST: &str = "downloads.example.test";
const CHARTS_HOST: &str = "charts.example.test";
const ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 7);

/// `https://{host}{path}` from the device through the gateway.
fn device_fetch(device: &Client, host: &str, path: &str) -> CurlResponse {
    device
        .curl(&[
            "--resolve",
            &format!("{host}:443:{}", addr::GW_DEV_V4),
            &format!("https://{host}{path}"),
        ])
        .unwrap()
}

fn device_get(device: &Client, path: &str, accept: &str) -> CurlResponse {
    device
        .curl(&[
            "--resolve",
            &format!("{}:443:{}", hub::REGISTRY_HOST, addr::GW_DEV_V4),
            "-H",
            &format!("Accept: {accept}"),
            &format!("https://{}{path}", hub::REGISTRY_HOST),
        ])
        .unwrap()
}

#[test]
fn pulls_go_through_squid_and_a_wrong_password_is_named() {
    require_root();
    let site = Site::new("upstream-proxy").unwrap();
    let reg = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options()).unwrap();
    let hub = Hub::start(&reg, HubOptions::default()).unwrap();
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(
            LINUX_AMD64,
            &[
                LayerSpec::gzip(incidental(256 * KIB), 41),
                LayerSpec::gzip(incidental(64 * KIB), 42),
            ],
            "proxied",
        )
        .unwrap();
    layout.tag(&img.manifest, "1").unwrap();
    reg.push(&layout, "library/app", &img.manifest, "1")
        .unwrap();

    // A download tree and a chart repository on nginx.
    let www = site.tmp_dir().join("www");
    std::fs::create_dir_all(www.join("pub")).unwrap();
    std::fs::create_dir_all(www.join("stable")).unwrap();
    let tool = gateway_tests::device::random_bytes(incidental(96 * KIB) as usize);
    std::fs::write(www.join("pub/tool.bin"), &tool).unwrap();
    let chart = helm::package("app", "1.0.0", "through squid").unwrap();
    std::fs::write(www.join("stable/app-1.0.0.tgz"), &chart).unwrap();
    let index = helm::index_yaml(&[helm::Entry {
        name: "app",
        version: "1.0.0",
        url: "app-1.0.0.tgz".to_owned(),
        digest: Some(helm::sha256_hex(&chart)),
    }]);
    std::fs::write(www.join("stable/index.yaml"), index).unwrap();
    let origin_tls = TlsFiles::generate(
        &site.tmp_dir().join("origin-tls"),
        &[FILES_HOST, CHARTS_HOST],
    )
    .unwrap();
    let _origin_address = SiteAddress::add(&site, ORIGIN_V4).unwrap();
    let _nginx = Nginx::start(
        &site.up_ns,
        &site.tmp_dir().join("nginx"),
        NginxConfig::tls(
            "files and charts origin",
            ORIGIN_V4,
            &[FILES_HOST, CHARTS_HOST],
            &www,
            origin_tls.server.clone(),
        ),
    )
    .unwrap();

    // Squid knows the origins by name; the gateway knows only Squid.
    let mut hosts = hub::host_entries();
    hosts.push((registry::HOST.to_owned(), registry::ADDR_V4.to_string()));
    hosts.push((FILES_HOST.to_owned(), ORIGIN_V4.to_string()));
    hosts.push((CHARTS_HOST.to_owned(), ORIGIN_V4.to_string()));
    let password = format!("proxy-{}", hex_of(&gateway_tests::device::random_bytes(8)));
    let squid = Squid::start(&site, PROXY_USER, &password, &hosts).unwrap();
    let origins = [
        hub::REGISTRY_V4,
        hub::AUTH_V4,
        hub::CDN_V4,
        registry::ADDR_V4,
        ORIGIN_V4,
    ];
    let routes: Vec<Vec<String>> = origins
        .iter()
        .map(|a| {
            ["route", "add", "prohibit", &format!("{a}/32")]
                .map(str::to_owned)
                .to_vec()
        })
        .collect();
    let refs: Vec<Vec<&str>> = routes
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    ip_batch_in(&site.gw_ns, &refs).unwrap();
    // The blocked path is blocked: without the proxy nothing gets out.
    let direct = in_ns(&site.gw_ns, || {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((hub::REGISTRY_V4, 443)),
            Duration::from_secs(2),
        )
        .map(drop)
    })
    .unwrap();
    assert!(
        direct.is_err(),
        "the gateway namespace reaches the registry directly"
    );

    let password_file = site.tmp_dir().join("proxy.password");
    let write_password = |p: &str| {
        std::fs::write(&password_file, format!("{p}\n")).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write_password(&password);
    let tmp = site.tmp_dir();
    let q = |p: &std::path::Path| Value::String(p.to_string_lossy().into_owned());
    let origin_sites = format!(
        "  - {{host: {FILES_HOST}, kind: files, paths: [\"/pub/**\"], ca_file: {ca}}}\n\
         \x20 - {{host: {CHARTS_HOST}, kind: helm, upstream: \"https://{CHARTS_HOST}/stable\", ca_file: {ca}}}\n",
        ca = q(&origin_tls.ca_pem),
    );
    let mut config = GatewayConfig::for_site(&site);
    config.extra_yaml.push_str(&format!(
        "tls:\n  ca_dir: {}\nsites:\n{}{}cache:\n  dir: {}\n\
         upstream_proxy:\n  url: {}\n  username: {PROXY_USER}\n  password_file: {}\n",
        q(&tmp.join("ca")),
        hub.site_entry().yaml(),
        origin_sites,
        q(&tmp.join("cache")),
        squid.url(),
        q(&password_file),
    ));
    let mut gw = Gateway::prepare(&site, config).unwrap();
    let init = cli(&gw, &["ca", "init"]).unwrap();
    assert!(init.success(), "ca init: {}", init.stderr);
    gw.restart().unwrap();
    let device = Client::device(&site, &gw.must(ca_export(&gw))).unwrap();
    let evidence = |gw: &Gateway<'_>| format!("{}\n{}", gw.diagnostics(), squid.diagnostics());

    // (1) The manifest (token dance) and a layer (CDN redirect).
    let manifest_path = "/v2/library/app/manifests/1";
    let r = device_get(&device, manifest_path, &img.manifest.media_type);
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), evidence(&gw));
    assert_eq!(r.body_digest().unwrap(), img.manifest.digest);
    let first = &img.layers[0].digest;
    let r = device_get(&device, &format!("/v2/library/app/blobs/{first}"), "*/*");
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), evidence(&gw));
    assert_eq!(&r.body_digest().unwrap(), first);
    assert!(!hub.tokens().is_empty(), "{}", hub.diagnostics());
    assert!(
        !hub.cdn_blob_fetches(first).unwrap().is_empty(),
        "{}",
        hub.diagnostics()
    );
    // A file and a chart (its index, then the archive it names, verified
    // against the index's digest by the gateway).
    let r = device_fetch(&device, FILES_HOST, "/pub/tool.bin");
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), evidence(&gw));
    assert_eq!(r.body(), tool);
    let r = device_fetch(&device, CHARTS_HOST, "/stable/index.yaml");
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), evidence(&gw));
    let r = device_fetch(&device, CHARTS_HOST, "/stable/app-1.0.0.tgz");
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), evidence(&gw));
    assert_eq!(r.body(), chart);

    // (2) A wrong password. The reload also drops the old clients, whose
    // tunnels Squid then logs.
    write_password("not-the-password");
    let out = gw.must(cli(&gw, &["reload"]));
    assert!(
        out.success(),
        "gateway reload: {} {}",
        out.stdout_text(),
        out.stderr
    );
    let tunnelled = |host: &str| {
        let target = format!("{host}:443");
        move |l: &gateway_tests::squid::AccessLine| {
            l.method == "CONNECT"
                && l.target == target
                && l.result == "TCP_TUNNEL/200"
                && l.user == PROXY_USER
        }
    };
    for host in [
        hub::REGISTRY_HOST,
        hub::AUTH_HOST,
        hub::CDN_HOST,
        FILES_HOST,
        CHARTS_HOST,
    ] {
        squid
            .wait_access(tunnelled(host), SQUID_LOG_WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.diagnostics()));
    }

    let second = &img.layers[1].digest;
    let blob_path = format!("/v2/library/app/blobs/{second}");
    let r = device_get(&device, &blob_path, "*/*");
    assert_eq!(r.code, 502, "{}\n{}", r.describe(), evidence(&gw));
    let why = format!(
        "the upstream proxy {} refused the gateway's credentials (407 Proxy Authentication Required)",
        squid.url()
    );
    let body: Value = serde_json::from_slice(&r.body()).unwrap_or(Value::Null);
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&why), "{}", r.describe());

    let record = gw.must(gw.wait_request("GET", &blob_path, AUDIT_WAIT));
    assert_eq!(record["status"], 502, "{record}");
    assert_eq!(record["fault"], "upstream", "{record}");
    assert!(
        record["detail"].as_str().is_some_and(|d| d.contains(&why)),
        "{record}"
    );

    let status = gw.must(cli(&gw, &["status"]));
    let text = status.stdout_text();
    assert!(
        text.contains(&format!(
            "upstream proxy {} for site {}: failing since",
            squid.url(),
            hub::REGISTRY_HOST
        )) && text.contains(&why),
        "{text}"
    );
    squid
        .wait_access(
            |l| l.method == "CONNECT" && l.result == "TCP_DENIED/407",
            SQUID_LOG_WAIT,
        )
        .unwrap();
    // The password never reached the gateway's own log.
    assert!(!gw.stderr().contains(&password), "{}", gw.stderr_tail(20));
    assert!(!gw.stderr().contains("not-the-password"));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
