//! `state_dir/gateway.pid`: which daemon owns the installation, so that
//! `gateway uninstall` refuses to pull the kernel path from under a
//! running daemon.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

const FILE_NAME: &str = "gateway.pid";

/// The daemon's pid file; removed when dropped (a crash leaves it, and the
/// pid it names is then gone or someone else's: see [`running`]).
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn create(state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the state dir {}", state_dir.display()))?;
        let path = state_dir.join(FILE_NAME);
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid of a live gateway daemon owning `state_dir`, if any: the pid
/// file names a process that exists and runs a `gateway` binary.
pub fn running(state_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(state_dir.join(FILE_NAME)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    if pid == std::process::id() {
        return None;
    }
    // A pid left by a crash may have been reused: only a process whose
    // executable is named `gateway` counts.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    name.starts_with("gateway").then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_or_foreign_pid_is_not_a_running_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(running(dir.path()), None, "no file");
        // Our own pid (the test binary, not named `gateway…` as a daemon
        // would be... but it is `gateway-<hash>`): our own pid never counts.
        let f = PidFile::create(dir.path()).expect("create");
        assert_eq!(running(dir.path()), None);
        drop(f);
        assert!(!dir.path().join(FILE_NAME).exists(), "removed on drop");
        // pid 1 is init, not a gateway.
        std::fs::write(dir.path().join(FILE_NAME), "1\n").expect("write");
        assert_eq!(running(dir.path()), None);
        std::fs::write(dir.path().join(FILE_NAME), "garbage").expect("write");
        assert_eq!(running(dir.path()), None);
    }
}
