//! Device groups (issue 13 item 1): who may pull what, with the real
//! registry and clients. Three devices share the device link, each from a
//! source address in another group's prefix:
//!
//! - 10.77.1.2 (`line3`, 10.77.1.0/25): `line-3/**` and `library/*`, and
//!   the manager;
//! - 10.77.1.130 (`default`: no prefix matches it): `library/*` only;
//! - 10.77.1.200 (`cell9`, a /32): no site, no passthrough service.
//!
//! `line-3/app` and `library/base` share one layer; `line-3/app` has one
//! more of its own. Checked: line3 pulls its image with skopeo; default
//! gets DENIED for `line-3/app` and, through `library/base`, neither that
//! image's own layer (404 although the gateway holds it) nor anything
//! upstream has not confirmed for `library/base` (the shared layer is
//! served from the cache after one upstream HEAD); cell9 gets no
//! certificate, NXDOMAIN and no manager; each refusal is audited with its
//! group; a group naming an unknown site is refused (exit 64, and by a
//! reload); a reload moves a device into another group.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use gateway_tests::{
    Site, dns, incidental,
    netns::ip_in,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{
        self, Client, CurlResponse, OciKeys, Registry, RegistryOptions,
        oci_gateway::{cli, start_oci_gateway_with},
    },
    require_root,
    site::addr,
};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const AUDIT_WAIT: Duration = Duration::from_secs(10);
const DEFAULT_DEV: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 130);
const CELL_DEV: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 200);

