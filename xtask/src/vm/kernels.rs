//! The kernels the VM runs boot, and their cache.
//!
//! Each kernel is a Debian package, downloaded with `apt-get download` and
//! unpacked with `dpkg-deb -x` into `~/.cache/margo-gateway/kernels/<name>`
//! (never installed). `cargo xtask setup` does that once; a kernel already
//! unpacked is left alone, so setup stays quick. To move a kernel to a newer
//! Debian build, delete its directory and run setup again.
//!
//! To add a kernel, add a [`KernelSpec`] to [`KERNELS`]: `cargo xtask setup`
//! fetches it, `cargo xtask vm` and `cargo xtask test` boot it.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// A kernel the VM runs can boot.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec {
    /// Its name on the command line (`cargo xtask vm --kernel 6.1`).
    pub name: &'static str,
    /// The Debian package that names the build: a meta package (resolved to
    /// the `linux-image-<abi>-…` package it depends on) or a concrete one.
    pub package: &'static str,
    /// Why the project tests on it.
    pub why: &'static str,
}

/// Every kernel `cargo xtask vm` boots by default, oldest first.
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "6.1",
        package: "linux-image-cloud-amd64",
        why: "Debian 12's own kernel: no TCX, so the gateway attaches with netlink clsact",
    },
    KernelSpec {
        name: "6.12",
        package: "linux-image-6.12-cloud-amd64",
        why: "Debian 12's newer kernel line (6.6+): the gateway attaches with TCX",
    },
];

/// The spec called `name`; the error lists the known names.
pub fn spec(name: &str) -> Result<&'static KernelSpec> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        format!(
            "no kernel called {name:?}: known kernels are {} (the list is KERNELS in xtask/src/vm/kernels.rs)",
            known.join(", ")
        )
    })
}

/// `~/.cache/margo-gateway/kernels`.
pub fn cache_root() -> Result<PathBuf> {
    Ok(cmd::home_dir()?.join(".cache/margo-gateway/kernels"))
}

