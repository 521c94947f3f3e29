//! `cargo xtask setup`: make this machine able to build and test the project.
//!
//! Idempotent: every step checks first and does nothing when already done, so
//! a second run takes a few seconds.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, vm};

pub mod garage;

/// Debian packages the project needs, by purpose.
const DEBIAN_PACKAGES: &[&str] = &[
    // Network namespaces, veth pairs and TC qdiscs/filters (`ip`, `tc`).
    "iproute2",
    // `modprobe` for sch_ingress/cls_bpf/veth; kernel modules for the VM initramfs.
    "kmod",
    // Real clients for tests and benchmarks (wget: the files sites'
    // resumed downloads, `wget -c`).
    "curl",
    "wget",
    "git",
    "skopeo",
    "podman",
    // Real peers for tests and benchmarks: an OCI registry and an HTTP(S) server.
    "docker-registry",
    "nginx",
    // The corporate proxy of the upstream_proxy test (a squid of the test's
    // own in a namespace). The package's own squid.service, which listens
    // on port 3128 of every address, is stopped and disabled right after
    // (`quiet_squid_service`); installed rather than unpacked (as
    // prometheus is) because squid needs its library dependencies and its
    // basic_ncsa_auth helper.
    "squid",
    // Benchmarks (`cargo xtask bench`): TCP throughput of a passthrough
    // flow; `perf record` for `--perf`.
    "iperf3",
    "linux-perf",
    // The DNS section of the benchmark asks the gateway and dnsmasq with
    // dnsperf.
    "dnsperf",
    // VM runs: a static userland and `cpio` for the initramfs, `xz` to
    // unpack the kernels' modules, QEMU (TCG) to boot it, with virtiofsd
    // (in qemu-system-common) to share the host's root with the guest.
    "busybox-static",
    "cpio",
    "xz-utils",
    "qemu-system-x86",
    // Reading JSON (registry APIs, gateway output) in scripts and demos.
    "jq",
    // Devices on a real site: `dig` asks the gateway's DNS over UDP and TCP,
    // `chronyd -Q` asks its time server, dnsmasq is the wrong resolver a
    // device's resolv.conf names, and containerd (`ctr`) is the stock
    // container runtime that pulls with no configuration.
    "bind9-dnsutils",
    "chrony",
    "dnsmasq-base",
    "containerd",
    // `gateway flows --html`: the page is opened in headless Chromium to
    // check what it shows.
    "chromium",
    // The Debian package (`cargo xtask deb`): lintian checks it,
    // `systemd-analyze verify` its unit, and the service test boots a
    // systemd-nspawn container to install and run it in.
    "lintian",
    "systemd",
    "systemd-container",
    // Garage's build (xtask/src/setup/garage.rs, feature `system-libs`)
    // links the system's libsodium and zstd, found with pkg-config,
    // instead of configuring and compiling its bundled copies: minutes
    // of one core at the head of its build, and the system's are built
    // optimised.
    "libsodium-dev",
    "libzstd-dev",
    "pkg-config",
    // The gateway binary links the system's jemalloc by name
    // (gateway/src/allocator.rs): the -dev package has the link-time
    // `libjemalloc.so`, and pulls in the runtime `libjemalloc2` that the
    // Debian package then depends on.
    "libjemalloc-dev",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, for `cargo xtask fuzz` (it builds with the nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// cargo-deb, for `cargo xtask deb` (3.8 builds with stable 1.95).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// The nightly's LLVM major version; bpf-linker's cargo feature matches it.
const LLVM_MAJOR: &str = "22";

pub fn run() -> Result<()> {
    run_except_garage()?;
    garage::ensure()
}

/// Every step but Garage's build, which `cargo xtask test` runs in the
/// background instead (see [`garage`]).
pub fn run_except_garage() -> Result<()> {
    debian_packages()?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    vm_kernels()?;
    prometheus_tools()?;
    cargo_deb()?;
    Ok(())
}

/// What `cargo xtask fuzz` needs: the nightly and cargo-fuzz.
pub fn fuzz_tools() -> Result<()> {
    nightly()?;
    cargo_fuzz()
}

/// Whether `cargo fuzz --version` output names [`CARGO_FUZZ_VERSION`].
fn is_wanted_cargo_fuzz(version_output: &str) -> bool {
    version_output.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION)
}

fn cargo_fuzz_version() -> Option<String> {
    let out = cmd::output(cmd::new("cargo").args(["fuzz", "--version"])).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn cargo_fuzz() -> Result<()> {
    let current = cargo_fuzz_version();
    if let Some(v) = current.as_deref().filter(|v| is_wanted_cargo_fuzz(v)) {
        println!("setup: cargo-fuzz ok ({v})");
        return Ok(());
    }
    println!(
        "setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (found: {}); this takes about 2 minutes",
        current.as_deref().unwrap_or("none")
    );
    cmd::run(cmd::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ]))
    .context("building cargo-fuzz failed: check the cargo output above (crates.io reachable?)")?;
    match cargo_fuzz_version() {
        Some(v) if is_wanted_cargo_fuzz(&v) => {
            println!("setup: cargo-fuzz installed ({v})");
            Ok(())
        }
        other => bail!(
            "cargo-fuzz was built but `cargo fuzz --version` gives {other:?}: check that {} is on PATH",
            cmd::cargo_home()?.join("bin").display()
        ),
    }
}

