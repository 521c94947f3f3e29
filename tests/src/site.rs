//! A site: device, gateway and upstream namespaces joined by veth pairs.
//!
//! ```text
//!  {P}-dev                 {P}-gw                          {P}-up
//!  {P}d0 10.77.1.2  ───  {P}g0 10.77.1.1                  (manager, services)
//!        fd77:1::2         fd77:1::1
//!                          {P}g1 10.77.2.1  ─────────  {P}u0 10.77.2.2
//!                                fd77:2::1                   fd77:2::2
//!                                                      lo    10.77.9.9/32
//! ```
//!
//! The gateway namespace has no default route and forwarding stays off, so a
//! packet the gateway fails to catch dies there. Veths are created directly
//! inside the namespaces: nothing ever appears in the root namespace.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use crate::{
    netns::{in_ns, ip, ip_batch, ip_batch_in, ip_in, ns_path},
    servers::Servers,
};

/// The site's addresses. Every test sends traffic only to these.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const DEV_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
    pub const DEV_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 2);
    pub const GW_DEV_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    pub const GW_DEV_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);
    pub const GW_UP_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
    pub const GW_UP_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 1);
    /// The upstream host: manager and plain services.
    pub const UP_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
    pub const UP_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 2);
    /// Exists (on the upstream host's lo) but the gateway has no route to it.
    pub const UNROUTED_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 9);

    /// The manager's TCP port (TLS, passed through).
    pub const MANAGER_PORT: u16 = 443;
    /// Plain TCP services that answer `open\n`: reachable only by a bypass.
    pub const SERVICE_PORTS: [u16; 2] = [8080, 22];
    /// UDP echo on the upstream host.
    pub const UDP_ECHO_PORT: u16 = 5353;
}

/// Per-process counter that makes each site's prefix unique.
static NEXT_SITE: AtomicU32 = AtomicU32::new(0);

/// A site's network world; dropping it removes everything it created.
///
/// Field order is drop order: servers (threads inside the namespaces) end
/// first, so that nothing holds the namespaces alive when they are deleted.
pub struct Site {
    /// Upstream servers and their counters.
    pub servers: Servers,
    namespaces: Vec<NetnsGuard>,
    bpffs: BpffsGuard,
    tmp: TempDir,
    /// `mg` + 6 hex digits, unique per process and site.
    pub prefix: String,
    pub dev_ns: String,
    pub gw_ns: String,
    pub up_ns: String,
    /// Device side of the device link.
    pub dev_if: String,
    /// Gateway side of the device link: the interface the gateway guards.
    pub gw_dev_if: String,
    /// Gateway side of the upstream link.
    pub gw_up_if: String,
    /// Upstream side of the upstream link.
    pub up_if: String,
    /// The site's own bpffs instance; gateways pin under it.
    pub bpffs_dir: PathBuf,
}

impl Site {
    /// Builds a fresh topology named after `name` (used only in messages)
    /// and starts the upstream servers.
    pub fn new(name: &str) -> Result<Self> {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| {
            for (prefix, pid) in sweep_stale_sites() {
                eprintln!("removed test site {prefix} left by process {pid}, which is gone");
            }
        });
        let prefix = unique_prefix()?;
        let run_dir = PathBuf::from("/run").join(&prefix);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{prefix}-{name}-"))
            .tempdir()
            .context("creating the site's temp dir")?;
        let bpffs = BpffsGuard::mount(run_dir)?;

