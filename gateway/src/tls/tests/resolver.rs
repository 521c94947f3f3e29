//! Minted leaves and the resolver: what a leaf holds, that rustls' own
//! verifier accepts it only where the CA's constraints allow, and the
//! cache, single-flight and rate limit under load.

use std::{
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::GeneralName;

use super::{HOST, test_ca, verify};
use crate::tls::{LeafResolver, LeafStats, leaf};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn resolver(t: &super::TestCa, hosts: &[&str], capacity: usize) -> LeafResolver {
    let hosts = hosts.iter().map(|h| h.to_string()).collect();
    LeafResolver::new(t.ca.clone(), hosts, DAY, capacity)
}

#[test]
fn minted_leaf_verifies_under_the_ca_for_its_name_only() {
    let t = test_ca(&[HOST]);
    let r = resolver(&t, &[HOST], 8);
    let key = r.certificate_for(HOST).expect("leaf");
    // The site CA is a root: the devices hold it, the leaf goes alone.
    assert!(t.ca.is_root());
    assert_eq!(key.cert.len(), 1, "the leaf alone");
    key.keys_match().expect("the key belongs to the leaf");
    verify(&t.ca, &key.cert, HOST).expect("chain, SAN and constraints verify");
    assert!(verify(&t.ca, &key.cert, "other.example.test").is_err());

    let (_, x509) = x509_parser::parse_x509_certificate(&key.cert[0]).expect("parse");
    let cn: Vec<_> = x509
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().ok())
        .collect();
    assert_eq!(cn, [Some(HOST)]);
    let san = x509
        .subject_alternative_name()
        .expect("san")
        .expect("present");
    assert_eq!(san.value.general_names, [GeneralName::DNSName(HOST)]);
    let eku = x509
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.server_auth && !eku.client_auth && !eku.any);
    assert!(!x509.is_ca());
    let now = time::OffsetDateTime::now_utc();
    let v = x509.validity();
    let backdate = now - v.not_before.to_datetime();
    assert!(backdate >= time::Duration::minutes(4) && backdate <= time::Duration::minutes(6));
    let ahead = v.not_after.to_datetime() - now;
    assert!(ahead > time::Duration::hours(23) && ahead <= time::Duration::hours(24));
}

#[test]
fn name_constraints_stop_a_leaf_outside_them() {
    // The resolver is told to serve a host the CA was not made for: the
    // leaf is signed, but a verifier enforcing the constraints refuses it.
    let t = test_ca(&[HOST]);
    let r = resolver(&t, &[HOST, "outside.example.test"], 8);
    let key = r.certificate_for("outside.example.test").expect("leaf");
    let err = verify(&t.ca, &key.cert, "outside.example.test").expect_err("constrained");
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );

    // An IP SAN is excluded whatever the permitted names.
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::IpAddress("192.0.2.1".parse().expect("ip"))];
    let ip_key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&ip_key, t.ca.issuer()).expect("sign");
    let chain = [cert.der().clone(), t.ca.cert_der().clone()];
    let err = verify(&t.ca, &chain, "192.0.2.1").expect_err("IP excluded");
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );
}

#[test]
fn unknown_or_missing_names_get_nothing() {
    let t = test_ca(&[HOST]);
    let r = resolver(&t, &[HOST], 8);
    assert!(r.certificate_for("evil.example.test").is_none());
    assert!(r.certificate_for("evilregistry.example.test").is_none());
    assert!(r.resolve_at(None, Instant::now()).is_none());
    let stats = r.stats();
    assert_eq!(stats.refused_unknown_name, 3);
    assert_eq!(stats.minted, 0);
    assert_eq!(r.cached(), 0);
    // Case and the trailing dot do not matter.
    let a = r.certificate_for("REGISTRY.example.test.").expect("leaf");
    let b = r.certificate_for(HOST).expect("leaf");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(r.stats().cache_hits, 1);
}

#[test]
fn concurrent_handshakes_for_a_cold_name_mint_once() {
    let t = test_ca(&[HOST]);
    let r = resolver(&t, &[HOST], 8);
    let barrier = Barrier::new(32);
    let keys: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    r.certificate_for(HOST)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let first = keys[0].clone().expect("leaf");
    assert!(
        keys.iter()
            .all(|k| k.as_ref().is_some_and(|k| Arc::ptr_eq(k, &first)))
    );
    let stats = r.stats();
    assert_eq!(stats.minted, 1, "{stats:?}");
    assert_eq!(stats.cache_hits, 31, "{stats:?}");
}

#[test]
fn cache_is_bounded_and_drops_the_least_recently_used() {
    let t = test_ca(&[HOST]);
    let names = [
        "a.registry.example.test",
        "b.registry.example.test",
        "c.registry.example.test",
    ];
    let r = resolver(&t, &names, 2);
    for name in names {
        r.certificate_for(name).expect("leaf");
    }
    assert_eq!(r.cached(), 2);
    assert_eq!(r.stats().minted, 3);
    r.certificate_for(names[2]).expect("cached");
    assert_eq!(r.stats().minted, 3);
    r.certificate_for(names[0]).expect("evicted, minted again");
    assert_eq!(r.stats().minted, 4);
    assert_eq!(r.cached(), 2);
}

