//! Docker Hub's shape, built from real parts in the site's upstream
//! namespace, beside the site's [`Registry`] (which content is pushed to):
//!
//! ```text
//!  {P}-up
//!   10.77.2.3:443   registry.example.test            the pushing Registry (docker-registry)
//!   10.77.2.4:443   registry-1.docker.io             docker-registry over the SAME storage dir,
//!                                                    token auth, `redirect` storage middleware
//!   10.77.2.5:443   auth.docker.io                   token server (rustls, std threads, ES256 JWTs)
//!   10.77.2.6:443   production.cloudflare.docker.com nginx serving the storage dir read-only
//!   10.77.2.53:53   (no name)                        dnsmasq answering every name with 10.77.2.66
//! ```
//!
//! A pull goes as it does from Docker Hub: `GET /v2/…` on the registry
//! answers 401 with `Bearer realm="https://auth.docker.io/token",
//! service="registry.docker.io"`; the token server wants HTTP Basic
//! credentials ([`HubOptions::credentials`]; anonymous requests only while
//! [`HubOptions::allow_anonymous`]) and issues a JWT the registry verifies
//! against the signing certificate (`rootcertbundle`, also in the JWT's
//! `x5c`); manifests come from the registry; blob GETs are answered with a
//! 307 to `https://production.cloudflare.docker.com/docker/registry/v2/
//! blobs/sha256/ab/<hex>/data` (distribution's own `redirect` middleware,
//! which Debian's 2.8 has), which nginx serves from the same directory.
//!
//! One test PKI (one CA) covers the three names: [`Hub::ca_pem`] is what
//! the gateway trusts through its site's `ca_file`. The gateway resolves
//! the names through `/etc/netns/<gw ns>/hosts`, which the Registry writes:
//! start it with [`EtcOptions::gateway_hosts`] = [`host_entries`]
//! ([`Hub::start`] checks). The device namespace resolves nothing of
//! this by itself: with [`EtcOptions::leave_device_etc`] a test writes the
//! device's own `/etc` files (a resolv.conf naming the wrong resolver, a
//! trust store holding only the site CA).
//!
//! A test through a gateway, in outline (the device resolves through the
//! gateway's DNS, trusts only the site CA, and holds no credentials):
//!
//! ```text
//! let reg = Registry::start_with(&site, RegistryOptions::default(), hub::etc_options())?;
//! let hub = Hub::start(&reg, HubOptions::default())?;      // credentials required
//! reg.push(&layout, "library/app", &img.manifest, "1")?;
//! // gateway config: `hub.site_entry().yaml()` under `sites:`, started and
//! // `gateway ca init`-ed as usual; then the device's own /etc:
//! let _etc = NetnsEtc::create(&site.dev_ns, &[
//!     ("hosts", netns_etc::hosts_file(&[])),
//!     ("resolv.conf", format!("nameserver {}\n", hub::RESOLVER_V4)),
//!     ("ssl/certs/ca-certificates.crt", site_ca_pem),
//! ])?;
//! let ctd = Containerd::start(&site.dev_ns, &site.tmp_dir().join("ctd"))?;
//! ctd.pull("docker.io/library/app:1")?;
//! ```
//!
//! Dropping a [`Hub`] kills its processes by pid, stops the token server
//! and removes the addresses it added; its files live in the site's temp
//! dir and go with the site.

mod b64;
pub mod bypass;
pub mod cdn;
pub mod resolver;
pub mod token;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

pub use self::{
    bypass::DeviceBypass,
    cdn::{Cdn, blob_path},
    resolver::WrongResolver,
    token::{Access, IssuedToken, Refusal, TokenServer, decode_jwt},
};
use crate::{
    bench::{proc::Proc, world::wait_listening},
    netns::ip_in,
    registry::{
        AccessLine, Credentials, CurlResponse, EtcOptions, Registry, access_log, certs, curl,
        netns_etc,
    },
    site::Site,
};

