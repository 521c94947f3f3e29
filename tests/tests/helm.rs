//! `kind: helm` sites end to end (issue 14 items 1, 5, 7): nginx
//! (tests/src/nginx.rs) serves a chart repository over TLS and plain HTTP
//! in the upstream namespace, under the site's name and a chart host's;
//! a device pulls charts through the gateway the way `helm pull` does
//! (tests/src/helm.rs: curl, the index parsed, the chart's sha256 checked
//! against it), and nginx's access log says what reached the origin.
//!
//! One test, to keep process starts few (it also runs in TCG VMs): pulls
//! of a chart with a relative URL and of one on the chart host, over TLS
//! and plain HTTP; an entry on a host the site does not list left out of
//! the served index; the index revalidated past its TTL (nginx's 304); a
//! `.prov`; a lying server (a chart replaced after
//! the index was written) refused with 502 and nothing stored; `gateway
//! cache seed` of a chart never pulled; then the upstream link cut: the
//! index served stale, the pulled and seeded charts still pulled.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use gateway_tests::{
    Gateway, GatewayConfig, Site,
    helm::{Entry, HelmClient, index_yaml, package, sha256_hex},
    nginx::{Nginx, NginxConfig, SiteAddress, TlsFiles},
    registry::{
        self,
        netns_etc::{NetnsEtc, RESOLV_CONF, hosts_file},
        oci_gateway::{ca_export, cli},
    },
    require_root,
};
use serde_json::Value;

const CHARTS: &str = "charts.example.test";
/// The chart host: the same nginx under a second name.
const CDN: &str = "cdn.charts.example.test";
/// nginx's address in the upstream namespace (the registry harness uses .3).
const ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 6);
const AUDIT_WAIT: Duration = Duration::from_secs(20);

/// nginx, the names resolving to it, and the gateway. Field order is drop
/// order.
struct World<'s> {
    gw: Gateway<'s>,
    nginx: Nginx,
    _etc: Vec<NetnsEtc>,
    _address: SiteAddress<'s>,
    site: &'s Site,
    ca: PathBuf,
    cache_dir: PathBuf,
}

impl<'s> World<'s> {
    /// Serves `files` (path under the document root, bytes).
    fn start(site: &'s Site, files: &[(&str, Vec<u8>)]) -> Self {
        let tmp = site.tmp_dir();
        let www = tmp.join("www");
        for (path, body) in files {
            let at = www.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, body).unwrap();
        }
        let tls = TlsFiles::generate(&tmp.join("origin-tls"), &[CHARTS, CDN]).unwrap();
        let address = SiteAddress::add(site, ORIGIN_V4).unwrap();
        let hosts = hosts_file(&[
            (CHARTS, ORIGIN_V4.to_string()),
            (CDN, ORIGIN_V4.to_string()),
        ]);
        let etc = [&site.gw_ns, &site.dev_ns]
            .into_iter()
            .map(|ns| {
                NetnsEtc::create(
                    ns,
                    &[
                        ("hosts", hosts.clone()),
                        ("resolv.conf", RESOLV_CONF.to_owned()),
                    ],
                )
                .unwrap()
            })
            .collect();
        let config = NginxConfig::tls(
            "chart repository",
            ORIGIN_V4,
            &[CHARTS, CDN],
            &www,
            tls.server.clone(),
        );
        let nginx = Nginx::start(&site.up_ns, &tmp.join("nginx"), config).unwrap();