#[test]
fn mint_rate_limit_refuses_past_the_burst() {
    let t = test_ca(&[HOST]);
    let names = [
        "a.registry.example.test",
        "b.registry.example.test",
        "c.registry.example.test",
    ];
    let r = resolver(&t, &names, 8).with_rate_limit(0, 2);
    let served = names
        .iter()
        .filter(|n| r.certificate_for(n).is_some())
        .count();
    assert_eq!(served, 2);
    assert_eq!(
        r.stats(),
        LeafStats {
            minted: 2,
            cache_hits: 0,
            refused_unknown_name: 0,
            rate_limited: 1
        }
    );
    // Cached names are still served while the limit holds.
    assert!(r.certificate_for(names[0]).is_some());
    // The refused name is retried, not remembered as failed.
    assert!(r.certificate_for(names[2]).is_none());
    assert_eq!(r.stats().rate_limited, 2);
}

#[test]
fn leaves_are_renewed_with_a_quarter_of_their_life_left() {
    let t = test_ca(&[HOST]);
    let r = resolver(&t, &[HOST], 8).with_rate_limit(0, 2);
    let t0 = Instant::now();
    let first = r.resolve_at(Some(HOST), t0).expect("leaf");
    let same = r.resolve_at(Some(HOST), t0 + DAY / 2).expect("cached");
    assert!(Arc::ptr_eq(&first, &same));
    let renewed = r
        .resolve_at(Some(HOST), t0 + DAY * 8 / 10)
        .expect("renewed");
    assert!(!Arc::ptr_eq(&first, &renewed));
    assert_eq!(r.stats().minted, 2);

    // With no mint left, a leaf due for renewal is served until it expires.
    let t1 = t0 + DAY * 8 / 10;
    let stale = r
        .resolve_at(Some(HOST), t1 + DAY * 8 / 10)
        .expect("stale but valid");
    assert!(Arc::ptr_eq(&stale, &renewed));
    assert!(r.resolve_at(Some(HOST), t1 + DAY * 11 / 10).is_none());
    assert_eq!(r.stats().rate_limited, 2);
}

#[test]
fn mint_time() {
    // Printed, not asserted: these machines are shared and noisy.
    // EXPECTATIONS.md anchors about 30 µs for rcgen + ring in release.
    let t = test_ca(&[HOST]);
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        leaf::mint(&t.ca, HOST, DAY).expect("mint");
    }
    let each = start.elapsed() / n;
    println!("minting a P-256 leaf took {each:?} on average over {n} (this build's profile)");
}

/// An operator's site CA issued by their own root (an intermediate): the
/// devices hold the root, so the leaf is served with the CA after it, and
/// a client trusting only the root verifies the pair.
#[test]
fn an_intermediate_site_ca_is_served_after_the_leaf() {
    use std::os::unix::fs::PermissionsExt as _;

    use rcgen::{
        BasicConstraints, DnType, GeneralSubtree, IsCa, Issuer, KeyUsagePurpose, NameConstraints,
    };
    use rustls::{
        RootCertStore,
        client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
        pki_types::{ServerName, UnixTime},
    };

    let ca_params = |cn: &str, constrained: bool| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        if constrained {
            p.name_constraints = Some(NameConstraints {
                permitted_subtrees: vec![GeneralSubtree::DnsName(HOST.to_owned())],
                excluded_subtrees: Vec::new(),
            });
        }
        p
    };
    let root_key = KeyPair::generate().expect("root key");
    let root = ca_params("Corporate root", false)
        .self_signed(&root_key)
        .expect("root");
    let site_key = KeyPair::generate().expect("site key");
    let mut site_params = ca_params("Site CA", true);
    site_params.use_authority_key_identifier_extension = true;
    let site = site_params
        .signed_by(
            &site_key,
            &Issuer::new(ca_params("Corporate root", false), &root_key),
        )
        .expect("site CA");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("ca.pem"), site.pem()).expect("write cert");
    let key_path = dir.path().join("ca.key");
    std::fs::write(&key_path, site_key.serialize_pem()).expect("write key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ca = Arc::new(crate::tls::SiteCa::load(dir.path()).expect("load"));
    assert!(!ca.is_root(), "a CA its root issued is no root");

    let r = LeafResolver::new(ca.clone(), vec![HOST.to_owned()], DAY, 8);
    let key = r.certificate_for(HOST).expect("leaf");
    assert_eq!(key.cert.len(), 2, "leaf then the site CA");
    assert_eq!(&key.cert[1], ca.cert_der());
    let mut roots = RootCertStore::empty();
    roots.add(root.der().clone()).expect("root anchor");
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .build()
            .expect("verifier");
    verifier
        .verify_server_cert(
            &key.cert[0],
            &key.cert[1..],
            &ServerName::try_from(HOST).expect("name"),
            &[],
            UnixTime::now(),
        )
        .expect("the leaf and the site CA verify under the corporate root");
}
