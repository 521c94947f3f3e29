//! The VM's initramfs: busybox, the kernel's own modules the run needs, and
//! a small `/init` that builds the root filesystem and starts the runner.
//!
//! The root filesystem is the host's, shared read-only over virtiofs (see
//! `share.rs`) under a tmpfs overlay, so every host tool and library the
//! tests use (iproute2, curl, skopeo, the registry, …) is there unchanged,
//! and the tests may write anywhere without touching the host. Only `/run`
//! is replaced (by an empty tmpfs), besides the kernel's own filesystems;
//! in it, the tests' temp dir ([`super::guest::TEST_TMPDIR`]) is a tmpfs of
//! its own, which (unlike the overlay root) can hold an overlay's upper dir.
//! `/etc/netns`, which the host's own test runs change, is a tmpfs too.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;
use crate::cmd;

/// Modules the run needs, by name; their dependencies are added.
/// Built-in ones (as on 6.12 for virtio/virtiofs) are skipped.
pub const MODULES: &[&str] = &[
    // The root filesystem: virtiofs over virtio-pci, and the overlay on it.
    "virtio_pci",
    "virtiofs",
    "overlay",
    // The tests: veth pairs, the clsact qdisc, cls_bpf filters (netlink
    // path), and the token bucket that slows an upstream link (oci_fill).
    "veth",
    "sch_ingress",
    "cls_bpf",
    "sch_tbf",
];

/// The busybox binary carried as the initramfs' userland.
const BUSYBOX: &str = "/bin/busybox";

/// A kernel's modules by name (`-` and `_` are one), and its built-ins.
struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

fn module_name(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

impl ModuleIndex {
    fn read(modules_dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(module_name)
                {
                    files.insert(name, path);
                }
            }
        }
        let builtin_list = modules_dir.join("modules.builtin");
        let builtin = fs::read_to_string(&builtin_list)
            .with_context(|| format!("reading {}", builtin_list.display()))?
            .lines()
            .filter_map(|l| l.rsplit('/').next().and_then(module_name))
            .collect();
        Ok(Self { files, builtin })
    }

    /// `modinfo -F depends`: the modules `name` needs loaded first.
    fn depends(&self, path: &Path) -> Result<Vec<String>> {
        let out = cmd::stdout_of(cmd::new("modinfo").args(["-F", "depends"]).arg(path))
            .context("reading module dependencies needs `modinfo` (Debian package kmod)")?;
        Ok(out
            .trim()
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect())
    }

    /// `wanted` and their dependencies, each after what it depends on;
    /// built-ins left out.
    fn load_order(&self, wanted: &[&str], kernel: &str) -> Result<Vec<(String, PathBuf)>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            self.visit(name, kernel, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        kernel: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!(
                "module dependency cycle in kernel {kernel}: {} -> {name}",
                path.join(" -> ")
            );
        }
        let Some(file) = self.files.get(name) else {
            if self.builtin.contains(name) {
                done.insert(name.to_owned());
                return Ok(());
            }
            bail!(
                "kernel {kernel} has no module {name} (neither a file under lib/modules nor built in); \
                 the VM runs need it (MODULES in xtask/src/vm/initramfs.rs)"
            );
        };
        path.push(name.to_owned());
        for dep in self.depends(file)? {
            self.visit(&dep, kernel, done, path, order)?;
        }
        path.pop();
        done.insert(name.to_owned());
        order.push((name.to_owned(), file.clone()));
        Ok(())
    }
}

/// Writes the module `src` uncompressed to `dst` (busybox insmod takes
/// plain `.ko` files only).
fn copy_module(src: &Path, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        return Ok(());
    } else if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        "gzip"
    };
    let out = fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut c = cmd::new(tool);
    c.arg("-dc").arg(src).stdout(out);
    let st = cmd::status(&mut c)?;
    if !st.success() {
        bail!("`{}` failed ({st})", cmd::describe(&c));
    }
    Ok(())
}

