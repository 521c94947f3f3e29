//! The host's root, shared with the VM read-only over virtiofs, and the
//! scratch directory that holds the share point and virtiofsd's socket.
//!
//! virtiofsd runs in a mount namespace of its own, where `/` is bound
//! recursively onto the share point and made read-only mount by mount; the
//! guest mounts it read-only too. Nothing the VM does can write to the host.
use std::{
    ffi::CString,
    fs::{self, File},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// QEMU 7.2 (Debian 12) ships the C virtiofsd here; newer Debian releases
/// have a `virtiofsd` package with the Rust one in /usr/libexec.
const VIRTIOFSD: &[&str] = &["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];

fn virtiofsd() -> Result<&'static str> {
    VIRTIOFSD
        .iter()
        .copied()
        .find(|p| Path::new(p).is_file())
        .with_context(|| {
            format!(
                "no virtiofsd at {}: install qemu-system-x86 (`cargo xtask setup` does)",
                VIRTIOFSD.join(" or ")
            )
        })
}

/// virtiofsd sharing the host's root, read-only: it runs in a mount
/// namespace of its own where a recursive bind of `/` is made read-only
/// (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`), so nothing the guest
/// does can write to the host, whatever it mounts.
pub struct ShareDaemon {
    child: Option<Child>,
    socket: PathBuf,
}

/// In the scratch directory: virtiofsd's socket, and the empty directory
/// its namespace binds the host's root onto.
const SOCKET: &str = "virtiofsd.sock";
const SHARE_POINT: &str = "hostroot";

impl ShareDaemon {
    /// Starts virtiofsd with its socket and share point in `scratch`,
    /// logging to `log`; returns once it listens.
    pub fn start(scratch: &Path, log: &Path) -> Result<Self> {
        let socket = scratch.join(SOCKET);
        let share = scratch.join(SHARE_POINT);
        fs::create_dir_all(&share).with_context(|| format!("creating {}", share.display()))?;
        let _ = fs::remove_file(&socket);
        let daemon = virtiofsd()?;
        let share_c = CString::new(share.as_os_str().as_bytes())
            .context("the share path contains a NUL byte")?;
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = Command::new(daemon);
        c.arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", share.display()))
            // The shared files do not change during a run (the binaries are
            // staged): let the guest cache them, which makes exec fast.
            .args(["-o", "cache=always"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe system calls on memory prepared
        // before the fork.
        unsafe {
            c.pre_exec(move || {
                die_with_parent()?;
                readonly_root_at(&share_c)
            });
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting {daemon} (needs root)"))?;
        let mut me = Self {
            child: Some(child),
            socket: socket.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(child) = me.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                me.child = None;
                bail!(
                    "virtiofsd exited ({st}) before it listened; its log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                me.stop();
                bail!("virtiofsd did not create {} within 10 s", socket.display());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// The vhost-user socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// virtiofsd exits when QEMU goes; if it has not, kill it (by pid).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ShareDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// For a child between fork and exec: it gets SIGKILL when xtask dies, so an
/// interrupted run leaves no QEMU or virtiofsd behind.
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In a new mount namespace: `/` bound recursively onto `target` and made
/// read-only there, mount by mount.
fn readonly_root_at(target: &CString) -> std::io::Result<()> {
    fn check(rc: libc::c_long) -> std::io::Result<()> {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    // struct mount_attr from linux/mount.h (attr_set, attr_clr, propagation, userns_fd).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let root = c"/";
    // SAFETY: plain system calls on NUL-terminated strings and a struct that
    // outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
        // Nothing done here may propagate back to the host's namespace.
        check(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) as libc::c_long)?;
        check(libc::mount(
            root.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) as libc::c_long)?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        check(libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ))?;
    }
    Ok(())
}

const SCRATCH_PREFIX: &str = "margo-vm-";

/// A path for the run's scratch (socket paths must stay short).
pub fn scratch_dir(kernel: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{}-{kernel}", std::process::id()))
}

/// Removes a scratch directory: the socket and the (empty) share point,
/// never recursively: the share point is where virtiofsd's namespace binds
/// the host's root, and a recursive removal must never get near it.
pub fn remove_scratch(dir: &Path) {
    let _ = fs::remove_file(dir.join(SOCKET));
    let _ = fs::remove_dir(dir.join(SHARE_POINT));
    let _ = fs::remove_dir(dir);
}

/// Removes the scratch directories of runs whose process is gone.
pub fn remove_stale_scratch() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(SCRATCH_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists()
        {
            remove_scratch(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_removal_is_never_recursive() -> Result<()> {
        let dir = crate::vm::test_dir("scratch")?;
        let scratch = dir.join("margo-vm-1-6.1");
        fs::create_dir_all(scratch.join(SHARE_POINT).join("inner"))?;
        File::create(scratch.join(SOCKET))?;
        // A non-empty share point (as if something were mounted there)
        // stays, and so does the directory holding it.
        remove_scratch(&scratch);
        assert!(scratch.join(SHARE_POINT).join("inner").exists());
        assert!(!scratch.join(SOCKET).exists());
        fs::remove_dir(scratch.join(SHARE_POINT).join("inner"))?;
        remove_scratch(&scratch);
        assert!(!scratch.exists());
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
