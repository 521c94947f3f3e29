//! The gateway daemon under test, run inside a site's gateway namespace.
//!
//! The gateway runs in its namespace as under `ip netns exec`, set up
//! between fork and exec ([`crate::netns::exec_in`]), so the child's pid
//! is the gateway's and signals reach it directly. The gateway is ready when
//! its audit log holds a new `gateway.start` record. Dropping the wrapper
//! kills a still-running gateway by pid.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::{audit, config::GatewayConfig, kernel, site::Site};

/// How long a gateway may take to write `gateway.start`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A gateway process (or the memory of one that exited) with its config.
pub struct Gateway<'s> {
    site: &'s Site,
    pub config: GatewayConfig,
    config_path: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// Starts so far; each run writes its own stderr file.
    runs: usize,
}

/// The gateway binary: `$GATEWAY_BIN`, else `target/debug/gateway` of this
/// workspace (honouring `$CARGO_TARGET_DIR`).
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os("GATEWAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug/gateway")
        }
    };
    if !path.is_file() {
        bail!(
            "gateway binary not found at {}: build it with `cargo build -p gateway` or set GATEWAY_BIN",
            path.display()
        );
    }
    Ok(path)
}

impl<'s> Gateway<'s> {
    /// Starts a gateway with the site's default config and waits until it is
    /// ready.
    pub fn start_default(site: &'s Site) -> Result<Self> {
        Self::start(site, GatewayConfig::for_site(site))
    }

    /// Writes `config`, starts a gateway with it and waits until it is ready.
    pub fn start(site: &'s Site, config: GatewayConfig) -> Result<Self> {
        let mut gw = Self::prepare(site, config)?;
        gw.spawn_and_wait_ready()?;
        Ok(gw)
    }

    /// Writes `config` without starting anything.
    pub fn prepare(site: &'s Site, config: GatewayConfig) -> Result<Self> {
        let config_path = site.tmp_dir().join("gateway.yaml");
        std::fs::write(&config_path, config.to_yaml())
            .with_context(|| format!("writing {}", config_path.display()))?;
        Ok(Self {
            site,
            config,
            config_path,
            bin: binary()?,
            child: None,
            runs: 0,
        })
    }

    /// Runs `gateway run` with `config` expecting it to exit by itself
    /// (a config error); returns its exit status and stderr.
    pub fn run_to_exit(
        site: &'s Site,
        config: GatewayConfig,
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        let mut gw = Self::prepare(site, config)?;
        gw.spawn()?;
        let status = gw.wait_exit(timeout)?;
        Ok((status, gw.stderr()))
    }

    pub fn site(&self) -> &'s Site {
        self.site
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    fn stderr_path(&self) -> PathBuf {
        self.site
            .tmp_dir()
            .join(format!("gateway.{}.stderr", self.runs))
    }

