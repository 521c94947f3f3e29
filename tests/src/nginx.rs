//! nginx as a static file server in a site namespace: the origin of
//! `files` and `helm` sites, and the hub's CDN ([`crate::hub::cdn`]).
//!
//! One `server` block: TLS on `addr:443` (a certificate under a test CA
//! the gateway trusts through a site's `ca_file`, [`TlsFiles::generate`])
//! and/or plain HTTP on `addr:80`, the given server names, a document
//! root, and extra `location` blocks a test writes for its own headers
//! (`add_header Cache-Control no-store;`) or refusals. nginx adds `ETag`
//! and `Last-Modified` to static files and answers conditional requests
//! and ranges itself, as real download servers do.
//!
//! Its access log (combined format, one line per request,
//! [`crate::registry::access_log`]) tells the tests what reached the
//! origin. nginx runs in the foreground (`daemon off`) through `ip netns
//! exec`, which execs in place, so the pid is nginx's master; stopping
//! kills it and its workers by pid. Every file it writes (config, pid,
//! logs, temp dirs) is in its own directory.
//!
//! The address is the caller's: [`SiteAddress`] adds one to the upstream
//! namespace's link and removes it on drop; names resolve for the gateway
//! through its namespace's hosts file, which whoever builds the site's
//! `/etc/netns` writes (e.g. [`crate::registry::EtcOptions::gateway_hosts`]).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    bench::{proc::Proc, world::wait_listening},
    netns::ip_in,
    registry::{
        access_log::{self, AccessLine},
        certs,
    },
    site::{Site, addr},
};

/// How long nginx may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A server certificate (PEM) and its key.
#[derive(Clone, Debug)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate for the server names under a fresh test CA.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA (PEM): the gateway's `ca_file` for the site.
    pub ca_pem: PathBuf,
    pub server: ServerCert,
}

impl TlsFiles {
    /// Writes a fresh CA and a certificate for `names` into `dir`.
    pub fn generate(dir: &Path, names: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = certs::server_pki(names)?;
        let files = Self {
            ca_pem: dir.join("ca.pem"),
            server: ServerCert {
                cert: dir.join("server.pem"),
                key: dir.join("server.key"),
            },
        };
        std::fs::write(&files.ca_pem, &pki.ca_pem)?;
        std::fs::write(&files.server.cert, &pki.cert_pem)?;
        std::fs::write(&files.server.key, &pki.key_pem)?;
        Ok(files)
    }
}

/// What one nginx serves.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    /// In messages and the process label (`nginx (<label>)`).
    pub label: String,
    pub addr: Ipv4Addr,
    /// `server_name`s.
    pub server_names: Vec<String>,
    /// The document root.
    pub root: PathBuf,
    /// Listen on `addr:443` with this certificate.
    pub tls: Option<ServerCert>,
    /// Listen on `addr:80` too.
    pub plain: bool,
    /// Verbatim inside the `server` block after `root`: `location` blocks
    /// for headers, refusals or redirects. Empty: every file under `root`
    /// is served.
    pub locations: String,
}

impl NginxConfig {
    /// TLS on `addr:443` only, no extra locations.
    pub fn tls(label: &str, addr: Ipv4Addr, names: &[&str], root: &Path, tls: ServerCert) -> Self {
        Self {
            label: label.to_owned(),
            addr,
            server_names: names.iter().map(|n| n.to_string()).collect(),
            root: root.to_owned(),
            tls: Some(tls),
            plain: false,
            locations: String::new(),
        }
    }

    fn ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        if self.tls.is_some() {
            ports.push(443);
        }
        if self.plain {
            ports.push(80);
        }
        ports
    }

    /// nginx.conf, every path inside `dir`. Workers run as root because
    /// the roots tests use live in the site's temp dir (mode 0700).
    fn render(&self, dir: &Path) -> String {
        let d = dir.display();
        let mut listen = String::new();
        if let Some(tls) = &self.tls {
            listen.push_str(&format!(
                "        listen {}:443 ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n",
                self.addr,
                tls.cert.display(),
                tls.key.display()
            ));
        }
        if self.plain {
            listen.push_str(&format!("        listen {}:80;\n", self.addr));
        }
        format!(
            r#"worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log {d}/access.log combined;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
{listen}        server_name {names};
        root {root};
        disable_symlinks on;
{locations}
    }}
}}
"#,
            names = self.server_names.join(" "),
            root = self.root.display(),
            locations = self.locations,
        )
    }
}

/// A running nginx.
pub struct Nginx {
    proc: Option<Proc>,
    pub config: NginxConfig,
    /// Config, pid, logs, temp dirs.
    pub dir: PathBuf,
    pub access_log_path: PathBuf,
    pub error_log_path: PathBuf,
}

