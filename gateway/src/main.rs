//! The `gateway` command: thin. Parse the command line, set up logging,
//! load and validate the config (exit 64 on any config error, before
//! anything is bound or attached), then run.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway::config::Config;

mod allocator;

/// sysexits.h EX_USAGE: the configuration (or command line) is wrong.
const EX_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Transparent egress gateway for Margo edge sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install (or adopt) the kernel path and serve until SIGTERM. Stopping
    /// leaves the kernel path guarding (fail closed); see `uninstall`.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove the kernel path (programs, links, pins, policy routing) that
    /// a stopped gateway left guarding; the interfaces are unguarded after.
    Uninstall {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and the host it names; change nothing.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show attachments and kernel counters.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The site CA that devices trust.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// The content cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Repositories fetched ahead of devices (`mirror:` entries).
    Mirror {
        #[command(subcommand)]
        action: MirrorAction,
    },
    /// Per device: what it reached and what it was refused, from the
    /// audit log and its rotated files.
    Flows(gateway::flows::FlowsArgs),
    /// Ask the running daemon to re-read its config file and apply it
    /// (as SIGHUP / `systemctl reload` does). A bad config, or a setting
    /// that needs a restart, is refused (exit 64) and the old one keeps
    /// running.
    Reload {
        /// The file the daemon was started with.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Create the site CA in tls.ca_dir, constrained to the --permit
    /// domains and the configured site hosts they do not cover.
    Init {
        #[arg(long, short)]
        config: PathBuf,
        /// A domain the CA may cover, with every name under it (repeat, or
        /// a comma list), e.g. `--permit docker.io,corp.example`.
        #[arg(long, value_name = "DOMAIN")]
        permit: Vec<String>,
        /// Replace an existing CA (devices must then trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) for devices' trust stores.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        /// Also print the pending successor (after the active CA).
        #[arg(long)]
        all: bool,
    },
    /// Create a successor CA in tls.ca_dir/next (the active CA keeps
    /// signing until `activate`).
    Rotate {
        #[arg(long, short)]
        config: PathBuf,
        /// The successor's domains (default: the active CA's), plus the
        /// site hosts they do not cover.
        #[arg(long, value_name = "DOMAIN")]
        permit: Vec<String>,
        /// Replace a pending successor.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate for a child gateway (one whose site
    /// `upstream` is this gateway's `children` listener): NAME.pem and
    /// NAME.key (mode 0600) in DIR.
    IssueClient {
        #[arg(long, short)]
        config: PathBuf,
        /// The child's name, shown in this gateway's audit records.
        #[arg(long)]
        name: String,
        /// Directory to write the certificate and key into.
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid (at most until the CA
        /// expires).
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        validity: std::time::Duration,
    },
    /// Make the pending successor the active CA; the old one moves to
    /// tls.ca_dir/retired. Takes effect when the gateway reloads or restarts.
    Activate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum MirrorAction {
    /// Run the config's `mirror:` entries now, through the running daemon
    /// (its cache, its fills): new and moved tags are fetched and pinned.
    /// A progress bar on a terminal, lines otherwise. Ignores the entries'
    /// `window` unless --respect-window. Exits 1 naming each entry that
    /// failed.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// List the tags, blobs and bytes a run would fetch; fetch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only the entries of this site.
        #[arg(long, value_name = "HOST")]
        site: Option<String>,
        /// Outside an entry's window skip it, and stop fetching when the
        /// window closes, as scheduled runs do.
        #[arg(long)]
        respect_window: bool,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// List what the cache holds: references, pins, and every blob (size,
    /// last use, the pins and references naming it).
    Ls {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Pull an image or artifact (every platform) into the cache and pin it.
    Seed {
        #[arg(long, short)]
        config: PathBuf,
        /// `<host>/<repository>:<tag>` or `<host>/<repository>@<digest>`.
        reference: String,
    },
    /// Pin what the cache holds of a reference (the manifest, every
    /// platform's, their configs and layers) without fetching anything;
    /// refused, naming what is missing, unless all of it is cached (then
    /// `cache seed` fetches and pins it). The pin is named like the
    /// reference.
    Pin {
        #[arg(long, short)]
        config: PathBuf,
        /// `<host>/<repository>:<tag>` or `<host>/<repository>@<digest>`.
        reference: String,
    },
    /// Remove a pin by its name (`cache ls` lists them); its blobs may be
    /// evicted again unless another pin names them.
    Unpin {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
    },
    /// Forget a reference (and its pin) and delete the blobs that no other
    /// reference, file, chart or pin names. A device downloading one reads
    /// on to the end.
    Rm {
        #[arg(long, short)]
        config: PathBuf,
        /// `<host>/<repository>:<tag>` or `<host>/<repository>@<digest>`.
        reference: String,
    },
    /// Hash every blob again; any whose content no longer matches its
    /// digest is moved to <cache dir>/quarantine/ and dropped from the
    /// index (the next request fetches it again). Exits 3 when it
    /// quarantined a blob, 1 when it could not verify.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Bytes per site and repository, and pinned bytes. A blob several
    /// repositories name counts in each, and once in the total.
    Du {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (path, host_checks) = match &cli.command {
        Command::Run { config } | Command::CheckConfig { config } | Command::Reload { config } => {
            (config, true)
        }
        Command::Status { config, .. }
        | Command::Uninstall { config }
        | Command::Flows(gateway::flows::FlowsArgs { config, .. })
        | Command::Mirror {
            action: MirrorAction::Run { config, .. },
        }
        | Command::Ca {
            action:
                CaAction::Init { config, .. }
                | CaAction::Export { config, .. }
                | CaAction::Rotate { config, .. }
                | CaAction::IssueClient { config, .. }
                | CaAction::Activate { config },
        }
        | Command::Cache {
            action:
                CacheAction::Ls { config, .. }
                | CacheAction::Seed { config, .. }
                | CacheAction::Pin { config, .. }
                | CacheAction::Unpin { config, .. }
                | CacheAction::Rm { config, .. }
                | CacheAction::Verify { config, .. }
                | CacheAction::Du { config, .. },
        } => (config, false),
    };
    let config = match load(path, host_checks) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let result = match cli.command {
        Command::CheckConfig { .. } => {
            println!("config ok");
            let (groups, warning) = config.group_summary();
            for line in groups {
                println!("{line}");
            }
            if let Some(warning) = warning {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
        Command::Status { json, .. } => gateway::status::status(&config).map(|mut v| {
            // The running daemon's own counts, when one answers.
            let daemon = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
                .and_then(|rt| rt.block_on(gateway::control::client::daemon_stats(&config)));
            v["daemon"] = daemon.unwrap_or(serde_json::Value::Null);
            if json {
                println!("{v}");
            } else {
                print!("{}", gateway::status::render(&v));
            }
        }),
        Command::Run { config: file } => run(config, file),
        Command::Reload { config: file } => return reload(&config, &file),
        Command::Flows(args) => gateway::flows::run(&config, &args),
        Command::Mirror {
            action:
                MirrorAction::Run {
                    dry_run,
                    site,
                    respect_window,
                    ..
                },
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(gateway::cli::mirror_run(
                    &config,
                    site.as_deref(),
                    dry_run,
                    respect_window,
                ))
            }),
        Command::Uninstall { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(gateway::daemon::uninstall(&config))),
        Command::Ca { action } => match action {
            CaAction::Init { permit, force, .. } => gateway::cli::ca_init(&config, &permit, force),
            CaAction::Export { all, .. } => gateway::cli::ca_export(&config, all),
            CaAction::Rotate { permit, force, .. } => {
                gateway::cli::ca_rotate(&config, &permit, force)
            }
            CaAction::Activate { .. } => gateway::cli::ca_activate(&config),
            CaAction::IssueClient {
                name,
                out,
                validity,
                ..
            } => gateway::cli::ca_issue_client(&config, &name, &out, validity),
        },
        Command::Cache { action } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match runtime {
                Err(e) => Err(e.into()),
                Ok(rt) => rt.block_on(async {
                    match action {
                        CacheAction::Ls { json, .. } => gateway::cli::cache_ls(&config, json).await,
                        CacheAction::Seed { reference, .. } => {
                            gateway::cli::cache_seed(&config, &reference).await
                        }
                        CacheAction::Pin { reference, .. } => {
                            gateway::cli::cache_pin(&config, &reference).await
                        }
                        CacheAction::Unpin { name, .. } => {
                            gateway::cli::cache_unpin(&config, &name).await
                        }
                        CacheAction::Rm { reference, .. } => {
                            gateway::cli::cache_rm(&config, &reference).await
                        }
                        CacheAction::Verify { json, .. } => {
                            gateway::cli::cache_verify(&config, json).await
                        }
                        CacheAction::Du { json, .. } => gateway::cli::cache_du(&config, json).await,
                    }
                }),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<gateway::control::client::Quarantined>()
                .is_some()
            {
                return ExitCode::from(gateway::control::client::EXIT_QUARANTINED);
            }
            // A bad --permit, or `flows` --since/--until/--device, is a
            // usage error, as a bad config is.
            if matches!(
                e.downcast_ref(),
                Some(gateway::tls::TlsError::InvalidPermit { .. })
            ) || e
                .downcast_ref::<gateway::flows::filter::FilterError>()
                .is_some()
            {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load(path: &std::path::Path, host_checks: bool) -> Result<Config, gateway::config::ConfigError> {
    let config = Config::load(path)?;
    if host_checks {
        config.check_host()?;
    }
    Ok(config)
}

fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    match allocator::describe() {
        (allocator, true) => tracing::info!(%allocator, "allocator"),
        // Still correct, only larger per connection: say so, don't refuse.
        (allocator, false) => tracing::warn!(%allocator, "allocator is not jemalloc"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(gateway::daemon::run(config, path))
}

/// `gateway reload`: the file was validated above (exit 64 on a bad one,
/// as `check-config`); the daemon checks it again and applies it.
fn reload(config: &Config, path: &std::path::Path) -> ExitCode {
    use gateway::control::client::{ReloadOutcome, reload};
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(reload(config, path)),
        Err(e) => ReloadOutcome::NoDaemon(e.to_string()),
    };
    match outcome {
        ReloadOutcome::Applied(v) => {
            println!(
                "reloaded: generation {}, {}",
                v["generation"],
                v["changes"].as_str().unwrap_or("")
            );
            ExitCode::SUCCESS
        }
        ReloadOutcome::Refused(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_CONFIG)
        }
        ReloadOutcome::NoDaemon(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