/// `devices.groups`, under `devices:`.
const GROUPS: &str = "  groups:
    - name: line3
      prefixes: [\"10.77.1.0/25\", \"fd77:1::/64\"]
      sites:
        - host: registry.example.test
          repositories: [\"line-3/**\", \"library/*\"]
      passthrough: [wfm.site.example]
    - name: cell9
      prefixes: [\"10.77.1.200/32\"]
      passthrough: []
    - name: default
      sites:
        - host: registry.example.test
          repositories: [\"library/*\"]
";

/// `GET https://registry.example.test<path>` from `source`.
fn get_from(device: &Client, source: Ipv4Addr, path: &str) -> CurlResponse {
    device
        .curl(&[
            "--interface",
            &source.to_string(),
            "-H",
            &format!("Accept: {}", gateway_tests::oci::ACCEPT_MANIFESTS),
            &Client::url(path),
        ])
        .unwrap()
}

/// Whether audit record `r` came from device address `ip`.
fn from(r: &Value, ip: Ipv4Addr) -> bool {
    r["device"]
        .as_str()
        .is_some_and(|d| d.starts_with(&format!("{ip}:")))
}

/// The first error's code in a distribution error body.
fn error_code(r: &CurlResponse) -> Value {
    let v: Value = serde_json::from_slice(&r.body()).unwrap_or(Value::Null);
    v["errors"][0].clone()
}

#[test]
fn groups_limit_sites_repositories_and_cached_blobs() {
    require_root();
    let site = Site::new("groups").unwrap();
    let registry = Registry::start(&site, RegistryOptions::default()).unwrap();
    for a in [DEFAULT_DEV, CELL_DEV] {
        ip_in(
            &site.dev_ns,
            &["addr", "add", &format!("{a}/24"), "dev", &site.dev_if],
        )
        .unwrap();
    }
    let keys = OciKeys::for_registry(&registry, "5m");
    let mut config = keys.config(&site);
    config.devices_yaml = GROUPS.to_owned();
    let gw = start_oci_gateway_with(&site, keys, config).unwrap();
    let device = gw.device().unwrap();

    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let shared = LayerSpec::tar(incidental(MIB), 61);
    let app = layout
        .image(
            LINUX_AMD64,
            &[LayerSpec::tar(incidental(MIB), 62), shared],
            "app",
        )
        .unwrap();
    let base = layout.image(LINUX_AMD64, &[shared], "base").unwrap();
    registry
        .push(&layout, "line-3/app", &app.manifest, "v1")
        .unwrap();
    registry
        .push(&layout, "library/base", &base.manifest, "v1")
        .unwrap();
    let own_layer = app.layers[0].digest.clone();
    let shared_layer = app.layers[1].digest.clone();
    assert_eq!(base.layers[0].digest, shared_layer);

    // line3 pulls its line's image; its requests carry its group.
    let pulled = gw.gw.must(device.skopeo_copy("line-3/app:v1", false));
    gw.gw.must(pulled.check_image(&app));
    let fill = gw
        .gw
        .must(gw.wait_requests("GET", &format!("/v2/line-3/app/blobs/{own_layer}"), 1));
    assert_eq!(fill[0]["group"], "line3", "{}", fill[0]);
    assert_eq!(fill[0]["status"], 200, "{}", fill[0]);

    // default may not pull line-3/app: the registry's DENIED, audited.
    let path = "/v2/line-3/app/manifests/v1";
    let denied = get_from(&device, DEFAULT_DEV, path);
    assert_eq!(denied.code, 403, "{}", denied.describe());
    let e = error_code(&denied);
    assert_eq!(e["code"], "DENIED", "{e}");
    assert_eq!(e["detail"]["group"], "default", "{e}");
    assert_eq!(e["detail"]["repository"], "line-3/app", "{e}");
    let r = gw.gw.must(gw.gw.wait_audit(
        |r| r["event"] == "request" && r["path"] == path && from(r, DEFAULT_DEV),
        AUDIT_WAIT,
    ));
    assert_eq!(r["group"], "default", "{r}");
    assert_eq!(r["status"], 403, "{r}");
    assert_eq!(r["reason"], "group_not_allowed", "{r}");

    // The cross-group probe: line-3/app's own layer is in the cache, but
    // library/base's upstream does not have it, so default gets the 404
    // the registry would give, not the bytes.
    let probe = format!("/v2/library/base/blobs/{own_layer}");
    let refused = get_from(&device, DEFAULT_DEV, &probe);
    assert_eq!(refused.code, 404, "{}", refused.describe());
    assert_eq!(error_code(&refused)["code"], "BLOB_UNKNOWN");
    assert!(refused.body_len() < 1024, "{}", refused.describe());
    let asked = registry.requests_from_gateway("HEAD", &probe).unwrap();
    assert_eq!(asked.len(), 1, "upstream HEADs of {probe}: {asked:?}");
    assert_eq!(asked[0].status, 404, "{asked:?}");
    let r = gw.gw.must(gw.gw.wait_audit(
        |r| r["event"] == "request" && r["path"] == probe.as_str(),
        AUDIT_WAIT,
    ));
    assert_eq!(r["group"], "default", "{r}");
    assert_eq!(r["status"], 404, "{r}");

    // The shared layer, which library/base really has: upstream confirms
    // it once, then it is served from the cache (no upstream GET), and
    // the next request needs no HEAD.
    let ok_path = format!("/v2/library/base/blobs/{shared_layer}");
    for _ in 0..2 {
        let served = get_from(&device, DEFAULT_DEV, &ok_path);
        assert_eq!(served.code, 200, "{}", served.describe());
        assert_eq!(served.body_digest().unwrap(), shared_layer);
    }
    let heads = registry.requests_from_gateway("HEAD", &ok_path).unwrap();
    assert_eq!(heads.len(), 1, "upstream HEADs of {ok_path}: {heads:?}");
    let gets = registry.requests_from_gateway("GET", &ok_path).unwrap();
    assert!(gets.is_empty(), "upstream GETs of {ok_path}: {gets:?}");
    let served = gw.gw.must(gw.wait_requests("GET", &ok_path, 2));
    for r in &served {
        assert_eq!(r["cache"], "hit", "{r}");
        assert_eq!(r["group"], "default", "{r}");
    }

    // cell9 may use no site: no certificate for the registry, audited.
    let no_tls = get_from(&device, CELL_DEV, "/v2/");
    assert_eq!(no_tls.code, 0, "{}", no_tls.describe());
    assert!(!no_tls.complete(), "{}", no_tls.describe());
    let r = gw.gw.must(gw.gw.wait_audit(
        |r| r["event"] == "flow.denied" && r["group"] == "cell9" && r["host"] == registry::HOST,
        AUDIT_WAIT,
    ));
    assert_eq!(r["reason"], "group_not_allowed", "{r}");

    // ... and NXDOMAIN for its name, which default still resolves.
    let gw_ip = IpAddr::V4(addr::GW_DEV_V4);
    let nx = dns::dig_from(
        &site,
        Some(CELL_DEV.into()),
        gw_ip,
        registry::HOST,
        "A",
        false,
    )
    .unwrap();
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    let yes = dns::dig_from(
        &site,
        Some(DEFAULT_DEV.into()),
        gw_ip,
        registry::HOST,
        "A",
        false,
    )
    .unwrap();
    assert_eq!(yes.status, "NOERROR", "{}", yes.raw);
    assert!(!yes.data("A").is_empty(), "{}", yes.raw);
    let r = gw.gw.must(gw.gw.wait_audit(
        |r| r["event"] == "dns.refused" && r["group"] == "cell9",
        AUDIT_WAIT,
    ));
    assert_eq!(r["reason"], "group_not_allowed", "{r}");

    // ... and no manager, while line3 reaches it.
    let manager = format!("telnet://{}:{}", addr::UP_V4, addr::MANAGER_PORT);
    let _ = device
        .curl(&[
            "--interface",
            &addr::DEV_V4.to_string(),
            "--max-time",
            "2",
            &manager,
        ])
        .unwrap();
    let r = gw.gw.must(gw.gw.wait_audit(
        |r| r["event"] == "flow.passthrough" && from(r, addr::DEV_V4),
        AUDIT_WAIT,
    ));
    assert_eq!(r["group"], "line3", "{r}");
    assert_eq!(r["service"], "wfm.site.example", "{r}");
    let _ = device
        .curl(&[
            "--interface",
            &CELL_DEV.to_string(),
            "--max-time",
            "2",
            &manager,
        ])
        .unwrap();
    let r = gw.gw.must(gw.gw.wait_audit(
        |r| r["event"] == "flow.denied" && r["service"] == "wfm.site.example",
        AUDIT_WAIT,
    ));
    assert_eq!(r["reason"], "group_not_allowed", "{r}");
    assert_eq!(r["group"], "cell9", "{r}");
    assert!(from(&r, CELL_DEV), "{r}");

    // A group naming a site that is not configured: check-config exits 64
    // naming the key, and a reload refuses it.
    let config_path = gw.gw.config_path().to_owned();
    let text = std::fs::read_to_string(&config_path).unwrap();
    let default_site =
        "        - host: registry.example.test\n          repositories: [\"library/*\"]\n";
    assert!(text.contains(default_site), "{text}");
    std::fs::write(
        &config_path,
        text.replace(default_site, "        - host: nowhere.example.test\n"),
    )
    .unwrap();
    let check = gw.gw.must(cli(&gw.gw, &["check-config"]));
    assert_eq!(check.status.code(), Some(64), "{}", check.stderr);
    assert!(
        check.stderr.contains("devices.groups[2].sites[0].host"),
        "{}",
        check.stderr
    );
    let out = gw.gw.must(cli(&gw.gw, &["reload"]));
    assert!(!out.success(), "a bad reload was applied: {}", out.stderr);

    // A reload moves default's device into line3: line-3/app is its now.
    std::fs::write(
        &config_path,
        text.replace("\"10.77.1.0/25\"", "\"10.77.1.0/25\", \"10.77.1.130/32\""),
    )
    .unwrap();
    let check = gw.gw.must(cli(&gw.gw, &["check-config"]));
    assert!(check.success(), "{}", check.stderr);
    assert!(
        check
            .stdout_text()
            .contains("group line3: 10.77.1.0/25, 10.77.1.130/32"),
        "{}",
        check.stdout_text()
    );
    let out = gw.gw.must(cli(&gw.gw, &["reload"]));
    assert!(out.success(), "gateway reload: {}", out.stderr);
    let now = get_from(&device, DEFAULT_DEV, path);
    assert_eq!(now.code, 200, "{}", now.describe());
    let r = gw.gw.must(gw.gw.wait_audit(
        |r| {
            r["event"] == "request"
                && r["path"] == path
                && r["status"] == 200
                && from(r, DEFAULT_DEV)
        },
        AUDIT_WAIT,
    ));
    assert_eq!(r["group"], "line3", "{r}");
}
