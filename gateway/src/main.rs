//! The `gateway` command: thin. Parse the command line, set up logging,
//! load and validate the config (exit 64 on any config error, before
//! anything is bound or attached), then run.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway::config::Config;

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
    /// Install the kernel path and serve until SIGTERM (which removes it).
    Run {
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
    let (Command::Run { config }
    | Command::CheckConfig { config }
    | Command::Status { config, .. }) = &cli.command;
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let result = match cli.command {
        Command::CheckConfig { .. } => {
            println!("config ok");
            Ok(())
        }
        Command::Status { json, .. } => gateway::status::status(&config).map(|v| {
            if json {
                println!("{v}");
            } else {
                print!("{}", gateway::status::render(&v));
            }
        }),
        Command::Run { .. } => run(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, gateway::config::ConfigError> {
    let config = Config::load(path)?;
    config.check_host()?;
    Ok(config)
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(gateway::daemon::run(config))
}
