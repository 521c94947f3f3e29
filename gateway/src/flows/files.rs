//! Which files make up the audit log, oldest first.
//!
//! The gateway appends to `audit.path` and reopens it on SIGUSR1; moving
//! it away is logrotate's job (`config/logrotate`). So the rotated files
//! carry logrotate's names: `audit.jsonl.1`, `audit.jsonl.2.gz` (a higher
//! number is older) or, with `dateext`, `audit.jsonl-20261130` and
//! `audit.jsonl-20261130.gz` (an earlier date is older). Other files
//! beside the log (`audit.jsonl.bak`, an editor's `~`) are not read.
//! Whether a file is gzipped is read from its first bytes, not its name,
//! so `delaycompress` and hand-compressed files both work.

use std::{
    cmp::Ordering,
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FilesError {
    #[error("no audit log at {path} and no rotated files beside it (check audit.path or --log)")]
    NothingToRead { path: PathBuf },
    #[error("cannot list {dir} to find the rotated audit logs: {source}")]
    ListDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} does not name a file")]
    NotAFile { path: PathBuf },
}

/// One file of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    /// Starts with the gzip magic bytes.
    pub gz: bool,
    /// Bytes on disk (compressed, for gzip), for the progress bar.
    pub size: u64,
}

/// Where a file stands in the rotation, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// `audit.jsonl-20261130`: the date's digit groups.
    Dated(Vec<u64>),
    /// `audit.jsonl.3`.
    Numbered(u64),
    /// `audit.jsonl` itself.
    Live,
}

impl Rotation {
    /// Oldest first: dated files by date, then numbered files from the
    /// highest number down, then the live file. (A directory holding both
    /// kinds had its logrotate `dateext` setting changed; which kind is
    /// older cannot be told from the names, and the report does not
    /// depend on the order: counts add up and first/last seen are the
    /// minimum and maximum.)
    fn order(&self, other: &Self) -> Ordering {
        use Rotation::*;
        match (self, other) {
            (Dated(a), Dated(b)) => a.cmp(b),
            (Numbered(a), Numbered(b)) => b.cmp(a),
            (Live, Live) => Ordering::Equal,
            (Dated(_), _) | (Numbered(_), Live) => Ordering::Less,
            _ => Ordering::Greater,
        }
    }
}

/// The rotation of `name`, a file beside the log named `base`; `None`
/// when it is not one of the log's files.
pub fn rotation_of(base: &str, name: &str) -> Option<Rotation> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(Rotation::Live);
    }
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    if let Some(n) = rest.strip_prefix('.') {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return n.parse().ok().map(Rotation::Numbered);
        }
        return None;
    }
    let date = rest.strip_prefix('-')?;
    let groups: Option<Vec<u64>> = date.split(['-', '_']).map(digits).collect();
    groups.filter(|g| !g.is_empty()).map(Rotation::Dated)
}

fn digits(g: &str) -> Option<u64> {
    if g.is_empty() || !g.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    g.parse().ok()
}

/// The live log at `live` and its rotated files, oldest first.
pub fn discover(live: &Path) -> Result<Vec<Source>, FilesError> {
    let base = live
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FilesError::NotAFile {
            path: live.to_owned(),
        })?;
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let entries = fs::read_dir(&dir).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            FilesError::NothingToRead {
                path: live.to_owned(),
            }
        } else {
            FilesError::ListDir {
                dir: dir.clone(),
                source,
            }
        }
    })?;
    let mut found: Vec<(Rotation, Source)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rotation) = name.to_str().and_then(|n| rotation_of(base, n)) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        found.push((
            rotation,
            Source {
                gz: is_gzip(&path),
                size: meta.len(),
                path,
            },
        ));
    }
    if found.is_empty() {
        return Err(FilesError::NothingToRead {
            path: live.to_owned(),
        });
    }
    found.sort_by(|a, b| a.0.order(&b.0));
    Ok(found.into_iter().map(|(_, s)| s).collect())
}

fn is_gzip(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == [0x1f, 0x8b])
}
