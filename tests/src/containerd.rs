//! A stock containerd (Debian's 1.6) run in a site namespace, driven with
//! `ctr` as a device's agent would run it: no registry mirrors, no
//! `hosts.toml`, no `config_path`. Its config only moves `root`, `state`
//! and the gRPC socket into the test's own directory, and disables three
//! plugins that would change the host (see [`config`]).
//!
//! `root` lives on a tmpfs mounted for it: the default overlayfs
//! snapshotter puts its upper and work dirs there, and an overlay cannot
//! be mounted over the QEMU runs' root (virtiofs under a tmpfs overlay).
//! The tmpfs is unmounted when the containerd is dropped.
//!
//! `ctr image pull` resolves, authenticates and downloads in the ctr
//! process itself (containerd stores and unpacks), so ctr runs through
//! `ip netns exec` in the same namespace: it sees that namespace's
//! `/etc/netns` files (hosts, resolv.conf, `ssl/certs`) as its `/etc`.
//! containerd and ctr run with a cleared environment (no `SSL_CERT_FILE`,
//! no proxies).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    bench::proc::Proc,
    registry::cmd::{self, Outcome},
};

/// Bound on one `ctr image pull`.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on other ctr commands.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd may take to serve its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The tmpfs for containerd's root: content plus unpacked snapshots of the
/// tests' small images. tmpfs takes memory only for what is written.
const ROOT_TMPFS_SIZE: &str = "1g";
/// The containerd namespace ctr works in.
pub const NAMESPACE: &str = "default";

/// One row of `ctr images ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRow {
    pub reference: String,
    /// The target's media type.
    pub media_type: String,
    /// The target's digest (manifest or index).
    pub digest: String,
}

/// A running containerd; stopped, and its tmpfs unmounted, on drop.
pub struct Containerd {
    /// The network namespace it and ctr run in.
    pub ns: String,
    pub dir: PathBuf,
    /// The gRPC socket (`ctr --address`).
    pub socket: PathBuf,
    /// The tmpfs mount point holding `root` and `state`.
    pub fs: PathBuf,
    /// containerd's stdout and stderr.
    pub log_path: PathBuf,
    proc: Option<Proc>,
    mounted: bool,
}

