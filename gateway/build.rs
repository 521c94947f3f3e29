//! Builds the eBPF object with aya-build (nightly, bpf-linker) and places it
//! in `OUT_DIR` for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` (check-only builds, clippy) an empty object is
//! written instead; loading it fails loudly at run time.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("gateway");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }
    let package = aya_build::Package {
        name: "gateway-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
        .context("building the eBPF program (run `cargo xtask setup` if bpf-linker or the nightly's rust-src is missing)")
}
