//! `kind: files` sites end to end (issue 14 items 2, 3, 5, 7): nginx
//! (tests/src/nginx.rs) serves a download tree over TLS in the upstream
//! namespace; devices fetch through the gateway with real `curl` and
//! `wget`, and nginx's access log says what reached the origin.
//!
//! 1. Caching and refusals: a miss then hits (one upstream GET), a Range,
//!    `wget -c` resuming a partial file, HEAD, concurrent misses (one
//!    upstream GET), a `Cache-Control: no-store` path fetched every time,
//!    checksums from the config and from a `SHA256SUMS` list (a mismatch
//!    is 502 and nothing is stored), a path outside `paths` (403), plain
//!    HTTP on port 80 for the `http: true` site and 403 for the other.
//! 2. Time and outages: a file past the site's short `ttl` revalidated
//!    with nginx's ETag (upstream 304), `gateway cache seed` of a URL,
//!    then the upstream link cut: the stale copy and the seeded file are
//!    still served.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use gateway_tests::{
    Gateway, GatewayConfig, Site, incidental,
    nginx::{Nginx, NginxConfig, SiteAddress, TlsFiles},
    oci::sha256_digest,
    registry::{
        self,
        cmd::output,
        curl::{CurlResponse, curl},
        netns_etc::{NetnsEtc, RESOLV_CONF, hosts_file},
        oci_gateway::{ca_export, cli},
    },
    require_root,
};
use serde_json::Value;

/// The site that also answers plain HTTP, and one that does not.
const DL: &str = "dl.example.test";
const NO_HTTP: &str = "nohttp.example.test";
/// nginx's address in the upstream namespace (the registry harness uses .3).
const ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 5);
const AUDIT_WAIT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const KIB: u64 = 1024;

/// Headers nginx adds per location: the no-store tree and the tree whose
/// files stay fresh for an hour whatever the site's `ttl`.
const LOCATIONS: &str = "        location /pub/live/ {
            add_header Cache-Control \"no-store\";
        }
        location /pub/keep/ {
            add_header Cache-Control \"max-age=3600\";
        }
";

