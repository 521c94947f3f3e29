//! A compromised upstream pointing the gateway at the site network (SSRF),
//! end to end with the real registry: the hub harness's
//! `registry-1.docker.io` sends for a token at `auth.docker.io` and
//! redirects blob GETs to its CDN, both on the upstream namespace's
//! private 10.77.2.x addresses, which is what an upstream turned against
//! the site looks like. The gateway follows them only when the site lists
//! the host in `redirect_hosts`; otherwise the device gets a 502 with an
//! OCI error naming the host, the audit record says `fault: upstream`,
//! and the private host receives nothing.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use gateway_tests::{
    Gateway, GatewayConfig, Site,
    hub::{self, Hub, HubOptions, HubSite},
    oci::{Image, LINUX_AMD64, LayerSpec, Layout},
    registry::{
        Registry, RegistryOptions,
        clients::Client,
        curl::CurlResponse,
        oci_gateway::{ca_export, cli},
    },
    require_root,
    site::addr,
};
use serde_json::Value;

const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// An image of one layer pushed to `reg` as `library/app:1`.
fn push_app(site: &Site, reg: &Registry<'_>) -> Image {
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(64 * 1024, 31)], "app")
        .unwrap();
    layout.tag(&img.manifest, "1").unwrap();
    reg.push(&layout, "library/app", &img.manifest, "1")
        .unwrap();
    img
}

/// A gateway whose one site is the hub, with `entry`'s keys.
fn start_gateway<'s>(site: &'s Site, entry: &HubSite) -> (Gateway<'s>, Client) {
    let tmp = site.tmp_dir();
    let q = |p: &std::path::Path| serde_json::Value::String(p.to_string_lossy().into_owned());
    let mut config = GatewayConfig::for_site(site);
    config.extra_yaml.push_str(&format!(
        "tls:\n  ca_dir: {}\nsites:\n{}cache:\n  dir: {}\n",
        q(&tmp.join("ca")),
        entry.yaml(),
        q(&tmp.join("cache")),
    ));
    let mut gw = Gateway::prepare(site, config).unwrap();
    let init = cli(&gw, &["ca", "init"]).unwrap();
    assert!(init.success(), "ca init: {}", init.stderr);
    gw.restart().unwrap();
    let site_ca = gw.must(ca_export(&gw));
    let device = Client::device(site, &site_ca).unwrap();
    (gw, device)
}

/// `GET https://registry-1.docker.io<path>` from the device. The name is
/// pinned to the gateway's device-side address: the kernel hands every
/// port-443 connection to the gateway anyway, and the device's own /etc
/// is left alone.
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

/// The OCI error body's first message.
fn oci_error(r: &CurlResponse) -> (String, String) {
    let body: Value = serde_json::from_slice(&r.body()).unwrap_or(Value::Null);
    let e = &body["errors"][0];
    (
        e["code"].as_str().unwrap_or_default().to_owned(),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn a_cdn_redirect_to_a_private_address_is_refused_unless_listed() {
    require_root();
    let site = Site::new("ssrf-cdn").unwrap();
    let reg = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options()).unwrap();
    let hub = Hub::start(&reg, HubOptions::default()).unwrap();
    let img = push_app(&site, &reg);
    // The token realm is listed, the CDN is not.
    let mut entry = hub.site_entry();
    entry.redirect_hosts = vec![hub::AUTH_HOST.to_owned()];
    let (gw, device) = start_gateway(&site, &entry);

    // The manifest: the token dance goes to the listed realm.
    let manifest_path = "/v2/library/app/manifests/1";
    let r = device_get(&device, manifest_path, &img.manifest.media_type);
    assert_eq!(
        r.code,
        200,
        "{}\n{}\n{}",
        r.describe(),
        gw.diagnostics(),
        hub.diagnostics()
    );
    assert!(!hub.tokens().is_empty(), "{}", hub.diagnostics());

    // A layer: the registry redirects to the CDN on 10.77.2.6, refused.
    let layer = &img.layers[0].digest;
    let blob_path = format!("/v2/library/app/blobs/{layer}");
    let r = device_get(&device, &blob_path, "*/*");
    assert_eq!(r.code, 502, "{}\n{}", r.describe(), gw.diagnostics());
    let (code, message) = oci_error(&r);
    assert_eq!(code, "UNAVAILABLE", "{}", r.describe());
    let why = format!(
        "{} resolves only to refused addresses: {} (private)",
        hub::CDN_HOST,
        hub::CDN_V4
    );
    assert!(message.contains(&why), "{message}");
    assert!(message.contains("redirect_hosts"), "{message}");

    let record = gw.must(gw.wait_request("GET", &blob_path, AUDIT_WAIT));
    assert_eq!(record["status"], 502, "{record}");
    assert_eq!(record["fault"], "upstream", "{record}");
    let detail = record["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&why), "{record}");
    assert!(
        gw.stderr().contains("upstream target refused"),
        "{}",
        gw.stderr_tail(30)
    );

    // The registry did send the gateway to the CDN; the CDN saw nothing.
    assert!(
        !hub.blob_redirects(layer).unwrap().is_empty(),
        "{}",
        hub.diagnostics()
    );
    assert_eq!(hub.cdn_access_log().unwrap(), Vec::new());
}

#[test]
fn a_token_realm_on_a_private_address_is_refused_unless_listed() {
    require_root();
    let site = Site::new("ssrf-realm").unwrap();
    let reg = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options()).unwrap();
    let hub = Hub::start(&reg, HubOptions::default()).unwrap();
    let img = push_app(&site, &reg);
    let mut entry = hub.site_entry();
    entry.redirect_hosts = Vec::new();
    let (gw, device) = start_gateway(&site, &entry);

    let manifest_path = "/v2/library/app/manifests/1";
    let r = device_get(&device, manifest_path, &img.manifest.media_type);
    assert_eq!(r.code, 502, "{}\n{}", r.describe(), gw.diagnostics());
    let (code, message) = oci_error(&r);
    assert_eq!(code, "UNAVAILABLE", "{}", r.describe());
    let why = format!("token realm https://{}/token", hub::AUTH_HOST);
    assert!(message.contains(&why), "{message}");
    assert!(
        message.contains(&format!("{} (private)", hub::AUTH_V4)),
        "{message}"
    );

    let record = gw.must(gw.wait_request("GET", manifest_path, AUDIT_WAIT));
    assert_eq!(record["status"], 502, "{record}");
    assert_eq!(record["fault"], "upstream", "{record}");
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.contains(hub::AUTH_HOST)),
        "{record}"
    );
    // The credentials never went to the token server: it saw no request.
    assert!(hub.tokens().is_empty(), "{:?}", hub.tokens());
    assert!(
        hub.token_refusals().is_empty(),
        "{:?}",
        hub.token_refusals()
    );
}