/// The registry's name (`docker.io` references are pulled from here).
pub const REGISTRY_HOST: &str = "registry-1.docker.io";
/// The token realm's host.
pub const AUTH_HOST: &str = "auth.docker.io";
/// The CDN host blob GETs are redirected to.
pub const CDN_HOST: &str = "production.cloudflare.docker.com";
/// `auth.token.service`: the `service` of the challenge, `aud` of tokens.
pub const SERVICE: &str = "registry.docker.io";
/// The challenge's realm.
pub const REALM: &str = "https://auth.docker.io/token";

pub const REGISTRY_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 4);
pub const AUTH_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 5);
pub const CDN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 6);
/// The wrong resolver's address (dnsmasq, port 53).
pub const RESOLVER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 53);
/// What the wrong resolver answers for every name: assigned nowhere.
pub const WRONG_ANSWER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 66);

/// How long the hub's registry may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one curl request made through [`Hub::curl`].
const CURL_TIMEOUT: Duration = Duration::from_secs(60);

/// The hub's `(name, address)` pairs, for hosts files: give them to
/// [`EtcOptions::gateway_hosts`] so the gateway resolves the hub.
pub fn host_entries() -> Vec<(String, String)> {
    [
        (REGISTRY_HOST, REGISTRY_V4),
        (AUTH_HOST, AUTH_V4),
        (CDN_HOST, CDN_V4),
    ]
    .into_iter()
    .map(|(n, a)| (n.to_owned(), a.to_string()))
    .collect()
}

/// The [`EtcOptions`] of a Registry started beside a hub: the hub's names
/// in the gateway's hosts file, the device's `/etc` left to the test.
pub fn etc_options() -> EtcOptions {
    EtcOptions {
        gateway_hosts: host_entries(),
        leave_device_etc: true,
    }
}

/// A `hosts` file naming the hub's hosts (and localhost).
pub fn hosts_file() -> String {
    let entries = host_entries();
    let refs: Vec<(&str, String)> = entries
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    netns_etc::hosts_file(&refs)
}

/// How to run the hub.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The only credentials the token server accepts (what the gateway's
    /// site holds).
    pub credentials: Credentials,
    /// Whether token requests without credentials get a token (containerd
    /// pulling straight from the hub does not authenticate). Can be changed
    /// later with [`Hub::set_anonymous`].
    pub allow_anonymous: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::random(),
            allow_anonymous: false,
        }
    }
}

/// The gateway's `sites:` entry for the hub.
#[derive(Clone, Debug)]
pub struct HubSite {
    /// `registry-1.docker.io`: the name devices connect to.
    pub host: String,
    /// `https://registry-1.docker.io`.
    pub upstream: String,
    /// The hub's CA (all three names).
    pub ca_file: PathBuf,
    pub username: String,
    pub password_file: PathBuf,
    /// `redirect_hosts`: the token realm's and the CDN's hosts, which are
    /// on the test network's private addresses that the gateway refuses
    /// to follow a redirect or realm to otherwise.
    pub redirect_hosts: Vec<String>,
}

impl HubSite {
    /// One `sites:` list item (two-space indent, as in a gateway config).
    pub fn yaml(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let redirect_hosts: Vec<String> = self.redirect_hosts.iter().map(|h| q(h)).collect();
        format!(
            "  - host: {}\n    kind: \"oci\"\n    upstream: {}\n    ca_file: {}\n    credentials:\n      username: {}\n      password_file: {}\n    redirect_hosts: [{}]\n",
            q(&self.host),
            q(&self.upstream),
            q(&self.ca_file.to_string_lossy()),
            q(&self.username),
            q(&self.password_file.to_string_lossy()),
            redirect_hosts.join(", "),
        )
    }
}

