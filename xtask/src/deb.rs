//! `cargo xtask deb`: the Debian package (issue 12 item 4).
//!
//! Builds the release gateway with its eBPF object, writes the man page
//! from the binary's own `--help` (so it matches by construction), and
//! packs both with the unit, the example config and the logrotate snippet
//! using cargo-deb (metadata in gateway/Cargo.toml, files in packaging/).
//! `--check` runs lintian and `systemd-analyze verify`; `--service-test`
//! installs the package in a container booted with systemd (see
//! `service_test`).
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd};

mod man;
pub mod service_test;

/// The unit's name (packaging/margo-gateway.service).
pub const UNIT: &str = "margo-gateway.service";

#[derive(clap::Args)]
pub struct Options {
    /// Then check the package: lintian (no errors) and `systemd-analyze
    /// verify` on its unit.
    #[arg(long)]
    pub check: bool,
    /// Then install it in a systemd-nspawn container booted with systemd
    /// and start, reload, stop and purge the service (needs root).
    #[arg(long)]
    pub service_test: bool,
    /// Check and test this package instead of building one.
    #[arg(long, value_name = "FILE")]
    pub deb: Option<PathBuf>,
}

pub fn run(opts: &Options) -> Result<()> {
    crate::setup::run_except_garage()?;
    let deb = match &opts.deb {
        Some(deb) => deb.clone(),
        None => build()?,
    };
    if opts.check {
        lintian(&deb)?;
        verify_unit(&deb)?;
    }
    if opts.service_test {
        service_test::run(&deb)?;
    }
    println!("{}", deb.display());
    Ok(())
}

/// Where the man page and the package are written: the workspace's
/// `target/margo-deb`, whatever the target directory, because the
/// package's assets (gateway/Cargo.toml) name the man page there.
fn out_dir() -> Result<PathBuf> {
    Ok(cmd::workspace_root().join("target/margo-deb"))
}

/// Builds the package; returns its path.
pub fn build() -> Result<PathBuf> {
    let bin = build::gateway(true)?;
    let out = out_dir()?;
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let page = man::page(&bin)?;
    let gz = out.join("gateway.8.gz");
    gzip(page.as_bytes(), &gz)?;
    // Old packages would be mistaken for this one by the checks.
    for entry in fs::read_dir(&out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    // --strip: the release profile keeps debug info for local backtraces
    // and profiles; the package ships the binary without it (lintian).
    println!("deb: cargo deb -p gateway --no-build --strip");
    let printed = cmd::stdout_of(
        cmd::cargo()
            .args(["deb", "-p", "gateway", "--no-build", "--strip", "--output"])
            .arg(&out),
    )
    .context("cargo-deb failed: check its output above (`cargo xtask setup` installs cargo-deb)")?;
    let deb = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo-deb printed no .deb path: {printed:?}"))?;
    if !deb.is_file() {
        bail!("cargo-deb named {} but it does not exist", deb.display());
    }
    Ok(deb)
}

/// `gzip -9n`: no name or time in the header, as Debian's tools write
/// man pages (lintian checks the compression).
fn gzip(data: &[u8], to: &Path) -> Result<()> {
    use std::io::Write as _;
    let mut child = cmd::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().context("waiting for gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writing to gzip panicked"))?
        .context("writing to gzip")?;
    if !out.status.success() {
        bail!("gzip exited with {}", out.status);
    }
    fs::write(to, out.stdout).with_context(|| format!("writing {}", to.display()))
}

/// lintian on the package: errors fail, warnings are printed.
pub fn lintian(deb: &Path) -> Result<()> {
    println!("deb: lintian {}", deb.display());
    let status = cmd::status(
        cmd::new("lintian")
            .args([
                "--fail-on",
                "error",
                "--display-info",
                "--tag-display-limit",
                "0",
            ])
            .arg(deb),
    )
    .context("running lintian (`cargo xtask setup` installs it)")?;
    if !status.success() {
        bail!(
            "lintian found errors in {} (tags above; E: lines)",
            deb.display()
        );
    }
    Ok(())
}

/// `systemd-analyze verify` on the unit as installed: the package is
/// unpacked into a directory given as `--root`, so `ExecStart=` and the
/// man page in `Documentation=` are the package's own. The units it
/// depends on (sysinit.target…) and `/bin/kill` (ExecReload) are the
/// host's, copied in beside it.
pub fn verify_unit(deb: &Path) -> Result<()> {
    let dir = out_dir()?.join("unpacked");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    cmd::run(cmd::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))
        .context("unpacking the package with dpkg-deb")?;
    let units = dir.join("usr/lib/systemd/system");
    fs::create_dir_all(&units)?;
    cmd::run(
        cmd::new("cp")
            .arg("-an")
            .arg("/usr/lib/systemd/system/.")
            .arg(&units),
    )
    .context("copying the host's systemd units beside the package's")?;
    fs::create_dir_all(dir.join("usr/bin"))?;
    fs::copy("/bin/kill", dir.join("usr/bin/kill")).context("copying /bin/kill")?;
    std::os::unix::fs::symlink("usr/bin", dir.join("bin"))?;
    let unit = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .map(|d| dir.join(d).join(UNIT))
        .find(|p| p.is_file())
        .with_context(|| format!("the package has no {UNIT} under /usr/lib/systemd/system"))?;
    println!("deb: systemd-analyze verify {}", unit.display());
    let out = cmd::output(
        cmd::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", dir.display()))
            .env("MANPATH", dir.join("usr/share/man"))
            .arg(&unit),
    )
    .context("running systemd-analyze (Debian package systemd)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{stderr}");
    // verify exits 0 on some warnings it prints; any line naming the unit
    // is a finding.
    let findings: Vec<&str> = stderr.lines().filter(|l| l.contains(UNIT)).collect();
    if !out.status.success() || !findings.is_empty() {
        bail!(
            "systemd-analyze verify found problems in {UNIT}: {}",
            if findings.is_empty() {
                format!("exit {}", out.status)
            } else {
                findings.join("; ")
            }
        );
    }
    Ok(())
}
