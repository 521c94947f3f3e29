//! Real OCI clients run inside a namespace: curl, skopeo and podman.
//!
//! A device client runs in `{P}-dev`, trusts only the gateway's site CA
//! (exported with `gateway ca export`) and holds no credentials: everything
//! else it would need must come from the gateway. A direct client runs in
//! `{P}-gw` against the registry itself (its CA and credentials), to check
//! the harness without a gateway.
//!
//! Each client has its own home, XDG dirs, temp dir, registries.conf,
//! containers.conf, storage.conf, auth file and signature policy under the
//! site's temp dir. skopeo and podman run as root, and as root they keep a
//! blob-info cache under `/var/lib/containers/cache` whatever their flags
//! say; so they run in a private mount namespace where `/var/lib` is an
//! overlay whose writes land in the client's own dir (see [`Client::tool`]).
//! That dir must be on a filesystem that can hold an overlay's upper dir
//! (tmpfs, ext4, ...), not on an overlay: under `cargo xtask vm` the root is
//! one, so the runner puts the tests' temp dir (`TMPDIR`) on a tmpfs, and
//! [`Client::new`] says so plainly where it is not.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use super::{
    Credentials, HOST, Registry,
    cmd::{self, Outcome},
    curl::{self, CurlResponse},
};
use crate::{
    oci::{ACCEPT_MANIFESTS, PulledLayout},
    site::Site,
};

/// Bound on one client command (a 64 MiB pull takes a few seconds).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// Clients of one site get distinct directories.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(0);

/// Fails, saying why, when `dir` is on a filesystem that cannot hold an
/// overlay's upper dir; `mount` itself only says "wrong fs type, bad
/// option, bad superblock".
fn upper_dir_fits(dir: &Path) -> Result<()> {
    use nix::sys::statfs::{FUSE_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, statfs};
    let fs_type = statfs(dir)
        .with_context(|| format!("statfs {}", dir.display()))?
        .filesystem_type();
    let what = if fs_type == OVERLAYFS_SUPER_MAGIC {
        "an overlay"
    } else if fs_type == FUSE_SUPER_MAGIC {
        "FUSE (virtiofs)"
    } else {
        return Ok(());
    };
    bail!(
        "{} is on {what}, which cannot hold the upper dir of the /var/lib overlay \
         skopeo and podman run under: put the tests' temp dir (TMPDIR) on a tmpfs \
         or a disk filesystem (`cargo xtask vm` does)",
        dir.display()
    )
}

/// A set of clients configured for one namespace and one trust anchor.
pub struct Client {
    pub ns: String,
    /// Everything of this client lives here (inside the site's temp dir).
    pub dir: PathBuf,
    /// `--cert-dir` for skopeo and podman: holds `ca.crt` only.
    pub cert_dir: PathBuf,
    /// The CA file curl trusts (`--cacert`): the same certificate.
    pub ca_file: PathBuf,
    creds: Option<Credentials>,
    seq: AtomicU64,
    /// podman's run root: podman refuses one longer than 50 characters, so
    /// it lives in a short temp dir of its own (`$TMPDIR/mgpr…`, `/tmp` by
    /// default; `/run/margo-tmp` in `cargo xtask vm`'s guests).
    runroot: TempDir,
}

impl Client {
    /// A device in `{P}-dev` that trusts only `site_ca_pem` and has no
    /// credentials.
    pub fn device(site: &Site, site_ca_pem: &str) -> Result<Self> {
        Self::new(site, &site.dev_ns, "device", site_ca_pem, None)
    }

    /// A client in `{P}-gw` talking to the registry directly (no gateway):
    /// the registry's CA and credentials.
    pub fn direct(registry: &Registry<'_>) -> Result<Self> {
        let ca = std::fs::read_to_string(&registry.ca_pem)?;
        let site = registry.site();
        Self::new(
            site,
            &site.gw_ns,
            "direct",
            &ca,
            registry.credentials.clone(),
        )
    }