impl Containerd {
    /// Mounts the tmpfs, writes the config and starts containerd in `ns`
    /// with its files under `dir` (which it creates; a short path, since
    /// the socket's path must fit a `sockaddr_un`).
    pub fn start(ns: &str, dir: &Path) -> Result<Self> {
        let fs = dir.join("fs");
        let tmp = dir.join("tmp");
        for d in [dir, &fs, &tmp] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut me = Self {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            socket: dir.join("containerd.sock"),
            log_path: dir.join("containerd.log"),
            fs,
            proc: None,
            mounted: false,
        };
        nix::mount::mount(
            Some("tmpfs"),
            &me.fs,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={ROOT_TMPFS_SIZE},mode=0700").as_str()),
        )
        .with_context(|| format!("mounting a tmpfs at {}", me.fs.display()))?;
        me.mounted = true;
        let config_path = dir.join("config.toml");
        std::fs::write(
            &config_path,
            config(&me.fs.join("root"), &me.fs.join("state"), &me.socket),
        )?;
        let log = std::fs::File::create(&me.log_path)?;
        let mut c = crate::netns::exec_in(ns, "containerd");
        c.arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // Temporary mounts (layer unpacking) go in the test's dir.
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        me.proc = Some(Proc::spawn("containerd", &mut c)?);
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(p) = self.proc.as_mut()
                && let Err(e) = p.check_running()
            {
                self.proc = None;
                bail!("{e:#}; log:\n{}", self.log_tail(40));
            }
            if self.socket.exists() {
                let v = self.ctr_output(&["version"], CTR_TIMEOUT)?;
                if v.success() && v.stdout_text().contains("Server:") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd not serving {} after {READY_TIMEOUT:?}; log:\n{}",
                    self.socket.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr --address … --namespace … <args>` with
    /// `timeout`, whatever its exit status.
    pub fn ctr_output(&self, args: &[&str], timeout: Duration) -> Result<Outcome> {
        let mut c = crate::netns::exec_in(&self.ns, "ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.dir);
        cmd::output(&mut c, timeout)
    }

    /// Like [`Self::ctr_output`], failing with ctr's stderr and the tail of
    /// containerd's log unless it exits 0.
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> Result<Outcome> {
        let out = self.ctr_output(args, timeout)?;
        if !out.success() {
            bail!(
                "ctr {} failed ({}) after {:?}: {}\ncontainerd log (tail):\n{}",
                args.join(" "),
                out.status,
                out.took,
                out.stderr.trim(),
                self.log_tail(20)
            );
        }
        Ok(out)
    }

    /// `ctr image pull <reference>` (fetch and unpack, as an agent does),
    /// whatever its outcome; fails only on a timeout.
    pub fn try_pull(&self, reference: &str) -> Result<Outcome> {
        self.ctr_output(&["image", "pull", reference], PULL_TIMEOUT)
    }

    /// `ctr image pull <reference>`, which must succeed.
    pub fn pull(&self, reference: &str) -> Result<Outcome> {
        self.ctr(&["image", "pull", reference], PULL_TIMEOUT)
    }

    /// `ctr images ls`.
    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let out = self.ctr(&["images", "ls"], CTR_TIMEOUT)?;
        Ok(parse_images(&out.stdout_text()))
    }

    /// The row of `reference`, if containerd has it.
    pub fn image(&self, reference: &str) -> Result<Option<ImageRow>> {
        Ok(self
            .images()?
            .into_iter()
            .find(|i| i.reference == reference))
    }

    /// `ctr content get <digest>`: the bytes containerd stored.
    pub fn content_get(&self, digest: &str) -> Result<Vec<u8>> {
        Ok(self.ctr(&["content", "get", digest], CTR_TIMEOUT)?.stdout)
    }

    /// Every digest in containerd's content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> Result<Vec<String>> {
        let out = self.ctr(&["content", "ls", "-q"], CTR_TIMEOUT)?;
        Ok(out
            .stdout_text()
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("sha256:"))
            .map(str::to_owned)
            .collect())
    }

    /// The digests an image's target references: the target, and for a
    /// manifest its config and layers, for an index its manifests and
    /// theirs (those containerd holds).
    pub fn image_content(&self, target: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut todo = vec![target.to_owned()];
        let held = self.content_digests()?;
        while let Some(d) = todo.pop() {
            if out.contains(&d) || !held.contains(&d) {
                continue;
            }
            out.push(d.clone());
            let Ok(doc) = serde_json::from_slice::<Value>(&self.content_get(&d)?) else {
                continue; // a layer or config: no children
            };
            let children = doc["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(std::iter::once(&doc["config"]))
                .chain(doc["layers"].as_array().into_iter().flatten());
            for c in children {
                if let Some(cd) = c["digest"].as_str() {
                    todo.push(cd.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Removes `reference` and its content, so that a new pull must fetch
    /// every blob again: `ctr image rm --sync` (which waits for the garbage
    /// collector), then `ctr content rm` of whatever of the image's content
    /// is still held. Fails if any of it remains.
    pub fn remove_image(&self, reference: &str) -> Result<()> {
        let row = self
            .image(reference)?
            .with_context(|| format!("containerd has no image {reference}"))?;
        let content = self.image_content(&row.digest)?;
        self.ctr(&["images", "rm", "--sync", reference], CTR_TIMEOUT)?;
        let held = self.content_digests()?;
        let left: Vec<&str> = content
            .iter()
            .filter(|d| held.contains(d))
            .map(String::as_str)
            .collect();
        if !left.is_empty() {
            let mut args = vec!["content", "rm"];
            args.extend(&left);
            self.ctr(&args, CTR_TIMEOUT)?;
        }
        let held = self.content_digests()?;
        let still: Vec<&String> = content.iter().filter(|d| held.contains(d)).collect();
        if !still.is_empty() {
            bail!("containerd still holds {still:?} of {reference}");
        }
        Ok(())
    }

    /// The overlayfs snapshots (`ctr snapshots ls`): (key, kind), one
    /// committed snapshot per unpacked layer.
    pub fn snapshots(&self) -> Result<Vec<(String, String)>> {
        let out = self.ctr(&["snapshots", "ls"], CTR_TIMEOUT)?;
        Ok(out
            .stdout_text()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some(((*w.first()?).to_owned(), (*w.last()?).to_owned()))
            })
            .collect())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// The tail of containerd's log, for messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops containerd (SIGTERM, then SIGKILL, by pid) and unmounts its
    /// tmpfs.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        if self.mounted {
            // containerd's own mounts lived in the private mount namespace
            // of its `ip netns exec`, gone with it; only ours is left.
            let done = nix::mount::umount(&self.fs)
                .or_else(|_| nix::mount::umount2(&self.fs, nix::mount::MntFlags::MNT_DETACH));
            match done {
                Ok(()) => self.mounted = false,
                Err(e) => eprintln!("warning: unmounting {}: {e}", self.fs.display()),
            }
        }
    }

    /// Whether containerd's tmpfs is still mounted (per /proc/self/mounts).
    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.fs)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*p)))
}

/// containerd's config: the defaults, except where state goes and two
/// plugins switched off.
///
/// - `io.containerd.grpc.v1.cri` (Kubernetes' CRI) is not what ctr uses,
///   and on start it would create `/etc/cni/net.d` on the host and set up
///   networking for pods.
/// - `io.containerd.internal.v1.opt` creates `/opt/containerd` on the host.
/// - `io.containerd.snapshotter.v1.aufs` runs `modprobe aufs` at start-up,
///   which would load a kernel module into the host's kernel wherever one
///   exists (this machine's kernels have none, and the plugin then skips
///   itself).
///
/// The other snapshotters that cannot work here (btrfs, zfs, devmapper)
/// skip themselves at start-up, as on any stock host; overlayfs, the
/// default, is the one used.
fn config(root: &Path, state: &Path, socket: &Path) -> String {
    let q = |p: &Path| serde_json::Value::String(p.to_string_lossy().into_owned()).to_string();
    format!(
        "version = 2
root = {root}
state = {state}
disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\", \"io.containerd.snapshotter.v1.aufs\"]

[grpc]
  address = {socket}
",
        root = q(root),
        state = q(state),
        socket = q(socket),
    )
}

/// Parses `ctr images ls`: `REF TYPE DIGEST SIZE PLATFORMS LABELS`, the
/// first three columns (SIZE holds a space).
fn parse_images(text: &str) -> Vec<ImageRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let row = ImageRow {
                reference: w.next()?.to_owned(),
                media_type: w.next()?.to_owned(),
                digest: w.next()?.to_owned(),
            };
            row.digest.starts_with("sha256:").then_some(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_rows() {
        let text = "REF                       TYPE                                       DIGEST                                                                  SIZE    PLATFORMS   LABELS \n\
docker.io/library/app:1   application/vnd.oci.image.manifest.v1+json sha256:8d2f8e0c9a4a2d5e3f1b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b 5.0 MiB linux/amd64 -      \n";
        assert_eq!(
            parse_images(text),
            vec![ImageRow {
                reference: "docker.io/library/app:1".into(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: "sha256:8d2f8e0c9a4a2d5e3f1b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b"
                    .into(),
            }]
        );
    }

    #[test]
    fn config_moves_only_state() {
        let c = config(
            Path::new("/t/fs/root"),
            Path::new("/t/fs/state"),
            Path::new("/t/c.sock"),
        );
        assert!(c.contains("root = \"/t/fs/root\""));
        assert!(c.contains("address = \"/t/c.sock\""));
        for absent in ["mirrors", "config_path", "hosts"] {
            assert!(!c.contains(absent), "{absent} in {c}");
        }
    }
}
