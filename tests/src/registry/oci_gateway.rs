//! A gateway configured for the site's registry: `tls`, `sites` and
//! `cache` keys, `gateway ca init` before the first start, the site CA
//! exported for devices, `gateway cache …`, and the `request` audit
//! records.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    HOST, Registry,
    clients::Client,
    cmd::{self, Outcome},
};
use crate::{config::GatewayConfig, gateway::Gateway, site::Site};

/// Bound on a `gateway ca …` / `gateway cache …` command.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The OCI keys of a gateway config, rendered into `extra_yaml`.
#[derive(Clone, Debug)]
pub struct OciKeys {
    pub ca_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub upstream: String,
    pub ca_file: PathBuf,
    /// (username, password_file)
    pub credentials: Option<(String, PathBuf)>,
    pub max_size: String,
    /// humantime, e.g. `3s`.
    pub tag_ttl: String,
}

impl OciKeys {
    /// The site's registry as the one OCI site, state in the site's temp dir.
    pub fn for_registry(registry: &Registry<'_>, tag_ttl: &str) -> Self {
        let dir = registry.site().tmp_dir();
        Self {
            ca_dir: dir.join("ca"),
            cache_dir: dir.join("cache"),
            upstream: registry.url(),
            ca_file: registry.ca_pem.clone(),
            credentials: registry
                .credentials
                .as_ref()
                .zip(registry.password_file.as_ref())
                .map(|(c, f)| (c.username.clone(), f.clone())),
            max_size: "20GiB".to_owned(),
            tag_ttl: tag_ttl.to_owned(),
        }
    }

    pub fn to_yaml(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let p = |p: &PathBuf| q(&p.to_string_lossy());
        let mut y = format!(
            "tls:\n  ca_dir: {}\nsites:\n  - host: {}\n    kind: \"oci\"\n    upstream: {}\n    ca_file: {}\n",
            p(&self.ca_dir),
            q(HOST),
            q(&self.upstream),
            p(&self.ca_file),
        );
        if let Some((user, file)) = &self.credentials {
            y.push_str(&format!(
                "    credentials:\n      username: {}\n      password_file: {}\n",
                q(user),
                p(file)
            ));
        }
        y.push_str(&format!(
            "cache:\n  dir: {}\n  max_size: {}\n  tag_ttl: {}\n",
            p(&self.cache_dir),
            q(&self.max_size),
            q(&self.tag_ttl)
        ));
        y
    }

    /// The site's default gateway config with these keys appended.
    pub fn config(&self, site: &Site) -> GatewayConfig {
        let mut c = GatewayConfig::for_site(site);
        c.extra_yaml.push_str(&self.to_yaml());
        c
    }
}

/// A running gateway with its OCI keys and exported site CA.
pub struct OciGateway<'s> {
    pub gw: Gateway<'s>,
    pub keys: OciKeys,
    /// The site CA's PEM (`gateway ca export`): what devices trust.
    pub site_ca_pem: String,
}

/// Writes the config, runs `gateway ca init`, starts the gateway, waits
/// until it is ready and exports the site CA.
pub fn start_oci_gateway<'s>(site: &'s Site, keys: OciKeys) -> Result<OciGateway<'s>> {
    let config = keys.config(site);
    start_oci_gateway_with(site, keys, config)
}

/// [`start_oci_gateway`] with a config the test changed (`keys` must be
/// the OCI keys already in it).
pub fn start_oci_gateway_with<'s>(
    site: &'s Site,
    keys: OciKeys,
    config: GatewayConfig,
) -> Result<OciGateway<'s>> {
    let mut gw = Gateway::prepare(site, config)?;
    let init = cli(&gw, &["ca", "init"])?;
    if !init.success() {
        bail!(
            "`gateway ca init` failed ({}): {}",
            init.status,
            init.stderr.trim()
        );
    }
    gw.restart()?;
    let site_ca_pem = ca_export(&gw)?;
    Ok(OciGateway {
        gw,
        keys,
        site_ca_pem,
    })
}

/// `gateway <args…> --config <its config>` in the gateway namespace,
/// whatever its exit status.
pub fn cli(gw: &Gateway<'_>, args: &[&str]) -> Result<Outcome> {
    let config = gw.config_path().to_string_lossy().into_owned();
    let mut c = gw.command(args);
    c.args(["--config", &config]);
    cmd::output(&mut c, CLI_TIMEOUT)
}

/// `gateway ca export`: the site CA's PEM.
pub fn ca_export(gw: &Gateway<'_>) -> Result<String> {
    let out = cli(gw, &["ca", "export"])?;
    if !out.success() {
        bail!(
            "`gateway ca export` failed ({}): {}",
            out.status,
            out.stderr.trim()
        );
    }
    let pem = out.stdout_text();
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("`gateway ca export` printed no certificate: {pem}");
    }
    Ok(pem)
}

/// Blob count and bytes held, from `gateway cache ls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTotals {
    pub blobs: u64,
    pub bytes: u64,
}

