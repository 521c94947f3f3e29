//! TLS termination for site hosts: a leaf under the site CA for the
//! configured name over HTTP/1.1 and h2, 421 when Host and SNI disagree,
//! and no certificate at all for a name that is not a site.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use gateway_tests::{
    Site,
    registry::{self, Client, RegistryOptions, start_world},
    require_root,
};

#[test]
fn host_must_equal_sni() {
    require_root();
    let site = Site::new("oci-host-sni").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let gw = &w.gw;
    let url = Client::url("/v2/");

    // Both protocols, with the leaf the site CA signed.
    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")] {
        let ok = gw.must(w.device.curl(&[flag, &url]));
        assert_eq!(ok.code, 200, "{}", ok.describe());
        assert!(
            ok.status_line.starts_with(version),
            "{flag}: {}",
            ok.describe()
        );
    }

    for flag in ["--http1.1", "--http2"] {
        let r = gw.must(
            w.device
                .curl(&[flag, "-H", "Host: other.example.test", &url]),
        );
        assert_eq!(r.code, 421, "{flag}: {}", r.describe());
    }
    let records = gw.must(gw.gw.wait_audit_all(
        |rs| {
            rs.iter()
                .filter(|r| r["event"] == "request" && r["status"] == 421)
                .count()
                >= 2
        },
        Duration::from_secs(10),
    ));
    let misdirected: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "request" && r["status"] == 421)
        .collect();
    for r in misdirected {
        assert!(
            r["device"]
                .as_str()
                .unwrap_or_default()
                .starts_with("10.77.1.2"),
            "{r}"
        );
    }
}

#[test]
fn unknown_sni_gets_no_certificate() {
    require_root();
    let site = Site::new("oci-unknown-sni").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let gw = &w.gw;
    let before = w.registry.access_log().unwrap().len();
    let dst = format!("{}:443", registry::ADDR_V4);

    // curl: the handshake fails.
    let r = gw.must(w.device.curl(&[
        "--resolve",
        &format!("other.example.test:443:{}", registry::ADDR_V4),
        "https://other.example.test/",
    ]));
    assert!(!r.complete(), "curl completed: {}", r.describe());
    assert_eq!(r.code, 0, "{}", r.describe());

    // Not even an untrusted certificate: with verification off (-k) the
    // handshake still fails, and curl never saw a server certificate.
    let insecure = gw.must(w.device.curl(&[
        "-k",
        "-v",
        "--resolve",
        &format!("other.example.test:443:{}", registry::ADDR_V4),
        "https://other.example.test/",
    ]));
    assert!(
        !insecure.complete(),
        "curl -k completed: {}",
        insecure.describe()
    );
    assert_eq!(insecure.code, 0, "{}", insecure.describe());
    assert!(
        !insecure.outcome.stderr.contains("Server certificate:"),
        "a certificate was presented:\n{}",
        insecure.outcome.stderr
    );

    let denied = gw.must(gw.gw.wait_audit(
        |r| r["event"] == "flow.denied" && r["reason"] == "sni_not_allowed" && r["dst"] == dst,
        Duration::from_secs(10),
    ));
    assert!(
        denied["device"]
            .as_str()
            .unwrap_or_default()
            .starts_with("10.77.1.2"),
        "{denied}"
    );
    assert_eq!(
        w.registry.access_log().unwrap().len(),
        before,
        "the registry was reached for an unknown name"
    );

    // The configured name on the same address still works, and curl -v
    // does report the certificate it is shown (the control for the above).
    let ok = gw.must(w.device.curl(&["-k", "-v", &Client::url("/v2/")]));
    assert_eq!(ok.code, 200, "{}", ok.describe());
    assert!(
        ok.outcome.stderr.contains("Server certificate:"),
        "{}",
        ok.outcome.stderr
    );
}
