//! The site CA on disk: modes, refusal to overwrite, export, the name
//! constraints in the certificate, and what `load` refuses.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::{HOST, test_ca};
use crate::tls::{SiteCa, TlsError, ca, export, init};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| h.to_string()).collect()
}

#[test]
fn init_writes_both_files_with_their_modes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("site/ca");
    let summary = init(&dir, &hosts(&["Registry.Example.Test", HOST]), false).expect("init");

    assert_eq!(summary.cert_path, dir.join(ca::CERT_FILE));
    assert_eq!(summary.key_path, dir.join(ca::KEY_FILE));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&summary.key_path), 0o600);
    assert_eq!(mode(&summary.cert_path), 0o644);
    // Lowercased and deduplicated.
    assert_eq!(summary.permitted, vec![HOST.to_owned()]);
    assert_eq!(summary.fingerprint_sha256.len(), 64);
    let days = (summary.not_after - time::OffsetDateTime::now_utc()).whole_days();
    assert!((3649..=3650).contains(&days), "{days} days");
    // Only the two files: no temporaries left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.key", "ca.pem"]);
    let key = fs::read_to_string(&summary.key_path).expect("key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");

    let loaded = SiteCa::load(&dir).expect("load");
    assert_eq!(loaded.fingerprint_sha256(), summary.fingerprint_sha256);
    // Debug output never carries the key.
    let debug = format!("{loaded:?}");
    assert!(
        !debug.contains("PRIVATE") && !debug.contains(&key[28..60]),
        "{debug}"
    );
}

#[test]
fn second_init_is_refused_unless_forced() {
    let t = test_ca(&[HOST]);
    let before = export(t.dir.path()).expect("export");
    let err = init(t.dir.path(), &hosts(&[HOST]), false).expect_err("second init");
    assert!(matches!(err, TlsError::CaExists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(export(t.dir.path()).expect("export"), before, "untouched");

    let again = init(t.dir.path(), &hosts(&[HOST]), true).expect("forced init");
    assert_ne!(again.fingerprint_sha256, t.ca.fingerprint_sha256());
    assert_eq!(mode(&again.key_path), 0o600);
    assert_ne!(export(t.dir.path()).expect("export"), before);
}

#[test]
fn export_is_the_certificate_file() {
    let t = test_ca(&[HOST]);
    let pem = export(t.dir.path()).expect("export");
    assert_eq!(
        pem,
        fs::read_to_string(t.dir.path().join("ca.pem")).expect("read")
    );
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let missing = export(&t.dir.path().join("nope")).expect_err("missing");
    assert!(
        missing.to_string().contains("gateway ca init --config"),
        "{missing}"
    );
}

#[test]
fn certificate_carries_the_constraints() {
    let t = test_ca(&[HOST, "charts.example.test"]);
    let der = t.ca.cert_der();
    let (_, x509) = x509_parser::parse_x509_certificate(der).expect("parse");

    let cn: Vec<_> = x509
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().ok())
        .collect();
    assert_eq!(cn, [Some("Margo site gateway CA")]);
    let bc = x509.basic_constraints().expect("bc").expect("present");
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = x509.key_usage().expect("ku").expect("present").value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    assert!(
        x509.signature_algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );

    let nc = x509.name_constraints().expect("nc").expect("present");
    assert!(nc.critical);
    let permitted: Vec<_> = nc
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|s| &s.base)
        .collect();
    assert_eq!(
        permitted,
        [
            &GeneralName::DNSName(HOST),
            &GeneralName::DNSName("charts.example.test")
        ]
    );
    let excluded: Vec<_> = nc
        .value
        .excluded_subtrees
        .iter()
        .flatten()
        .map(|s| &s.base)
        .collect();
    assert_eq!(
        excluded,
        [
            &GeneralName::IPAddress(&[0; 8]),
            &GeneralName::IPAddress(&[0; 32])
        ]
    );
    // The same extension, found among all of them (exactly once).
    let count = x509
        .extensions()
        .iter()
        .filter(|e| matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_)))
        .count();
    assert_eq!(count, 1);
}

#[test]
fn permits_follows_dns_name_constraint_semantics() {
    let t = test_ca(&[HOST]);
    let ca = &t.ca;
    assert_eq!(ca.permitted(), [HOST]);
    assert!(ca.permits(HOST));
    assert!(ca.permits("REGISTRY.example.test."));
    assert!(ca.permits("eu.registry.example.test"));
    assert!(!ca.permits("evilregistry.example.test"));
    assert!(!ca.permits("registry.example.test.evil"));
    assert!(!ca.permits("example.test"));
    assert!(!ca.permits("charts.example.test"));
    assert!(!ca.permits("192.0.2.1"));
}

#[test]
fn init_rejects_unusable_host_lists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = init(tmp.path(), &[], false).expect_err("no hosts");
    assert!(matches!(err, TlsError::NoHosts), "{err:?}");
    let err = init(tmp.path(), &hosts(&[HOST, "192.0.2.1"]), false).expect_err("IP host");
    assert!(err.to_string().contains("192.0.2.1"), "{err}");
    let err = init(tmp.path(), &hosts(&["*.example.test"]), false).expect_err("wildcard");
    assert!(matches!(err, TlsError::InvalidHost { .. }), "{err:?}");
    assert!(!tmp.path().join("ca.key").exists(), "nothing written");
}

#[test]
fn load_refuses_a_key_others_can_read() {
    let t = test_ca(&[HOST]);
    let key = t.dir.path().join("ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = SiteCa::load(t.dir.path()).expect_err("group-readable key");
    let text = err.to_string();
    assert!(
        matches!(err, TlsError::KeyPermissions { mode: 0o640, .. }),
        "{err:?}"
    );
    assert!(
        text.contains("chmod 600") && text.contains(&key.display().to_string()),
        "{text}"
    );
}

#[test]
fn load_explains_what_is_missing_or_wrong() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = SiteCa::load(tmp.path()).expect_err("no CA");
    assert!(matches!(err, TlsError::CaMissing { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("run `gateway ca init --config FILE`"),
        "{err}"
    );

    // A key from another CA.
    let a = test_ca(&[HOST]);
    let b = test_ca(&[HOST]);
    fs::copy(b.dir.path().join("ca.key"), a.dir.path().join("ca.key")).expect("copy");
    let err = SiteCa::load(a.dir.path()).expect_err("mismatched pair");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");

    // A CA without name constraints could sign for any name.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-signed");
    fs::write(b.dir.path().join("ca.pem"), cert.pem()).expect("write");
    fs::write(b.dir.path().join("ca.key"), key.serialize_pem()).expect("write");
    let err = SiteCa::load(b.dir.path()).expect_err("unconstrained CA");
    assert!(matches!(err, TlsError::CaNotConstrained { .. }), "{err:?}");

    // Not a certificate at all.
    fs::write(b.dir.path().join("ca.pem"), "not pem\n").expect("write");
    let err = SiteCa::load(b.dir.path()).expect_err("garbage cert");
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
}