/// The running hub. Borrows the Registry whose storage it serves, so it is
/// dropped (stopped) before it.
pub struct Hub<'a> {
    registry: &'a Registry<'a>,
    /// Dropped first: dnsmasq and its address.
    pub resolver: WrongResolver,
    registry_proc: Option<Proc>,
    cdn: Cdn,
    token: TokenServer,
    /// A guard only: dropped after the servers that bind its addresses.
    _addresses: Addresses,
    /// `<site tmp>/hub`: configs, certificates, logs.
    pub dir: PathBuf,
    /// The CA of the hub's three names: the gateway's site `ca_file`.
    pub ca_pem: PathBuf,
    /// The token signing certificate (the registry's `rootcertbundle`).
    pub token_cert_pem: PathBuf,
    pub credentials: Credentials,
    /// The password alone, newline-terminated: the gateway's
    /// `credentials.password_file`.
    pub password_file: PathBuf,
    /// The hub registry's stdout (access log) and stderr.
    pub registry_access_log_path: PathBuf,
    pub registry_log_path: PathBuf,
}

impl<'a> Hub<'a> {
    /// Starts the hub beside `registry` (which must have been started with
    /// [`etc_options`] or at least [`host_entries`] in
    /// [`EtcOptions::gateway_hosts`]).
    pub fn start(registry: &'a Registry<'a>, opts: HubOptions) -> Result<Self> {
        let site = registry.site();
        check_gateway_hosts(site)?;
        let dir = site.tmp_dir().join("hub");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

        let pki = certs::server_pki(&[REGISTRY_HOST, AUTH_HOST, CDN_HOST])?;
        let ca_pem = dir.join("ca.pem");
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::write(&ca_pem, &pki.ca_pem)?;
        std::fs::write(&cert, &pki.cert_pem)?;
        std::fs::write(&key, &pki.key_pem)?;
        let signer = token::Signer::generate()?;
        let token_cert_pem = dir.join("token-signer.pem");
        std::fs::write(&token_cert_pem, &signer.cert_pem)?;
        let password_file = dir.join("hub.password");
        std::fs::write(&password_file, format!("{}\n", opts.credentials.password))?;

        // The addresses first, so that every server can bind (the resolver
        // adds its own). On an early return, every part started so far is
        // dropped, in reverse order: servers stop, then addresses go.
        let addresses = Addresses::add(site, &[REGISTRY_V4, AUTH_V4, CDN_V4])?;
        let token = TokenServer::start(
            &site.up_ns,
            AUTH_V4,
            token::TokenConfig {
                service: SERVICE.to_owned(),
                tls_cert_der: pki.cert_der.clone(),
                tls_key_der: pki.key_der.clone(),
                signer,
                credentials: opts.credentials.clone(),
                anonymous: opts.allow_anonymous,
            },
        )?;
        let cdn = Cdn::start(
            &site.up_ns,
            CDN_V4,
            &dir.join("cdn"),
            &cdn::CdnFiles {
                storage: &registry.storage,
                cert: &cert,
                key: &key,
                server_name: CDN_HOST,
            },
        )?;
        let resolver = WrongResolver::start(site, &dir.join("resolver"))?;
        // From here on, drop undoes everything.
        let mut hub = Self {
            registry,
            resolver,
            registry_proc: None,
            cdn,
            token,
            _addresses: addresses,
            ca_pem,
            token_cert_pem,
            credentials: opts.credentials,
            password_file,
            registry_access_log_path: dir.join("registry-access.log"),
            registry_log_path: dir.join("registry.log"),
            dir,
        };
        hub.spawn_registry(&cert, &key)?;
        hub.wait_registry()?;
        Ok(hub)
    }

