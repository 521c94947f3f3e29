//! The benchmark's world: a [`Site`] (device, gateway and upstream
//! namespaces), the origin registry in the upstream namespace, a second
//! device↔gateway link for the peers, and the gateway under test.
//!
//! ```text
//!  {P}-dev                       {P}-gw                                   {P}-up
//!  {P}d0 10.77.1.2  ──────────  {P}g0 10.77.1.1  (guarded: TC program)
//!  {P}d1 10.77.3.2  ──────────  {P}g2 10.77.3.1  nginx :443           (unguarded peer link)
//!                                     10.77.3.11 distribution :443
//!                                     10.77.3.12 dnsmasq :53
//!                               {P}g1 10.77.2.1  ──────────────────  {P}u0 10.77.2.2 (manager, iperf3)
//!                                                                           10.77.2.3 origin registry :443
//! ```
//!
//! The peers listen on the gateway namespace's own addresses on a link the
//! gateway does not guard, so devices reach them exactly as they reach the
//! gateway: one veth hop, the same namespaces, the same CPU. Nothing is
//! forwarded: the gateway namespace still has no default route and IP
//! forwarding stays off. Every address is one of the site's own; the
//! peer link is created inside the namespaces and deleted on drop.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    config::GatewayConfig,
    gateway::Gateway,
    netns::{in_ns, ip_in},
    registry::{HOST, Registry, oci_gateway},
    site::{Site, addr, v4},
};

/// The peers' side of the peer link (nginx listens here).
pub const PEER_NGINX: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 1);
/// A second address on the peer link for the distribution pull-through cache.
pub const PEER_DISTRIBUTION: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 11);
/// A third address on the peer link: dnsmasq, the DNS section's peer.
pub const PEER_DNSMASQ: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 12);
/// The device's side of the peer link.
pub const PEER_DEVICE: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 2);
/// The passthrough benchmark's manager port (iperf3 listens there).
pub const IPERF_PORT: u16 = 5201;

/// The peer link; deleted (both ends) on drop.
pub struct PeerLink {
    dev_ns: String,
    pub dev_if: String,
    pub gw_if: String,
}

impl PeerLink {
    pub fn create(site: &Site) -> Result<Self> {
        let dev_if = format!("{}d1", site.prefix);
        let gw_if = format!("{}g2", site.prefix);
        crate::netns::ip(&[
            "link",
            "add",
            &dev_if,
            "netns",
            &site.dev_ns,
            "type",
            "veth",
            "peer",
            "name",
            &gw_if,
            "netns",
            &site.gw_ns,
        ])?;
        let link = Self {
            dev_ns: site.dev_ns.clone(),
            dev_if,
            gw_if,
        };
        ip_in(
            &site.dev_ns,
            &[
                "addr",
                "add",
                &format!("{PEER_DEVICE}/24"),
                "dev",
                &link.dev_if,
            ],
        )?;
        for a in [PEER_NGINX, PEER_DISTRIBUTION, PEER_DNSMASQ] {
            ip_in(
                &site.gw_ns,
                &["addr", "add", &format!("{a}/24"), "dev", &link.gw_if],
            )?;
        }
        ip_in(&site.dev_ns, &["link", "set", &link.dev_if, "up"])?;
        ip_in(&site.gw_ns, &["link", "set", &link.gw_if, "up"])?;
        wait_up(&site.dev_ns, &link.dev_if)?;
        wait_up(&site.gw_ns, &link.gw_if)?;
        Ok(link)
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        if let Err(e) = ip_in(&self.dev_ns, &["link", "del", &self.dev_if]) {
            eprintln!("warning: deleting {}: {e:#}", self.dev_if);
        }
    }
}