/// Names resolving for the gateway (to the origin) and the device (to the
/// same address, which the gateway intercepts), nginx and its tree, and
/// the gateway. Field order is drop order.
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
    /// `dl_keys` are more YAML keys of the `DL` site (`ttl`,
    /// `checksums`), indented for it.
    fn start(site: &'s Site, files: &[(&str, &[u8])], dl_keys: &str) -> Self {
        let tmp = site.tmp_dir();
        let www = tmp.join("www");
        for (path, body) in files {
            let at = www.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, body).unwrap();
        }
        let tls = TlsFiles::generate(&tmp.join("origin-tls"), &[DL, NO_HTTP]).unwrap();
        let address = SiteAddress::add(site, ORIGIN_V4).unwrap();
        let hosts = hosts_file(&[
            (DL, ORIGIN_V4.to_string()),
            (NO_HTTP, ORIGIN_V4.to_string()),
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
        let mut config = NginxConfig::tls(
            "download origin",
            ORIGIN_V4,
            &[DL, NO_HTTP],
            &www,
            tls.server.clone(),
        );
        config.locations = LOCATIONS.to_owned();
        let nginx = Nginx::start(&site.up_ns, &tmp.join("nginx"), config).unwrap();

        let q = |s: &str| Value::String(s.to_owned()).to_string();
        let p = |p: &Path| q(&p.to_string_lossy());
        let cache_dir = tmp.join("cache");
        let mut gw_config = GatewayConfig::for_site(site);
        gw_config.extra_yaml.push_str(&format!(
            "tls:\n  ca_dir: {ca_dir}\nsites:\n\
             \x20 - host: {dl}\n    kind: files\n    upstream: {dl_url}\n    ca_file: {ca}\n    paths: [\"/pub/**\"]\n    http: true\n{dl_keys}\
             \x20 - host: {nohttp}\n    kind: files\n    upstream: {nohttp_url}\n    ca_file: {ca}\n    paths: [\"/pub/**\"]\n\
             cache:\n  dir: {cache}\n  max_size: 1GiB\n",
            ca_dir = p(&tmp.join("ca")),
            dl = q(DL),
            dl_url = q(&format!("https://{DL}")),
            nohttp = q(NO_HTTP),
            nohttp_url = q(&format!("https://{NO_HTTP}")),
            ca = p(&tls.ca_pem),
            cache = p(&cache_dir),
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

    /// `curl` from the device, trusting only the site CA; `args` end with
    /// the URL.
    fn curl(&self, args: &[&str]) -> CurlResponse {
        let mut all = vec![
            "--cacert".to_owned(),
            self.ca.to_string_lossy().into_owned(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        curl(
            &self.site.dev_ns,
            &self.site.tmp_dir().join("curl"),
            &all,
            CLIENT_TIMEOUT,
        )
        .unwrap()
    }

    fn get(&self, path: &str) -> CurlResponse {
        self.curl(&[&format!("https://{DL}{path}")])
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
        let all = self
            .gw
            .wait_audit_all(
                |rs| rs.iter().filter(|r| is_get(r, path)).count() >= n,
                AUDIT_WAIT,
            )
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.evidence()));
        all.into_iter().filter(|r| is_get(r, path)).collect()
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

/// Removes [`registry::throttle_upstream`]'s qdisc.
fn unthrottle(site: &Site) {
    let out = output(
        Command::new("tc").args([
            "-n",
            &site.up_ns,
            "qdisc",
            "del",
            "dev",
            &site.up_if,
            "root",
        ]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.success(), "tc qdisc del: {}", out.stderr);
}

fn is_get(r: &Value, path: &str) -> bool {
    r["event"] == "request" && (r["method"] == "GET" || r["method"] == "HEAD") && r["path"] == path
}

/// `len` bytes that differ per `seed` (and compress poorly).
fn content(len: u64, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut block = vec![seed];
    while (out.len() as u64) < len {
        block = hex::decode(sha256_hex(&block)).unwrap();
        out.extend_from_slice(&block);
    }
    out.truncate(len as usize);
    out
}

fn sha256_hex(body: &[u8]) -> String {
    sha256_digest(body)
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned()
}

#[test]
fn files_are_cached_ranged_verified_and_refused_outside_their_paths() {
    require_root();
    let site = Site::new("files").unwrap();
    let app = content(incidental(256 * KIB), 1);
    let big = content(incidental(1024 * KIB), 2);
    let good = content(20 * KIB, 3);
    let bad = content(20 * KIB, 4);
    let listed = content(10 * KIB, 5);
    let lie = content(10 * KIB, 6);
    let sums = format!(
        "{}  listed.bin\n{} *lie.bin\n",
        sha256_hex(&listed),
        sha256_hex(b"what the list promised")
    );
    let dl_keys = format!(
        "    ttl: 1h\n    checksums:\n      - path: /pub/good.tgz\n        sha256: \"{}\"\n      - path: /pub/bad.tgz\n        sha256: \"{}\"\n      - file: /pub/SHA256SUMS\n",
        sha256_hex(&good),
        sha256_hex(b"not the bytes nginx has")
    );
    let w = World::start(
        &site,
        &[
            ("/pub/app.bin", &app),
            ("/pub/big.bin", &big),
            ("/pub/live/now.txt", b"live\n"),
            ("/pub/good.tgz", &good),
            ("/pub/bad.tgz", &bad),
            ("/pub/listed.bin", &listed),
            ("/pub/lie.bin", &lie),
            ("/pub/SHA256SUMS", sums.as_bytes()),
            ("/secret/key", b"not served\n"),
        ],
        &dl_keys,
    );

    // A miss, then hits: one upstream GET.
    for _ in 0..2 {
        let r = w.get("/pub/app.bin");
        assert_eq!(r.code, 200, "{}\n{}", r.describe(), w.evidence());
        assert_eq!(r.body(), app);
    }
    let records = w.records("/pub/app.bin", 2);
    assert_eq!(records[0]["cache"], "miss", "{records:?}");
    assert_eq!(records[1]["cache"], "hit", "{records:?}");

    // A range, and wget resuming a partial download.
    let r = w.curl(&["-r", "1000-1999", &format!("https://{DL}/pub/app.bin")]);
    assert_eq!(r.code, 206, "{}", r.describe());
    assert_eq!(r.body(), &app[1000..2000]);
    let dir = site.tmp_dir().join("wget");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.bin"), &app[..5000]).unwrap();
    let mut wget = Command::new("ip");
    wget.args(["netns", "exec", &site.dev_ns, "wget", "-q", "-c"])
        .arg(format!("--ca-certificate={}", w.ca.display()))
        .arg("-P")
        .arg(&dir)
        .arg(format!("https://{DL}/pub/app.bin"));
    let out = output(&mut wget, CLIENT_TIMEOUT).unwrap();
    assert!(out.success(), "wget -c: {}\n{}", out.stderr, w.evidence());
    assert_eq!(std::fs::read(dir.join("app.bin")).unwrap(), app);
    // HEAD from the cache.
    let r = w.curl(&["-I", &format!("https://{DL}/pub/app.bin")]);
    assert_eq!(r.code, 200, "{}", r.describe());
    assert_eq!(
        r.header("content-length"),
        Some(app.len().to_string().as_str())
    );
    assert_eq!(w.origin_gets("/pub/app.bin"), vec![200], "{}", w.evidence());

    // Concurrent misses: one upstream GET. The origin's link is slowed so
    // that the fill still runs when the others ask.
    registry::throttle_upstream(&site, "8mbit").unwrap();
    std::thread::scope(|s| {
        let all: Vec<_> = (0..4).map(|_| s.spawn(|| w.get("/pub/big.bin"))).collect();
        for r in all {
            let r = r.join().unwrap();
            assert_eq!(r.code, 200, "{}", r.describe());
            assert_eq!(r.body_len(), big.len() as u64);
            assert_eq!(
                r.body_digest().unwrap(),
                format!("sha256:{}", sha256_hex(&big))
            );
        }
    });
    unthrottle(&site);
    assert_eq!(w.origin_gets("/pub/big.bin"), vec![200], "{}", w.evidence());

    // no-store: fetched every time, never stored.
    for _ in 0..2 {
        let r = w.get("/pub/live/now.txt");
        assert_eq!(
            (r.code, r.body()),
            (200, b"live\n".to_vec()),
            "{}",
            r.describe()
        );
    }
    assert_eq!(w.origin_gets("/pub/live/now.txt"), vec![200, 200]);
    assert!(w.cached(b"live\n").is_empty(), "a no-store body was stored");

    // Checksums: the config's and the list's.
    let r = w.get("/pub/good.tgz");
    assert_eq!(r.code, 200, "{}", r.describe());
    assert_eq!(r.body(), good);
    let r = w.get("/pub/listed.bin");
    assert_eq!(r.code, 200, "{}", r.describe());
    assert_eq!(r.body(), listed);
    for (path, body) in [("/pub/bad.tgz", &bad), ("/pub/lie.bin", &lie)] {
        let r = w.get(path);
        assert_eq!(r.code, 502, "{path}: {}\n{}", r.describe(), w.evidence());
        let record = &w.records(path, 1)[0];
        assert_eq!(record["fault"], "upstream", "{record}");
        assert!(
            w.cached(body).is_empty(),
            "{path}: a mismatched body was stored"
        );
    }

    // Outside `paths`: refused, never asked upstream.
    let r = w.get("/secret/key");
    assert_eq!(r.code, 403, "{}", r.describe());
    assert!(w.origin_gets("/secret/key").is_empty());
    let record = &w.records("/secret/key", 1)[0];
    assert!(
        record["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("path_not_allowed"),
        "{record}"
    );

    // Plain HTTP on port 80: for the site that allows it (served from the
    // cache), 403 for the other.
    let r = w.curl(&[&format!("http://{DL}/pub/app.bin")]);
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), w.evidence());
    assert_eq!(r.body(), app);
    let r = w.curl(&[&format!("http://{NO_HTTP}/pub/app.bin")]);
    assert_eq!(r.code, 403, "{}", r.describe());
    assert_eq!(w.origin_gets("/pub/app.bin"), vec![200], "{}", w.evidence());
}

#[test]
fn stale_files_are_revalidated_and_served_offline_with_seeds() {
    require_root();
    let site = Site::new("files-stale").unwrap();
    let seeded = content(incidental(128 * KIB), 7);
    let w = World::start(
        &site,
        &[
            ("/pub/r.txt", b"revalidated\n"),
            ("/pub/keep/seeded.bin", &seeded),
        ],
        "    ttl: 1s\n",
    );

    // Fresh for the site's ttl (nginx names no lifetime), then revalidated
    // with the ETag nginx gave: upstream answers 304.
    let r = w.get("/pub/r.txt");
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), w.evidence());
    std::thread::sleep(Duration::from_millis(2100));
    let r = w.get("/pub/r.txt");
    assert_eq!(
        (r.code, r.body()),
        (200, b"revalidated\n".to_vec()),
        "{}",
        r.describe()
    );
    assert_eq!(
        w.origin_gets("/pub/r.txt"),
        vec![200, 304],
        "{}",
        w.evidence()
    );
    let records = w.records("/pub/r.txt", 2);
    assert_eq!(records[1]["cache"], "revalidated", "{records:?}");

    // Seeded by URL: fetched once and pinned (fresh for an hour: nginx's
    // max-age there).
    let out = cli(
        &w.gw,
        &[
            "cache",
            "seed",
            &format!("https://{DL}/pub/keep/seeded.bin"),
        ],
    )
    .unwrap();
    assert!(
        out.success(),
        "seed: {} {}\n{}",
        out.stdout_text(),
        out.stderr,
        w.evidence()
    );
    assert_eq!(w.origin_gets("/pub/keep/seeded.bin"), vec![200]);
    let ls = cli(&w.gw, &["cache", "ls"]).unwrap();
    assert!(
        ls.stdout_text()
            .contains(&format!("{DL}/pub/keep/seeded.bin")),
        "pin not listed:\n{}",
        ls.stdout_text()
    );

    // Upstream gone: the stale copy is served (stale), the seed is a hit.
    registry::cut_upstream(&site).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let r = w.get("/pub/r.txt");
    assert_eq!(
        (r.code, r.body()),
        (200, b"revalidated\n".to_vec()),
        "{}\n{}",
        r.describe(),
        w.evidence()
    );
    let records = w.records("/pub/r.txt", 3);
    assert_eq!(records[2]["cache"], "stale", "{records:?}");
    let r = w.get("/pub/keep/seeded.bin");
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), w.evidence());
    assert_eq!(r.body(), seeded);
    let records = w.records("/pub/keep/seeded.bin", 1);
    assert_eq!(records[0]["cache"], "hit", "{records:?}");
    registry::restore_upstream(&site).unwrap();
}