    fn spawn_registry(&mut self, cert: &Path, key: &Path) -> Result<()> {
        let config = self.dir.join("registry.yml");
        std::fs::write(&config, self.registry_yaml(cert, key))?;
        let stdout = std::fs::File::create(&self.registry_access_log_path)?;
        let stderr = std::fs::File::create(&self.registry_log_path)?;
        let site = self.registry.site();
        let mut cmd = crate::netns::exec_in(&site.up_ns, "docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        self.registry_proc = Some(Proc::spawn("docker-registry (hub)", &mut cmd)?);
        Ok(())
    }

    /// The hub registry's config: the pushing Registry's storage (read
    /// only here), storage redirects on (distribution serves blobs through
    /// the driver's `URLFor`, which the `redirect` middleware answers with
    /// the CDN's URL), token auth.
    fn registry_yaml(&self, cert: &Path, key: &Path) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let p = |p: &Path| q(&p.to_string_lossy());
        format!(
            "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: true
middleware:
  storage:
    - name: redirect
      options:
        baseurl: {cdn}
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
http:
  addr: {addr}
  secret: {secret}
  tls:
    certificate: {cert}
    key: {key}
",
            storage = p(&self.registry.storage),
            cdn = q(&format!("https://{CDN_HOST}/")),
            realm = q(REALM),
            service = q(SERVICE),
            issuer = q(token::ISSUER),
            bundle = p(&self.token_cert_pem),
            addr = q(&SocketAddr::from((REGISTRY_V4, 443)).to_string()),
            secret = q(&hex::encode(crate::device::random_bytes(16))),
            cert = p(cert),
            key = p(key),
        )
    }

    /// Waits until the registry listens, then checks that `/v2/` answers
    /// with the token challenge.
    fn wait_registry(&mut self) -> Result<()> {
        let site = self.registry.site();
        let target = SocketAddr::from((REGISTRY_V4, 443));
        if let Err(e) = wait_listening(&site.up_ns, target, READY_TIMEOUT) {
            if let Some(p) = self.registry_proc.as_mut() {
                let _ = p.check_running();
            }
            return Err(e.context(format!(
                "the hub's docker-registry did not start; log:\n{}",
                self.registry_log_tail(30)
            )));
        }
        let r = self.curl(&site.up_ns, &[&format!("https://{REGISTRY_HOST}/v2/")])?;
        let challenge = r.header("www-authenticate").unwrap_or_default();
        ensure!(
            r.code == 401 && challenge.contains(REALM) && challenge.contains(SERVICE),
            "the hub registry's /v2/ should ask for a token: {}\nlog:\n{}",
            r.describe(),
            self.registry_log_tail(30)
        );
        Ok(())
    }

