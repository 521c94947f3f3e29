//! `--permit` parsing and how the permitted domains and site hosts merge
//! into the CA's constraints.

use crate::tls::{TlsError, permit};

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| h.to_string()).collect()
}

#[test]
fn permits_are_split_checked_and_canonical() {
    let parsed = permit::parse(&strings(&[
        "Docker.IO.",
        "corp.example, charts.example.test",
        "docker.io",
    ]))
    .expect("valid permits");
    assert_eq!(parsed, ["docker.io", "corp.example", "charts.example.test"]);
    assert_eq!(permit::parse(&[]).expect("none"), Vec::<String>::new());
}

#[test]
fn bad_permits_are_refused_with_the_reason() {
    for (bad, reason) in [
        ("", "empty"),
        ("a.example,", "empty"),
        ("*.example.test", "already covers"),
        (".example.test", "already covers"),
        ("com", "single label"),
        ("localhost", "single label"),
        ("192.0.2.1", "IP address"),
        ("2001:db8::1", "IP address"),
        ("bad host.example", "not a DNS name"),
    ] {
        let err = permit::parse(&strings(&[bad])).expect_err(bad);
        assert!(
            matches!(err, TlsError::InvalidPermit { .. }),
            "{bad}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("--permit `"), "{bad}: {text}");
        assert!(text.contains(reason), "{bad}: {text}");
    }
}

#[test]
fn constraints_add_the_hosts_no_permit_covers() {
    let permits = strings(&["docker.io", "example.test"]);
    let hosts = strings(&[
        "registry-1.docker.io",
        "Registry.Example.Test",
        "charts.other.test",
    ]);
    assert_eq!(
        permit::constraints(&permits, &hosts).expect("constraints"),
        ["docker.io", "example.test", "charts.other.test"]
    );
    // A wider name given later replaces the narrower ones it covers.
    assert_eq!(
        permit::constraints(&strings(&["a.example.test", "example.test"]), &[]).expect("c"),
        ["example.test"]
    );
    // No permits: exactly the site hosts, as before --permit existed.
    assert_eq!(
        permit::constraints(&[], &strings(&["registry.example.test"])).expect("c"),
        ["registry.example.test"]
    );
    let err = permit::constraints(&[], &[]).expect_err("nothing");
    assert!(matches!(err, TlsError::NoHosts), "{err:?}");
    let err = permit::constraints(&permits, &strings(&["10.0.0.1"])).expect_err("IP host");
    assert!(matches!(err, TlsError::InvalidHost { .. }), "{err:?}");
}
