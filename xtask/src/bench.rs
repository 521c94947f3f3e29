//! `cargo xtask bench`: build the gateway and run the benchmark binary
//! (`tests/src/bin/bench.rs`, root only), which builds a simulated site,
//! measures the gateway beside nginx, the distribution registry and a
//! direct transfer, prints the table and writes `docs/BENCHMARKS.md` and
//! `docs/benchmarks.json`.
//!
//! `--smoke` (tiny sizes, one run) writes into the target directory
//! instead, and is what `cargo xtask test` runs so the benchmark cannot rot.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, setup};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tiny sizes and one run (checks that the benchmark works; numbers
    /// are not meaningful). Writes into the target directory, not docs/.
    #[arg(long)]
    pub smoke: bool,
    /// Runs per figure (default 5; each figure is their median).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Blob size for the warm and cold sections, e.g. 1GiB, 256MiB.
    #[arg(long)]
    pub size: Option<String>,
    /// Connections section (f) holds open at once (default 10000; memory
    /// is also read at 1000 on the way).
    #[arg(long)]
    pub conns: Option<usize>,
    /// Sections to run, by issue letter (default: abcdefghi).
    #[arg(long)]
    pub sections: Option<String>,
    /// Record a profile of the gateway (`perf record`) during the first
    /// run of its heavy measurements, into this directory.
    #[arg(long, value_name = "DIR")]
    pub perf: Option<std::path::PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmark needs root (it creates network namespaces and loads eBPF: \
             CAP_NET_ADMIN, CAP_BPF); run `cargo xtask bench` as root"
        );
    }
    setup::run()?;
    // Real numbers need the optimised gateway; a smoke run only checks the code.
    let gateway = build::gateway(!args.smoke)?;
    let out = if args.smoke {
        build::target_dir()?.join("bench-smoke")
    } else {
        cmd::workspace_root().join("docs")
    };
    let mut extra = Vec::new();
    if let Some(n) = args.runs {
        extra.extend(["--runs".to_owned(), n.to_string()]);
    }
    if let Some(s) = &args.size {
        extra.extend(["--size".to_owned(), s.clone()]);
    }
    if let Some(n) = args.conns {
        extra.extend(["--conns".to_owned(), n.to_string()]);
    }
    if let Some(s) = &args.sections {
        extra.extend(["--sections".to_owned(), s.clone()]);
    }
    if let Some(dir) = &args.perf {
        extra.extend(["--perf".to_owned(), dir.display().to_string()]);
    }
    let mut c = command(&gateway, args.smoke, &out);
    c.args(&extra);
    println!("bench: {}", cmd::describe(&c));
    cmd::run(&mut c).context("the benchmark failed: see its output above")
}

/// `cargo run [--release] -p gateway-tests --bin bench -- [--smoke] --out DIR`
/// with `GATEWAY_BIN` set: also the smoke step of `cargo xtask test`.
pub fn command(gateway: &Path, smoke: bool, out: &Path) -> Command {
    let mut c = cmd::cargo();
    c.env("GATEWAY_BIN", gateway).arg("run");
    if !smoke {
        // The clients (handshakes, latency) must not be the bottleneck.
        c.arg("--release");
    }
    c.args(["-p", "gateway-tests", "--bin", "bench", "--"]);
    if smoke {
        c.arg("--smoke");
    }
    c.arg("--out").arg(out);
    c
}
