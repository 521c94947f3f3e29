//! Self-test of the Docker Hub harness ([`gateway_tests::hub`]) and of the
//! stock containerd ([`gateway_tests::containerd`]), WITHOUT a gateway:
//!
//! - containerd in the device namespace pulls `docker.io/library/app:1`
//!   from the hub the way it pulls from Docker Hub (token, manifest, blob
//!   redirects to the CDN), byte for byte, trusting only the hub's CA from
//!   the device's own `/etc/ssl/certs`, and pulls again after the image
//!   and its content were removed. Without a gateway the device reaches the
//!   hub over a bypass link between the device and upstream namespaces
//!   (the gateway namespace forwards nothing, and must not be made to).
//! - the token server and the registry speak the protocol (credentials,
//!   scopes, ES256 JWTs with `x5c`, 307 to the CDN), checked with curl from
//!   the gateway namespace, where the gateway will do the same;
//! - the wrong resolver answers every name with its wrong address and
//!   counts the queries;
//! - everything the harness made is gone after it is dropped.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{
    Site,
    containerd::{self, Containerd},
    hub::{self, DeviceBypass, Hub, HubOptions, WrongResolver, bypass::BYPASS_DEV_V4, decode_jwt},
    incidental,
    netns::ip_in,
    oci::{Image, LINUX_AMD64, LayerSpec, Layout, sha256_digest},
    registry::{Credentials, Registry, RegistryOptions, cmd, netns_etc::NetnsEtc},
    require_root,
};

const MIB: u64 = 1024 * 1024;
const REFERENCE: &str = "docker.io/library/app:1";

/// An image of two layers (gzip and plain tar) pushed to `reg` as
/// `library/app:1`.
fn push_app(site: &Site, reg: &Registry<'_>) -> (Layout, Image) {
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(
            LINUX_AMD64,
            &[
                LayerSpec::gzip(incidental(MIB), 11),
                LayerSpec::tar(incidental(4 * MIB), 12),
            ],
            "app",
        )
        .unwrap();
    layout.tag(&img.manifest, "1").unwrap();
    reg.push(&layout, "library/app", &img.manifest, "1")
        .unwrap();
    (layout, img)
}