/// The installed cargo-deb's version (`cargo deb --version` prints `3.8.0`).
fn cargo_deb_version() -> Option<String> {
    let out = cmd::output(cmd::new("cargo").args(["deb", "--version"])).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn is_wanted_cargo_deb(version_output: &str) -> bool {
    version_output
        .split_whitespace()
        .any(|w| w.trim_start_matches('v') == CARGO_DEB_VERSION)
}

/// cargo-deb, pinned: `cargo xtask deb` packs the gateway with it.
fn cargo_deb() -> Result<()> {
    let current = cargo_deb_version();
    if let Some(v) = current.as_deref().filter(|v| is_wanted_cargo_deb(v)) {
        println!("setup: cargo-deb ok ({v})");
        return Ok(());
    }
    println!(
        "setup: building cargo-deb {CARGO_DEB_VERSION} (found: {}); this takes about 4 minutes",
        current.as_deref().unwrap_or("none")
    );
    cmd::run(cmd::new("cargo").args([
        "install",
        "--locked",
        "--force",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
    ]))
    .context("building cargo-deb failed: check the cargo output above (crates.io reachable?)")?;
    match cargo_deb_version() {
        Some(v) if is_wanted_cargo_deb(&v) => {
            println!("setup: cargo-deb installed ({v})");
            Ok(())
        }
        other => bail!(
            "cargo-deb was built but `cargo deb --version` gives {other:?}: check that {} is on PATH",
            cmd::cargo_home()?.join("bin").display()
        ),
    }
}

/// The kernels `cargo xtask vm` boots, unpacked once into the cache.
fn vm_kernels() -> Result<()> {
    for spec in vm::kernels::KERNELS {
        let k = vm::kernels::ensure(spec)
            .with_context(|| format!("getting kernel {} ({})", spec.name, spec.package))?;
        println!(
            "setup: kernel {} ok ({} {})",
            spec.name, k.package, k.version
        );
    }
    Ok(())
}

/// Where `prometheus_tools` unpacks Debian's `prometheus` package; the
/// tests (tests/src/prometheus.rs) look for `usr/bin/promtool` and
/// `usr/bin/prometheus` under it.
fn prometheus_dir() -> PathBuf {
    cmd::workspace_root().join("target/tools/prometheus")
}

/// Prometheus and promtool for the metrics test, unpacked into
/// target/tools and never installed: installing the package would start a
/// Prometheus server in the machine's own namespace under systemd.
fn prometheus_tools() -> Result<()> {
    let dir = prometheus_dir();
    let bins = ["prometheus", "promtool"].map(|b| dir.join("usr/bin").join(b));
    if bins.iter().all(|b| b.is_file()) {
        println!("setup: prometheus tools ok");
        return Ok(());
    }
    let download = cmd::workspace_root().join("target/tools/prometheus-deb");
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    println!("setup: downloading Debian's prometheus package (unpacked, not installed)");
    cmd::run(
        cmd::new("apt-get")
            .current_dir(&download)
            .args(["download", "prometheus"]),
    )
    .context("`apt-get download prometheus` failed: check the apt sources (run `apt-get update` as root)")?;
    let deb = fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("no .deb in {} after apt-get download", download.display()))?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    cmd::run(cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))
        .context("unpacking the prometheus package with dpkg-deb failed")?;
    if let Some(missing) = bins.iter().find(|b| !b.is_file()) {
        bail!(
            "the prometheus package did not contain {}",
            missing.display()
        );
    }
    println!("setup: prometheus tools unpacked in {}", dir.display());
    Ok(())
}

