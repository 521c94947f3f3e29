//! A real corporate proxy: Debian's Squid in the site's upstream
//! namespace, `squid -N -f <conf>` with a minimal config of the test's own
//! (basic auth through `basic_ncsa_auth` and an htpasswd file the harness
//! writes, CONNECT to port 443 only, nothing cached, its logs and pid file
//! in its own directory).
//!
//! ```text
//!  {P}-up: {P}u0 10.77.2.2:3128  squid (the upstream host's own address)
//! ```
//!
//! Squid resolves origin names through a hosts file of its own
//! (`hosts_file`), so the upstream namespace's `/etc` is left alone; the
//! DNS queries it still tries go to 127.0.0.1 of the namespace (nothing
//! answers), never to the machine's resolver.
//!
//! Squid drops root for the `proxy` user once it has read its config, so
//! its directory is one of its own under the system temp dir (the site's
//! temp dir is root's, mode 0700), owned by `proxy`. Dropping a [`Squid`]
//! kills it by pid (its auth helper exits when its stdin closes) and
//! removes the directory.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use crate::{netns::in_ns, site::Site};

/// Where Squid listens: the upstream host's address, a port of its own.
pub const ADDR_V4: Ipv4Addr = crate::site::addr::UP_V4;
pub const PORT: u16 = 3128;
/// How long Squid may take to listen (slow under TCG).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Squid's auth helper, from the `squid` package.
const BASIC_NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";

/// One line of Squid's access log (its native format).
#[derive(Clone, Debug)]
pub struct AccessLine {
    /// `TCP_TUNNEL/200`, `TCP_DENIED/407`.
    pub result: String,
    /// `CONNECT`.
    pub method: String,
    /// `registry-1.docker.io:443`.
    pub target: String,
    /// The authenticated user, `-` for none.
    pub user: String,
}

/// A running Squid.
pub struct Squid {
    child: Option<Child>,
    dir: TempDir,
}

impl Squid {
    /// Writes the config, an htpasswd file holding `user`/`password` and a
    /// hosts file of `hosts` (name, address), starts Squid and waits until
    /// it accepts connections.
    pub fn start(
        site: &Site,
        user: &str,
        password: &str,
        hosts: &[(String, String)],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-squid-", site.prefix))
            .tempdir()
            .context("creating squid's directory")?;
        let proxy_user = nix::unistd::User::from_name("proxy")
            .context("looking up the `proxy` user")?
            .context("no `proxy` user: is Debian's squid installed (cargo xtask setup)?")?;
        if !Path::new(BASIC_NCSA_AUTH).exists() {
            bail!("{BASIC_NCSA_AUTH} is missing: install Debian's squid (cargo xtask setup)");
        }
        let path = |name: &str| dir.path().join(name);
        let hash = bcrypt::hash(password, 4).context("hashing the proxy password")?;
        std::fs::write(path("htpasswd"), format!("{user}:{hash}\n"))?;
        let hosts_text: String = hosts.iter().map(|(n, a)| format!("{a} {n}\n")).collect();
        std::fs::write(path("hosts"), hosts_text)?;
        std::fs::write(path("squid.conf"), config(dir.path()))?;
        for name in ["htpasswd", "hosts", "squid.conf"] {
            std::fs::set_permissions(path(name), std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        nix::unistd::chown(dir.path(), Some(proxy_user.uid), Some(proxy_user.gid))
            .context("handing squid's directory to the proxy user")?;

        let stdout = File::create(path("squid.stdout"))?;
        let stderr = File::create(path("squid.stderr"))?;
        // Entered between fork and exec: the child's pid is Squid's.
        let child = crate::netns::exec_in(&site.up_ns, "squid")
            .args(["-N", "-f"])
            .arg(path("squid.conf"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("spawning squid")?;
        let mut squid = Self {
            child: Some(child),
            dir,
        };
        squid.wait_ready(&site.up_ns)?;
        Ok(squid)
    }

    fn wait_ready(&mut self, ns: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let target = SocketAddr::from((ADDR_V4, PORT));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "squid exited ({status}) before it listened\n{}",
                    self.diagnostics()
                );
            }
            let up = in_ns(ns, || {
                TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "squid not listening on {target} after {READY_TIMEOUT:?}\n{}",
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://10.77.2.2:3128`, as the gateway's `upstream_proxy.url`.
    pub fn url(&self) -> String {
        format!("http://{ADDR_V4}:{PORT}")
    }

    /// The access log so far. Squid writes a line when a transaction
    /// ends: for a tunnel, when it closes.
    pub fn access_log(&self) -> Result<Vec<AccessLine>> {
        let text = match std::fs::read_to_string(self.dir.path().join("access.log")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).context("reading squid's access log"),
        };
        // time elapsed client result bytes method url user hierarchy type
        Ok(text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() >= 8).then(|| AccessLine {
                    result: f[3].to_owned(),
                    method: f[5].to_owned(),
                    target: f[6].to_owned(),
                    user: f[7].to_owned(),
                })
            })
            .collect())
    }

    /// Waits until the access log has a line for which `pred` holds (a
    /// tunnel is logged only once it closes). Returns the whole log.
    pub fn wait_access(
        &self,
        pred: impl Fn(&AccessLine) -> bool,
        timeout: Duration,
    ) -> Result<Vec<AccessLine>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.access_log()?;
            if lines.iter().any(&pred) {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                bail!(
                    "no matching squid access log line after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Squid's logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_else(|e| format!("({e})"))
        };
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- squid access.log ---\n{}\n--- squid cache.log (tail) ---\n{}\n--- squid stderr ---\n{}",
            read("access.log"),
            tail(read("cache.log")),
            tail(read("squid.stderr")),
        )
    }

    /// Squid's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its directory (config, logs).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // By pid, never by name: other squids may run on this machine.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The whole config: every path in `dir`, nothing from /etc/squid.
fn config(dir: &Path) -> String {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    format!(
        "http_port {ADDR_V4}:{PORT}\n\
         visible_hostname proxy.test\n\
         cache_effective_user proxy\n\
         pid_filename {pid}\n\
         access_log stdio:{access}\n\
         cache_log {cache}\n\
         cache_store_log none\n\
         logfile_rotate 0\n\
         coredump_dir {dir}\n\
         netdb_filename none\n\
         pinger_enable off\n\
         shutdown_lifetime 1 seconds\n\
         cache deny all\n\
         cache_mem 8 MB\n\
         hosts_file {hosts}\n\
         dns_nameservers 127.0.0.1\n\
         auth_param basic program {BASIC_NCSA_AUTH} {htpasswd}\n\
         auth_param basic children 1 startup=1 idle=1\n\
         auth_param basic realm margo-test-proxy\n\
         acl tunnel method CONNECT\n\
         acl tls_port port 443\n\
         acl users proxy_auth REQUIRED\n\
         http_access deny !tunnel\n\
         http_access deny !tls_port\n\
         http_access allow users\n\
         http_access deny all\n",
        pid = p("squid.pid"),
        access = p("access.log"),
        cache = p("cache.log"),
        dir = dir.display(),
        hosts = p("hosts"),
        htpasswd = p("htpasswd"),
    )
}