/// `getent hosts NAME` in `ns`: the first address, if any.
fn resolve_in(ns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "getent", "hosts", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// The addresses on the upstream host's interface.
fn upstream_addrs(site: &Site) -> String {
    ip_in(&site.up_ns, &["-4", "addr", "show", "dev", &site.up_if]).unwrap()
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn containerd_pulls_docker_io_from_the_hub_without_a_gateway() {
    require_root();
    let site = Site::new("hub-ctr").unwrap();
    let t = Instant::now();
    let reg = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options()).unwrap();
    let hub = Hub::start(
        &reg,
        HubOptions {
            // containerd, pulling straight from the hub, has no credentials.
            allow_anonymous: true,
            ..HubOptions::default()
        },
    )
    .unwrap();
    eprintln!("registry and hub up in {:?}", t.elapsed());

    // The gateway namespace resolves the hub's names (what a gateway
    // will use); the Registry left the device namespace's /etc alone.
    for (name, a) in hub::host_entries() {
        assert_eq!(
            resolve_in(&site.gw_ns, &name),
            Some(a),
            "{name} in the gateway ns"
        );
    }
    let dev_etc_dir = Path::new("/etc/netns").join(&site.dev_ns);
    assert!(!dev_etc_dir.exists(), "{} written", dev_etc_dir.display());

    // The device's own /etc: the hub's names (no gateway answers its DNS
    // here), the wrong resolver in resolv.conf, and a trust store holding
    // only the hub's CA.
    let ca = hub.ca_pem_text().unwrap();
    let dev_etc = NetnsEtc::create(
        &site.dev_ns,
        &[
            ("hosts", hub::hosts_file()),
            ("resolv.conf", format!("nameserver {}\n", hub::RESOLVER_V4)),
            ("ssl/certs/ca-certificates.crt", ca.clone()),
        ],
    )
    .unwrap();
    let seen = cmd::run(
        Command::new("ip").args([
            "netns",
            "exec",
            &site.dev_ns,
            "sh",
            "-c",
            "ls -A /etc/ssl/certs && cat /etc/ssl/certs/ca-certificates.crt",
        ]),
        Duration::from_secs(10),
    )
    .unwrap()
    .stdout_text();
    assert_eq!(
        seen,
        format!("ca-certificates.crt\n{ca}"),
        "device trust store"
    );
    assert_eq!(
        resolve_in(&site.dev_ns, hub::REGISTRY_HOST).as_deref(),
        Some("10.77.2.4")
    );
    let bypass = DeviceBypass::add(&site).unwrap();

    let (layout, img) = push_app(&site, &reg);
    // What the Registry stored is what the hub serves: same directory.
    let m = hub
        .curl(
            &site.gw_ns,
            &[&format!("https://{}/v2/", hub::REGISTRY_HOST)],
        )
        .unwrap();
    assert_eq!(m.code, 401, "{}", m.describe());

    let t = Instant::now();
    let ctd = Containerd::start(&site.dev_ns, &site.tmp_dir().join("ctd")).unwrap();
    assert!(
        ctd.is_mounted(),
        "containerd's root is not on its own tmpfs"
    );
    eprintln!("containerd up in {:?}", t.elapsed());

    let t = Instant::now();
    let out = ctd.pull(REFERENCE);
    let out = out.unwrap_or_else(|e| panic!("{e:#}\n{}", hub.diagnostics()));
    eprintln!(
        "ctr pull in {:?}:\n{}",
        t.elapsed(),
        out.stdout_text().lines().last().unwrap_or_default()
    );

    // containerd holds the pushed manifest under the docker.io name, and
    // every blob byte for byte.
    let row = ctd.image(REFERENCE).unwrap().unwrap();
    assert_eq!(row.digest, img.manifest.digest);
    assert_eq!(row.media_type, img.manifest.media_type);
    let all: Vec<String> = std::iter::once(img.manifest.digest.clone())
        .chain(img.blob_digests())
        .collect();
    for d in &all {
        let got = ctd.content_get(d).unwrap();
        assert_eq!(sha256_digest(&got), *d);
        assert_eq!(got, layout.read_blob(d).unwrap(), "{d}");
    }
    // Unpacked by the default (overlayfs) snapshotter on containerd's tmpfs:
    // one committed snapshot per layer.
    let snaps = ctd.snapshots().unwrap();
    let committed = snaps.iter().filter(|(_, kind)| kind == "Committed").count();
    assert_eq!(
        committed,
        img.layers.len(),
        "{snaps:?}\n{}",
        ctd.log_tail(30)
    );
    let mut held = ctd.image_content(&row.digest).unwrap();
    held.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(held, want);

    // Anonymous tokens for pulling library/app, asked for by the device.
    let tokens = hub.tokens();
    assert!(!tokens.is_empty(), "{}", hub.diagnostics());
    for tok in &tokens {
        assert_eq!(tok.user, None, "{tok:?}");
        assert_eq!(tok.remote.ip(), IpAddr::V4(BYPASS_DEV_V4), "{tok:?}");
        assert!(
            tok.access
                .iter()
                .any(|a| a.name == "library/app" && a.actions == ["pull"]),
            "{tok:?}"
        );
    }
    // Every blob was redirected by the registry and fetched from the CDN,
    // whole; the manifest came from the registry itself.
    for d in img.blob_digests() {
        let size = layout.read_blob(&d).unwrap().len() as u64;
        let redirects = hub.blob_redirects(&d).unwrap();
        assert_eq!(redirects.len(), 1, "{d}: {redirects:?}");
        let fetches = hub.cdn_blob_fetches(&d).unwrap();
        assert_eq!(fetches.len(), 1, "{d}: {:?}", hub.cdn_access_log().unwrap());
        assert_eq!(fetches[0].bytes, size);
        assert_eq!(fetches[0].remote, BYPASS_DEV_V4.to_string());
    }
    let manifest_path = format!("/v2/library/app/manifests/{}", img.manifest.digest);
    let tag_path = "/v2/library/app/manifests/1";
    let served: Vec<_> = hub
        .registry_access_log()
        .unwrap()
        .into_iter()
        .filter(|l| (l.path == tag_path || l.path == manifest_path) && l.status == 200)
        .collect();
    assert!(!served.is_empty(), "{}", hub.diagnostics());
    // The device's hosts file answered: the wrong resolver was never asked.
    assert_eq!(
        hub.resolver.queries().unwrap(),
        0,
        "{}",
        hub.resolver.logs()
    );

    // Removed with its content, the image is pulled again from scratch:
    // every blob comes from the CDN a second time.
    ctd.remove_image(REFERENCE).unwrap();
    assert_eq!(ctd.image(REFERENCE).unwrap(), None);
    let left = ctd.content_digests().unwrap();
    assert!(all.iter().all(|d| !left.contains(d)), "{left:?}");
    ctd.pull(REFERENCE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", hub.diagnostics()));
    for d in img.blob_digests() {
        assert_eq!(hub.cdn_blob_fetches(&d).unwrap().len(), 2, "{d}");
        assert_eq!(ctd.content_get(&d).unwrap(), layout.read_blob(&d).unwrap());
    }

    // Everything goes on drop: containerd and its tmpfs, the hub's
    // processes and addresses, the device's files, the bypass link.
    let ctd_pid = ctd.pid().unwrap();
    let fs = ctd.fs.clone();
    drop(ctd);
    assert!(gone(ctd_pid), "containerd {ctd_pid} still runs");
    assert!(
        !containerd::is_mount_point(&fs),
        "{} still mounted",
        fs.display()
    );
    let pids = hub.pids();
    assert_eq!(pids.len(), 3);
    drop(hub);
    for pid in pids {
        assert!(gone(pid), "hub process {pid} still runs");
    }
    let addrs = upstream_addrs(&site);
    for a in ["10.77.2.4/", "10.77.2.5/", "10.77.2.6/", "10.77.2.53/"] {
        assert!(!addrs.contains(a), "{a} left: {addrs}");
    }
    assert!(
        addrs.contains("10.77.2.3/"),
        "the registry's address: {addrs}"
    );
    drop(dev_etc);
    assert!(!dev_etc_dir.exists());
    drop(bypass);
    let links = ip_in(&site.dev_ns, &["link", "show"]).unwrap();
    assert!(!links.contains(&format!("{}d8", site.prefix)), "{links}");
    let gw_etc = Path::new("/etc/netns").join(&site.gw_ns);
    assert!(gw_etc.exists());
    drop(reg);
    assert!(!gw_etc.exists());
}

#[test]
fn token_server_and_registry_speak_docker_hubs_protocol() {
    require_root();
    let site = Site::new("hub-proto").unwrap();
    let reg = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options()).unwrap();
    let creds = Credentials::random();
    let hub = Hub::start(
        &reg,
        HubOptions {
            credentials: creds.clone(),
            allow_anonymous: false,
        },
    )
    .unwrap();
    let (layout, img) = push_app(&site, &reg);
    let pw = std::fs::read_to_string(&hub.password_file).unwrap();
    assert_eq!(pw.trim_end(), creds.password);
    let entry = hub.site_entry();
    assert_eq!(entry.upstream, "https://registry-1.docker.io");
    assert!(entry.yaml().contains("host: \"registry-1.docker.io\""));
    assert!(
        entry
            .yaml()
            .contains("redirect_hosts: [\"auth.docker.io\", \"production.cloudflare.docker.com\"]"),
        "{}",
        entry.yaml()
    );

    // From the gateway namespace, as the gateway will ask.
    let ns = &site.gw_ns;
    let registry = format!("https://{}", hub::REGISTRY_HOST);
    let manifest_url = format!("{registry}/v2/library/app/manifests/1");
    let accept = format!("Accept: {}", img.manifest.media_type);

    // No token: the challenge names the realm, the service and the scope.
    let r = hub.curl(ns, &["-H", &accept, &manifest_url]).unwrap();
    assert_eq!(r.code, 401, "{}", r.describe());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/app:pull\""
        ),
        "{}",
        r.describe()
    );

    let token_url = |repo: &str| {
        format!(
            "https://{}/token?service=registry.docker.io&scope=repository%3A{}%3Apull",
            hub::AUTH_HOST,
            repo.replace('/', "%2F")
        )
    };
    let right = format!("{}:{}", creds.username, creds.password);
    let wrong = format!("{}:{}x", creds.username, creds.password);

    // Without credentials, or with wrong ones: 401, no token.
    let r = hub.curl(ns, &[&token_url("library/app")]).unwrap();
    assert_eq!(r.code, 401, "{}", r.describe());
    let r = hub
        .curl(ns, &["-u", &wrong, &token_url("library/app")])
        .unwrap();
    assert_eq!(r.code, 401, "{}", r.describe());
    assert_eq!(hub.token_refusals().len(), 2);
    assert!(hub.tokens().is_empty());
    // The password never lands in a refusal record.
    assert!(
        hub.token_refusals()
            .iter()
            .all(|f| !f.reason.contains(&creds.password)),
        "{:?}",
        hub.token_refusals()
    );

    // With them: an ES256 JWT for the site's user, granting pull.
    let r = hub
        .curl(ns, &["-u", &right, &token_url("library/app")])
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.describe());
    let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], token.as_str());
    assert_eq!(body["expires_in"], 300);
    let (header, claims) = decode_jwt(&token).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(1));
    assert_eq!(claims["iss"], "auth.docker.io");
    assert_eq!(claims["aud"], "registry.docker.io");
    assert_eq!(claims["sub"], creds.username.as_str());
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "library/app", "actions": ["pull"]}])
    );

    // The registry accepts it: the manifest, byte for byte.
    let bearer = format!("Authorization: Bearer {token}");
    let r = hub
        .curl(ns, &["-H", &accept, "-H", &bearer, &manifest_url])
        .unwrap();
    assert_eq!(r.code, 200, "{}\n{}", r.describe(), hub.diagnostics());
    assert_eq!(r.body(), layout.read_blob(&img.manifest.digest).unwrap());

    // A blob: 307 to the CDN's URL of the blob's storage path, which serves
    // it without credentials.
    let layer = &img.layers[1];
    let blob_url = format!("{registry}/v2/library/app/blobs/{}", layer.digest);
    let r = hub.curl(ns, &["-H", &bearer, &blob_url]).unwrap();
    assert_eq!(r.code, 307, "{}", r.describe());
    let location = r.header("location").unwrap().to_owned();
    assert_eq!(
        location,
        format!("https://{}{}", hub::CDN_HOST, hub::blob_path(&layer.digest))
    );
    assert_eq!(hub.blob_redirects(&layer.digest).unwrap().len(), 1);
    let r = hub.curl(ns, &[&location]).unwrap();
    assert_eq!(r.code, 200, "{}", r.describe());
    assert_eq!(r.body_digest().unwrap(), layer.digest);
    assert_eq!(r.body_len(), layer.size);
    let fetches = hub.cdn_blob_fetches(&layer.digest).unwrap();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(fetches[0].remote, "10.77.2.1");
    // The CDN serves blobs only, and nothing but GET.
    let link = format!(
        "https://{}/docker/registry/v2/repositories/library/app/_manifests/tags/1/current/link",
        hub::CDN_HOST
    );
    let r = hub.curl(ns, &[&link]).unwrap();
    assert_eq!(r.code, 404, "{}", r.describe());
    let r = hub.curl(ns, &["-X", "DELETE", &location]).unwrap();
    assert_eq!(r.code, 403, "{}", r.describe());

    // The OAuth2 password grant (what containerd sends with credentials).
    let form = format!(
        "grant_type=password&service=registry.docker.io&scope=repository%3Alibrary%2Fapp%3Apull&client_id=containerd-client&username={}&password={}",
        creds.username, creds.password
    );
    let r = hub
        .curl(
            ns,
            &[
                "-X",
                "POST",
                "--data",
                &form,
                &format!("https://{}/token", hub::AUTH_HOST),
            ],
        )
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.describe());
    let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    // A token for another repository does not open this one.
    let r = hub
        .curl(ns, &["-u", &right, &token_url("library/other")])
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.describe());
    let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
    let other = format!("Authorization: Bearer {}", body["token"].as_str().unwrap());
    let r = hub
        .curl(ns, &["-H", &accept, "-H", &other, &manifest_url])
        .unwrap();
    assert_eq!(r.code, 401, "{}", r.describe());

    // Anonymous tokens once allowed.
    hub.set_anonymous(true);
    let r = hub.curl(ns, &[&token_url("library/app")]).unwrap();
    assert_eq!(r.code, 200, "{}", r.describe());

    let tokens = hub.tokens();
    let users: Vec<Option<&str>> = tokens.iter().map(|t| t.user.as_deref()).collect();
    let me = Some(creds.username.as_str());
    assert_eq!(users, [me, me, me, None]);
    assert_eq!(tokens[1].method, "POST");
    assert_eq!(hub.token_refusals().len(), 2);
}

