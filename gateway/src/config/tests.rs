use super::*;

const MINIMAL: &str = "
devices:
  interfaces: [dev0]
manager:
  name: wfm.site.example
  addresses: [\"10.0.0.5:443\"]
";

fn err(text: &str) -> String {
    match Config::parse(text) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::parse(MINIMAL).expect("minimal config");
    assert_eq!(c.intercept.tcp_ports, vec![80, 443]);
    assert_eq!(c.proxy.port, 15001);
    assert!(!c.devices.allow_dhcp);
    assert_eq!(c.audit.path, PathBuf::from("/var/log/gateway/audit.jsonl"));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/gateway"));
    assert_eq!(
        c.kernel.pin_path,
        PathBuf::from("/sys/fs/bpf/margo-gateway")
    );
    assert_eq!(c.kernel.mark, 0x4d47);
    assert_eq!(c.kernel.route_table, 4747);
    assert_eq!(
        c.passthrough_addresses(),
        vec!["10.0.0.5:443".parse::<SocketAddr>().expect("addr")]
    );
    assert!(c.dns.enabled);
    assert!(c.dns.answer.is_empty());
    assert_eq!(c.dns.ttl, 60);
    assert!(c.time.serve);
    assert_eq!(c.time.local_stratum, None);
}

const SERVICES: &str = "
devices:
  interfaces: [dev0]
passthrough:
  - name: wfm.site.example
    addresses: [\"10.0.0.5:443\", \"[fd00::5]:443\"]
  - name: mis.site.example
    addresses: [\"10.0.0.6:443\"]
dns:
  enabled: true
  answer: []
  ttl: 60
time:
  serve: true
";

#[test]
fn passthrough_services_dns_and_time() {
    let c = Config::parse(SERVICES).expect("services config");
    let services = c.passthrough_services();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0].name, "wfm.site.example");
    assert_eq!(services[0].addresses.len(), 2);
    assert_eq!(services[1].name, "mis.site.example");
    // `manager:` is one more entry, listed first.
    let both = Config::parse(&SERVICES.replace(
        "passthrough:",
        "manager: {name: old.site.example, addresses: [\"10.0.0.7:8443\"]}\npassthrough:",
    ))
    .expect("manager beside passthrough");
    let names: Vec<String> = both
        .passthrough_services()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        ["old.site.example", "wfm.site.example", "mis.site.example"]
    );
    let c = Config::parse(&SERVICES.replace("answer: []", "answer: [\"10.0.0.1\", \"fd00::1\"]"))
        .expect("answer");
    assert_eq!(c.dns.answer_addresses().len(), 2);
}

#[test]
fn bad_services_dns_and_time_are_named() {
    let e = err(&SERVICES.replace("\"10.0.0.6:443\"", "\"10.0.0.6\""));
    assert!(e.contains("passthrough[1].addresses[0]"), "{e}");
    // One address, two services: which would a connection belong to?
    let e = err(&SERVICES.replace("10.0.0.6:443", "10.0.0.5:443"));
    assert!(
        e.contains("passthrough[1].addresses[0]") && e.contains("twice"),
        "{e}"
    );
    let e = err(&SERVICES.replace("mis.site.example", "WFM.site.example"));
    assert!(e.contains("passthrough[1].name"), "{e}");
    let e = err(&SERVICES.replace("mis.site.example", "mis_site"));
    assert!(e.contains("passthrough[1].name"), "{e}");
    let e = err(&SERVICES.replace("answer: []", "answer: [\"10.0.0.1:53\"]"));
    assert!(e.contains("dns.answer[0]"), "{e}");
    let e = err(&SERVICES.replace("answer: []", "answer: [\"127.0.0.1\"]"));
    assert!(e.contains("dns.answer[0]"), "{e}");
    let e = err(&SERVICES.replace("ttl: 60", "ttl: 100000"));
    assert!(e.contains("dns.ttl"), "{e}");
    let e = err(&SERVICES.replace("ttl: 60", "ttl: -1"));
    assert!(e.contains("ttl"), "{e}");
    let e = err(&SERVICES.replace("serve: true", "serve: true\n  local_stratum: 16"));
    assert!(e.contains("time.local_stratum"), "{e}");
    let e = err(&SERVICES.replace("serve: true", "serv: true"));
    assert!(e.contains("serv"), "{e}");
    let e = err(&format!(
        "{SERVICES}sites:\n  - host: mis.site.example\n    kind: oci\n"
    ));
    assert!(
        e.contains("sites[0].host") && e.contains("mis.site.example"),
        "{e}"
    );
}

