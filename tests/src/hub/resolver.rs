//! A DNS server that answers every name with a wrong address: dnsmasq in
//! the site's upstream namespace on its own address, port 53, UDP and TCP.
//! A device whose resolv.conf names it would resolve the hub's names to
//! [`super::WRONG_ANSWER_V4`] (which exists nowhere), so a pull that works
//! anyway proves that something else (the gateway) answered the device's
//! DNS. Every query is logged to a file, so a test can count them.
//!
//! dnsmasq runs in debug mode (`--no-daemon`): in the foreground, no pid
//! file, no change of user; started by pid and killed by pid.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{RESOLVER_V4, WRONG_ANSWER_V4};
use crate::{
    bench::{proc::Proc, world::wait_listening},
    netns::ip_in,
    site::Site,
};

/// dnsmasq answering every name with [`WRONG_ANSWER_V4`].
pub struct WrongResolver {
    proc: Option<Proc>,
    ns: String,
    /// The interface the resolver's address was added to, if it was.
    address_on: Option<String>,
    pub addr: Ipv4Addr,
    /// `--log-facility`: one line per query (and startup lines).
    pub log_path: PathBuf,
    stderr_path: PathBuf,
}

impl WrongResolver {
    /// Adds [`RESOLVER_V4`] to the upstream host's interface and starts
    /// dnsmasq on it, files under `dir`.
    pub fn start(site: &Site, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut me = Self {
            proc: None,
            ns: site.up_ns.clone(),
            address_on: None,
            addr: RESOLVER_V4,
            log_path: dir.join("dnsmasq.log"),
            stderr_path: dir.join("dnsmasq.stderr"),
        };
        ip_in(
            &site.up_ns,
            &[
                "addr",
                "add",
                &format!("{RESOLVER_V4}/24"),
                "dev",
                &site.up_if,
            ],
        )?;
        me.address_on = Some(site.up_if.clone());
        let stderr = std::fs::File::create(&me.stderr_path)?;
        let mut cmd = crate::netns::exec_in(&site.up_ns, "dnsmasq");
        cmd.args([
            "--no-daemon",
            // No /etc/dnsmasq.conf or conf-dir of the host's.
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            &format!("--address=/#/{WRONG_ANSWER_V4}"),
            &format!("--listen-address={RESOLVER_V4}"),
            // Only that address: nothing on the namespace's loopback.
            "--bind-interfaces",
            "--port=53",
            "--log-queries",
        ])
        .arg(format!("--log-facility={}", me.log_path.display()))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        let mut proc = Proc::spawn("dnsmasq (wrong resolver)", &mut cmd)?;
        // dnsmasq binds TCP and UDP before it serves; a TCP connect (not a
        // query: nothing is logged) tells that it is up.
        let ready = wait_listening(
            &me.ns,
            SocketAddr::from((RESOLVER_V4, 53)),
            Duration::from_secs(10),
        );
        if let Err(e) = ready {
            let _ = proc.check_running();
            return Err(e.context(format!("dnsmasq did not start\n{}", me.logs())));
        }
        me.proc = Some(proc);
        // Its log file appears a moment after the sockets (seen under
        // QEMU): a count taken before would fail to read it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&me.log_path).is_ok_and(|t| t.contains("started")) {
            if Instant::now() > deadline {
                bail!("dnsmasq logged no start in 10s\n{}", me.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// The `query[…]` lines logged so far.
    pub fn query_lines(&self) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))?;
        Ok(text
            .lines()
            .filter(|l| l.contains(" query["))
            .map(str::to_owned)
            .collect())
    }

    /// How many queries it answered so far.
    pub fn queries(&self) -> Result<usize> {
        Ok(self.query_lines()?.len())
    }

    /// Its log and stderr, for messages.
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "dnsmasq log:\n{}\ndnsmasq stderr:\n{}",
            read(&self.log_path),
            read(&self.stderr_path)
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Stops dnsmasq and removes its address.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(dev) = self.address_on.take() {
            let del = ip_in(
                &self.ns,
                &["addr", "del", &format!("{RESOLVER_V4}/24"), "dev", &dev],
            );
            if let Err(e) = del {
                eprintln!("warning: removing {RESOLVER_V4} from {dev}: {e:#}");
            }
        }
    }
}

impl Drop for WrongResolver {
    fn drop(&mut self) {
        self.stop();
    }
}
