//! The administrative subcommands: `ca` and `cache`.

use anyhow::Context as _;

use crate::{config::Config, tls};

pub fn ca_init(config: &Config, force: bool) -> anyhow::Result<()> {
    let hosts: Vec<String> = config
        .sites
        .iter()
        .map(|s| s.host.to_ascii_lowercase())
        .collect();
    if hosts.is_empty() {
        anyhow::bail!(
            "no sites are configured: the CA would be constrained to no name; add sites first"
        );
    }
    let summary = tls::ca::init(&config.tls.ca_dir, &hosts, force)?;
    println!("site CA created");
    println!("  certificate: {}", summary.cert_path.display());
    println!("  key:         {} (mode 0600)", summary.key_path.display());
    println!("  sha256:      {}", summary.fingerprint_sha256);
    println!("  valid for:   {}", summary.permitted.join(", "));
    println!("devices must trust it: `gateway ca export --config FILE > site-ca.pem`");
    Ok(())
}

pub fn ca_export(config: &Config) -> anyhow::Result<()> {
    let pem = tls::ca::export(&config.tls.ca_dir)
        .with_context(|| format!("reading the site CA in {}", config.tls.ca_dir.display()))?;
    print!("{pem}");
    Ok(())
}

pub async fn cache_ls(config: &Config, json: bool) -> anyhow::Result<()> {
    crate::control::client::ls(config, json).await
}

pub async fn cache_seed(config: &Config, reference: &str) -> anyhow::Result<()> {
    crate::control::client::seed(config, reference).await
}
