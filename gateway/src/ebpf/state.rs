//! The record of what the daemon attached, kept in `state_dir` so that a
//! restarted daemon can adopt it and a clean stop can remove it.
//!
//! bpffs holds only BPF objects, so this small JSON file sits beside the
//! daemon's other state; it is replaced atomically (write, fsync, rename).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::EbpfError;

pub const FILE_NAME: &str = "kernel.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A TCX link (kernel 6.6+), pinned in bpffs.
    Tcx,
    /// A `cls_bpf` filter on the `clsact` qdisc, found again by its
    /// priority and handle.
    Netlink,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: Mode,
    /// Netlink only: filter priority and handle.
    #[serde(default)]
    pub priority: u16,
    #[serde(default)]
    pub handle: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub abi_version: u32,
    pub pin_path: PathBuf,
    pub attachments: Vec<Attachment>,
}

impl State {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Reads the record; `Ok(None)` when there is none.
    pub fn read(state_dir: &Path) -> Result<Option<Self>, EbpfError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| EbpfError::State {
                    path,
                    message: format!("unreadable ({e}); remove it after checking `gateway status`"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EbpfError::State {
                path,
                message: e.to_string(),
            }),
        }
    }

    pub fn write(&self, state_dir: &Path) -> Result<(), EbpfError> {
        let path = Self::path(state_dir);
        let err = |e: std::io::Error| EbpfError::State {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| EbpfError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    pub fn remove(state_dir: &Path) -> Result<(), EbpfError> {
        let path = Self::path(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EbpfError::State {
                path,
                message: e.to_string(),
            }),
        }
    }
}