#[test]
fn example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no example config found in {}", dir.display());
}

#[test]
fn example_config_shows_every_default() {
    // The example documents the defaults: it must agree with the code.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.yaml");
    let example = Config::load(&path).expect("example parses");
    let minimal = Config::parse(MINIMAL).expect("minimal");
    assert_eq!(example.intercept.tcp_ports, minimal.intercept.tcp_ports);
    assert_eq!(example.proxy.port, minimal.proxy.port);
    assert_eq!(
        example.proxy.connect_timeout_secs,
        minimal.proxy.connect_timeout_secs
    );
    assert_eq!(example.proxy.max_connections, minimal.proxy.max_connections);
    assert_eq!(
        example.proxy.max_connections_per_device,
        minimal.proxy.max_connections_per_device
    );
    assert_eq!(
        example.proxy.idle_timeout_secs,
        minimal.proxy.idle_timeout_secs
    );
    assert_eq!(
        example.proxy.first_bytes_timeout_secs,
        minimal.proxy.first_bytes_timeout_secs
    );
    assert_eq!(
        example.proxy.passthrough_idle_secs,
        minimal.proxy.passthrough_idle_secs
    );
    assert_eq!(example.audit.path, minimal.audit.path);
    assert_eq!(example.state_dir, minimal.state_dir);
    assert_eq!(example.kernel.pin_path, minimal.kernel.pin_path);
    assert_eq!(example.kernel.mark, minimal.kernel.mark);
    assert_eq!(example.kernel.route_table, minimal.kernel.route_table);
    assert_eq!(example.kernel.rule_priority, minimal.kernel.rule_priority);
    assert_eq!(
        example.kernel.drop_event_interval_ms,
        minimal.kernel.drop_event_interval_ms
    );
    assert_eq!(
        example.kernel.drop_flush_secs,
        minimal.kernel.drop_flush_secs
    );
    assert_eq!(example.kernel.attach, minimal.kernel.attach);
    assert_eq!(example.tls.ca_dir, minimal.tls.ca_dir);
    assert_eq!(example.tls.leaf_validity, minimal.tls.leaf_validity);
    assert_eq!(example.tls.leaf_cache, minimal.tls.leaf_cache);
    assert_eq!(example.dns.enabled, minimal.dns.enabled);
    assert_eq!(example.dns.answer, minimal.dns.answer);
    assert_eq!(example.dns.ttl, minimal.dns.ttl);
    assert_eq!(example.time.serve, minimal.time.serve);
    assert_eq!(example.time.local_stratum, minimal.time.local_stratum);
    assert_eq!(example.cache.dir, minimal.cache.dir);
    assert_eq!(example.cache.max_size, minimal.cache.max_size);
    assert_eq!(example.cache.tag_ttl, minimal.cache.tag_ttl);
    assert_eq!(
        example.cache.stale_while_revalidate,
        minimal.cache.stale_while_revalidate
    );
    assert_eq!(example.cache.limits(), minimal.cache.limits());
    assert_eq!(example.upstream, minimal.upstream);
}