/// The `/init` script: PID 1 of the VM, run by busybox.
///
/// Kernel parameters it reads: `margo.probe` (print a marker and power off:
/// the KVM probe), `margo.runner` and `margo.plan` (the guest runner and its
/// plan, paths on the host's filesystem). Its own messages go to the
/// console, prefixed `@@margo-init`; the runner reports on the second serial
/// port.
pub const INIT: &str = r#"#!/bin/busybox sh
# PID 1 of the test VM; written by xtask/src/vm/initramfs.rs.
b=/bin/busybox
say() { echo "@@margo-init $*"; }
fail() { say "failed: $*"; $b sync; $b poweroff -f; }
$b mkdir -p /proc /sys /dev /host /rw /newroot
$b mount -t proc proc /proc
$b mount -t sysfs sysfs /sys
$b mount -t devtmpfs devtmpfs /dev
for arg in $($b cat /proc/cmdline); do
  case "$arg" in
    margo.probe=*) probe=1 ;;
    margo.runner=*) runner="${arg#*=}" ;;
    margo.plan=*) plan="${arg#*=}" ;;
  esac
done
if [ -n "$probe" ]; then say probe-ok; $b poweroff -f; fi
while read -r m; do
  $b insmod "/lib/modules/$m.ko" || fail "insmod $m"
done < /modules.load
# The host's root, read-only, under a tmpfs overlay: writes stay in the VM.
$b mount -t virtiofs -o ro hostroot /host || fail "mounting the host root (virtiofs)"
$b mount -t tmpfs -o mode=0755 rw /rw || fail "tmpfs /rw"
$b mkdir -p /rw/upper /rw/work
$b mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || fail "overlay root"
r=/newroot
$b mount -t proc proc $r/proc || fail "proc"
$b mount -t sysfs sysfs $r/sys || fail "sysfs"
$b mount -t devtmpfs devtmpfs $r/dev || fail "devtmpfs"
$b mkdir -p $r/dev/pts $r/dev/shm
$b mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts || fail "devpts"
$b mount -t tmpfs -o mode=1777 shm $r/dev/shm || fail "shm"
$b mount -t bpf -o mode=0700 bpffs $r/sys/fs/bpf || fail "bpffs"
$b mount -t cgroup2 cgroup2 $r/sys/fs/cgroup || fail "cgroup2"
# A fresh /run (no host netns or pid files); /tmp stays the host's under the
# overlay, so a workspace there is still seen.
$b mount -t tmpfs -o mode=0755 run $r/run || fail "tmpfs /run"
# The tests' temp dir (the runner sets TMPDIR to it): a tmpfs of its own,
# because the root is an overlay, and an overlay's upper dir cannot be on
# an overlay: skopeo and podman run under a /var/lib overlay whose upper
# dir is in the test's temp dir (tests/src/registry/clients.rs).
$b mkdir -p $r/run/margo-tmp
$b mount -t tmpfs -o mode=1777 tmp $r/run/margo-tmp || fail "tmpfs /run/margo-tmp"
# The host is shared, and its own test runs create and remove /etc/netns
# (ip netns exec's per-namespace /etc files) while the VM runs. A lower
# layer changing under an overlay shows in the guest as "Stale file handle"
# once the tests create their entries there: the guest gets a /etc/netns of
# its own.
$b mkdir -p $r/etc/netns
$b mount -t tmpfs -o mode=0755 netns $r/etc/netns || fail "tmpfs /etc/netns"
[ -n "$runner" ] && [ -n "$plan" ] || fail "no margo.runner or margo.plan on the kernel command line"
say "root ready at $($b cut -d' ' -f1 /proc/uptime)s"
$b chroot $r "$runner" vm-guest --plan "$plan"
say "runner exited with $?"
$b sync
$b poweroff -f
"#;

