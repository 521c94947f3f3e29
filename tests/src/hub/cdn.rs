//! The hub's CDN (`production.cloudflare.docker.com`): nginx serving the
//! registry's storage directory read-only over TLS. The registry's
//! `redirect` storage middleware sends blob GETs here with the storage
//! path of the blob's data (`/docker/registry/v2/blobs/sha256/ab/<hex>/data`),
//! which nginx maps onto the same directory.
//!
//! Its access log (combined format, one line per request) tells the tests
//! which blobs were fetched from the CDN, i.e. that the redirect happened.
//! nginx runs in the foreground (`daemon off`) through `ip netns exec`,
//! which execs in place, so the pid is nginx's master; stopping kills it
//! and its workers by pid.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    bench::{proc::Proc, world::wait_listening},
    registry::access_log::{self, AccessLine},
};

/// nginx serving `storage` at `addr:443` in a namespace.
pub struct Cdn {
    proc: Option<Proc>,
    pub dir: PathBuf,
    pub access_log_path: PathBuf,
    pub error_log_path: PathBuf,
}

/// The files nginx needs to start.
pub struct CdnFiles<'a> {
    /// The registry's filesystem storage root.
    pub storage: &'a Path,
    /// The TLS certificate (PEM) and key for the CDN's name.
    pub cert: &'a Path,
    pub key: &'a Path,
    pub server_name: &'a str,
}

impl Cdn {
    /// Writes `dir/nginx.conf` and starts nginx in `ns` on `addr:443`.
    pub fn start(ns: &str, addr: Ipv4Addr, dir: &Path, files: &CdnFiles<'_>) -> Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, addr, files))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut cdn = Self {
            proc: None,
            dir: dir.to_owned(),
            access_log_path: dir.join("access.log"),
            error_log_path: dir.join("error.log"),
        };
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "nginx", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&cdn.error_log_path)
            .args(["-g", "daemon off;"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proc = Proc::spawn("nginx (hub CDN)", &mut cmd)?;
        let ready = wait_listening(ns, SocketAddr::from((addr, 443)), Duration::from_secs(10));
        if let Err(e) = ready {
            let _ = proc.check_running();
            return Err(e.context(format!(
                "the hub's CDN (nginx) did not start\n{}",
                cdn.logs()
            )));
        }
        cdn.proc = Some(proc);
        Ok(cdn)
    }

    /// Every request the CDN served so far.
    pub fn access_log(&self) -> Result<Vec<AccessLine>> {
        let text = std::fs::read_to_string(&self.access_log_path)
            .with_context(|| format!("reading {}", self.access_log_path.display()))?;
        Ok(access_log::parse(&text))
    }

    /// nginx's error log and stderr, for messages.
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "nginx error.log:\n{}\nnginx stderr:\n{}",
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

impl Drop for Cdn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The storage path of a blob's data, as the redirect middleware puts it
/// in the CDN URL.
pub fn blob_path(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!(
        "/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2.min(hex.len())]
    )
}

/// nginx.conf, every path inside `dir`. Workers run as root because the
/// storage lives in the site's temp dir (mode 0700). Only blob data under
/// `/docker/registry/v2/blobs/` is served, with GET (and so HEAD); the
/// rest of the storage (repositories, uploads) answers 404, as a CDN that
/// holds blobs only.
fn config(dir: &Path, addr: Ipv4Addr, f: &CdnFiles<'_>) -> String {
    let d = dir.display();
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
        listen {addr}:443 ssl;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {storage};
        disable_symlinks on;
        location /docker/registry/v2/blobs/ {{
            limit_except GET {{
                deny all;
            }}
        }}
        location / {{
            return 404;
        }}
    }}
}}
"#,
        name = f.server_name,
        cert = f.cert.display(),
        key = f.key.display(),
        storage = f.storage.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_follow_the_filesystem_driver() {
        assert_eq!(
            blob_path("sha256:abcdef"),
            "/docker/registry/v2/blobs/sha256/ab/abcdef/data"
        );
    }
}
