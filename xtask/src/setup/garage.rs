//! Garage, the S3-compatible distributed store the shared-store tests run
//! as a three-node cluster (tests/src/garage.rs, issue 16), built from
//! crates.io into cargo's bin dir, beside bpf-linker.
//!
//! Only what the tests use: the S3 API and the LMDB metadata engine
//! (`--no-default-features --features lmdb,system-libs`: no SQLite, K2V
//! or metrics exporter), linked to the system's libsodium and zstd
//! (Debian's `-dev` packages, see `DEBIAN_PACKAGES`) rather than
//! compiling its bundled copies, in the dev profile without debug info:
//! its dependencies at opt-level 1, Garage's own crates at opt-level 0,
//! build scripts and proc macros at cargo's default for them (0).
//! Measured on the 2-core machine:
//! - everything at opt-level 1, bundled libraries: 11 min of CPU, 10.6 min
//!   wall at nice 19, most of it one long chain (libsodium's configure and
//!   make 126 s, `garage_model` alone 195 s, then the API crates);
//!   `shared_store` under TCG 68–98 s.
//! - this build: 8 min of CPU, 5.5 min wall at nice 19 (`garage_model`
//!   24 s); `shared_store` under TCG 91–141 s. That was with a
//!   `package."*"` override, which also built the build scripts and proc
//!   macros at opt-level 1; through the profile's own level they keep
//!   cargo's 0: 6.0 min of CPU (3.75 min wall beside a debug build). In
//!   one CI run (kernel 6.12) a store call just after a node was killed
//!   outlasted the gateway's 5 s store deadline, so under TCG the test
//!   gives its gateways 15 s.
//! - everything at opt-level 0: 3.2 min of CPU, but under TCG the nodes
//!   took 75 s to answer and 217 s to take a layout and a bucket, past
//!   the test's bounds: the dependencies (tokio, hashing, serialisation)
//!   carry the hot paths.
//!
//! `cargo xtask test` builds it in the background (see
//! [`install_command`]), at the lowest CPU priority until its root tests,
//! and runs the root tests on it after the others. A stamp file records
//! what was built, so a garage built otherwise (other settings, by hand)
//! is rebuilt once.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

pub const VERSION: &str = "2.5.0";
const FEATURES: &str = "lmdb,system-libs";
/// The dev profile's opt-level, which the dependencies take (see the
/// module doc); build scripts and proc macros keep `build-override`'s 0.
const DEPS_OPT_LEVEL: &str = "1";
/// Garage's own crates, built at opt-level 0 (see the module doc).
const OWN_CRATES: &[&str] = &[
    "garage",
    "garage_api_admin",
    "garage_api_common",
    "garage_api_s3",
    "garage_block",
    "garage_db",
    "garage_model",
    "garage_net",
    "garage_rpc",
    "garage_table",
    "garage_util",
    "garage_web",
];
/// What the stamp file says after a build with these settings.
fn build_id() -> String {
    format!(
        "garage {VERSION} features {FEATURES} dev opt-level {DEPS_OPT_LEVEL}, own crates 0, build scripts and proc macros 0, debug 0\n"
    )
}

/// The stamp file: written after a successful build.
fn stamp_path() -> Result<PathBuf> {
    Ok(cmd::home_dir()?.join(".cache/margo-gateway/garage-build"))
}

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

/// Whether the wanted version is installed, built as [`install_command`]
/// builds it.
pub fn is_installed() -> bool {
    let stamped = stamp_path()
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|s| s == build_id());
    stamped && installed_version().is_some_and(|v| is_wanted(&v))
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
        // The profile's own level, not a `package."*"` override: that one
        // outranks `build-override` and would build every build script
        // and proc macro at opt-level 1 too, CPU spent on code that runs
        // once at build time. Garage's own crates are set back to 0 below.
        .env("CARGO_PROFILE_DEV_OPT_LEVEL", DEPS_OPT_LEVEL)
        // Built once, never rebuilt in place: incremental compilation's
        // bookkeeping would be pure cost.
        .env("CARGO_PROFILE_DEV_INCREMENTAL", "false")
        .args([
            "install",
            "garage",
            "--version",
            VERSION,
            "--locked",
            "--force",
        ])
        .args(["--debug", "--no-default-features", "--features", FEATURES]);
    for krate in OWN_CRATES {
        c.arg("--config")
            .arg(format!("profile.dev.package.{krate}.opt-level=0"));
    }
    c
}

/// Checks what the build left: an error unless the wanted version runs;
/// then stamps it.
pub fn check_built() -> Result<()> {
    match installed_version() {
        Some(v) if is_wanted(&v) => {
            let stamp = stamp_path()?;
            if let Some(dir) = stamp.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&stamp, build_id())
                .with_context(|| format!("writing {}", stamp.display()))?;
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
    if is_installed() {
        println!("setup: garage ok ({})", current.as_deref().unwrap_or("?"));
        return Ok(());
    }
    println!(
        "setup: building garage {VERSION} (found: {}); this takes about 5 minutes",
        current.as_deref().unwrap_or("none")
    );
    cmd::run(&mut install_command()).context(
        "building garage failed: check the cargo output above (crates.io reachable? a C compiler for LMDB? libsodium-dev, libzstd-dev and pkg-config, which `cargo xtask setup` installs?)",
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
        assert!(
            args.iter()
                .any(|a| a == "profile.dev.package.garage_model.opt-level=0")
        );
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("profile.dev.package.\"*\"")),
            "a \"*\" override would outrank build-override"
        );
        assert!(c.get_envs().any(|(k, v)| {
            k == "CARGO_PROFILE_DEV_OPT_LEVEL" && v == Some(std::ffi::OsStr::new(DEPS_OPT_LEVEL))
        }));
    }
}