impl CacheTotals {
    /// Reads `<n> blobs, <bytes> of <max> bytes` from the first line that
    /// has it.
    pub fn parse(ls: &str) -> Option<Self> {
        ls.lines().find_map(|line| {
            let words: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty())
                .collect();
            let blobs = words.iter().position(|w| *w == "blobs")?;
            let of = words.iter().position(|w| *w == "of")?;
            Some(Self {
                blobs: words.get(blobs.checked_sub(1)?)?.parse().ok()?,
                bytes: words.get(of.checked_sub(1)?)?.parse().ok()?,
            })
        })
    }
}

/// Whether `r` is a `request` record of `method` on `path`.
pub fn is_request(r: &Value, method: &str, path: &str) -> bool {
    r["event"] == "request" && r["method"] == method && r["path"] == path
}

impl<'s> OciGateway<'s> {
    /// A device client trusting only this gateway's site CA.
    pub fn device(&self) -> Result<Client> {
        Client::device(self.gw.site(), &self.site_ca_pem)
    }

    /// `gateway cache ls` (must succeed): its stdout.
    pub fn cache_ls(&self) -> Result<String> {
        let out = cli(&self.gw, &["cache", "ls"])?;
        if !out.success() {
            bail!(
                "`gateway cache ls` failed ({}): {}",
                out.status,
                out.stderr.trim()
            );
        }
        Ok(out.stdout_text())
    }

    /// The totals `gateway cache ls` opens with
    /// (`3 blobs, 4197069 of 21474836480 bytes, 0 pinned`).
    pub fn cache_totals(&self) -> Result<CacheTotals> {
        let ls = self.cache_ls()?;
        CacheTotals::parse(&ls).with_context(|| format!("no totals in `gateway cache ls`:\n{ls}"))
    }

    /// Files under the cache's temp dir (fills in progress or leftovers).
    pub fn cache_tmp_files(&self) -> Result<Vec<PathBuf>> {
        crate::kernel::files_under(&self.keys.cache_dir.join("tmp"))
    }

    /// Waits (10 s at most) until the cache's temp dir is empty: a failed
    /// fill's temp file is removed in the background. Panics with what is
    /// left.
    pub fn wait_no_temp_files(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tmp = self.must(self.cache_tmp_files());
            if tmp.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "temp files left: {tmp:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `gateway cache seed <host>/<reference>`, whatever its outcome.
    pub fn cache_seed(&self, reference: &str) -> Result<Outcome> {
        cli(&self.gw, &["cache", "seed", &format!("{HOST}/{reference}")])
    }

    /// Every `request` record so far.
    pub fn requests(&self) -> Result<Vec<Value>> {
        Ok(self
            .gw
            .audit()?
            .into_iter()
            .filter(|r| r["event"] == "request")
            .collect())
    }

    /// `request` records of `method` on `path`.
    pub fn requests_for(&self, method: &str, path: &str) -> Result<Vec<Value>> {
        Ok(self
            .requests()?
            .into_iter()
            .filter(|r| is_request(r, method, path))
            .collect())
    }

    /// Waits until at least `n` `request` records of `method` on `path`
    /// exist (a record may land just after the client has its answer).
    pub fn wait_requests(&self, method: &str, path: &str, n: usize) -> Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.requests_for(method, path)?;
            if found.len() >= n {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} request records for {method} {path} after 10s, expected {n}\n{}",
                    found.len(),
                    self.gw.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Files under the cache dir whose path mentions `digest`'s hex.
    pub fn cache_files_named(&self, digest: &str) -> Result<Vec<PathBuf>> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        Ok(crate::kernel::files_under(&self.keys.cache_dir)
            .context("listing the cache dir")?
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(hex))
            .collect())
    }

    /// Unwraps `r` or panics with the gateway's evidence.
    #[track_caller]
    pub fn must<T>(&self, r: Result<T>) -> T {
        self.gw.must(r)
    }
}

/// A site's registry, a gateway serving it and a device that trusts only
/// the gateway's site CA. Fields drop in order: device, gateway, registry.
pub struct World<'s> {
    pub device: Client,
    pub gw: OciGateway<'s>,
    pub registry: Registry<'s>,
}

/// Starts the registry (with `opts`), a gateway with `tag_ttl`, and makes
/// a device client.
pub fn start_world<'s>(
    site: &'s Site,
    opts: super::RegistryOptions,
    tag_ttl: &str,
) -> Result<World<'s>> {
    let registry = Registry::start(site, opts)?;
    let gw = start_oci_gateway(site, OciKeys::for_registry(&registry, tag_ttl))?;
    let device = gw.device()?;
    Ok(World {
        device,
        gw,
        registry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cache_totals() {
        let ls = "3 blobs, 4197069 of 21474836480 bytes, 0 pinned\nregistry.example.test/app manifests/v1 -> sha256:dd (400 bytes)\n";
        assert_eq!(
            CacheTotals::parse(ls),
            Some(CacheTotals {
                blobs: 3,
                bytes: 4_197_069
            })
        );
        assert_eq!(CacheTotals::parse("empty"), None);
    }
}
