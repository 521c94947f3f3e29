//! Building the gateway binary (its build script builds the eBPF object).
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Cargo's target directory for this workspace (honours `CARGO_TARGET_DIR` and config).
pub fn target_dir() -> Result<PathBuf> {
    let json = cmd::stdout_of(cmd::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))
        .context("asking cargo for the target directory (`cargo metadata`): check that the workspace manifests parse")?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
    meta.get("target_directory")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .context("`cargo metadata` output has no target_directory")
}

/// `cargo build -p gateway [--release]`; returns the path of the binary.
pub fn gateway(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    println!(
        "build: cargo build -p gateway{}",
        if release { " --release" } else { "" }
    );
    let mut build = cmd::cargo();
    build.args(["build", "-p", "gateway"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build).context(
        "building the gateway failed: check the compiler output above (eBPF build errors: run `cargo xtask setup`)",
    )?;
    let bin = target_dir()?.join(profile).join("gateway");
    if !bin.is_file() {
        bail!(
            "cargo build succeeded but {} does not exist: check the gateway's [[bin]] target",
            bin.display()
        );
    }
    Ok(bin)
}