        let dev_ns = format!("{prefix}-dev");
        let gw_ns = format!("{prefix}-gw");
        let up_ns = format!("{prefix}-up");
        let namespaces = NetnsGuard::add_all(&[&dev_ns, &gw_ns, &up_ns])?;
        let bpffs_dir = bpffs.mount_point.clone();
        let mut site = Site {
            servers: Servers::default(),
            namespaces,
            bpffs,
            tmp,
            dev_if: format!("{prefix}d0"),
            gw_dev_if: format!("{prefix}g0"),
            gw_up_if: format!("{prefix}g1"),
            up_if: format!("{prefix}u0"),
            prefix,
            dev_ns,
            gw_ns,
            up_ns,
            bpffs_dir,
        };
        site.build_links()
            .with_context(|| format!("building site {name} ({})", site.prefix))?;
        site.servers = Servers::start(&site.up_ns)?;
        Ok(site)
    }

    fn build_links(&self) -> Result<()> {
        // No duplicate address detection: addresses are usable at once, and
        // the link-local ones used by neighbour discovery never sit tentative.
        for ns in [&self.dev_ns, &self.gw_ns, &self.up_ns] {
            in_ns(ns, || -> Result<()> {
                for conf in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
                    std::fs::write(&path, "0").with_context(|| format!("writing {path}"))?;
                }
                Ok(())
            })??;
        }
        // Both ends of each veth are created inside their namespaces by
        // one netlink call, both veths by one `ip` process; after the
        // accept_dad defaults above, so that their link-local addresses
        // never sit tentative either.
        ip_batch(&[
            &[
                "link",
                "add",
                &self.dev_if,
                "netns",
                &self.dev_ns,
                "type",
                "veth",
                "peer",
                "name",
                &self.gw_dev_if,
                "netns",
                &self.gw_ns,
            ],
            &[
                "link",
                "add",
                &self.gw_up_if,
                "netns",
                &self.gw_ns,
                "type",
                "veth",
                "peer",
                "name",
                &self.up_if,
                "netns",
                &self.up_ns,
            ],
        ])?;
        let plan: [(&str, &str, &str, &str); 4] = [
            (&self.dev_ns, &self.dev_if, "10.77.1.2/24", "fd77:1::2/64"),
            (&self.gw_ns, &self.gw_dev_if, "10.77.1.1/24", "fd77:1::1/64"),
            (&self.gw_ns, &self.gw_up_if, "10.77.2.1/24", "fd77:2::1/64"),
            (&self.up_ns, &self.up_if, "10.77.2.2/24", "fd77:2::2/64"),
        ];
        // One `ip` process per namespace (see `ip_batch_in`).
        for ns in [&self.dev_ns, &self.gw_ns, &self.up_ns] {
            let mut commands: Vec<Vec<&str>> = vec![vec!["link", "set", "lo", "up"]];
            for (_, dev, v4, v6) in plan.iter().filter(|(n, ..)| n == ns) {
                commands.push(vec!["addr", "add", v4, "dev", dev]);
                commands.push(vec!["addr", "add", v6, "dev", dev, "nodad"]);
                commands.push(vec!["link", "set", dev, "up"]);
            }
            if ns == &self.up_ns {
                commands.push(vec!["addr", "add", "10.77.9.9/32", "dev", "lo"]);
            }
            if ns == &self.dev_ns {
                // Only the device has default routes; the gateway must have
                // none. Their next hops are on the link just set up (with
                // addresses that never sit tentative), so they need no
                // carrier yet.
                commands.push(vec!["route", "add", "default", "via", "10.77.1.1"]);
                commands.push(vec!["route", "add", "default", "via", "fd77:1::1"]);
            }
            let refs: Vec<&[&str]> = commands.iter().map(Vec::as_slice).collect();
            ip_batch_in(ns, &refs)?;
        }
        for (ns, dev) in plan.iter().map(|(ns, dev, _, _)| (*ns, *dev)) {
            wait_link_ready(ns, dev)?;
        }
        Ok(())
    }

    /// Where gateways of this site pin their maps and programs
    /// (`kernel.pin_path`).
    pub fn pin_path(&self) -> PathBuf {
        self.bpffs_dir.join("gw")
    }

    /// `curl` of an HTTP `url` from the gateway namespace (the admin
    /// listener): (status, body). Panics if curl fails, as a test would.
    pub fn curl_in_gw(&self, url: &str) -> (u16, String) {
        let out = crate::netns::exec_in(&self.gw_ns, "curl")
            .args(["-sS", "--max-time", "5"])
            .args(["-w", "\n%{http_code}", url])
            .output()
            .unwrap_or_else(|e| panic!("running curl {url}: {e}"));
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl {url}: no status in {text:?}"));
        (code, body.to_owned())
    }

    /// The site's scratch directory (configs, audit logs, state).
    pub fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The manager's addresses, as the gateway's config lists them.
    pub fn manager_addrs(&self) -> [SocketAddr; 2] {
        [
            SocketAddr::new(IpAddr::V4(addr::UP_V4), addr::MANAGER_PORT),
            SocketAddr::new(IpAddr::V6(addr::UP_V6), addr::MANAGER_PORT),
        ]
    }

    /// Makes sure the device has resolved the gateway's link-layer address,
    /// so that a burst of packets is not cut short by the neighbour queue
    /// (which holds only a few packets while resolution is pending).
    pub fn warm_neighbors(&self) -> Result<()> {
        let targets = [IpAddr::V4(addr::GW_DEV_V4), IpAddr::V6(addr::GW_DEV_V6)];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut missing = Vec::new();
            for target in targets {
                if !self.device_knows_neighbor(target)? {
                    missing.push(target);
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("device never resolved neighbours {missing:?}");
            }
            // A TCP SYN to the gateway's own address on a port that is not
            // intercepted: it triggers resolution, is dropped (or refused
            // without a gateway) and reaches no upstream server.
            in_ns(&self.dev_ns, || {
                for target in &missing {
                    let _ = std::net::TcpStream::connect_timeout(
                        &SocketAddr::new(*target, 9),
                        Duration::from_millis(200),
                    );
                }
            })?;
        }
    }

    fn device_knows_neighbor(&self, target: IpAddr) -> Result<bool> {
        let fam = if target.is_ipv4() { "-4" } else { "-6" };
        let text = ip_in(
            &self.dev_ns,
            &[
                fam,
                "neigh",
                "show",
                &target.to_string(),
                "dev",
                &self.dev_if,
            ],
        )?;
        Ok(text.contains("lladdr"))
    }
}