    fn new(
        site: &Site,
        ns: &str,
        name: &str,
        ca_pem: &str,
        creds: Option<Credentials>,
    ) -> Result<Self> {
        let n = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        let dir = site.tmp_dir().join(format!("client-{name}-{n}"));
        let cert_dir = dir.join("certs");
        for d in [
            dir.clone(),
            cert_dir.clone(),
            dir.join("home/.config"),
            dir.join("home/.local/share"),
            dir.join("home/.cache"),
            dir.join("run"),
            dir.join("tmp"),
            dir.join("registries.d"),
            dir.join("varlib-upper"),
            dir.join("varlib-work"),
            dir.join("pulls"),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        upper_dir_fits(&dir.join("varlib-upper"))?;
        // In TMPDIR (a tmpfs in `cargo xtask vm`'s guests, whose root is an
        // overlay), unless its path leaves too little room for podman.
        let tmp = std::env::temp_dir();
        let runroot_base = if tmp.as_os_str().len() <= 32 {
            tmp
        } else {
            PathBuf::from("/tmp")
        };
        let runroot = tempfile::Builder::new()
            .prefix("mgpr")
            .tempdir_in(runroot_base)
            .context("creating podman's run root")?;
        let ca_file = cert_dir.join("ca.crt");
        std::fs::write(&ca_file, ca_pem)?;
        std::fs::write(
            dir.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        std::fs::write(
            dir.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )?;
        std::fs::write(dir.join("auth.json"), "{\"auths\":{}}\n")?;
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\nimage_copy_tmp_dir = \"{}\"\n",
                dir.join("tmp").display()
            ),
        )?;
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("podman/root").display(),
                runroot.path().display(),
            ),
        )?;
        Ok(Self {
            ns: ns.to_owned(),
            dir,
            cert_dir,
            ca_file,
            creds,
            seq: AtomicU64::new(0),
            runroot,
        })
    }

    /// `https://registry.example.test<path>`.
    pub fn url(path: &str) -> String {
        format!("https://{HOST}{path}")
    }

    /// curl with this client's trust (and credentials, if any); `args` end
    /// with the URL.
    pub fn curl(&self, args: &[&str]) -> Result<CurlResponse> {
        let mut all = vec![
            "--cacert".to_owned(),
            self.ca_file.to_string_lossy().into_owned(),
        ];
        if let Some(c) = &self.creds {
            all.push("-u".to_owned());
            all.push(format!("{}:{}", c.username, c.password));
        }
        all.extend(args.iter().map(|s| s.to_string()));
        curl::curl(&self.ns, &self.dir.join("curl"), &all, CLIENT_TIMEOUT)
    }

    /// `GET https://registry.example.test<path>` accepting any manifest type.
    pub fn get(&self, path: &str) -> Result<CurlResponse> {
        self.curl(&[
            "-H",
            &format!("Accept: {ACCEPT_MANIFESTS}"),
            &Self::url(path),
        ])
    }

    /// `HEAD https://registry.example.test<path>` (`curl -I`: the body
    /// file then holds the header text, not a body).
    pub fn head(&self, path: &str) -> Result<CurlResponse> {
        self.curl(&[
            "-I",
            "-H",
            &format!("Accept: {ACCEPT_MANIFESTS}"),
            &Self::url(path),
        ])
    }

    /// A skopeo or podman command: in the client's network namespace (as
    /// under `ip netns exec`) and a mount namespace of its own whose
    /// `/var/lib` is an overlay writing into this client's dir, with a
    /// clean environment pointing every config and state path into the
    /// client's dir. Set up between fork and exec
    /// ([`crate::netns::exec_in_with`]): no `unshare`, `sh`, `mount` or
    /// `ip` process, each of which costs a good part of a second under
    /// TCG; the pid is the tool's.
    fn tool(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut c = crate::netns::exec_in_with(
            &self.ns,
            program,
            Some(crate::netns::Overlay {
                target: Path::new("/var/lib"),
                upper: &d.join("varlib-upper"),
                work: &d.join("varlib-work"),
            }),
        );
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", d.join("home"))
            .env("XDG_CONFIG_HOME", d.join("home/.config"))
            .env("XDG_DATA_HOME", d.join("home/.local/share"))
            .env("XDG_CACHE_HOME", d.join("home/.cache"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("TMPDIR", d.join("tmp"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"));
        c
    }

    /// `skopeo <args>` (with this client's policy and registries.d),
    /// whatever its exit status.
    pub fn skopeo(&self, args: &[&str]) -> Result<Outcome> {
        let mut c = self.tool("skopeo");
        c.arg("--policy")
            .arg(self.dir.join("policy.json"))
            .arg("--registries.d")
            .arg(self.dir.join("registries.d"))
            .arg("--command-timeout")
            .arg(format!("{}s", CLIENT_TIMEOUT.as_secs() - 10))
            .args(args);
        cmd::output(&mut c, CLIENT_TIMEOUT)
    }

    /// `skopeo copy docker://registry.example.test/<reference> oci:<dir>:pulled`
    /// (`--all` copies every image of an index), whatever its outcome.
    /// Digests are preserved: an uncompressed layer stays uncompressed.
    pub fn try_skopeo_copy(&self, reference: &str, all: bool) -> Result<(Outcome, PulledLayout)> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let dest = self.dir.join("pulls").join(format!("skopeo-{n}"));
        let cert_dir = self.cert_dir.to_string_lossy().into_owned();
        let creds = self.creds_arg();
        let src = format!("docker://{HOST}/{reference}");
        let dst = format!("oci:{}:pulled", dest.display());
        let mut args = vec![
            "copy",
            "--src-cert-dir",
            &cert_dir,
            "--src-tls-verify=true",
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ];
        if let Some(c) = &creds {
            args.extend(["--src-creds", c]);
        }
        if all {
            args.push("--all");
        }
        args.extend([src.as_str(), dst.as_str()]);
        let out = self.skopeo(&args)?;
        Ok((out, PulledLayout::new(&dest)))
    }

    /// [`Self::try_skopeo_copy`] that must succeed.
    pub fn skopeo_copy(&self, reference: &str, all: bool) -> Result<PulledLayout> {
        let (out, layout) = self.try_skopeo_copy(reference, all)?;
        if !out.success() {
            bail!(
                "skopeo copy {reference} in {} failed ({}) after {:?}: {}",
                self.ns,
                out.status,
                out.took,
                out.stderr.trim()
            );
        }
        Ok(layout)
    }

    /// `skopeo inspect --raw docker://registry.example.test/<reference>`:
    /// the manifest bytes as served.
    pub fn skopeo_inspect_raw(&self, reference: &str) -> Result<Vec<u8>> {
        let cert_dir = self.cert_dir.to_string_lossy().into_owned();
        let creds = self.creds_arg();
        let src = format!("docker://{HOST}/{reference}");
        let mut args = vec![
            "inspect",
            "--raw",
            "--cert-dir",
            &cert_dir,
            "--tls-verify=true",
        ];
        if let Some(c) = &creds {
            args.extend(["--creds", c]);
        }
        args.push(&src);
        let out = self.skopeo(&args)?;
        if !out.success() {
            bail!(
                "skopeo inspect {reference} in {} failed ({}): {}",
                self.ns,
                out.status,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// `podman <args>` with this client's storage (vfs), run and tmp dirs,
    /// whatever its exit status.
    pub fn podman(&self, args: &[&str]) -> Result<Outcome> {
        let d = &self.dir;
        let mut c = self.tool("podman");
        c.arg("--root")
            .arg(d.join("podman/root"))
            .arg("--runroot")
            .arg(self.runroot.path())
            .args(["--storage-driver", "vfs"])
            .arg("--tmpdir")
            .arg(d.join("podman/tmp"))
            .args(["--events-backend", "none", "--cgroup-manager", "cgroupfs"])
            .args(["--log-level", "error"])
            .args(args);
        cmd::output(&mut c, CLIENT_TIMEOUT)
    }

    /// `podman pull registry.example.test/<reference>` (TLS verified against
    /// the cert dir), then `podman image inspect` of it.
    pub fn podman_pull(&self, reference: &str) -> Result<Value> {
        let cert_dir = self.cert_dir.to_string_lossy().into_owned();
        let policy = self.dir.join("policy.json").to_string_lossy().into_owned();
        let creds = self.creds_arg();
        let image = format!("{HOST}/{reference}");
        let mut args = vec![
            "pull",
            "--cert-dir",
            &cert_dir,
            "--tls-verify=true",
            "--signature-policy",
            &policy,
            "--quiet",
        ];
        if let Some(c) = &creds {
            args.extend(["--creds", c]);
        }
        args.push(&image);
        let out = self.podman(&args)?;
        if !out.success() {
            bail!(
                "podman pull {image} in {} failed ({}) after {:?}: {}",
                self.ns,
                out.status,
                out.took,
                out.stderr.trim()
            );
        }
        let inspect = self.podman(&["image", "inspect", &image])?;
        if !inspect.success() {
            bail!(
                "podman image inspect {image} failed: {}",
                inspect.stderr.trim()
            );
        }
        let v: Value = serde_json::from_slice(&inspect.stdout)
            .with_context(|| format!("parsing podman inspect: {}", inspect.stdout_text()))?;
        Ok(v[0].clone())
    }

    fn creds_arg(&self) -> Option<String> {
        self.creds
            .as_ref()
            .map(|c| format!("{}:{}", c.username, c.password))
    }

    /// Files the tools wrote under `/var/lib` (caught by the overlay).
    pub fn var_lib_writes(&self) -> Vec<PathBuf> {
        crate::kernel::files_under(&self.dir.join("varlib-upper")).unwrap_or_default()
    }
}