impl Nginx {
    /// Writes `dir/nginx.conf`, starts nginx in `ns` and waits until it
    /// listens on each of its ports.
    pub fn start(ns: &str, dir: &Path, config: NginxConfig) -> Result<Self> {
        ensure!(
            config.tls.is_some() || config.plain,
            "nginx ({}) needs TLS or plain HTTP",
            config.label
        );
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config.render(dir))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut nginx = Self {
            proc: None,
            dir: dir.to_owned(),
            access_log_path: dir.join("access.log"),
            error_log_path: dir.join("error.log"),
            config,
        };
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = crate::netns::exec_in(ns, "nginx");
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&nginx.error_log_path)
            .args(["-g", "daemon off;"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proc = Proc::spawn(&format!("nginx ({})", nginx.config.label), &mut cmd)?;
        for port in nginx.config.ports() {
            let at = SocketAddr::from((nginx.config.addr, port));
            if let Err(e) = wait_listening(ns, at, READY_TIMEOUT) {
                let _ = proc.check_running();
                return Err(e.context(format!(
                    "nginx ({}) did not start\n{}",
                    nginx.config.label,
                    nginx.logs()
                )));
            }
        }
        nginx.proc = Some(proc);
        Ok(nginx)
    }

    /// Every request nginx served so far (a line is written when the
    /// response is done).
    pub fn access_log(&self) -> Result<Vec<AccessLine>> {
        let text = match std::fs::read_to_string(&self.access_log_path) {
            Ok(t) => t,
            // Nothing served yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {}", self.access_log_path.display()));
            }
        };
        Ok(access_log::parse(&text))
    }

    /// Requests with `method` for `path` (without query) that came from
    /// the gateway's upstream address (10.77.2.1).
    pub fn requests_from_gateway(&self, method: &str, path: &str) -> Result<Vec<AccessLine>> {
        let gw = addr::GW_UP_V4.to_string();
        Ok(self
            .access_log()?
            .into_iter()
            .filter(|l| l.remote == gw && l.method == method && l.path == path)
            .collect())
    }

    /// nginx's error log and stderr, for messages.
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "nginx ({}) error.log:\n{}\nnginx stderr:\n{}",
            self.config.label,
            read(&self.error_log_path),
            read(&self.dir.join("stderr.log"))
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An extra address (`/24`) on the upstream namespace's link to the
/// gateway, for a server of its own; removed on drop.
pub struct SiteAddress<'s> {
    site: &'s Site,
    pub addr: Ipv4Addr,
}

impl<'s> SiteAddress<'s> {
    /// Adds `addr/24` to `{P}u0` (it must be in 10.77.2.0/24, the
    /// gateway's upstream subnet, and not used by anything else of the
    /// test: the registry has 10.77.2.3).
    pub fn add(site: &'s Site, addr: Ipv4Addr) -> Result<Self> {
        ip_in(
            &site.up_ns,
            &["addr", "add", &format!("{addr}/24"), "dev", &site.up_if],
        )?;
        Ok(Self { site, addr })
    }
}

impl Drop for SiteAddress<'_> {
    fn drop(&mut self) {
        let _ = ip_in(
            &self.site.up_ns,
            &[
                "addr",
                "del",
                &format!("{}/24", self.addr),
                "dev",
                &self.site.up_if,
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_listens_where_asked() {
        let mut c = NginxConfig {
            label: "t".into(),
            addr: Ipv4Addr::new(10, 77, 2, 5),
            server_names: vec!["a.example.test".into(), "b.example.test".into()],
            root: PathBuf::from("/srv/www"),
            tls: None,
            plain: true,
            locations: "        location /x/ { add_header Cache-Control no-store; }\n".into(),
        };
        let text = c.render(Path::new("/tmp/n"));
        assert!(text.contains("listen 10.77.2.5:80;"), "{text}");
        assert!(!text.contains(":443"), "{text}");
        assert!(text.contains("server_name a.example.test b.example.test;"));
        assert!(text.contains("add_header Cache-Control no-store;"));
        assert_eq!(c.ports(), vec![80]);
        c.tls = Some(ServerCert {
            cert: "/cert.pem".into(),
            key: "/key.pem".into(),
        });
        let text = c.render(Path::new("/tmp/n"));
        assert!(text.contains("listen 10.77.2.5:443 ssl;"), "{text}");
        assert!(text.contains("ssl_certificate /cert.pem;"));
        assert_eq!(c.ports(), vec![443, 80]);
    }
}