/// A veth pair between two namespaces made by [`Site::link`]: `a` holds
/// `10.77.{net}.1/24` and `fd77:{net}::1/64`, `b` the `.2` / `::2`.
/// It goes when either namespace is deleted.
#[derive(Debug, Clone)]
pub struct Link {
    pub a_ns: String,
    pub a_if: String,
    pub a_v4: Ipv4Addr,
    pub b_ns: String,
    pub b_if: String,
    pub b_v4: Ipv4Addr,
}

impl Link {
    /// Takes `a`'s end down: packets between the two are dropped (what a
    /// cut cable does), nothing is refused.
    pub fn cut(&self) -> Result<()> {
        ip_in(&self.a_ns, &["link", "set", &self.a_if, "down"]).map(drop)
    }

    /// Brings `a`'s end up again and waits until it carries traffic.
    pub fn restore(&self) -> Result<()> {
        ip_in(&self.a_ns, &["link", "set", &self.a_if, "up"])?;
        wait_link_ready(&self.a_ns, &self.a_if)
    }
}

impl Site {
    /// A further namespace `{P}-{suffix}` (loopback up, no DAD), deleted
    /// with the site: for servers that need a host of their own (a store
    /// node, a second gateway). `suffix` is short (a few ASCII letters or
    /// digits) and not `dev`, `gw` or `up`.
    pub fn add_namespace(&mut self, suffix: &str) -> Result<String> {
        let name = format!("{}-{suffix}", self.prefix);
        if ns_path(&name).exists() {
            bail!("namespace {name} exists already");
        }
        self.namespaces.extend(NetnsGuard::add_all(&[&name])?);
        in_ns(&name, || -> Result<()> {
            for conf in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
                std::fs::write(&path, "0").with_context(|| format!("writing {path}"))?;
            }
            Ok(())
        })??;
        ip_in(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Joins namespaces `a` and `b` (this site's or another's) by a veth
    /// pair on subnet `10.77.{net}.0/24` (and `fd77:{net}::/64`), named
    /// after this site's prefix, and waits until both ends carry traffic.
    /// `net` must be unique among the links of this site, and not 1, 2 or
    /// 9 (the site's own subnets). No route is added: each end reaches
    /// only the other, unless the caller routes more over it.
    pub fn link(&self, a: &str, b: &str, net: u8) -> Result<Link> {
        if matches!(net, 0 | 1 | 2 | 9) {
            bail!("subnet 10.77.{net}.0/24 is the site's own or invalid");
        }
        let a_if = format!("{}a{net}", self.prefix);
        let b_if = format!("{}b{net}", self.prefix);
        ip_batch(&[&[
            "link", "add", &a_if, "netns", a, "type", "veth", "peer", "name", &b_if, "netns", b,
        ]])?;
        for (ns, dev, host) in [(a, &a_if, 1), (b, &b_if, 2)] {
            let v4 = format!("10.77.{net}.{host}/24");
            let v6 = format!("fd77:{net:x}::{host}/64");
            ip_batch_in(
                ns,
                &[
                    &["addr", "add", &v4, "dev", dev],
                    &["addr", "add", &v6, "dev", dev, "nodad"],
                    &["link", "set", dev, "up"],
                ],
            )?;
        }
        wait_link_ready(a, &a_if)?;
        wait_link_ready(b, &b_if)?;
        Ok(Link {
            a_ns: a.to_owned(),
            a_if,
            a_v4: Ipv4Addr::new(10, 77, net, 1),
            b_ns: b.to_owned(),
            b_if,
            b_v4: Ipv4Addr::new(10, 77, net, 2),
        })
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // Order matters: threads inside the namespaces hold them alive, and
        // the bpffs goes last so that pins outlive any program still in use.
        self.servers.stop();
        self.namespaces.clear();
        self.bpffs.release();
    }
}

/// Picks `mg` + 6 hex digits from the pid and a counter, skipping any
/// prefix whose namespaces or run dir already exist (another process's).
fn unique_prefix() -> Result<String> {
    let pid = std::process::id();
    for _ in 0..64 {
        let n = NEXT_SITE.fetch_add(1, Ordering::Relaxed);
        let mixed = (pid.wrapping_mul(0x9E37_79B9) ^ n.wrapping_mul(0x85EB_CA6B)) & 0x00FF_FFFF;
        let prefix = format!("mg{mixed:06x}");
        let taken = ["dev", "gw", "up"]
            .iter()
            .any(|s| ns_path(&format!("{prefix}-{s}")).exists())
            || Path::new("/run").join(&prefix).exists();
        if !taken {
            return Ok(prefix);
        }
    }
    bail!("no free site prefix after 64 tries")
}

/// Waits until `dev` is up with carrier and none of its addresses is
/// tentative. Asked in-process (`SIOCGIFFLAGS` and
/// `/proc/thread-self/net/if_inet6` from a thread inside `ns`): under TCG
/// each `ip` start costs more than the wait itself, and a site has four
/// links to wait for.
fn wait_link_ready(ns: &str, dev: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (flags, tentative) = in_ns(ns, || link_state(dev))??;
        // IFF_RUNNING: the kernel's operstate is UP (carrier, and the
        // link watcher has activated the queue).
        let up = flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0;
        if up && tentative.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{dev} in {ns} not ready: flags {flags:#x}, tentative addresses {tentative:?}\n{}",
                ip_in(ns, &["addr", "show", "dev", dev]).unwrap_or_else(|e| format!("{e:#}"))
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `dev`'s interface flags and its tentative IPv6 addresses, as seen by
/// the calling thread's network namespace.
fn link_state(dev: &str) -> Result<(i32, Vec<String>)> {
    use std::os::fd::AsRawFd as _;
    let sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)))
        .context("a socket to ask for interface flags")?;
    // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated
    // within IFNAMSIZ (checked), and the kernel writes only the flags.
    let flags = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        let name = dev.as_bytes();
        if name.len() >= req.ifr_name.len() {
            bail!("interface name {dev} too long");
        }
        for (d, s) in req.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error()).context(format!("SIOCGIFFLAGS {dev}"));
        }
        i32::from(req.ifr_ifru.ifru_flags)
    };
    // `address ifindex prefixlen scope flags name`, flags in hex;
    // IFA_F_TENTATIVE is 0x40.
    let table = std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .context("reading /proc/thread-self/net/if_inet6")?;
    let tentative = table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(4)?, 16).ok()?;
            (f.get(5) == Some(&dev) && flags & 0x40 != 0).then(|| f[0].to_owned())
        })
        .collect();
    Ok((flags, tentative))
}