#[test]
fn wrong_resolver_answers_every_name_wrongly() {
    require_root();
    let site = Site::new("hub-dns").unwrap();
    let mut resolver = WrongResolver::start(&site, &site.tmp_dir().join("dns")).unwrap();
    assert_eq!(resolver.queries().unwrap(), 0);
    // From the gateway namespace (on the resolver's link), over UDP and TCP.
    let dig = |name: &str, tcp: bool| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &site.gw_ns, "dig"])
            .arg(format!("@{}", hub::RESOLVER_V4))
            .args(["+short", "+time=2", "+tries=1"])
            .arg(if tcp { "+tcp" } else { "+notcp" })
            .args([name, "A"]);
        cmd::run(&mut c, Duration::from_secs(20))
            .unwrap()
            .stdout_text()
    };
    assert_eq!(dig(hub::REGISTRY_HOST, false).trim(), "10.77.2.66");
    assert_eq!(dig("anything.example.test", true).trim(), "10.77.2.66");
    assert_eq!(resolver.queries().unwrap(), 2, "{}", resolver.logs());
    let lines = resolver.query_lines().unwrap();
    assert!(
        lines[0].contains("registry-1.docker.io from 10.77.2.1"),
        "{lines:?}"
    );
    assert!(lines[1].contains("anything.example.test"), "{lines:?}");

    let pid = resolver.pid().unwrap();
    resolver.stop();
    assert!(gone(pid));
    let addrs = upstream_addrs(&site);
    assert!(!addrs.contains("10.77.2.53/"), "{addrs}");
}
