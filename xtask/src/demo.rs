//! `cargo xtask demo`: build the gateway and run the demo (root only).
use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, setup};

pub fn run(args: &[String]) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the demo needs root (it creates network namespaces and loads eBPF: CAP_NET_ADMIN, CAP_BPF); \
             run `cargo xtask demo` as root"
        );
    }
    // Everything but Garage: only the shared-store tests and bench use it.
    setup::run_except_garage()?;
    let bin = build::gateway(false)?;
    println!(
        "demo: cargo run -p gateway-tests --bin demo (GATEWAY_BIN={})",
        bin.display()
    );
    cmd::run(
        cmd::cargo()
            .env("GATEWAY_BIN", &bin)
            .args(["run", "-p", "gateway-tests", "--bin", "demo", "--"])
            .args(args),
    )
    .context("the demo failed: check its output above (does tests/ have a `demo` binary yet?)")
}