/// A network namespace this harness created; deleted on drop (which also
/// destroys the veth ends inside it, and with them their peers).
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// `ip netns add` for each of `names` (none may exist yet), all in one
    /// `ip -batch` process. On failure, the ones that were made are
    /// deleted again.
    fn add_all(names: &[&str]) -> Result<Vec<Self>> {
        let commands: Vec<[&str; 3]> = names.iter().map(|n| ["netns", "add", n]).collect();
        let refs: Vec<&[&str]> = commands.iter().map(|c| c.as_slice()).collect();
        let made = ip_batch(&refs);
        // The names were free (`unique_prefix`): whatever exists now is ours.
        let guards: Vec<Self> = names
            .iter()
            .filter(|n| ns_path(n).exists())
            .map(|n| Self {
                name: (*n).to_owned(),
            })
            .collect();
        made?;
        Ok(guards)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // What `ip netns del` does, without a process: detach the bind
        // mount that keeps the namespace alive, remove its file.
        let path = ns_path(&self.name);
        if let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("warning: unmounting {}: {e}", path.display());
            return; // never unlink a file that may still be a live mount
        }
        if let Err(e) = std::fs::remove_file(&path) {
            eprintln!("warning: removing {}: {e}", path.display());
        }
    }
}

/// The file in a site's run dir that names the process that made it.
const OWNER_FILE: &str = "owner";

