//! Growing the site without re-trusting (issue 12 item 6): a site CA made
//! with `--permit`, a successor that devices trust ahead of time through
//! `gateway ca export --all`, and `gateway ca activate` + `gateway reload`
//! switching the leaves to it while the gateway runs. Real curl on the
//! device, the real registry behind the gateway.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use gateway_tests::{
    Site,
    gateway::Gateway,
    registry::{
        self, Client, Registry, RegistryOptions,
        cmd::{self, Outcome},
        oci_gateway::{OciKeys, ca_export, cli},
    },
    require_root,
};

/// curl's exit code for a peer certificate it cannot verify.
const CURL_UNTRUSTED: i32 = 60;

fn must_succeed(gw: &Gateway<'_>, what: &str, out: Outcome) -> String {
    assert!(
        out.success(),
        "`gateway {what}` failed ({}): {}\n{}",
        out.status,
        out.stderr.trim(),
        gw.diagnostics()
    );
    out.stdout_text()
}

/// The device's GET /v2/ through the gateway with `client`'s trust.
fn handshake_ok(gw: &Gateway<'_>, client: &Client, what: &str) {
    let r = gw.must(client.curl(&[&Client::url("/v2/")]));
    assert_eq!(r.code, 200, "{what}: {}", r.describe());
}

fn handshake_untrusted(gw: &Gateway<'_>, client: &Client, what: &str) {
    let r = gw.must(client.curl(&[&Client::url("/v2/")]));
    assert_eq!(
        r.outcome.status.code(),
        Some(CURL_UNTRUSTED),
        "{what}: {}",
        r.describe()
    );
}

fn certificates(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn rotate_export_all_activate_reload() {
    require_root();
    let site = Site::new("ca-rotate").unwrap();
    let registry = Registry::start(&site, RegistryOptions::default()).unwrap();
    let keys = OciKeys::for_registry(&registry, "5m");
    let mut gw = Gateway::prepare(&site, keys.config(&site)).unwrap();

    // A bad domain is a usage error, and nothing is created.
    let bad = gw.must(cli(&gw, &["ca", "init", "--permit", "example.test,com"]));
    assert_eq!(bad.status.code(), Some(64), "{}", bad.stderr);
    assert!(bad.stderr.contains("--permit `com`"), "{}", bad.stderr);
    assert!(!keys.ca_dir.join("ca.pem").exists());

    // The CA covers example.test (the site host is under it) and corp.example.
    let init = gw.must(cli(
        &gw,
        &[
            "ca",
            "init",
            "--permit",
            "example.test",
            "--permit",
            "corp.example",
        ],
    ));
    let init = must_succeed(&gw, "ca init", init);
    assert!(
        init.contains("valid for:   example.test, corp.example"),
        "{init}"
    );
    gw.restart().unwrap();
    let old_pem = gw.must(ca_export(&gw));

    // A successor, pending: the leaves still come from the active CA.
    let rotate = gw.must(cli(&gw, &["ca", "rotate"]));
    must_succeed(&gw, "ca rotate", rotate);
    let again = gw.must(cli(&gw, &["ca", "rotate"]));
    assert_eq!(again.status.code(), Some(1), "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let all = gw.must(cli(&gw, &["ca", "export", "--all"]));
    let bundle = must_succeed(&gw, "ca export --all", all);
    let certs = certificates(&bundle);
    assert_eq!(certs.len(), 2, "{bundle}");
    assert_eq!(certs[0], old_pem, "the active CA comes first");
    assert_ne!(certs[1], old_pem);

    let both = gw.must(Client::device(&site, &bundle));
    let old_only = gw.must(Client::device(&site, &old_pem));
    let new_only = gw.must(Client::device(&site, &certs[1]));
    handshake_ok(&gw, &both, "bundle, before activate");
    handshake_ok(&gw, &old_only, "old CA, before activate");
    // The control: the successor did not sign what is served yet.
    handshake_untrusted(&gw, &new_only, "new CA only, before activate");

    // Activate, and the running gateway takes it at reload.
    let activate = gw.must(cli(&gw, &["ca", "activate"]));
    let activate = must_succeed(&gw, "ca activate", activate);
    assert!(activate.contains("gateway reload"), "{activate}");
    assert_eq!(gw.must(ca_export(&gw)), certs[1]);
    let reload = gw.must(cli(&gw, &["reload"]));
    must_succeed(&gw, "reload", reload);

    handshake_ok(&gw, &both, "bundle, after activate");
    handshake_ok(&gw, &new_only, "new CA, after activate");
    handshake_untrusted(&gw, &old_only, "old CA only, after activate");
    let none = gw.must(cli(&gw, &["ca", "activate"]));
    assert_eq!(none.status.code(), Some(1), "{}", none.stderr);
    assert!(none.stderr.contains("no successor"), "{}", none.stderr);

    // A site host outside the CA's domains: check-config refuses it with
    // the fix; one under a permitted domain is fine.
    let yaml = std::fs::read_to_string(gw.config_path()).unwrap();
    let site_line = format!("host: \"{}\"", registry::HOST);
    assert!(yaml.contains(&site_line), "{yaml}");
    for (host, ok) in [
        ("git.corp.example", true),
        ("registry.elsewhere.test", false),
    ] {
        let path = site.tmp_dir().join(format!("{host}.yaml"));
        std::fs::write(
            &path,
            yaml.replace(&site_line, &format!("host: \"{host}\"")),
        )
        .unwrap();
        let path = path.to_string_lossy().into_owned();
        let out = gw.must(cmd::output(
            &mut gw.command(&["check-config", "--config", &path]),
            Duration::from_secs(60),
        ));
        if ok {
            assert!(out.success(), "{host}: {}", out.stderr);
            continue;
        }
        assert_eq!(out.status.code(), Some(64), "{host}: {}", out.stderr);
        for part in [
            "sites[0].host",
            "`registry.elsewhere.test` is outside the site CA's permitted domains \
             [example.test, corp.example]",
            "gateway ca rotate --config FILE --permit \
             example.test,corp.example,registry.elsewhere.test",
            "gateway ca export --all",
            "gateway ca activate",
        ] {
            assert!(out.stderr.contains(part), "{part}: {}", out.stderr);
        }
    }
}
