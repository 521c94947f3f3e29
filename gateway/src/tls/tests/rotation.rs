//! `gateway ca rotate`, `export --all` and `activate` on disk: the layout,
//! modes, refusals, what a crash leaves, and the constraints of each CA.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use x509_parser::extensions::GeneralName;

use super::{HOST, verify};
use crate::tls::{
    SiteCa, TlsError, ca, export, init,
    leaf::mint,
    rotation::{self, HostCheck},
};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| h.to_string()).collect()
}

/// The names in a directory, sorted (to see temporaries left behind).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn permitted_in_cert(pem: &str) -> Vec<String> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let nc = x509.name_constraints().expect("nc").expect("present");
    assert!(nc.critical);
    nc.value
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|s| match s.base {
            GeneralName::DNSName(n) => n.to_owned(),
            ref other => panic!("unexpected subtree {other:?}"),
        })
        .collect()
}

/// A CA for `--permit example.test,corp.example` with one site host.
fn site(dir: &Path) {
    let names = crate::tls::permit::constraints(
        &strings(&["example.test", "corp.example"]),
        &strings(&[HOST, "charts.other.test"]),
    )
    .expect("constraints");
    init(dir, &names, false).expect("init");
}

#[test]
fn init_with_permits_writes_them_as_name_constraints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    site(tmp.path());
    let pem = export(tmp.path()).expect("export");
    assert_eq!(
        permitted_in_cert(&pem),
        ["example.test", "corp.example", "charts.other.test"]
    );
    let ca = SiteCa::load(tmp.path()).expect("load");
    // Growing the site later: a new host under a permitted domain is
    // covered by the CA devices already trust, and verifies.
    assert!(ca.permits("new.example.test") && ca.permits("git.corp.example"));
    assert!(!ca.permits("other.test") && !ca.permits("example.test.evil"));
    let leaf = mint(
        &ca,
        "new.example.test",
        std::time::Duration::from_secs(3600),
    )
    .expect("mint");
    verify(&ca, &leaf.key.cert, "new.example.test")
        .expect("leaf under a permitted domain verifies");
}