/// Removes the sites of test processes that died without cleaning up
/// (killed, or their session ended): a run dir `/run/mg??????` whose
/// `owner` pid no longer exists. Exactly what such a site made goes: its
/// namespaces (with their veths), its bpffs mount, its run dir.
/// Sites of live processes, and dirs without an owner file, are left.
/// Returns the prefixes removed, with their owner's pid.
pub fn sweep_stale_sites() -> Vec<(String, i32)> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/run") else {
        return removed;
    };
    for entry in entries.flatten() {
        let prefix = entry.file_name().to_string_lossy().into_owned();
        let is_site = prefix.len() == 8
            && prefix.starts_with("mg")
            && prefix[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !is_site {
            continue;
        }
        let run_dir = entry.path();
        let Some(pid) = std::fs::read_to_string(run_dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if !gone {
            continue;
        }
        // The three namespaces of the site, and any it added
        // (`Site::add_namespace`): every `{prefix}-*`.
        let own = format!("{prefix}-");
        let namespaces = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten();
        for ns in namespaces.map(|e| e.file_name().to_string_lossy().into_owned()) {
            if ns.starts_with(&own) {
                let _ = ip(&["netns", "del", &ns]);
            }
        }
        let mount_point = run_dir.join("bpf");
        let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(&*mount_point.to_string_lossy()))
        });
        BpffsGuard {
            run_dir,
            mount_point,
            mounted,
        }
        .release();
        removed.push((prefix, pid));
    }
    removed
}

/// A bpffs instance mounted at `/run/{P}/bpf`. A fresh instance per site
/// keeps pins from colliding between sites, and it lives in this process's
/// mount namespace, so it survives a gateway killed inside `ip netns exec`
/// (whose private sysfs would hide `/sys/fs/bpf`).
struct BpffsGuard {
    run_dir: PathBuf,
    mount_point: PathBuf,
    mounted: bool,
}

impl BpffsGuard {
    fn mount(run_dir: PathBuf) -> Result<Self> {
        std::fs::create_dir(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let mut guard = Self {
            mount_point: run_dir.join("bpf"),
            run_dir,
            mounted: false,
        };
        // Names this process, so that a later run can tell the site is
        // stale if the process dies without cleaning up.
        let owner = guard.run_dir.join(OWNER_FILE);
        std::fs::write(&owner, std::process::id().to_string())
            .with_context(|| format!("writing {}", owner.display()))?;
        std::fs::create_dir(&guard.mount_point)
            .with_context(|| format!("creating {}", guard.mount_point.display()))?;
        nix::mount::mount(
            Some("bpf"),
            &guard.mount_point,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs at {}", guard.mount_point.display()))?;
        guard.mounted = true;
        Ok(guard)
    }
}

impl BpffsGuard {
    fn release(&mut self) {
        if self.mounted {
            // Unmounting the last mount of the instance releases its pins
            // (and with them any program a killed gateway left behind).
            if let Err(e) = nix::mount::umount2(&self.mount_point, nix::mount::MntFlags::MNT_DETACH)
            {
                eprintln!("warning: unmounting {}: {e}", self.mount_point.display());
                return; // never remove files through a live mount
            }
            self.mounted = false;
        }
        // remove_dir, not remove_dir_all: only the empty dirs we made.
        let _ = std::fs::remove_dir(&self.mount_point);
        let _ = std::fs::remove_file(self.run_dir.join(OWNER_FILE));
        let _ = std::fs::remove_dir(&self.run_dir);
    }
}

impl Drop for BpffsGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// Socket address helpers for the site's fixed addresses.
pub fn v4(a: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(a), port)
}

pub fn v6(a: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(a), port)
}
