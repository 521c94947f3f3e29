//! Project tasks, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! Every command first runs `setup`, which is idempotent and quick once the
//! machine is ready.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod cmd;
mod deb;
mod demo;
mod disk;
mod fuzz;
mod setup;
mod test;
mod vm;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project tasks for the Margo egress gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker,
    /// cargo-fuzz, the kernels the VM runs boot).
    Setup,
    /// Set up, then build the gateway binary (with its eBPF object).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, then run every check and test: fmt, clippy, unit tests, root-only tests.
    Test,
    /// Set up, build, then run the root integration tests inside QEMU on
    /// other kernels (needs root; see "Tests on other kernels" in README.md).
    Vm(vm::Options),
    /// Checks that `vm` turns a kernel panic or a hung guest into a failed run.
    #[command(hide = true)]
    VmSelfCheck {
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// Only list the checks (libtest's `--list` format).
        #[arg(long)]
        list: bool,
    },
    /// Inside a test VM: run the plan the host wrote (started by the VM's /init).
    #[command(hide = true)]
    VmGuest {
        #[arg(long)]
        plan: std::path::PathBuf,
    },
    /// Run the cargo-fuzz (libFuzzer) targets in fuzz/, each for a bounded time; a crash
    /// fails the run and its input is kept in fuzz/regressions/ (needs cargo-fuzz and the
    /// nightly, which `setup` installs).
    Fuzz(fuzz::Options),
    /// Set up, build the gateway, then run the demo (needs root).
    Demo {
        /// Arguments passed on to the demo binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build the gateway (release, with its eBPF object), then the Debian package
    /// (cargo-deb): the binary, the margo-gateway systemd unit, the config, logrotate, man page.
    Deb(deb::Options),
    /// Set up, build the gateway (release), then measure it beside its peers (needs root);
    /// writes docs/BENCHMARKS.md and docs/benchmarks.json.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            // Not anyhow's Debug output: that adds a backtrace when RUST_BACKTRACE is set.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Setup => setup::run()?,
        Command::Build { release } => {
            setup::run_except_garage()?;
            let bin = build::gateway(release)?;
            println!("{}", bin.display());
        }
        Command::Test => return test::run(),
        Command::Vm(opts) => return vm::run(&opts),
        Command::VmSelfCheck { kernel, list } => return vm::self_check::run(&kernel, list),
        Command::VmGuest { plan } => return vm::guest::run(&plan),
        Command::Fuzz(opts) => return fuzz::run(&opts),
        Command::Demo { args } => demo::run(&args)?,
        Command::Bench(args) => bench::run(&args)?,
        Command::Deb(opts) => deb::run(&opts)?,
    }
    Ok(ExitCode::SUCCESS)
}