/// An unpacked kernel, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    /// The concrete Debian package and its version.
    pub package: String,
    pub version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` in the unpacked package.
    pub modules: PathBuf,
}

/// The file whose presence says a kernel directory is complete (written last).
const MARKER: &str = "kernel.json";

/// The unpacked kernel for `spec`; an error says to run setup if it is missing.
pub fn load(spec: &KernelSpec) -> Result<Kernel> {
    let dir = cache_root()?.join(spec.name);
    read_unpacked(spec.name, &dir)?.with_context(|| {
        format!(
            "kernel {} is not unpacked in {}: run `cargo xtask setup` (it downloads {})",
            spec.name,
            dir.display(),
            spec.package
        )
    })
}

/// Reads the marker of an unpacked kernel; `None` if there is none.
fn read_unpacked(name: &str, dir: &Path) -> Result<Option<Kernel>> {
    let marker = dir.join(MARKER);
    let text = match fs::read_to_string(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", marker.display()))?;
    let field = |key: &str| -> Result<String> {
        v[key].as_str().map(str::to_owned).with_context(|| {
            format!(
                "{} has no {key:?}: delete {} and run `cargo xtask setup`",
                marker.display(),
                dir.display()
            )
        })
    };
    let release = field("release")?;
    let kernel = Kernel {
        name: name.to_owned(),
        package: field("package")?,
        version: field("version")?,
        vmlinuz: dir.join("boot").join(format!("vmlinuz-{release}")),
        modules: dir.join("lib/modules").join(&release),
        release,
    };
    for path in [&kernel.vmlinuz, &kernel.modules] {
        if !path.exists() {
            bail!(
                "{} is missing from the unpacked kernel: delete {} and run `cargo xtask setup`",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(Some(kernel))
}

/// Makes sure `spec` is unpacked in the cache: nothing to do when it is,
/// otherwise download and unpack it. Used by `cargo xtask setup`.
pub fn ensure(spec: &KernelSpec) -> Result<Kernel> {
    let root = cache_root()?;
    let dir = root.join(spec.name);
    if let Some(k) = read_unpacked(spec.name, &dir)? {
        return Ok(k);
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let package = resolve_package(spec.package)?;
    println!(
        "setup: kernel {}: downloading {package} (apt-get download)",
        spec.name
    );
    // A fresh scratch directory: a run that died half way leaves only this.
    let scratch = root.join(format!(".{}.partial", spec.name));
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    let unpacked = scratch.join("root");
    fs::create_dir_all(&unpacked).with_context(|| format!("creating {}", unpacked.display()))?;
    // The download runs as root without apt's `_apt` sandbox user, which
    // could not write into this root-owned directory anyway.
    cmd::run(cmd::new("apt-get").current_dir(&scratch).args([
        "-q",
        "-o",
        "APT::Sandbox::User=root",
        "download",
        &package,
    ]))
    .with_context(|| format!("downloading {package} failed: check the apt output above"))?;
    let deb = find_deb(&scratch)?;
    let version = cmd::stdout_of(cmd::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
        .trim()
        .to_owned();
    cmd::run(cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let release = single_release(&unpacked.join("lib/modules"))?;
    let marker = serde_json::json!({
        "name": spec.name,
        "package": package,
        "version": version,
        "release": release,
    });
    fs::write(
        unpacked.join(MARKER),
        serde_json::to_string_pretty(&marker)?,
    )
    .context("writing the kernel marker")?;
    if dir.exists() {
        // Left by an older layout or a broken unpack (no valid marker).
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&unpacked, &dir)
        .with_context(|| format!("moving {} to {}", unpacked.display(), dir.display()))?;
    fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    read_unpacked(spec.name, &dir)?
        .with_context(|| format!("{} has no marker after unpacking", dir.display()))
}

/// The concrete `linux-image-…` package `package` stands for: itself if it
/// ships a kernel, else the image package the meta package depends on.
/// Runs `apt-get update` once if apt does not know the package.
fn resolve_package(package: &str) -> Result<String> {
    let depends = |refresh: bool| -> Result<Option<String>> {
        if refresh {
            if !cmd::is_root() {
                bail!(
                    "apt does not know {package}; `apt-get update` needs root: run `cargo xtask setup` as root"
                );
            }
            cmd::run(cmd::new("apt-get").args(["-q", "update"]))
                .context("apt-get update failed: check the machine's apt sources")?;
        }
        let out = cmd::output(cmd::new("apt-cache").args(["depends", package]))?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    let listing = match depends(false)? {
        Some(l) => l,
        None => depends(true)?.with_context(|| {
            format!("apt does not know {package} even after `apt-get update`: check the apt sources (Debian 12 main)")
        })?,
    };
    Ok(image_dependency(&listing).unwrap_or_else(|| package.to_owned()))
}

/// The `linux-image-…` package a meta package's `apt-cache depends` listing
/// names, if any.
fn image_dependency(listing: &str) -> Option<String> {
    listing.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        (dep.starts_with("linux-image-") && !dep.ends_with("-dbg")).then(|| dep.to_owned())
    })
}

fn find_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    match debs.len() {
        1 => Ok(debs.remove(0)),
        n => bail!(
            "expected one .deb in {} after apt-get download, found {n}",
            dir.display()
        ),
    }
}

/// The one `lib/modules/<release>` directory of an unpacked kernel package.
fn single_release(modules_root: &Path) -> Result<String> {
    let mut releases: Vec<String> = fs::read_dir(modules_root)
        .with_context(|| {
            format!(
                "listing {} (is this a kernel image package?)",
                modules_root.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!(
            "expected one kernel release in {}, found {n}: {releases:?}",
            modules_root.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_known() -> Result<()> {
        let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len());
        assert_eq!(spec("6.1")?.package, "linux-image-cloud-amd64");
        let err = format!("{:#}", spec("4.19").expect_err("4.19 is not in the list"));
        assert!(err.contains("6.1, 6.12"), "{err}");
        Ok(())
    }

    #[test]
    fn meta_package_resolves_to_its_image() {
        let listing = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            image_dependency(listing).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let concrete = "linux-image-6.1.0-56-cloud-amd64\n  Depends: kmod\n  Depends: linux-base\n";
        assert_eq!(image_dependency(concrete), None);
    }

    #[test]
    fn reads_a_complete_unpack_only() -> Result<()> {
        let dir = crate::vm::test_dir("kernels")?;
        assert!(read_unpacked("6.1", &dir)?.is_none());
        fs::create_dir_all(dir.join("boot"))?;
        fs::create_dir_all(dir.join("lib/modules/6.1.0-1-cloud-amd64"))?;
        fs::write(
            dir.join(MARKER),
            r#"{"package":"linux-image-6.1.0-1-cloud-amd64","version":"6.1.1-1","release":"6.1.0-1-cloud-amd64"}"#,
        )?;
        // The marker names a vmlinuz that is not there.
        assert!(read_unpacked("6.1", &dir).is_err());
        fs::write(dir.join("boot/vmlinuz-6.1.0-1-cloud-amd64"), b"")?;
        let k = read_unpacked("6.1", &dir)?.context("complete")?;
        assert_eq!(k.release, "6.1.0-1-cloud-amd64");
        assert_eq!(
            single_release(&dir.join("lib/modules"))?,
            "6.1.0-1-cloud-amd64"
        );
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