#[test]
fn rotate_activate_and_export_all_move_through_the_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    site(dir);
    let old_pem = export(dir).expect("export");
    let old = SiteCa::load(dir).expect("load");

    // Nothing pending: export --all is the active CA alone; activate refuses.
    assert_eq!(
        rotation::export_all(dir).expect("all"),
        std::slice::from_ref(&old_pem)
    );
    let err = rotation::activate(dir, &strings(&[HOST])).expect_err("no successor");
    assert!(matches!(err, TlsError::NoSuccessor { .. }), "{err:?}");
    assert!(err.to_string().contains("gateway ca rotate"), "{err}");

    // Rotate without --permit: the successor keeps the active CA's domains.
    let next = rotation::rotate(dir, &[], &strings(&[HOST]), false).expect("rotate");
    assert_eq!(next.cert_path, dir.join("next/ca.pem"));
    assert_eq!(next.permitted, old.permitted());
    assert_ne!(next.fingerprint_sha256, old.fingerprint_sha256());
    assert_eq!(mode(&dir.join("next")), 0o700);
    assert_eq!(mode(&dir.join("next/ca.key")), 0o600);
    assert_eq!(mode(&dir.join("next/ca.pem")), 0o644);
    assert_eq!(entries(dir), ["ca.key", "ca.pem", "next"], "no temporaries");
    // The active CA is untouched and still the one loaded.
    assert_eq!(export(dir).expect("export"), old_pem);
    assert_eq!(
        SiteCa::load(dir).expect("load").fingerprint_sha256(),
        old.fingerprint_sha256()
    );
    let next_pem = fs::read_to_string(dir.join("next/ca.pem")).expect("next");
    assert_eq!(
        rotation::export_all(dir).expect("all"),
        [old_pem.clone(), next_pem.clone()]
    );

    // A second rotate would replace what devices may already trust.
    let err = rotation::rotate(dir, &[], &[], false).expect_err("pending");
    assert!(matches!(err, TlsError::SuccessorExists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        fs::read_to_string(dir.join("next/ca.pem")).expect("next"),
        next_pem
    );

    let done = rotation::activate(dir, &strings(&[HOST])).expect("activate");
    assert_eq!(done.active.fingerprint_sha256(), next.fingerprint_sha256);
    assert_eq!(export(dir).expect("export"), next_pem);
    let retired = done.retired.expect("old CA kept");
    assert_eq!(
        retired,
        dir.join("retired").join(&old.fingerprint_sha256()[..16])
    );
    assert_eq!(mode(&dir.join("retired")), 0o700);
    assert_eq!(mode(&retired), 0o700);
    assert_eq!(mode(&retired.join("ca.key")), 0o600);
    assert_eq!(
        fs::read_to_string(retired.join("ca.pem")).expect("retired"),
        old_pem
    );
    assert_eq!(entries(dir), ["ca.key", "ca.pem", "retired"]);
    assert_eq!(entries(&retired), ["ca.key", "ca.pem"]);
    // The retired pair is still a whole CA (the operator's way back).
    SiteCa::load(&retired).expect("retired pair loads");

    // Leaves now come from the new CA: they verify under it, not the old.
    let new = SiteCa::load(dir).expect("load");
    let leaf = mint(&new, HOST, std::time::Duration::from_secs(3600)).expect("mint");
    verify(&new, &leaf.key.cert, HOST).expect("under the new CA");
    verify(&old, &leaf.key.cert, HOST).expect_err("not under the old CA");
    // Export --all after activation: the active CA only.
    assert_eq!(rotation::export_all(dir).expect("all"), [next_pem]);
    let err = rotation::activate(dir, &strings(&[HOST])).expect_err("nothing pending again");
    assert!(matches!(err, TlsError::NoSuccessor { .. }), "{err:?}");
}

#[test]
fn rotate_with_permits_and_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    site(dir);
    let err = rotation::rotate(&dir.join("none"), &[], &[], false).expect_err("no active CA");
    assert!(matches!(err, TlsError::CaMissing { .. }), "{err:?}");

    let first =
        rotation::rotate(dir, &strings(&["docker.io"]), &strings(&[HOST]), false).expect("rotate");
    // --permit is the successor's whole list, plus uncovered site hosts.
    assert_eq!(first.permitted, ["docker.io", HOST]);
    let forced = rotation::rotate(
        dir,
        &strings(&["docker.io", "example.test"]),
        &strings(&[HOST]),
        true,
    )
    .expect("forced rotate");
    assert_ne!(forced.fingerprint_sha256, first.fingerprint_sha256);
    assert_eq!(
        permitted_in_cert(&fs::read_to_string(dir.join("next/ca.pem")).expect("next")),
        ["docker.io", "example.test"]
    );
    assert_eq!(entries(dir), ["ca.key", "ca.pem", "next"]);

    // A forced init re-creates the CA and drops the successor made for the old one.
    init(dir, &strings(&[HOST]), true).expect("forced init");
    assert_eq!(entries(dir), ["ca.key", "ca.pem"]);
}

