//! `cache.store`: the documented example parses with its defaults, and
//! each bad key is refused by name.
use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use super::super::Config;

const MINIMAL: &str = "
devices:
  interfaces: [dev0]
manager:
  name: wfm.site.example
  addresses: [\"10.0.0.5:443\"]
";

const STORE: &str = "
cache:
  dir: /var/lib/gateway/cache
  max_size: 20GiB
  store:
    endpoint: http://garage.site.internal:3900
    bucket: gateway-cache
    region: garage
    access_key_id: GK0123456789abcdef01234567
    secret_access_key_file: /etc/gateway/s3.secret
";

fn with(store_lines: &str) -> String {
    format!("{MINIMAL}cache:\n  store:\n{store_lines}")
}

fn err(text: &str) -> String {
    match Config::parse(text) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_documented_store_parses_with_defaults() {
    let c = Config::parse(&format!("{MINIMAL}{STORE}")).expect("parses");
    let s = c.cache.store.expect("store");
    assert_eq!(s.endpoint, "http://garage.site.internal:3900");
    assert_eq!(s.bucket, "gateway-cache");
    assert_eq!(s.region, "garage");
    assert_eq!(s.prefix, None);
    assert_eq!(s.timeout, Duration::from_secs(5));
    assert_eq!(s.gateway_id, None);
    assert!(
        Config::parse(MINIMAL)
            .expect("parses")
            .cache
            .store
            .is_none()
    );
}

#[test]
fn bad_store_keys_are_named() {
    let base = "    bucket: gateway-cache\n    access_key_id: GK1\n";
    let secret = "    secret_access_key_env: S3_SECRET\n";
    for (lines, key, says) in [
        (
            format!("    endpoint: ftp://x:21\n{base}{secret}"),
            "cache.store.endpoint",
            "not an http",
        ),
        (
            format!("    endpoint: http://x:3900/bucket\n{base}{secret}"),
            "cache.store.endpoint",
            "path",
        ),
        (
            format!("    endpoint: http://key:pw@x:3900\n{base}{secret}"),
            "cache.store.endpoint",
            "user-info",
        ),
        (
            format!("    endpoint: http://x:99999\n{base}{secret}"),
            "cache.store.endpoint",
            "port",
        ),
        (
            format!(
                "    endpoint: http://x\n    bucket: Bad_Bucket\n    access_key_id: GK1\n{secret}"
            ),
            "cache.store.bucket",
            "bucket name",
        ),
        (
            format!("    endpoint: http://x\n{base}"),
            "cache.store.secret_access_key_file",
            "is required",
        ),
        (
            format!("    endpoint: http://x\n{base}{secret}    secret_access_key_file: /s\n"),
            "cache.store.secret_access_key_env",
            "exclusive",
        ),
        (
            format!("    endpoint: http://x\n{base}    secret_access_key_file: s3.secret\n"),
            "cache.store.secret_access_key_file",
            "absolute",
        ),
        (
            format!("    endpoint: http://x\n{base}{secret}    prefix: a/../b\n"),
            "cache.store.prefix",
            "segments",
        ),
        (
            format!("    endpoint: http://x\n{base}{secret}    timeout: 1ms\n"),
            "cache.store.timeout",
            "between",
        ),
        (
            format!("    endpoint: http://x\n{base}{secret}    gateway_id: a b\n"),
            "cache.store.gateway_id",
            "characters",
        ),
        (
            format!("    endpoint: http://x\n    bucket: b-1\n    access_key_id: \"\"\n{secret}"),
            "cache.store.access_key_id",
            "non-empty",
        ),
    ] {
        let e = err(&with(&lines));
        assert!(
            e.contains(&format!("`{key}`")) && e.contains(says),
            "{key}: {e}"
        );
    }
    // An unknown key (a secret pasted inline) is refused by serde.
    let e = err(&with(
        "    endpoint: http://x\n    bucket: b-1\n    access_key_id: GK1\n    secret_access_key: hunter2\n",
    ));
    assert!(e.contains("secret_access_key"), "{e}");
}

#[test]
fn the_secret_comes_from_a_private_file_or_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s3.secret");
    std::fs::write(&file, "hunter2\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let c = Config::parse(&with(&format!(
        "    endpoint: https://s3.example\n    bucket: b-1\n    access_key_id: GK1\n    secret_access_key_file: {}\n",
        file.display()
    )))
    .expect("parses: the file is read on the host");
    let e = c.check_store_secret().expect_err("0644").to_string();
    assert!(
        e.contains("`cache.store.secret_access_key_file`") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    c.check_store_secret().expect("0600");
    let store = c.cache.store.as_ref().expect("store");
    assert_eq!(store.secret().expect("secret").expose(), "hunter2");
    // Neither Debug of the config nor of the secret shows it.
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(!format!("{:?}", store.secret().expect("secret")).contains("hunter2"));

    let c = Config::parse(&with(
        "    endpoint: http://x\n    bucket: b-1\n    access_key_id: GK1\n    secret_access_key_env: GATEWAY_TEST_NO_SUCH_VAR_16\n",
    ))
    .expect("parses");
    let e = c.check_store_secret().expect_err("unset").to_string();
    assert!(
        e.contains("`cache.store.secret_access_key_env`") && e.contains("not set"),
        "{e}"
    );
}

#[test]
fn the_commented_example_in_gateway_yaml_parses_with_the_documented_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.yaml");
    let text = std::fs::read_to_string(path).expect("example");
    let block: Vec<String> = text
        .lines()
        .skip_while(|l| *l != "  # store:")
        .take_while(|l| l.starts_with("  #"))
        .map(|l| format!("  {}", &l[4..]))
        .collect();
    assert!(block.len() > 5, "no commented store example found");
    let yaml = format!("{MINIMAL}cache:\n{}\n", block.join("\n"));
    let c = Config::parse(&yaml).expect("the example parses");
    let s = c.cache.store.expect("store");
    assert_eq!(s.region, "garage");
    assert_eq!(s.timeout, super::DEFAULT_STORE_TIMEOUT);
    assert_eq!((s.prefix, s.ca_file, s.gateway_id), (None, None, None));
    assert!(s.secret_access_key_file.is_some());
}