        let q = |s: &str| Value::String(s.to_owned()).to_string();
        let cache_dir = tmp.join("cache");
        let mut gw_config = GatewayConfig::for_site(site);
        // ttl 1s: the index is past it after the upstream link is cut.
        gw_config.extra_yaml.push_str(&format!(
            "tls:\n  ca_dir: {ca_dir}\nsites:\n\
             \x20 - host: {charts}\n    kind: helm\n    upstream: {upstream}\n    ca_file: {ca}\n    chart_hosts: [{cdn}]\n    ttl: 1s\n    http: true\n\
             cache:\n  dir: {cache}\n  max_size: 1GiB\n",
            ca_dir = q(&tmp.join("ca").to_string_lossy()),
            charts = q(CHARTS),
            upstream = q(&format!("https://{CHARTS}/stable")),
            ca = q(&tls.ca_pem.to_string_lossy()),
            cdn = q(CDN),
            cache = q(&cache_dir.to_string_lossy()),
        ));
        let mut gw = Gateway::prepare(site, gw_config).unwrap();
        let init = cli(&gw, &["ca", "init"]).unwrap();
        assert!(init.success(), "ca init: {}", init.stderr);
        gw.restart().unwrap();
        let ca = tmp.join("device-ca.pem");
        std::fs::write(&ca, gw.must(ca_export(&gw))).unwrap();
        Self {
            gw,
            nginx,
            _etc: etc,
            _address: address,
            site,
            ca,
            cache_dir,
        }
    }

    /// A client of the repository over TLS (trusting the site CA only) or
    /// plain HTTP.
    fn client(&self, tls: bool) -> HelmClient {
        let scratch = self.site.tmp_dir().join("helm");
        if tls {
            HelmClient::new(
                &self.site.dev_ns,
                &scratch,
                &format!("https://{CHARTS}/stable"),
                Some(&self.ca),
            )
        } else {
            HelmClient::new(
                &self.site.dev_ns,
                &scratch,
                &format!("http://{CHARTS}/stable"),
                None,
            )
        }
    }

    /// The origin's GETs of `path` from the gateway, by status.
    fn origin_gets(&self, path: &str) -> Vec<u16> {
        self.nginx
            .requests_from_gateway("GET", path)
            .unwrap()
            .into_iter()
            .map(|l| l.status)
            .collect()
    }

    /// The `request` records of `path` once there are `n`.
    fn records(&self, path: &str, n: usize) -> Vec<Value> {
        let is = |r: &Value| r["event"] == "request" && r["path"] == path;
        let all = self
            .gw
            .wait_audit_all(|rs| rs.iter().filter(|r| is(r)).count() >= n, AUDIT_WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.evidence()));
        all.into_iter().filter(is).collect()
    }

    /// The `index.yaml` records served stale, once there are `n`.
    fn stale_index_records(&self, n: usize) -> Vec<Value> {
        let is = |r: &Value| {
            r["event"] == "request" && r["path"] == "/stable/index.yaml" && r["cache"] == "stale"
        };
        let all = self
            .gw
            .wait_audit_all(|rs| rs.iter().filter(|r| is(r)).count() >= n, AUDIT_WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.evidence()));
        all.into_iter().filter(is).collect()
    }

    /// Files in the cache dir named by `body`'s sha256.
    fn cached(&self, body: &[u8]) -> Vec<PathBuf> {
        let hex = sha256_hex(body);
        gateway_tests::kernel::files_under(&self.cache_dir)
            .unwrap()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&hex))
            .collect()
    }

    fn evidence(&self) -> String {
        format!(
            "{}\nnginx access log:\n{}\n{}",
            self.gw.diagnostics(),
            std::fs::read_to_string(&self.nginx.access_log_path).unwrap_or_default(),
            self.nginx.logs()
        )
    }
}