#[test]
fn unknown_key_is_named() {
    let e = err(&MINIMAL.replace("interfaces:", "interfacs:"));
    assert!(e.contains("interfacs"), "{e}");
    let e = err(&format!("{MINIMAL}\nbogus: 1\n"));
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn bad_manager_address_is_named() {
    let e = err(&MINIMAL.replace("10.0.0.5:443", "10.0.0.5"));
    assert!(e.contains("manager.addresses[0]"), "{e}");
    let e = err(&MINIMAL.replace("10.0.0.5:443", "fd00::5:443"));
    assert!(e.contains("[ipv6]:port"), "{e}");
    let e = err(&MINIMAL.replace("10.0.0.5:443", "0.0.0.0:443"));
    assert!(e.contains("unicast"), "{e}");
    let e = err(&MINIMAL.replace("\"10.0.0.5:443\"", "\"10.0.0.5:443\", \"10.0.0.5:443\""));
    assert!(
        e.contains("manager.addresses[1]") && e.contains("twice"),
        "{e}"
    );
    let ok = Config::parse(&MINIMAL.replace("10.0.0.5:443", "[fd00::5]:8443")).expect("v6");
    assert_eq!(ok.passthrough_addresses()[0].port(), 8443);
}

#[test]
fn missing_and_empty_required_keys() {
    let e = err("devices:\n  interfaces: [dev0]\n");
    assert!(e.contains("manager"), "{e}");
    let e = err(&MINIMAL.replace("[dev0]", "[]"));
    assert!(e.contains("devices.interfaces"), "{e}");
    let e = err(&MINIMAL.replace("[dev0]", "[dev0, dev0]"));
    assert!(e.contains("devices.interfaces[1]"), "{e}");
    let e = err(&MINIMAL.replace("[dev0]", "[averyveryverylongname]"));
    assert!(e.contains("devices.interfaces[0]"), "{e}");
    let e = err(&MINIMAL.replace("wfm.site.example", "not a name"));
    assert!(e.contains("manager.name"), "{e}");
}

#[test]
fn ports_are_checked() {
    let e = err(&format!("{MINIMAL}intercept:\n  tcp_ports: [80, 0]\n"));
    assert!(e.contains("intercept.tcp_ports[1]"), "{e}");
    let e = err(&format!("{MINIMAL}intercept:\n  tcp_ports: [80, 70000]\n"));
    assert!(e.contains("tcp_ports"), "{e}");
    let e = err(&format!("{MINIMAL}intercept:\n  tcp_ports: [15001]\n"));
    assert!(e.contains("proxy.port"), "{e}");
    let e = err(&format!("{MINIMAL}proxy:\n  port: 0\n"));
    assert!(e.contains("proxy.port"), "{e}");
    let e = err(&format!(
        "{MINIMAL}proxy:\n  max_connections_per_device: 0\n"
    ));
    assert!(e.contains("proxy.max_connections_per_device"), "{e}");
    let e = err(&format!(
        "{MINIMAL}proxy:\n  max_connections: 10\n  max_connections_per_device: 11\n"
    ));
    assert!(e.contains("proxy.max_connections_per_device"), "{e}");
    let e = err(&format!("{MINIMAL}proxy:\n  idle_timeout_secs: 0\n"));
    assert!(e.contains("proxy.idle_timeout_secs"), "{e}");
}

#[test]
fn paths_and_kernel_settings_are_checked() {
    let e = err(&format!("{MINIMAL}state_dir: relative/dir\n"));
    assert!(e.contains("state_dir"), "{e}");
    let e = err(&format!("{MINIMAL}kernel:\n  route_table: 254\n"));
    assert!(e.contains("kernel.route_table"), "{e}");
    let e = err(&format!("{MINIMAL}kernel:\n  mark: 0\n"));
    assert!(e.contains("kernel.mark"), "{e}");
    let e = err(&format!("{MINIMAL}kernel:\n  rule_priority: 32766\n"));
    assert!(e.contains("kernel.rule_priority"), "{e}");
    let e = err(&format!("{MINIMAL}kernel:\n  pin_path: sys/fs/bpf\n"));
    assert!(e.contains("kernel.pin_path"), "{e}");
    let e = err(&MINIMAL.replace("[dev0]", "[dev0]\n  dhcp_servers: [\"10.0.0.1:67\"]"));
    assert!(e.contains("devices.dhcp_servers[0]"), "{e}");
    let ok = Config::parse(&MINIMAL.replace(
        "[dev0]",
        "[dev0]\n  allow_dhcp: true\n  dhcp_servers: [\"10.0.0.1\", \"fd00::1\"]",
    ))
    .expect("dhcp servers");
    assert_eq!(ok.devices.dhcp_server_addresses().len(), 2);
    for bad in ["10.0.3.0", "10.0.3.0/33", "fd00::/129", "x/8"] {
        let e = err(&MINIMAL.replace("[dev0]", &format!("[dev0]\n  prefixes: [\"{bad}\"]")));
        assert!(e.contains("devices.prefixes[0]"), "{bad}: {e}");
    }
    let ok = Config::parse(&MINIMAL.replace(
        "[dev0]",
        "[dev0]\n  prefixes: [\"10.0.3.7/24\", \"fd00:3::/64\"]",
    ))
    .expect("prefixes");
    assert_eq!(ok.devices.prefix_list().len(), 2);
}

#[test]
fn wrong_types_are_errors_not_panics() {
    for text in [
        "",
        "[]",
        "devices: 3",
        "devices:\n  interfaces: dev0\nmanager:\n  name: a\n  addresses: []\n",
        "\u{0}\u{1}garbage: [",
        &format!("{MINIMAL}proxy:\n  port: -1\n"),
    ] {
        assert!(Config::parse(text).is_err(), "accepted: {text:?}");
    }
}

#[test]
fn missing_interface_is_a_host_error() {
    let c = Config::parse(&MINIMAL.replace("[dev0]", "[lo, nosuchif0]")).expect("parses");
    let e = c
        .check_host()
        .expect_err("nosuchif0 does not exist")
        .to_string();
    assert!(
        e.contains("devices.interfaces[1]") && e.contains("nosuchif0"),
        "{e}"
    );
}

#[test]
fn sites_tls_and_cache() {
    let text = format!(
        "{MINIMAL}sites:\n  - host: Registry.Example.Test\n    kind: oci\n    credentials:\n      username: puller\n      password_env: REG_PASS\ncache:\n  max_size: 512MiB\n  tag_ttl: 30s\n"
    );
    let c = Config::parse(&text).expect("config");
    assert_eq!(c.cache.max_size, 512 * 1024 * 1024);
    assert_eq!(c.cache.tag_ttl, std::time::Duration::from_secs(30));
    let site = c
        .site("registry.example.test.")
        .expect("case-insensitive lookup");
    assert_eq!(site.upstream_url(), "https://Registry.Example.Test");
    assert!(c.site("other.example.test").is_none());
    assert_eq!(c.tls.ca_dir, PathBuf::from("/var/lib/gateway/ca"));
}

#[test]
fn bad_sites_are_named() {
    let site = |extra: &str| {
        format!("{MINIMAL}sites:\n  - host: reg.example.test\n    kind: oci\n{extra}")
    };
    let e = err(&site("    upstream: ftp://x\n"));
    assert!(e.contains("sites[0].upstream"), "{e}");
    let e = err(&site("    credentials:\n      username: u\n"));
    assert!(e.contains("sites[0].credentials"), "{e}");
    let e = err(&site(
        "    credentials:\n      username: u\n      password: hunter2\n",
    ));
    assert!(e.contains("password"), "{e}");
    let e = err(&site(
        "    upstream: http://reg.example.test\n    credentials:\n      username: u\n      password_env: P\n",
    ));
    assert!(
        e.contains("sites[0].credentials") && e.contains("clear"),
        "{e}"
    );
    for bad in [
        "https://cdn.example.test",
        "cdn.example.test:443",
        "*.example.test",
        "",
    ] {
        let e = err(&site(&format!("    redirect_hosts: [\"{bad}\"]\n")));
        assert!(e.contains("sites[0].redirect_hosts[0]"), "{bad}: {e}");
    }
    let e = err(&site("    kind2: oci\n"));
    assert!(e.contains("kind2"), "{e}");
    let e = err(&format!(
        "{MINIMAL}sites:\n  - host: wfm.site.example\n    kind: oci\n"
    ));
    assert!(e.contains("sites[0].host") && e.contains("manager"), "{e}");
    let e = err(&format!("{MINIMAL}cache:\n  max_size: lots\n"));
    assert!(e.contains("max_size") || e.contains("lots"), "{e}");
    let e = err(&format!("{MINIMAL}cache:\n  tag_ttl: soon\n"));
    assert!(e.contains("soon"), "{e}");
    let e = err(&format!(
        "{MINIMAL}cache:\n  stale_while_revalidate: forever\n"
    ));
    assert!(e.contains("cache") && e.contains("forever"), "{e}");
    let e = err(&format!(
        "{MINIMAL}sites:\n  - host: a.test\n    kind: git\n"
    ));
    assert!(e.contains("git"), "{e}");
}

#[test]
fn redirect_hosts_take_names_and_addresses() {
    let config = Config::parse(&format!(
        "{MINIMAL}sites:\n  - host: reg.example.test\n    kind: oci\n    redirect_hosts: [cdn.example.test, \"10.0.0.5\", \"fd00::5\"]\n  - host: other.example.test\n    kind: oci\n"
    ))
    .expect("valid");
    assert_eq!(
        config.sites[0].redirect_hosts,
        ["cdn.example.test", "10.0.0.5", "fd00::5"]
    );
    assert!(config.sites[1].redirect_hosts.is_empty());
}

#[test]
fn cache_bounds_default_and_are_checked() {
    let c = Config::parse(MINIMAL).expect("minimal");
    let limits = c.cache.limits();
    // 20 GiB by default: half of it per blob, under the 16 GiB ceiling.
    assert_eq!(limits.max_blob_size, 10 << 30);
    assert_eq!(limits.max_concurrent_fills, 32);
    let big = Config::parse(&format!("{MINIMAL}cache:\n  max_size: 100GiB\n")).expect("big");
    assert_eq!(big.cache.limits().max_blob_size, 16 << 30);
    let set = Config::parse(&format!(
        "{MINIMAL}cache:\n  max_size: 1GiB\n  max_blob_size: 1GiB\n  max_concurrent_fills: 4\n"
    ))
    .expect("set");
    assert_eq!(set.cache.limits().max_blob_size, 1 << 30);
    assert_eq!(set.cache.limits().max_concurrent_fills, 4);
    for bad in [
        "  max_size: 1GiB\n  max_blob_size: 2GiB\n",
        "  max_blob_size: 0\n",
        "  max_blob_size: huge\n",
    ] {
        let e = err(&format!("{MINIMAL}cache:\n{bad}"));
        assert!(
            e.contains("max_blob_size") || e.contains("huge"),
            "{bad}: {e}"
        );
    }
    let e = err(&format!("{MINIMAL}cache:\n  max_concurrent_fills: 0\n"));
    assert!(e.contains("cache.max_concurrent_fills"), "{e}");
    let e = err(&format!("{MINIMAL}cache:\n  max_size: 0\n"));
    assert!(e.contains("cache.max_size"), "{e}");
}

#[test]
fn upstream_settings_default_and_are_checked() {
    let c = Config::parse(MINIMAL).expect("minimal");
    assert_eq!(c.upstream.connect_timeout_secs, 10);
    assert_eq!(c.upstream.headers_timeout_secs, 30);
    assert_eq!(c.upstream.body_idle_secs, 30);
    assert_eq!(c.upstream.min_body_rate, 4096);
    assert_eq!(c.upstream.min_body_rate_window_secs, 30);

    let c = Config::parse(&format!(
        "{MINIMAL}upstream:\n  connect_timeout_secs: 3\n  headers_timeout_secs: 5\n  \
         body_idle_secs: 4\n  min_body_rate: 0\n  min_body_rate_window_secs: 2\n"
    ))
    .expect("custom upstream settings");
    assert_eq!(c.upstream.connect_timeout_secs, 3);
    assert_eq!(c.upstream.headers_timeout_secs, 5);
    assert_eq!(c.upstream.body_idle_secs, 4);
    assert_eq!(c.upstream.min_body_rate, 0, "0 disables the floor");
    assert_eq!(c.upstream.min_body_rate_window_secs, 2);

    for key in [
        "connect_timeout_secs",
        "headers_timeout_secs",
        "body_idle_secs",
        "min_body_rate_window_secs",
    ] {
        let e = err(&format!("{MINIMAL}upstream:\n  {key}: 0\n"));
        assert!(e.contains(&format!("upstream.{key}")), "{e}");
        assert!(e.contains("at least 1"), "{e}");
        let e = err(&format!("{MINIMAL}upstream:\n  {key}: 3601\n"));
        assert!(e.contains(&format!("upstream.{key}")), "{e}");
    }
    let e = err(&format!(
        "{MINIMAL}upstream:\n  connect_timeout_secs: 20\n  headers_timeout_secs: 15\n"
    ));
    assert!(e.contains("upstream.headers_timeout_secs"), "{e}");
    assert!(e.contains("connect"), "{e}");
    let e = err(&format!(
        "{MINIMAL}proxy:\n  idle_timeout_secs: 60\nupstream:\n  body_idle_secs: 60\n"
    ));
    assert!(e.contains("upstream.body_idle_secs"), "{e}");
    assert!(e.contains("proxy.idle_timeout_secs"), "{e}");
    let e = err(&format!("{MINIMAL}upstream:\n  min_body_rate: -1\n"));
    assert!(e.contains("min_body_rate"), "{e}");
    let e = err(&format!("{MINIMAL}upstream:\n  body_idle: 5\n"));
    assert!(e.contains("body_idle"), "{e}");
}

#[test]
fn upstream_proxy_global_site_and_direct() {
    let text = format!(
        "{MINIMAL}upstream_proxy:\n  url: http://proxy.corp.example:3128\n  username: gateway\n  password_file: /etc/gateway/proxy.password\n  no_proxy: [\".site.internal\", \"10.0.0.9\"]\n\
         sites:\n  - host: a.example.test\n    kind: oci\n\
         \x20 - host: b.example.test\n    kind: oci\n    upstream_proxy: direct\n\
         \x20 - host: c.example.test\n    kind: oci\n    upstream_proxy:\n      url: \"http://[fd00::3]:8080\"\n"
    );
    let c = Config::parse(&text).expect("valid");
    let global = c.upstream_proxy.as_ref().expect("global");
    assert_eq!(global.username.as_deref(), Some("gateway"));
    assert_eq!(global.no_proxy, [".site.internal", "10.0.0.9"]);
    assert_eq!(c.upstream_proxy_for(&c.sites[0]), Some(global));
    assert_eq!(c.upstream_proxy_for(&c.sites[1]), None);
    let own = c.upstream_proxy_for(&c.sites[2]).expect("the site's own");
    assert_eq!(own.url, "http://[fd00::3]:8080");
    assert_eq!(own.username, None);
    // No proxy anywhere by default.
    let minimal = Config::parse(MINIMAL).expect("minimal");
    assert!(minimal.upstream_proxy.is_none());
}

#[test]
fn bad_upstream_proxies_are_named() {
    let global = |body: &str| format!("{MINIMAL}upstream_proxy:\n{body}");
    for (body, key, says) in [
        (
            "  url: https://proxy:3128\n",
            "upstream_proxy.url",
            "not supported",
        ),
        (
            "  url: http://u:p@proxy:3128\n",
            "upstream_proxy.url",
            "user-info",
        ),
        ("  url: http://proxy:3128/x\n", "upstream_proxy.url", "path"),
        ("  url: http://proxy\n", "upstream_proxy.url", "port"),
        (
            "  url: http://proxy:3128\n  username: gw\n",
            "upstream_proxy.password_file",
            "required",
        ),
        (
            "  url: http://proxy:3128\n  password_file: /etc/p\n",
            "upstream_proxy.username",
            "required",
        ),
        (
            "  url: http://proxy:3128\n  username: gw\n  password_file: p\n",
            "upstream_proxy.password_file",
            "absolute",
        ),
        (
            "  url: http://proxy:3128\n  username: \"a:b\"\n  password_file: /p\n",
            "upstream_proxy.username",
            "`:`",
        ),
        (
            "  url: http://proxy:3128\n  no_proxy: [ok.example, \"10.0.0.0/8\"]\n",
            "upstream_proxy.no_proxy[1]",
            "CIDR",
        ),
        (
            "  url: http://proxy:3128\n  no_proxy: [\"*\"]\n",
            "upstream_proxy.no_proxy[0]",
            "direct",
        ),
    ] {
        let e = err(&global(body));
        assert!(
            e.contains(&format!("`{key}`")) && e.contains(says),
            "{body}: {e}"
        );
    }
    let e = err(&global("  url: http://proxy:3128\n  password: hunter2\n"));
    assert!(e.contains("password"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");

    let site = |extra: &str| {
        format!("{MINIMAL}sites:\n  - host: reg.example.test\n    kind: oci\n{extra}")
    };
    let e = err(&site(
        "    upstream_proxy:\n      url: socks5://proxy:1080\n",
    ));
    assert!(e.contains("sites[0].upstream_proxy.url"), "{e}");
    let e = err(&site("    upstream_proxy: none\n"));
    assert!(e.contains("`none` is neither `direct`"), "{e}");
    let e = err(&site(
        "    upstream_proxy:\n      url: http://p:1\n      pasword_file: /p\n",
    ));
    assert!(e.contains("pasword_file"), "{e}");
}

#[test]
fn the_proxy_password_file_is_checked_on_the_host() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("proxy.password");
    std::fs::write(&file, "pw\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = format!(
        "{MINIMAL}upstream_proxy:\n  url: http://proxy:3128\n  username: gw\n  password_file: {}\n",
        file.display()
    );
    let c = Config::parse(&text).expect("parses: the file is read on the host");
    let e = c
        .check_upstream_proxy_files()
        .expect_err("0644")
        .to_string();
    assert!(
        e.contains("`upstream_proxy.password_file`") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    c.check_upstream_proxy_files().expect("0600");
    std::fs::remove_file(&file).expect("rm");
    let e = c
        .check_upstream_proxy_files()
        .expect_err("missing")
        .to_string();
    assert!(e.contains("cannot read the password file"), "{e}");
}

#[test]
fn helm_and_files_sites_parse_with_their_keys() {
    let text = format!(
        "{MINIMAL}sites:
  - host: charts.example.test
    kind: helm
    upstream: https://charts.example.test/stable
    chart_hosts: [cdn.charts.example.test]
    ttl: 10m
  - host: downloads.example.test
    kind: files
    paths: [\"/releases/**\", \"/keys/*.asc\"]
    ttl: 1h
    http: true
    checksums:
      - path: /releases/app-1.0.tar.gz
        sha256: \"{}\"
      - file: /releases/SHA256SUMS
",
        "ab".repeat(32)
    );
    let c = Config::parse(&text).expect("helm and files sites");
    assert_eq!(c.sites[0].kind, SiteKind::Helm);
    assert_eq!(c.sites[1].kind, SiteKind::Files);
    assert!(c.sites[1].http && !c.sites[0].http);
    assert_eq!(
        c.served_hosts(),
        vec![
            "charts.example.test",
            "cdn.charts.example.test",
            "downloads.example.test"
        ]
    );
    assert_eq!(
        c.site_serving("CDN.charts.example.test.")
            .map(|s| s.host.as_str()),
        Some("charts.example.test")
    );
    assert_eq!(
        c.sites[1].checksums[1],
        Checksum::File {
            file: "/releases/SHA256SUMS".into()
        }
    );
    assert_eq!(
        c.sites[0].ttl_or_default(),
        std::time::Duration::from_secs(600)
    );
    assert_eq!(
        Site::new("x.test", SiteKind::Files).ttl_or_default(),
        std::time::Duration::from_secs(3600)
    );
}

#[test]
fn kind_keys_are_checked() {
    let site = |body: &str| format!("{MINIMAL}sites:\n  - {body}\n");
    let e = err(&site("{host: r.test, kind: oci, paths: [\"/a/**\"]}"));
    assert!(
        e.contains("sites[0].paths") && e.contains("kind files"),
        "{e}"
    );
    let e = err(&site(
        "{host: r.test, kind: files, chart_hosts: [c.test], paths: [\"/a\"]}",
    ));
    assert!(e.contains("sites[0].chart_hosts"), "{e}");
    let e = err(&site("{host: r.test, kind: files}"));
    assert!(e.contains("sites[0].paths") && e.contains("needs"), "{e}");
    let e = err(&site(
        "{host: r.test, kind: files, paths: [\"releases/**\"]}",
    ));
    assert!(e.contains("sites[0].paths[0]"), "{e}");
    let e = err(&site(
        "{host: r.test, kind: files, paths: [\"/a/**\"], checksums: [{path: /b/x, sha256: \"00\"}]}",
    ));
    assert!(e.contains("sites[0].checksums[0].sha256"), "{e}");
    let e = err(&site(&format!(
        "{{host: r.test, kind: files, paths: [\"/a/**\"], checksums: [{{path: /b/x, sha256: \"{}\"}}]}}",
        "0".repeat(64)
    )));
    assert!(e.contains("sites[0].checksums[0].path"), "{e}");
    let e = err(&site(
        "{host: r.test, kind: helm, chart_hosts: [\"https://c.test\"]}",
    ));
    assert!(e.contains("sites[0].chart_hosts[0]"), "{e}");
    let e = err(&format!(
        "{MINIMAL}sites:\n  - {{host: r.test, kind: helm, chart_hosts: [d.test]}}\n  - {{host: d.test, kind: oci}}\n"
    ));
    assert!(e.contains("sites[1]") && e.contains("d.test"), "{e}");
    let e = err(&site("{host: r.test, kind: helm, ttl: 0s}"));
    assert!(e.contains("sites[0].ttl"), "{e}");
    let e = err(&site(
        "{host: r.test, kind: helm, chart_hosts: [wfm.site.example]}",
    ));
    assert!(e.contains("passthrough"), "{e}");
}