/// Builds the initramfs for `kernel` at `out` (an uncompressed newc cpio),
/// using `work` as scratch space. Returns the modules it loads, in order.
pub fn build(kernel: &Kernel, work: &Path, out: &Path) -> Result<Vec<String>> {
    let index = ModuleIndex::read(&kernel.modules)?;
    let order = index.load_order(MODULES, &kernel.name)?;
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    let mod_dir = work.join("lib/modules");
    let bin_dir = work.join("bin");
    for d in [&mod_dir, &bin_dir] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut load = String::new();
    for (name, file) in &order {
        copy_module(file, &mod_dir.join(format!("{name}.ko")))?;
        load.push_str(name);
        load.push('\n');
    }
    fs::write(work.join("modules.load"), load)?;
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (`cargo xtask setup` does)");
    }
    fs::copy(BUSYBOX, bin_dir.join("busybox")).context("copying busybox")?;
    fs::write(work.join("init"), INIT)?;
    set_mode(&work.join("init"), 0o755)?;
    set_mode(&bin_dir.join("busybox"), 0o755)?;
    write_cpio(work, out)?;
    Ok(order.into_iter().map(|(n, _)| n).collect())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `cpio -o -H newc` of everything under `root`, owned by root.
fn write_cpio(root: &Path, out: &Path) -> Result<()> {
    let mut names = Vec::new();
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        if rel != Path::new(".") {
            names.push(rel.to_string_lossy().into_owned());
        }
        if abs.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&abs)?
                .filter_map(|e| e.ok())
                .map(|e| rel.join(e.file_name()))
                .collect();
            children.sort();
            stack.extend(children.into_iter().rev());
        }
    }
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut c = cmd::new("cpio");
    c.args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file);
    let mut child = c
        .spawn()
        .with_context(|| format!("starting `{}` (Debian package cpio)", cmd::describe(&c)))?;
    {
        let mut stdin = child.stdin.take().context("cpio stdin")?;
        for n in &names {
            writeln!(stdin, "{n}")?;
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("`{}` failed ({st})", cmd::describe(&c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_normalise() {
        assert_eq!(
            module_name("sch_ingress.ko").as_deref(),
            Some("sch_ingress")
        );
        assert_eq!(module_name("cls_bpf.ko.xz").as_deref(), Some("cls_bpf"));
        assert_eq!(
            module_name("virtio-rng.ko.zst").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(module_name("modules.order"), None);
    }

    #[test]
    fn builtins_are_skipped_and_missing_modules_named() -> Result<()> {
        let dir = crate::vm::test_dir("modindex")?;
        fs::create_dir_all(dir.join("kernel/net/sched"))?;
        fs::write(dir.join("modules.builtin"), "kernel/fs/fuse/virtiofs.ko\n")?;
        let index = ModuleIndex::read(&dir)?;
        assert!(index.load_order(&["virtiofs"], "t")?.is_empty());
        let err = format!(
            "{:#}",
            index
                .load_order(&["veth"], "t")
                .expect_err("veth is neither a file nor built in")
        );
        assert!(err.contains("has no module veth"), "{err}");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn init_reads_its_parameters_and_powers_off() {
        for needle in [
            "margo.runner=",
            "margo.plan=",
            "margo.probe=",
            "vm-guest --plan",
            "mount -t virtiofs -o ro hostroot",
            "poweroff -f",
        ] {
            assert!(INIT.contains(needle), "{needle}");
        }
        assert!(INIT.ends_with("poweroff -f\n"));
        // The runner points TMPDIR at the tmpfs /init mounts.
        let tmp = format!(
            "mount -t tmpfs -o mode=1777 tmp $r{}",
            crate::vm::guest::TEST_TMPDIR
        );
        assert!(INIT.contains(&tmp), "{tmp}");
        assert!(INIT.contains("mount -t tmpfs -o mode=0755 netns $r/etc/netns"));
    }
}
