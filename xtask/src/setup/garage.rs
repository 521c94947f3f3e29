//! Garage, the S3-compatible distributed store the shared-store tests run
//! as a three-node cluster (tests/src/garage.rs, issue 16), built from
//! crates.io into cargo's bin dir, beside bpf-linker.
//!
//! Only what the tests use: the S3 API and the LMDB metadata engine
//! (`--no-default-features --features bundled-libs,lmdb`: no SQLite, K2V
//! or metrics exporter), as a debug build without debug info. Measured on
//! the 2-core machine: about 4 minutes of wall time with the cores shared;
//! a release build takes several times longer, and the tests' objects are
//! small. `cargo xtask test` starts it in the background at the lowest CPU
//! priority (see [`install_command`]) and waits for it only before the
//! root tests.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

pub const VERSION: &str = "2.5.0";
const FEATURES: &str = "bundled-libs,lmdb";

/// Where `cargo install` puts it (the tests look there too, and `cargo
/// xtask vm` passes it to the guests as `GARAGE_BIN`).
pub fn path() -> Result<PathBuf> {
    Ok(cmd::cargo_home()?.join("bin/garage"))
}

/// Whether `garage --version` output (`garage cargo:2.5.0 [features: …]`)
/// names [`VERSION`].
pub fn is_wanted(version_output: &str) -> bool {
    version_output.split_whitespace().any(|w| {
        let w = w.strip_prefix("cargo:").unwrap_or(w);
        w.strip_prefix('v').unwrap_or(w) == VERSION
    })
}

/// The installed garage's version line, if it runs.
pub fn installed_version() -> Option<String> {
    let out = cmd::output(cmd::new(path().ok()?).arg("--version")).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether the wanted version is installed.
pub fn is_installed() -> bool {
    installed_version().is_some_and(|v| is_wanted(&v))
}

/// `cargo install garage …`. Its own temporary target directory
/// (`CARGO_TARGET_DIR` removed): in the workspace's, its debug build would
/// hold the lock of the directory the project's own debug builds use.
pub fn install_command() -> Command {
    let mut c = cmd::cargo();
    c.env_remove("CARGO_TARGET_DIR")
        // No debug info: measured, a 95 MB binary instead of 350 MB (the
        // VMs read it over virtiofs) and an eighth less CPU time.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .args([
            "install",
            "garage",
            "--version",
            VERSION,
            "--locked",
            "--force",
        ])
        .args(["--debug", "--no-default-features", "--features", FEATURES]);
    c
}

/// Checks what the build left: an error unless the wanted version runs.
pub fn check_built() -> Result<()> {
    match installed_version() {
        Some(v) if is_wanted(&v) => {
            println!("setup: garage installed ({v})");
            Ok(())
        }
        other => bail!(
            "garage was built but `{} --version` gives {other:?}",
            path()?.display()
        ),
    }
}

/// The foreground step of `cargo xtask setup`.
pub fn ensure() -> Result<()> {
    let current = installed_version();
    if let Some(v) = current.as_deref().filter(|v| is_wanted(v)) {
        println!("setup: garage ok ({v})");
        return Ok(());
    }
    println!(
        "setup: building garage {VERSION} (found: {}); this takes about 4 minutes",
        current.as_deref().unwrap_or("none")
    );
    cmd::run(&mut install_command()).context(
        "building garage failed: check the cargo output above (crates.io reachable? a C compiler for LMDB and libsodium?)",
    )?;
    check_built()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check() {
        assert!(is_wanted(
            "garage cargo:2.5.0 [features: bundled-libs, lmdb]"
        ));
        assert!(is_wanted("garage v2.5.0"));
        assert!(!is_wanted("garage cargo:2.5.1 [features: lmdb]"));
        assert!(!is_wanted("garage cargo:12.5.0"));
        assert!(!is_wanted(""));
    }

    #[test]
    fn install_uses_a_target_dir_of_its_own() {
        let c = install_command();
        let removed = c
            .get_envs()
            .any(|(k, v)| k == "CARGO_TARGET_DIR" && v.is_none());
        assert!(removed);
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.windows(2).any(|w| w == ["--version", VERSION]));
    }
}