    pub fn site(&self) -> &'a Site {
        self.registry.site()
    }

    /// The gateway's `sites:` entry for the hub.
    pub fn site_entry(&self) -> HubSite {
        HubSite {
            host: REGISTRY_HOST.to_owned(),
            upstream: format!("https://{REGISTRY_HOST}"),
            ca_file: self.ca_pem.clone(),
            username: self.credentials.username.clone(),
            password_file: self.password_file.clone(),
            redirect_hosts: vec![AUTH_HOST.to_owned(), CDN_HOST.to_owned()],
        }
    }

    /// The hub CA's PEM text (for a trust store file).
    pub fn ca_pem_text(&self) -> Result<String> {
        std::fs::read_to_string(&self.ca_pem)
            .with_context(|| format!("reading {}", self.ca_pem.display()))
    }

    /// curl in `ns` with the hub's CA and its three names resolved to
    /// their addresses (`--resolve`, no hosts file needed); `args` end with
    /// the URL.
    pub fn curl(&self, ns: &str, args: &[&str]) -> Result<CurlResponse> {
        let mut all = vec![
            "--cacert".to_owned(),
            self.ca_pem.to_string_lossy().into_owned(),
        ];
        for (name, a) in host_entries() {
            all.push("--resolve".to_owned());
            all.push(format!("{name}:443:{a}"));
        }
        all.extend(args.iter().map(|s| s.to_string()));
        curl::curl(ns, &self.dir.join("curl"), &all, CURL_TIMEOUT)
    }

    /// Allows or refuses anonymous token requests from now on.
    pub fn set_anonymous(&self, allowed: bool) {
        self.token.set_anonymous(allowed);
    }

    /// Every token issued so far.
    pub fn tokens(&self) -> Vec<IssuedToken> {
        self.token.issued()
    }

    /// Every refused token request so far.
    pub fn token_refusals(&self) -> Vec<Refusal> {
        self.token.refused()
    }

    /// Every request the hub's registry served.
    pub fn registry_access_log(&self) -> Result<Vec<AccessLine>> {
        let text = std::fs::read_to_string(&self.registry_access_log_path)
            .with_context(|| format!("reading {}", self.registry_access_log_path.display()))?;
        Ok(access_log::parse(&text))
    }

    /// The registry's GETs of `digest` as a blob (in any repository) that
    /// it answered with a redirect.
    pub fn blob_redirects(&self, digest: &str) -> Result<Vec<AccessLine>> {
        let suffix = format!("/blobs/{digest}");
        Ok(self
            .registry_access_log()?
            .into_iter()
            .filter(|l| l.method == "GET" && l.path.ends_with(&suffix) && l.status == 307)
            .collect())
    }

    /// Every request the CDN served.
    pub fn cdn_access_log(&self) -> Result<Vec<AccessLine>> {
        self.cdn.access_log()
    }

    /// The CDN's successful GETs of `digest`'s data.
    pub fn cdn_blob_fetches(&self, digest: &str) -> Result<Vec<AccessLine>> {
        let path = blob_path(digest);
        Ok(self
            .cdn_access_log()?
            .into_iter()
            .filter(|l| l.method == "GET" && l.path == path && l.status == 200)
            .collect())
    }

    /// The tail of the hub registry's application log, for messages.
    pub fn registry_log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.registry_log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Everything a failure message may need.
    pub fn diagnostics(&self) -> String {
        format!(
            "hub registry log (tail):\n{}\nhub registry access log:\n{}\n{}\ntokens issued: {:?}\nrefused: {:?}",
            self.registry_log_tail(40),
            std::fs::read_to_string(&self.registry_access_log_path).unwrap_or_default(),
            self.cdn.logs(),
            self.tokens(),
            self.token_refusals()
        )
    }

    /// The pids of the hub's processes (registry, nginx, dnsmasq).
    pub fn pids(&self) -> Vec<u32> {
        [
            self.registry_proc.as_ref().and_then(Proc::pid),
            self.cdn.pid(),
            self.resolver.pid(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl Drop for Hub<'_> {
    fn drop(&mut self) {
        self.resolver.stop();
        if let Some(mut p) = self.registry_proc.take() {
            p.stop(Duration::from_secs(5));
        }
        self.cdn.stop();
        self.token.stop();
        // `addresses` goes with the fields, after this.
    }
}

/// Addresses added to the upstream host's interface; removed on drop,
/// exactly those that were added.
struct Addresses {
    ns: String,
    dev: String,
    added: Vec<String>,
}

impl Addresses {
    fn add(site: &Site, addrs: &[Ipv4Addr]) -> Result<Self> {
        let mut me = Self {
            ns: site.up_ns.clone(),
            dev: site.up_if.clone(),
            added: Vec::new(),
        };
        for a in addrs {
            // /24 like the Registry's: on-link for the gateway's 10.77.2.1.
            let cidr = format!("{a}/24");
            ip_in(&me.ns, &["addr", "add", &cidr, "dev", &me.dev])?;
            me.added.push(cidr);
        }
        Ok(me)
    }
}

impl Drop for Addresses {
    fn drop(&mut self) {
        for cidr in self.added.drain(..) {
            if let Err(e) = ip_in(&self.ns, &["addr", "del", &cidr, "dev", &self.dev]) {
                eprintln!("warning: removing {cidr} from {}: {e:#}", self.dev);
            }
        }
    }
}

/// Fails unless the gateway namespace's hosts file names the hub: a
/// gateway would otherwise fail to reach upstream with a less clear error.
fn check_gateway_hosts(site: &Site) -> Result<()> {
    let path = Path::new("/etc/netns").join(&site.gw_ns).join("hosts");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let missing: Vec<String> = host_entries()
        .into_iter()
        .filter(|(name, a)| {
            !text.lines().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(a.as_str()) && words.any(|w| w == name)
            })
        })
        .map(|(name, a)| format!("{a} {name}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks {missing:?}: start the Registry with `Registry::start_with(site, opts, hub::etc_options())`",
            path.display()
        );
    }
    Ok(())
}