    /// `<gateway> <args…>` in `{P}-gw` as under `ip netns exec` (not
    /// spawned; see [`crate::netns::exec_in`]: no `ip` process to start).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = crate::netns::exec_in(&self.site.gw_ns, &self.bin);
        cmd.args(args);
        cmd
    }

    fn spawn(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("gateway already running as pid {:?}", self.pid());
        }
        self.runs += 1;
        let stderr_path = self.stderr_path();
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.site.tmp_dir().join("gateway.stdout"))?;
        let config = self.config_path.to_string_lossy().into_owned();
        let child = self
            .command(&["run", "--config", &config])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("spawning `gateway run`")?;
        self.child = Some(child);
        Ok(())
    }

    fn spawn_and_wait_ready(&mut self) -> Result<()> {
        let starts_before = self.count_starts();
        self.spawn()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.count_starts() > starts_before {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "gateway exited before it was ready ({status}); stderr tail:\n{}",
                    self.stderr_tail(40)
                );
            }
            if Instant::now() > deadline {
                let _ = self.sigkill();
                bail!(
                    "gateway not ready after {READY_TIMEOUT:?} (no new gateway.start in {}); stderr tail:\n{}",
                    self.config.audit_path.display(),
                    self.stderr_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn count_starts(&self) -> usize {
        self.audit()
            .map(|r| audit::records_with_event(&r, "gateway.start").len())
            .unwrap_or(0)
    }

    /// Starts the gateway again with the same config and waits until ready.
    pub fn restart(&mut self) -> Result<()> {
        self.spawn_and_wait_ready()
    }

    /// The running gateway's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Reaps the child if it exited; `None` while it runs. After it was
    /// reaped the child is forgotten, so no signal can reach a reused pid.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Err(anyhow!("no gateway process"));
        };
        match child.try_wait().context("waiting for the gateway")? {
            Some(status) => {
                self.child = None;
                Ok(Some(status))
            }
            None => Ok(None),
        }
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("gateway not running"))?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("sending {sig} to gateway pid {pid}"))
    }

    /// Waits (bounded) for the gateway to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway still running after {timeout:?}; stderr tail:\n{}",
                    self.stderr_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the daemon dies without any cleanup (fail-closed tests).
    pub fn sigkill(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn sigterm(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(timeout)
    }

    /// `gateway uninstall --config …` in the gateway namespace: removes the
    /// kernel path a stopped gateway left guarding. Fails with its stderr
    /// unless it exits 0.
    pub fn uninstall(&self) -> Result<String> {
        let config = self.config_path.to_string_lossy().into_owned();
        let out = self
            .command(&["uninstall", "--config", &config])
            .output()
            .context("running gateway uninstall")?;
        if !out.status.success() {
            bail!(
                "gateway uninstall failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Everything the current (or last) run wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr(), lines)
    }

    /// The audit log, one JSON value per complete line.
    pub fn audit(&self) -> Result<Vec<Value>> {
        audit::read(&self.config.audit_path)
    }

    /// Polls the audit log until a record matches `pred`; returns it.
    pub fn wait_audit(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Value> {
        let records = self.wait_audit_all(|rs| rs.iter().any(&pred), timeout)?;
        records
            .into_iter()
            .find(|r| pred(r))
            .ok_or_else(|| anyhow!("record vanished"))
    }

    /// Waits for the `request` record of a device's `method` on `path`.
    pub fn wait_request(&self, method: &str, path: &str, timeout: Duration) -> Result<Value> {
        self.wait_audit(
            |r| r["event"] == "request" && r["method"] == method && r["path"] == path,
            timeout,
        )
    }

    /// Polls the audit log until `pred` holds for the whole log; returns it.
    pub fn wait_audit_all(
        &self,
        pred: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.audit()?;
            if pred(&records) {
                return Ok(records);
            }
            if Instant::now() > deadline {
                bail!(
                    "audit condition not met after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `gateway status --json`.
    pub fn status(&self) -> Result<Value> {
        let config = self.config_path.to_string_lossy().into_owned();
        let out: Output = self
            .command(&["status", "--config", &config, "--json"])
            .output()
            .context("running `gateway status`")?;
        if !out.status.success() {
            bail!(
                "`gateway status --json` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "parsing status output: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// One counter from `status --json` (`counters.<name>`).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let status = self.status()?;
        status["counters"][name]
            .as_u64()
            .ok_or_else(|| anyhow!("status has no counters.{name}: {status}"))
    }

    /// Unwraps `r`, or panics with the error and the evidence (stderr, audit,
    /// status, what is attached and routed): a failing test says why.
    #[track_caller]
    pub fn must<T>(&self, r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!(
                "{e:#}
{}
--- kernel ---
{}",
                self.diagnostics(),
                kernel::describe(self.site)
            ),
        }
    }

    /// Evidence for a failure message: stderr tail, audit tail, status.
    pub fn diagnostics(&self) -> String {
        let audit_text =
            std::fs::read_to_string(&self.config.audit_path).unwrap_or_else(|e| format!("({e})"));
        let status = match self.status() {
            Ok(v) => v.to_string(),
            Err(e) => format!("({e:#})"),
        };
        format!(
            "--- gateway stderr (tail) ---\n{}\n--- audit (tail) ---\n{}\n--- status ---\n{status}",
            self.stderr_tail(30),
            tail(&audit_text, 30)
        )
    }
}

impl Drop for Gateway<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                // By pid, and only our own still-unreaped child.
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