#[test]
fn activate_refuses_a_broken_successor_and_finishes_an_interrupted_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    site(dir);
    let old_pem = export(dir).expect("export");
    rotation::rotate(dir, &[], &[], false).expect("rotate");
    let next_pem = fs::read_to_string(dir.join("next/ca.pem")).expect("next");

    // A successor that leaves out a site host: the gateway could not start.
    let err = rotation::activate(dir, &strings(&[HOST, "registry.elsewhere.test"]))
        .expect_err("host outside the successor");
    assert!(matches!(err, TlsError::SuccessorOmits { .. }), "{err:?}");
    assert!(err.to_string().contains("registry.elsewhere.test"), "{err}");
    assert_eq!(export(dir).expect("export"), old_pem, "active untouched");

    // A successor key others can read is refused before anything moves.
    let next_key = dir.join("next/ca.key");
    fs::set_permissions(&next_key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = rotation::activate(dir, &strings(&[HOST])).expect_err("readable key");
    assert!(matches!(err, TlsError::KeyPermissions { .. }), "{err:?}");
    assert_eq!(export(dir).expect("export"), old_pem, "active untouched");
    assert!(!dir.join("retired").exists());
    fs::set_permissions(&next_key, fs::Permissions::from_mode(0o600)).expect("chmod");

    // A crash between activate's two renames: the new key is in place,
    // the certificate still pending. Load says what happened ...
    fs::rename(&next_key, dir.join("ca.key")).expect("simulate the first rename");
    let err = SiteCa::load(dir).expect_err("half activated");
    assert!(
        matches!(err, TlsError::ActivateInterrupted { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("gateway ca activate"), "{err}");
    // ... and activate run again finishes the job.
    rotation::activate(dir, &strings(&[HOST])).expect("resumed");
    assert_eq!(export(dir).expect("export"), next_pem);
    SiteCa::load(dir).expect("whole again");
    assert_eq!(entries(dir), ["ca.key", "ca.pem"]);

    // A pending certificate without its key that is not the active one's.
    rotation::rotate(dir, &[], &[], false).expect("rotate");
    fs::remove_file(dir.join("next/ca.key")).expect("rm");
    let err = rotation::activate(dir, &strings(&[HOST])).expect_err("incomplete");
    assert!(
        matches!(err, TlsError::SuccessorIncomplete { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("rotate --force"), "{err}");
    assert_eq!(export(dir).expect("export"), next_pem, "active untouched");
}

#[test]
fn check_hosts_names_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // No CA yet: nothing to check against.
    rotation::check_hosts(dir, &strings(&[HOST])).expect("no CA");
    site(dir);
    rotation::check_hosts(
        dir,
        &strings(&[HOST, "new.example.test", "Git.Corp.Example."]),
    )
    .expect("covered hosts");

    let outside = |hosts: &[&str]| match rotation::check_hosts(dir, &strings(hosts)) {
        Err(HostCheck::Outside { index, message }) => (index, message),
        other => panic!("{hosts:?}: {other:?}"),
    };
    let (index, message) = outside(&[HOST, "registry.elsewhere.test"]);
    assert_eq!(index, 1);
    for part in [
        "`registry.elsewhere.test` is outside the site CA's permitted domains \
         [example.test, corp.example, charts.other.test]",
        "`gateway ca rotate --config FILE --permit \
         example.test,corp.example,charts.other.test,registry.elsewhere.test`",
        "gateway ca export --all",
        "gateway ca activate",
        "restart",
        "gateway ca init --force --permit",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }

    // A successor that covers it: the fix is to activate it.
    rotation::rotate(dir, &strings(&["elsewhere.test"]), &strings(&[HOST]), false).expect("rotate");
    let (_, message) = outside(&["registry.elsewhere.test"]);
    assert!(message.contains("pending successor CA"), "{message}");
    let (_, message) = outside(&["registry.nowhere.test"]);
    assert!(
        message.contains("`gateway ca rotate --force --config FILE --permit "),
        "a pending successor must be replaced: {message}"
    );
    assert!(message.contains("gateway ca activate"), "{message}");
    // A successor that would drop a covered site host.
    let (index, message) = outside(&[HOST, "git.corp.example"]);
    assert_eq!(index, 1);
    assert!(
        message.contains("outside the pending successor CA's permitted domains")
            && message.contains("rotate --force"),
        "{message}"
    );

    // A certificate that does not parse is reported, not skipped.
    fs::write(dir.join(ca::CERT_FILE), "garbage\n").expect("write");
    assert!(
        matches!(
            rotation::check_hosts(dir, &strings(&[HOST])),
            Err(HostCheck::Unreadable(TlsError::NoCertificate { .. }))
        ),
        "unparsable CA"
    );
}
