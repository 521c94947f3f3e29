//! Config errors with root: the gateway refuses to start (exit 64, the
//! message names the key) and leaves nothing attached or pinned.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use gateway_tests::{Gateway, GatewayConfig, Site, kernel, require_root};

#[test]
fn the_default_test_config_is_valid() {
    require_root();
    let site = Site::new("config-ok").unwrap();
    let gw = Gateway::prepare(&site, GatewayConfig::for_site(&site)).unwrap();
    let config = gw.config_path().to_string_lossy().into_owned();
    let out = gw
        .command(&["check-config", "--config", &config])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config rejected the harness's config ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        GatewayConfig::for_site(&site).to_yaml()
    );
}

#[test]
fn an_unknown_interface_exits_64_and_attaches_nothing() {
    require_root();
    let site = Site::new("config-iface").unwrap();
    // Unique to this site, so it exists nowhere.
    let missing = format!("{}zz", site.prefix);
    let mut config = GatewayConfig::for_site(&site);
    config.interfaces = vec![site.gw_dev_if.clone(), missing.clone()];
    let (status, stderr) = Gateway::run_to_exit(&site, config, Duration::from_secs(20)).unwrap();
    assert_eq!(
        status.code(),
        Some(64),
        "exit status {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("devices.interfaces"),
        "stderr does not name the key:\n{stderr}"
    );
    assert!(
        stderr.contains(&missing),
        "stderr does not name {missing}:\n{stderr}"
    );
    let attached = kernel::attached(&site, &site.gw_dev_if).unwrap();
    assert!(
        attached.is_empty(),
        "attached despite the config error: {attached:?}"
    );
    let pins = kernel::files_under(&site.pin_path()).unwrap();
    assert!(pins.is_empty(), "pinned despite the config error: {pins:?}");
    let rules = kernel::fwmark_rules(&site).unwrap();
    assert!(
        rules.is_empty(),
        "rules installed despite the config error: {rules:?}"
    );
}

/// The keys of devices' names and time (`passthrough:`, `dns:`, `time:`):
/// `gateway check-config` exits 64 and names the key.
#[test]
fn bad_service_dns_and_time_keys_exit_64_naming_the_key() {
    require_root();
    let site = Site::new("config-services").unwrap();
    for (yaml, key) in [
        (
            "passthrough:\n  - name: \"mis.site.example\"\n    addresses: [\"10.77.2.2\"]\n",
            "passthrough[0].addresses[0]",
        ),
        (
            "passthrough:\n  - name: \"mis.site.example\"\n    addresses: [\"10.77.2.2:443\"]\n",
            "passthrough[0].addresses[0]",
        ),
        ("dns:\n  answer: [\"gateway.local\"]\n", "dns.answer[0]"),
        ("dns:\n  ttl: 1000000\n", "dns.ttl"),
        ("time:\n  local_stratum: 0\n", "time.local_stratum"),
        ("time:\n  serve: sometimes\n", "time.serve"),
    ] {
        let mut config = GatewayConfig::for_site(&site);
        config.extra_yaml.push_str(yaml);
        let gw = Gateway::prepare(&site, config).unwrap();
        let path = gw.config_path().to_string_lossy().into_owned();
        let out = gw
            .command(&["check-config", "--config", &path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {stderr}");
        assert!(
            stderr.contains(key),
            "{yaml}: does not name {key}: {stderr}"
        );
    }
}

/// `cache.store` (the shared tier): `gateway check-config` exits 64 and
/// names the key, for a bad endpoint, two secret sources, and a secret
/// file others may read (checked on the host, as at start).
#[test]
fn bad_store_keys_exit_64_naming_the_key() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root();
    let site = Site::new("config-store").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s3.secret");
    std::fs::write(&secret, "not-a-real-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = |lines: &str| {
        format!(
            "cache:\n  store:\n    bucket: gateway-cache\n    region: garage\n    access_key_id: GK0123\n{lines}"
        )
    };
    let file = format!("    secret_access_key_file: {}\n", secret.display());
    for (yaml, key) in [
        (
            store(&format!("    endpoint: garage.site.internal:3900\n{file}")),
            "cache.store.endpoint",
        ),
        (
            store(&format!(
                "    endpoint: http://10.77.9.9:3900\n{file}    secret_access_key_env: S3_SECRET\n"
            )),
            "cache.store.secret_access_key_env",
        ),
        (
            store(&format!("    endpoint: http://10.77.9.9:3900\n{file}")),
            "cache.store.secret_access_key_file",
        ),
    ] {
        let mut config = GatewayConfig::for_site(&site);
        config.extra_yaml.push_str(&yaml);
        let gw = Gateway::prepare(&site, config).unwrap();
        let path = gw.config_path().to_string_lossy().into_owned();
        let out = gw
            .command(&["check-config", "--config", &path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {stderr}");
        assert!(
            stderr.contains(key),
            "{yaml}: does not name {key}: {stderr}"
        );
        assert!(
            !stderr.contains("not-a-real-secret"),
            "the secret is in the error: {stderr}"
        );
    }
}
