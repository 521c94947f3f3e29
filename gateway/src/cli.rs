//! The administrative subcommands: `ca` and `cache`.

use anyhow::Context as _;

use crate::{config::Config, tls};

/// The names the site CA must cover: every site host, and the name a
/// parent gateway serves its children under.
fn site_hosts(config: &Config) -> Vec<String> {
    config
        .sites
        .iter()
        .map(|s| s.host.to_ascii_lowercase())
        .chain(
            config
                .children
                .iter()
                .map(|c| c.server_name.to_ascii_lowercase()),
        )
        .collect()
}

/// `gateway ca issue-client --name NAME --out DIR`: a client certificate
/// for a child gateway, signed by this (parent) gateway's site CA.
pub fn ca_issue_client(
    config: &Config,
    name: &str,
    out: &std::path::Path,
    validity: std::time::Duration,
) -> anyhow::Result<()> {
    if !tls::identity::valid_child_name(name) {
        anyhow::bail!(
            "--name `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.` (it names the child \
             in audit records and the files written)"
        );
    }
    let ca = tls::SiteCa::load(&config.tls.ca_dir).with_context(|| {
        format!(
            "loading the site CA from {} (create it with `gateway ca init --config FILE`)",
            config.tls.ca_dir.display()
        )
    })?;
    let (cert, key) = tls::identity::issue_client(&ca, name, validity)?;
    let (cert_path, key_path) = tls::identity::write_client(out, name, &cert, &key)?;
    println!("client certificate for child `{name}` issued by the site CA");
    println!("  certificate: {}", cert_path.display());
    println!("  key:         {} (mode 0600)", key_path.display());
    println!(
        "copy both to the child gateway and name them in its site: client_cert, client_key; \
         its ca_file must trust this CA (`gateway ca export`)"
    );
    Ok(())
}

/// `gateway ca init [--permit DOMAIN…]`: the CA covers the permitted
/// domains and every configured site host they do not cover.
pub fn ca_init(config: &Config, permits: &[String], force: bool) -> anyhow::Result<()> {
    let permits = tls::permit::parse(permits)?;
    let hosts = site_hosts(config);
    if hosts.is_empty() && permits.is_empty() {
        anyhow::bail!(
            "no sites are configured and no --permit given: the CA would be constrained to no \
             name; add sites or name the domains with --permit"
        );
    }
    let names = tls::permit::constraints(&permits, &hosts)?;
    let summary = tls::ca::init(&config.tls.ca_dir, &names, force)?;
    println!("site CA created");
    print_summary(&summary);
    println!("devices must trust it: `gateway ca export --config FILE > site-ca.pem`");
    Ok(())
}

/// `gateway ca rotate [--permit DOMAIN…]`: a successor beside the active CA.
pub fn ca_rotate(config: &Config, permits: &[String], force: bool) -> anyhow::Result<()> {
    let permits = tls::permit::parse(permits)?;
    let ca_dir = &config.tls.ca_dir;
    let active = tls::ca::read_cert(&ca_dir.join(tls::ca::CERT_FILE))?;
    let summary = tls::rotation::rotate(ca_dir, &permits, &site_hosts(config), force)?;
    println!("successor CA created (pending; the active CA still signs the leaves)");
    print_summary(&summary);
    let dropped: Vec<&str> = active
        .permitted()
        .iter()
        .filter(|p| !summary.permitted.iter().any(|s| s == *p))
        .map(String::as_str)
        .collect();
    if !dropped.is_empty() {
        // Not an error (narrowing is allowed), but worth a second look.
        println!("  no longer permitted (by name): {}", dropped.join(", "));
    }
    println!("next steps:");
    println!(
        "  1. give every device both CAs: `gateway ca export --all --config FILE > site-ca.pem`"
    );
    println!("  2. then switch the leaves to it: `gateway ca activate --config FILE`");
    Ok(())
}

/// `gateway ca activate`: the successor signs from the next start on.
pub fn ca_activate(config: &Config) -> anyhow::Result<()> {
    let done = tls::rotation::activate(&config.tls.ca_dir, &site_hosts(config))?;
    println!("successor CA activated");
    println!(
        "  certificate: {}",
        config.tls.ca_dir.join(tls::ca::CERT_FILE).display()
    );
    println!("  sha256:      {}", done.active.fingerprint_sha256());
    println!("  valid for:   {}", done.active.permitted().join(", "));
    if let Some(retired) = &done.retired {
        println!(
            "  old CA kept in {} (delete it once no device needs it)",
            retired.display()
        );
    }
    println!(
        "reload the gateway (`gateway reload --config FILE` or `systemctl reload gateway`) or \
         restart it to serve leaves from the new CA: a running gateway keeps signing with the \
         old one until then"
    );
    Ok(())
}

fn print_summary(summary: &tls::CaSummary) {
    println!("  certificate: {}", summary.cert_path.display());
    println!("  key:         {} (mode 0600)", summary.key_path.display());
    println!("  sha256:      {}", summary.fingerprint_sha256);
    println!(
        "  valid for:   {} and their subdomains",
        summary.permitted.join(", ")
    );
}

/// `gateway ca export [--all]`: the active CA, and with `all` the pending
/// successor after it.
pub fn ca_export(config: &Config, all: bool) -> anyhow::Result<()> {
    let ca_dir = &config.tls.ca_dir;
    let context = || format!("reading the site CA in {}", ca_dir.display());
    let pems = if all {
        tls::rotation::export_all(ca_dir).with_context(context)?
    } else {
        vec![tls::ca::export(ca_dir).with_context(context)?]
    };
    if all {
        // stderr, so the bundle on stdout stays plain PEM.
        eprintln!(
            "{}",
            if pems.len() > 1 {
                "exported the active CA and the pending successor"
            } else {
                "exported the active CA (no successor is pending)"
            }
        );
    }
    for pem in pems {
        print!("{pem}");
        if !pem.ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

pub async fn cache_ls(config: &Config, json: bool) -> anyhow::Result<()> {
    crate::control::client::ls(config, json).await
}

pub async fn cache_seed(config: &Config, reference: &str) -> anyhow::Result<()> {
    crate::control::client::seed(config, reference).await
}

pub async fn cache_pin(config: &Config, reference: &str) -> anyhow::Result<()> {
    crate::control::client::pin(config, reference).await
}

pub async fn cache_unpin(config: &Config, name: &str) -> anyhow::Result<()> {
    crate::control::client::unpin(config, name).await
}

pub async fn cache_rm(config: &Config, reference: &str) -> anyhow::Result<()> {
    crate::control::client::rm(config, reference).await
}

pub async fn cache_verify(config: &Config, json: bool) -> anyhow::Result<()> {
    crate::control::client::verify(config, json).await
}

pub async fn cache_du(config: &Config, json: bool) -> anyhow::Result<()> {
    crate::control::client::du(config, json).await
}

pub async fn mirror_run(
    config: &Config,
    site: Option<&str>,
    dry_run: bool,
    respect_window: bool,
) -> anyhow::Result<()> {
    crate::control::client::mirror_run(config, site, dry_run, respect_window).await
}
