//! A real Prometheus and promtool for the metrics test (issue 12), from
//! Debian's `prometheus` package that `cargo xtask setup` unpacks into
//! `target/tools/prometheus` (never installed: the package would start a
//! server in the machine's own namespace).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Where xtask setup unpacks the package.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/prometheus/usr/bin")
        .components()
        .collect()
}

fn tool(name: &str) -> Result<PathBuf> {
    let path = tools_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup` (it unpacks Debian's prometheus package into target/tools)",
            path.display()
        );
    }
    Ok(path)
}

pub fn promtool() -> Result<PathBuf> {
    tool("promtool")
}

/// `promtool check metrics` on an exposition: `Ok` with promtool's output
/// when it finds nothing to say, the findings as the error otherwise.
pub fn check_metrics(text: &str) -> Result<String> {
    let mut child = Command::new(promtool()?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())
        .context("writing the metrics to promtool")?;
    let out = child.wait_with_output().context("waiting for promtool")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 0 with lint findings on stderr in some versions: both
    // a failure and any finding fail the check.
    if !out.status.success() || !said.trim().is_empty() {
        bail!("promtool check metrics ({}): {said}", out.status);
    }
    Ok(said)
}

/// A Prometheus server running in a network namespace; killed (by pid)
/// when dropped.
pub struct Prometheus {
    child: Child,
    ns: String,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `target` (`ip:port`) every
    /// second, its web API on `127.0.0.1:port` of that namespace, its
    /// storage under `dir`.
    pub fn start(ns: &str, target: &str, port: u16, dir: &Path) -> Result<Self> {
        let bin = tool("prometheus")?;
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        // Entered between fork and exec: the child's pid is Prometheus's.
        let child = crate::netns::exec_in(ns, bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        Ok(Self {
            child,
            ns: ns.to_owned(),
            port,
            dir: dir.to_owned(),
        })
    }

    /// The end of Prometheus's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An instant query through the HTTP API; the `data.result` array.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let out = crate::netns::exec_in(&self.ns, "curl")
            .args(["-sS", "--max-time", "5", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .context("running curl for a Prometheus query")?;
        if !out.status.success() {
            bail!(
                "querying Prometheus failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "Prometheus answered no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        if v["status"] != "success" {
            bail!("Prometheus query `{promql}` failed: {v}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `promql` until it returns at least one series, or fails after
    /// `timeout` with what Prometheus last said.
    pub fn wait_for(&mut self, promql: &str, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "prometheus exited ({status}) while waiting for `{promql}`; log tail:\n{}",
                    self.log_tail()
                );
            }
            let last = match self.query(promql) {
                Ok(result) if !result.is_empty() => return Ok(result),
                Ok(_) => String::from("an empty result"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "Prometheus returned no series for `{promql}` within {timeout:?} (last: {last}); log tail:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