fn is_installed(package: &str) -> Result<bool> {
    let out = cmd::output(cmd::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .context("checking Debian packages needs dpkg-query: this setup supports Debian 12")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

/// Stops and disables Debian's squid.service, exactly that unit, when
/// systemd runs it: the tests start their own squid inside a namespace,
/// and a proxy listening in the root namespace is nothing this project
/// should leave behind. Without systemd, invoke-rc.d starts no service in
/// a container (no runlevel), and there is nothing to stop.
fn quiet_squid_service() -> Result<()> {
    if !Path::new("/run/systemd/system").exists() || !is_installed("squid")? {
        return Ok(());
    }
    let enabled =
        cmd::status(cmd::new("systemctl").args(["is-enabled", "--quiet", "squid.service"]))?;
    let active =
        cmd::status(cmd::new("systemctl").args(["is-active", "--quiet", "squid.service"]))?;
    if !enabled.success() && !active.success() {
        return Ok(());
    }
    println!(
        "setup: stopping and disabling the squid package's own service (the tests run their own)"
    );
    cmd::run(cmd::new("systemctl").args(["disable", "--now", "squid.service"]))
        .context("`systemctl disable --now squid.service` failed")
}

fn debian_packages() -> Result<()> {
    install_debian_packages()?;
    if cmd::is_root() {
        quiet_squid_service()?;
    }
    Ok(())
}

fn install_debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for package in DEBIAN_PACKAGES {
        if !is_installed(package)? {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        println!("setup: debian packages ok");
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages: {}; installing them needs root: run `cargo xtask setup` as root \
             (or `apt-get install {}` as root)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup: installing debian packages: {}", missing.join(" "));
    cmd::run(cmd::new("apt-get").arg("update"))
        .context("apt-get update failed: check the machine's apt sources and network")?;
    cmd::run(
        cmd::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .context("installing Debian packages failed: check the apt output above")?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !matches!(is_installed(p), Ok(true)))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these packages are still not installed: {}",
            still.join(" ")
        );
    }
    println!("setup: debian packages installed");
    Ok(())
}

fn nightly() -> Result<()> {
    let version = cmd::stdout_of(cmd::new("rustup").args(["run", "nightly", "rustc", "--version"]))
        .context(
            "the nightly toolchain is missing or broken (`rustup run nightly rustc --version` failed); \
             it builds the eBPF program and cannot be downloaded on this machine: check `rustup toolchain list`",
        )?;
    println!("setup: nightly toolchain ok ({})", version.trim());
    Ok(())
}

fn has_rust_src(installed_components: &str) -> bool {
    installed_components
        .lines()
        .any(|l| l.split_whitespace().next() == Some("rust-src"))
}

fn rust_src() -> Result<()> {
    let installed = cmd::stdout_of(cmd::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("listing the nightly toolchain's components")?;
    if has_rust_src(&installed) {
        println!("setup: nightly rust-src ok");
        return Ok(());
    }
    println!("setup: installing rust-src for nightly");
    cmd::run(cmd::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to the nightly toolchain failed: check rustup's output above")?;
    Ok(())
}

/// Whether `bpf-linker --version` output names the wanted 0.13.x line.
fn is_wanted_bpf_linker(version_output: &str) -> bool {
    let line = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(l, _)| l);
    version_output.split_whitespace().any(|w| {
        w.strip_prefix(line)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The installed bpf-linker's version line, if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = cmd::output(cmd::new("bpf-linker").arg("--version")).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The nightly's `libLLVM.so.<major>*` in `lib_dir`.
fn find_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{LLVM_MAJOR}");
    let mut found: Vec<PathBuf> = fs::read_dir(lib_dir)
        .with_context(|| {
            format!(
                "listing {} (the nightly's lib directory)",
                lib_dir.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.into_iter().next().with_context(|| {
        format!(
            "no {prefix}* in {}: bpf-linker {BPF_LINKER_VERSION} needs the nightly's LLVM {LLVM_MAJOR}; \
             check that `rustc +nightly --version --verbose` reports LLVM {LLVM_MAJOR}",
            lib_dir.display()
        )
    })
}

/// Replaces whatever is at `link` with a symlink to `target`.
fn force_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing old {}", link.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

fn bpf_linker() -> Result<()> {
    let current = bpf_linker_version();
    if let Some(v) = current.as_deref().filter(|v| is_wanted_bpf_linker(v)) {
        println!("setup: bpf-linker ok ({v})");
        return Ok(());
    }
    let prefix = cmd::home_dir()?.join(".cache/margo-gateway/llvm");
    let sysroot = cmd::stdout_of(cmd::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("finding the nightly's sysroot (`rustc +nightly --print sysroot`)")?;
    let so = find_libllvm(&Path::new(sysroot.trim()).join("lib"))?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    force_symlink(&so, &lib.join("libLLVM.so"))?;
    let name = so.file_name().context("libLLVM path has no file name")?;
    force_symlink(&so, &lib.join(name))?;

    match current {
        Some(v) => println!("setup: replacing {v} with bpf-linker {BPF_LINKER_VERSION}"),
        None => println!("setup: bpf-linker {BPF_LINKER_VERSION} not found"),
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {LLVM_MAJOR} \
         ({}); this takes about 4 minutes",
        so.display()
    );
    // --force: an installed but broken 0.13.0 (e.g. its libLLVM link gone) must be rebuilt.
    cmd::run(
        cmd::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
            .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")]),
    )
    .context("building bpf-linker failed: check the cargo output above (crates.io reachable? LLVM_PREFIX links valid?)")?;
    match bpf_linker_version() {
        Some(v) if is_wanted_bpf_linker(&v) => {
            println!("setup: bpf-linker installed ({v})");
            Ok(())
        }
        other => bail!(
            "bpf-linker was built but `bpf-linker --version` gives {other:?}: check that {} is on PATH \
             and that {} points at the nightly's libLLVM",
            cmd::cargo_home()?.join("bin").display(),
            lib.join("libLLVM.so").display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_linker_version_check() {
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.0"));
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.2\n"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.9.13"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.130.0"));
        assert!(!is_wanted_bpf_linker("bpf-linker 1.13.0"));
        assert!(!is_wanted_bpf_linker(""));
    }

    #[test]
    fn cargo_fuzz_version_check() {
        assert!(is_wanted_cargo_fuzz("cargo-fuzz 0.13.2\n"));
        assert!(!is_wanted_cargo_fuzz("cargo-fuzz 0.13.1"));
        assert!(!is_wanted_cargo_fuzz("cargo-fuzz 0.13.20"));
        assert!(!is_wanted_cargo_fuzz(""));
    }

    #[test]
    fn rust_src_detection() {
        let listed = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_rust_src(listed));
        assert!(!has_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn finds_libllvm_and_links_it() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-setup-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        assert!(find_libllvm(&dir).is_err());
        for name in [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-x.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
        ] {
            fs::write(dir.join(name), b"")?;
        }
        let so = find_libllvm(&dir)?;
        assert_eq!(so, dir.join("libLLVM.so.22.1-rust-1.97.0-nightly"));
        let link = dir.join("libLLVM.so");
        force_symlink(Path::new("/nonexistent"), &link)?;
        force_symlink(&so, &link)?; // replaces the dangling link
        assert_eq!(fs::read_link(&link)?, so);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn package_list_has_no_duplicates() {
        let mut sorted = DEBIAN_PACKAGES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DEBIAN_PACKAGES.len());
    }
}
