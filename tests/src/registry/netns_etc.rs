//! Per-namespace `/etc` files: `ip netns exec NS` bind-mounts every entry
//! of `/etc/netns/NS/` over the entry of the same name in `/etc/`, so a
//! `hosts` there names the registry for everything run in that namespace
//! (the gateway, skopeo, podman, curl, ctr).
//!
//! A file may sit in subdirectories (`ssl/certs/ca-certificates.crt`): the
//! top entry (`ssl`) is then bind-mounted over `/etc/ssl` as a whole, so a
//! program run in the namespace sees only the files written here under it.
//! That is how a device is made to trust nothing but one CA: Go programs
//! (ctr) read `/etc/ssl/certs/ca-certificates.crt` and every file in
//! `/etc/ssl/certs`.
//!
//! Only files and directories created here are removed, and `/etc/netns`
//! itself only if this process created it and no site of this process still
//! uses it.

use std::{
    io::ErrorKind,
    path::{Component, Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context as _, Result, bail};

const ETC_NETNS: &str = "/etc/netns";

/// Sites of this process using `/etc/netns`, and whether we created it.
static USERS: Mutex<(usize, bool)> = Mutex::new((0, false));

/// `/etc/netns/<ns>/` with the files written into it; removed on drop.
pub struct NetnsEtc {
    dir: PathBuf,
    /// Subdirectories created for nested files, parents before children.
    subdirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl NetnsEtc {
    /// Creates `/etc/netns/<ns>/` (which must not exist yet) holding `files`
    /// (name relative to `/etc`, content). A name may hold `/`
    /// (`ssl/certs/ca-certificates.crt`); its directories are created too.
    pub fn create(ns: &str, files: &[(&str, String)]) -> Result<Self> {
        for (name, _) in files {
            check_relative(name)?;
        }
        {
            let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
            match std::fs::create_dir(ETC_NETNS) {
                Ok(()) => users.1 = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {ETC_NETNS}")),
            }
            users.0 += 1;
        }
        let dir = Path::new(ETC_NETNS).join(ns);
        // From here on, drop undoes whatever was done.
        let mut me = Self {
            dir: PathBuf::new(),
            subdirs: Vec::new(),
            files: Vec::new(),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => me.dir = dir.clone(),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                bail!("{} already exists: not ours to write", dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        for (name, content) in files {
            let path = dir.join(name);
            if let Some(parent) = Path::new(name).parent() {
                let mut at = dir.clone();
                for part in parent.components() {
                    at.push(part);
                    match std::fs::create_dir(&at) {
                        Ok(()) => me.subdirs.push(at.clone()),
                        // Made for an earlier file of this call (the whole
                        // tree is new: `dir` did not exist).
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("creating {}", at.display()));
                        }
                    }
                }
            }
            std::fs::write(&path, content)
                .with_context(|| format!("writing {}", path.display()))?;
            me.files.push(path);
        }
        Ok(me)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the file `name` (as given to [`Self::create`]) lives.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A name under `/etc`: relative, without `..`, `.` or empty parts.
fn check_relative(name: &str) -> Result<()> {
    let p = Path::new(name);
    let plain = !name.is_empty()
        && !name.ends_with('/')
        && !name.contains("//")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        bail!("{name:?} is not a plain relative path under /etc");
    }
    Ok(())
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        for f in self.files.drain(..) {
            if let Err(e) = std::fs::remove_file(&f) {
                eprintln!("warning: removing {}: {e}", f.display());
            }
        }
        // Children before parents; remove_dir: only the (now empty)
        // directories we made.
        for d in self.subdirs.drain(..).rev() {
            if let Err(e) = std::fs::remove_dir(&d) {
                eprintln!("warning: removing {}: {e}", d.display());
            }
        }
        if !self.dir.as_os_str().is_empty()
            && let Err(e) = std::fs::remove_dir(&self.dir)
        {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
        let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
        users.0 = users.0.saturating_sub(1);
        if users.0 == 0 && users.1 {
            // Fails (and stays) if anything else put a directory there.
            if std::fs::remove_dir(ETC_NETNS).is_ok() {
                users.1 = false;
            }
        }
    }
}

/// A `hosts` file: localhost plus `name addr` lines.
pub fn hosts_file(entries: &[(&str, String)]) -> String {
    let mut s = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
    for (name, addr) in entries {
        s.push_str(&format!("{addr} {name}\n"));
    }
    s
}

/// A `resolv.conf` that sends any DNS query to the namespace's own
/// loopback, where nothing answers: no lookup leaves the site.
pub const RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_stay_under_etc() {
        for ok in ["hosts", "ssl/certs/ca-certificates.crt"] {
            assert!(check_relative(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/hosts",
            "../hosts",
            "ssl/../hosts",
            "./hosts",
            "ssl/",
            "ssl//certs",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }
}
