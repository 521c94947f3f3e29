//! Where the program, its links and maps are pinned, and the bpffs that
//! holds them.

use std::path::{Path, PathBuf};

use super::EbpfError;

/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: u64 = 0xcafe4a11;
/// Where bpffs is conventionally mounted.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The pin directory layout:
/// `<root>/prog`, `<root>/maps/<NAME>`, `<root>/links/<interface>`.
#[derive(Clone, Debug)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn prog(&self) -> PathBuf {
        self.root.join("prog")
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.links_dir().join(interface)
    }

    /// Makes sure the pin directories exist on a bpffs, mounting bpffs at
    /// `/sys/fs/bpf` when the pin path is below it and nothing is mounted.
    pub fn prepare(&self) -> Result<(), EbpfError> {
        let base = nearest_existing(&self.root);
        if !is_bpffs(&base) {
            let root = Path::new(BPFFS_ROOT);
            if self.root.starts_with(root) && !is_bpffs(root) {
                mount_bpffs(root)?;
            }
        }
        let base = nearest_existing(&self.root);
        if !is_bpffs(&base) {
            return Err(EbpfError::NotBpffs {
                path: self.root.clone(),
            });
        }
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| EbpfError::Pin {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes every pin and the directories, ignoring what is already gone.
    pub fn remove_all(&self) -> Result<(), EbpfError> {
        for dir in [self.links_dir(), self.maps_dir()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    remove_file(&entry.path())?;
                }
            }
        }
        remove_file(&self.prog())?;
        for dir in [self.links_dir(), self.maps_dir(), self.root.clone()] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(EbpfError::Pin { path: dir, source }),
            }
        }
        Ok(())
    }
}

pub fn remove_file(path: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Pin {
            path: path.to_owned(),
            source,
        }),
    }
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_owned();
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent.to_owned(),
            None => break,
        }
    }
    p
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as u64 == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<(), EbpfError> {
    tracing::info!(path = %at.display(), "mounting bpffs");
    nix::mount::mount(
        Some("bpf"),
        at,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| EbpfError::Pin {
        path: at.to_owned(),
        source: e.into(),
    })
}