#[test]
fn charts_are_pulled_verified_seeded_and_served_offline() {
    require_root();
    let site = Site::new("helm").unwrap();
    let web = package("web", "1.0.0", "relative URL").unwrap();
    let db = package("db", "0.2.0", "on the chart host").unwrap();
    let seeded = package("web", "1.1.0", "seeded").unwrap();
    let liar_promised = package("liar", "0.1.0", "what the index describes").unwrap();
    let liar_served = package("liar", "0.1.0", "what the server sends").unwrap();
    let prov = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nweb 1.0.0\n".to_vec();
    let entry = |name, version, url: &str, bytes: &[u8]| Entry {
        name,
        version,
        url: url.to_owned(),
        digest: Some(sha256_hex(bytes)),
    };
    let index = index_yaml(&[
        entry("web", "1.0.0", "charts/web-1.0.0.tgz", &web),
        entry("web", "1.1.0", "charts/web-1.1.0.tgz", &seeded),
        entry(
            "db",
            "0.2.0",
            &format!("https://{CDN}/cdn/db-0.2.0.tgz"),
            &db,
        ),
        entry("liar", "0.1.0", "liar-0.1.0.tgz", &liar_promised),
        entry(
            "far",
            "1.0.0",
            "https://elsewhere.example.test/far-1.0.0.tgz",
            &web,
        ),
    ]);
    let w = World::start(
        &site,
        &[
            ("/stable/index.yaml", index.into_bytes()),
            ("/stable/charts/web-1.0.0.tgz", web.clone()),
            ("/stable/charts/web-1.0.0.tgz.prov", prov.clone()),
            ("/stable/charts/web-1.1.0.tgz", seeded.clone()),
            ("/cdn/db-0.2.0.tgz", db.clone()),
            // The lying server: replaced after the index was written.
            ("/stable/liar-0.1.0.tgz", liar_served.clone()),
        ],
    );
    let tls = w.client(true);

    // Pulls over TLS: a relative URL on the site's host, an absolute one
    // on the chart host; the second pull of each comes from the cache.
    for _ in 0..2 {
        let pulled = tls
            .pull("web", "1.0.0")
            .unwrap_or_else(|e| panic!("{e:#}\n{}", w.evidence()));
        assert_eq!(pulled.bytes, web);
        let pulled = tls
            .pull("db", "0.2.0")
            .unwrap_or_else(|e| panic!("{e:#}\n{}", w.evidence()));
        assert_eq!(pulled.url, format!("https://{CDN}/cdn/db-0.2.0.tgz"));
        assert_eq!(pulled.bytes, db);
    }
    assert_eq!(w.origin_gets("/stable/charts/web-1.0.0.tgz"), vec![200]);
    assert_eq!(w.origin_gets("/cdn/db-0.2.0.tgz"), vec![200]);
    let records = w.records("/stable/charts/web-1.0.0.tgz", 2);
    assert_eq!(
        (&records[0]["cache"], &records[1]["cache"]),
        (&Value::from("miss"), &Value::from("hit")),
        "{records:?}"
    );

    // The entry on a host the site does not list is left out, and said so.
    let served = tls.index().unwrap();
    assert!(served["entries"].get("far").is_none(), "{served:?}");
    let record = &w.records("/stable/index.yaml", 1)[0];
    assert!(
        record["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("left out of the served index"),
        "{record}"
    );

    // Past the TTL: revalidated with nginx's ETag, nginx answers 304.
    std::thread::sleep(Duration::from_millis(1100));
    tls.index().unwrap();
    assert!(
        w.origin_gets("/stable/index.yaml").contains(&304),
        "{}",
        w.evidence()
    );
    let revalidated = |rs: &[Value]| {
        rs.iter()
            .any(|r| r["path"] == "/stable/index.yaml" && r["cache"] == "revalidated")
    };
    w.gw.wait_audit_all(revalidated, AUDIT_WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", w.evidence()));

    // The provenance file beside the chart.
    let r = tls
        .get(&format!(
            "https://{CHARTS}/stable/charts/web-1.0.0.tgz.prov"
        ))
        .unwrap();
    assert_eq!((r.code, r.body()), (200, prov), "{}", r.describe());

    // Plain HTTP: the chart host's absolute URL comes as http://, and the
    // charts come from the cache.
    let plain = w.client(false);
    let (url, _) = plain
        .locate(&plain.index().unwrap(), "db", "0.2.0")
        .unwrap();
    assert_eq!(url, format!("http://{CDN}/cdn/db-0.2.0.tgz"));
    assert_eq!(plain.pull("db", "0.2.0").unwrap().bytes, db);
    assert_eq!(plain.pull("web", "1.0.0").unwrap().bytes, web);
    assert_eq!(w.origin_gets("/cdn/db-0.2.0.tgz"), vec![200]);

    // The lying server: 502, the audit blames upstream, nothing stored.
    let e = tls.pull("liar", "0.1.0").unwrap_err();
    assert!(e.to_string().contains("502"), "{e:#}\n{}", w.evidence());
    let record = &w.records("/stable/liar-0.1.0.tgz", 1)[0];
    assert_eq!(record["fault"], "upstream", "{record}");
    assert!(
        record["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("digest"),
        "{record}"
    );
    assert!(w.cached(&liar_served).is_empty(), "the lie was stored");
    assert!(w.cached(&liar_promised).is_empty());

    // A seed of a version never pulled: chart and index pinned.
    let pin = format!("{CHARTS}/web@1.1.0");
    let out = cli(&w.gw, &["cache", "seed", &pin]).unwrap();
    assert!(
        out.success(),
        "seed: {} {}\n{}",
        out.stdout_text(),
        out.stderr,
        w.evidence()
    );
    assert_eq!(w.origin_gets("/stable/charts/web-1.1.0.tgz"), vec![200]);
    let ls = cli(&w.gw, &["cache", "ls"]).unwrap();
    assert!(ls.stdout_text().contains(&pin), "{}", ls.stdout_text());

    // Upstream gone, the index past its TTL: served stale; the charts
    // pulled and seeded still pull.
    // Counted by content, not position: a record is written as its body
    // ends, which may be just after curl has exited.
    let stale_before = w.stale_index_records(0).len();
    registry::cut_upstream(&site).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    for (version, bytes) in [("1.0.0", &web), ("1.1.0", &seeded)] {
        let pulled = tls
            .pull("web", version)
            .unwrap_or_else(|e| panic!("offline {version}: {e:#}\n{}", w.evidence()));
        assert_eq!(&pulled.bytes, bytes);
    }
    let stale = w.stale_index_records(stale_before + 1);
    assert_eq!(stale[stale_before]["fault"], "upstream", "{stale:?}");
    registry::restore_upstream(&site).unwrap();
}
