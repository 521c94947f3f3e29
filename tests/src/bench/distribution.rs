//! The distribution registry as a pull-through cache (`proxy.remoteurl`)
//! of the origin registry, in the gateway namespace on the peer link, with
//! TLS under the peers' CA and filesystem storage in its own directory.
//! It trusts the origin's CA through `SSL_CERT_FILE` (Go's system roots).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{pki::PeerPki, proc::Proc, world::wait_listening};
use crate::registry::DistributionConfig;

pub struct PullThrough {
    ns: String,
    pub dir: PathBuf,
    pub addr: Ipv4Addr,
    origin_ca: PathBuf,
    proc: Option<Proc>,
}

impl PullThrough {
    pub fn start(
        ns: &str,
        dir: &Path,
        addr: Ipv4Addr,
        pki: &PeerPki,
        origin_url: &str,
        origin_ca: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = DistributionConfig {
            storage: &dir.join("storage"),
            addr: SocketAddr::from((addr, 443)),
            secret: &format!("bench-{}", std::process::id()),
            cert: &pki.chain_pem,
            key: &pki.key_pem,
            access_log: false,
            remote_url: Some(origin_url),
        }
        .yaml();
        std::fs::write(dir.join("config.yml"), config)?;
        let mut p = Self {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            addr,
            origin_ca: origin_ca.to_owned(),
            proc: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("storage"))?;
        let log = std::fs::File::create(self.dir.join("registry.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "docker-registry", "serve"])
            .arg(self.dir.join("config.yml"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.dir)
            .env("SSL_CERT_FILE", &self.origin_ca)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut proc = Proc::spawn("docker-registry (pull-through)", &mut cmd)?;
        let ready = wait_listening(
            &self.ns,
            SocketAddr::from((self.addr, 443)),
            Duration::from_secs(20),
        );
        if let Err(e) = ready {
            let _ = proc.check_running();
            let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
            return Err(e.context(format!(
                "the pull-through registry did not start; log:\n{log}"
            )));
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops it, empties its storage and starts it again.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.stop();
        let storage = self.dir.join("storage");
        if storage.exists() {
            std::fs::remove_dir_all(&storage)
                .with_context(|| format!("emptying {}", storage.display()))?;
        }
        self.spawn()
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for PullThrough {
    fn drop(&mut self) {
        self.stop();
    }
}