fn wait_up(ns: &str, dev: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let link = crate::netns::ip_json(ns, &["link", "show", "dev", dev])?;
        if link[0]["operstate"] == "UP" {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{dev} in {ns} not up: {link}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Per-namespace sysctls for many short connections from one address (the
/// handshake benchmark): TIME_WAIT reuse and a wide port range. Only the
/// benchmark's own namespaces are touched.
pub fn tune_client_ns(ns: &str) -> Result<()> {
    in_ns(ns, || -> Result<()> {
        for (path, value) in [
            ("/proc/sys/net/ipv4/tcp_tw_reuse", "1"),
            ("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000"),
        ] {
            std::fs::write(path, value).with_context(|| format!("writing {path} in {ns}"))?;
        }
        Ok(())
    })?
}

/// Bytes received so far on `dev` in `ns` (`ip -s link`): what came from
/// upstream, in-flight transfers included.
pub fn rx_bytes(ns: &str, dev: &str) -> Result<u64> {
    let v = crate::netns::ip_json(ns, &["-s", "link", "show", "dev", dev])?;
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .with_context(|| format!("no rx bytes for {dev} in {ns}: {v}"))
}

/// The gateway under test, configured for the origin registry (and
/// optionally many more site names), with its site CA exported to a file
/// devices trust.
pub struct BenchGateway<'s> {
    pub gw: Gateway<'s>,
    /// The site CA (what device clients trust).
    pub site_ca: PathBuf,
    pub cache_dir: PathBuf,
    /// Every site host configured.
    pub hosts: Vec<String>,
}

/// `cache:` keys besides `dir` and `max_size`: tags fresh for five
/// minutes, so that the sections measure cached tags, not revalidations.
const DEFAULT_CACHE_KEYS: &str = "  tag_ttl: \"5m\"\n";

/// Site hosts of the many-names configuration: `h<i>.bench.test`.
pub fn bench_host(i: usize) -> String {
    format!("h{i}.bench.test")
}

impl<'s> BenchGateway<'s> {
    /// Writes the config (the origin registry as a site, plus `extra_hosts`
    /// more names served from it), creates the site CA for exactly those
    /// names, starts the gateway and exports the CA.
    pub fn start(
        site: &'s Site,
        registry: &Registry<'_>,
        extra_hosts: usize,
        dir: &Path,
    ) -> Result<Self> {
        Self::start_inner(site, registry, extra_hosts, dir, DEFAULT_CACHE_KEYS)
    }

    /// The origin registry as the one site, with `cache_keys` (YAML lines
    /// under `cache:`, indented two spaces) instead of the default
    /// `tag_ttl: 5m`.
    pub fn start_with_cache(
        site: &'s Site,
        registry: &Registry<'_>,
        dir: &Path,
        cache_keys: &str,
    ) -> Result<Self> {
        Self::start_inner(site, registry, 0, dir, cache_keys)
    }

    fn start_inner(
        site: &'s Site,
        registry: &Registry<'_>,
        extra_hosts: usize,
        dir: &Path,
        cache_keys: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let cache_dir = dir.join("cache");
        let ca_dir = dir.join("ca");
        let mut hosts = vec![HOST.to_owned()];
        hosts.extend((0..extra_hosts).map(bench_host));
        let mut config = GatewayConfig::for_site(site);
        // iperf3 on the upstream host is a second manager address, so its
        // flows take the passthrough path.
        config.manager_addresses.push(v4(addr::UP_V4, IPERF_PORT));
        // Section (f) holds thousands of connections from the one device:
        // the per-device cap (256 by default) would refuse most of them.
        config.max_connections = Some((65_536, 65_536));
        config.extra_yaml = gateway_yaml(registry, &hosts, &ca_dir, &cache_dir, cache_keys);
        let mut gw = Gateway::prepare(site, config)?;
        let init = oci_gateway::cli(&gw, &["ca", "init", "--force"])?;
        if !init.success() {
            bail!(
                "`gateway ca init` failed ({}): {}",
                init.status,
                init.stderr.trim()
            );
        }
        gw.restart().context("starting the gateway")?;
        let pem = oci_gateway::ca_export(&gw)?;
        let site_ca = dir.join("site-ca.pem");
        std::fs::write(&site_ca, pem)?;
        Ok(Self {
            gw,
            site_ca,
            cache_dir,
            hosts,
        })
    }

    pub fn pid(&self) -> Result<u32> {
        self.gw.pid().context("the gateway is not running")
    }

    /// Stops the gateway cleanly, empties its cache and starts it again:
    /// the next pull of any blob is cold.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.stop()?;
        if self.cache_dir.exists() {
            std::fs::remove_dir_all(&self.cache_dir)
                .with_context(|| format!("emptying {}", self.cache_dir.display()))?;
        }
        self.gw.restart().context("restarting the gateway")
    }

    /// Restarts the gateway, keeping its cache (fresh process: idle memory).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.gw.restart().context("restarting the gateway")
    }

    /// SIGTERM: the gateway exits; its program keeps guarding until the
    /// next start adopts it.
    pub fn stop(&mut self) -> Result<()> {
        if self.gw.is_running() {
            let status = self.gw.sigterm(Duration::from_secs(20))?;
            if !status.success() {
                eprintln!(
                    "warning: gateway exited with {status}; stderr tail:\n{}",
                    self.gw.stderr_tail(20)
                );
            }
        }
        Ok(())
    }
}

impl Drop for BenchGateway<'_> {
    fn drop(&mut self) {
        // A clean stop detaches the program; the Gateway's own drop would
        // SIGKILL and leave the pins to the site's bpffs teardown.
        let _ = self.stop();
    }
}

/// The `tls`, `sites` and `cache` keys: every host is an OCI site whose
/// upstream is the origin registry.
fn gateway_yaml(
    registry: &Registry<'_>,
    hosts: &[String],
    ca_dir: &Path,
    cache_dir: &Path,
    cache_keys: &str,
) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let p = |p: &Path| q(&p.to_string_lossy());
    let mut y = format!(
        "tls:\n  ca_dir: {}\n  leaf_cache: {}\nsites:\n",
        p(ca_dir),
        hosts.len().max(1024)
    );
    for host in hosts {
        y.push_str(&format!(
            "  - host: {}\n    kind: \"oci\"\n    upstream: {}\n    ca_file: {}\n",
            q(host),
            q(&registry.url()),
            p(&registry.ca_pem)
        ));
    }
    y.push_str(&format!(
        "cache:\n  dir: {}\n  max_size: \"40GiB\"\n{cache_keys}",
        p(cache_dir)
    ));
    y
}

/// Waits until something accepts TCP on `addr` from namespace `ns`.
pub fn wait_listening(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let up = in_ns(ns, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if up {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("nothing listening on {addr} in {ns} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
