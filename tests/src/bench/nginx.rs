//! nginx as the peer docker-registry-proxy builds on: TLS with a static
//! P-256 certificate, `proxy_cache` in front of the origin registry, with
//! the cache lock (one request fills a missing entry, the others wait for
//! it) held as long as a fill takes.
//!
//! It runs in the gateway namespace on the peer link, every path (config,
//! pid, logs, temp and cache dirs) in its own directory, as a foreground
//! master (`daemon off`) whose pid is ours.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{pki::PeerPki, proc::Proc, world::wait_listening};
use crate::registry::{ADDR_V4, HOST, PORT};

pub struct Nginx {
    ns: String,
    pub dir: PathBuf,
    pub addr: Ipv4Addr,
    proc: Option<Proc>,
}

impl Nginx {
    /// Writes the config into `dir` and starts nginx in `ns`, listening on
    /// `addr:443`.
    pub fn start(
        ns: &str,
        dir: &Path,
        addr: Ipv4Addr,
        pki: &PeerPki,
        origin_ca: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("nginx.conf"), config(dir, addr, pki, origin_ca))?;
        let mut n = Self {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            addr,
            proc: None,
        };
        n.spawn()?;
        Ok(n)
    }

    fn spawn(&mut self) -> Result<()> {
        for sub in ["cache", "tmp"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        let stderr = std::fs::File::create(self.dir.join("stderr.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "nginx", "-p"])
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proc = Proc::spawn("nginx", &mut cmd)?;
        let ready = wait_listening(
            &self.ns,
            SocketAddr::from((self.addr, 443)),
            Duration::from_secs(10),
        );
        if let Err(e) = ready {
            let _ = proc.check_running();
            let log = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
            return Err(e.context(format!("nginx did not start; stderr:\n{log}")));
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// The master's pid (workers are its children).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Stops nginx, empties its cache and starts it again.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.stop();
        let cache = self.dir.join("cache");
        if cache.exists() {
            std::fs::remove_dir_all(&cache)
                .with_context(|| format!("emptying {}", cache.display()))?;
        }
        self.spawn()
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx.conf: every path inside `dir`. `proxy_cache_lock_timeout` and
/// `proxy_cache_lock_age` are raised from their 5 s defaults so that a
/// cold 1 GiB blob is fetched once, as docker-registry-proxy configures it
/// (its timeout is 880 s); with the defaults every waiting client would go
/// upstream on its own after 5 s.
fn config(dir: &Path, addr: Ipv4Addr, pki: &PeerPki, origin_ca: &Path) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes auto;
worker_rlimit_nofile 16384;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=blobs:16m max_size=40g inactive=7d use_temp_path=off;
    upstream origin {{
        server {origin}:{port};
        keepalive 32;
    }}
    server {{
        listen {addr}:443 ssl;
        server_name {host};
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /v2/ {{
            return 200 '{{}}';
        }}
        location /v2/ {{
            proxy_pass https://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {host};
            proxy_ssl_server_name on;
            proxy_ssl_name {host};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {origin_ca};
            proxy_ssl_session_reuse on;
            proxy_read_timeout 600s;
            proxy_cache blobs;
            proxy_cache_key $uri;
            proxy_cache_valid 200 7d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1h;
            proxy_cache_lock_age 1h;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"#,
        origin = ADDR_V4,
        port = PORT,
        host = HOST,
        chain = pki.chain_pem.display(),
        key = pki.key_pem.display(),
        origin_ca = origin_ca.display(),
    )
}
