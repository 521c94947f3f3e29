//! `gateway cache verify`: hash every held blob again and take any whose
//! content no longer matches its digest (disk rot, a hand edit) out of the
//! cache, into `<dir>/quarantine/` where an admin can inspect it.
//!
//! Each blob is hashed while streaming, in chunks (reconcile.rs
//! `hash_file`), on a blocking thread, one at a time: a verify competes
//! with devices for the disk, never for memory. A damaged blob leaves the
//! way an evicted one does (evict.rs `dispose`), moved instead of
//! unlinked: readers holding it read on, a fill of the same digest waits,
//! and the next request fills it afresh. A blob evicted and filled again
//! while it was being hashed is a new file (another inode) and is kept.

use std::{
    fs::{self, DirBuilder},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use super::{
    Cache, CacheError, Digest,
    evict::{Disposal, Disposed, Victim, dispose},
    reconcile::hash_file,
    store::sync_dir,
};

/// The directory under the cache's, for damaged blobs.
pub const QUARANTINE_DIR: &str = "quarantine";

/// One damaged blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The digest it was stored under (what its content should hash to).
    pub expected: Digest,
    /// What its content hashes to now.
    pub actual: Digest,
    pub expected_size: u64,
    pub actual_size: u64,
    /// Where it is now; `None` when it could not be moved and was removed.
    pub path: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs hashed.
    pub checked: usize,
    pub bytes: u64,
    pub quarantined: Vec<Quarantined>,
    /// Blobs evicted or removed while the verify ran (not checked).
    pub vanished: usize,
}

/// Where a verify is, after each blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyStep {
    pub done_blobs: usize,
    pub total_blobs: usize,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub digest: Digest,
    pub ok: bool,
}

impl Cache {
    /// Where damaged blobs go.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.inner.layout.root.join(QUARANTINE_DIR)
    }

    /// Hashes every blob held when it starts; `progress` hears of each.
    pub async fn verify(
        &self,
        progress: &(dyn Fn(VerifyStep) + Send + Sync),
    ) -> Result<VerifyReport, CacheError> {
        let blobs = self.blob_list();
        let total_bytes = blobs.iter().map(|b| b.size).sum();
        let mut report = VerifyReport::default();
        let mut done_bytes = 0;
        for (i, blob) in blobs.iter().enumerate() {
            let path = self.inner.layout.blob(&blob.digest);
            let hashed = tokio::task::spawn_blocking(move || hash_held(&path))
                .await
                .map_err(CacheError::task("verify a blob"))??;
            done_bytes += blob.size;
            let mut ok = true;
            match hashed {
                None => report.vanished += 1,
                Some((actual, actual_size, inode)) => {
                    report.checked += 1;
                    report.bytes += actual_size;
                    if actual != blob.digest || actual_size != blob.size {
                        ok = false;
                        let damaged = Quarantined {
                            expected: blob.digest,
                            actual,
                            expected_size: blob.size,
                            actual_size,
                            path: None,
                        };
                        if let Some(q) = self.quarantine(damaged, inode).await? {
                            tracing::warn!(expected = %q.expected, actual = %q.actual, path = ?q.path, "cache: a blob no longer matches its digest; quarantined");
                            report.quarantined.push(q);
                        }
                    }
                }
            }
            progress(VerifyStep {
                done_blobs: i + 1,
                total_blobs: blobs.len(),
                done_bytes,
                total_bytes,
                digest: blob.digest,
                ok,
            });
        }
        Ok(report)
    }

    /// Takes a damaged blob out of the cache; `None` when it had gone
    /// already or a fresh copy replaced it meanwhile.
    async fn quarantine(
        &self,
        mut damaged: Quarantined,
        inode: u64,
    ) -> Result<Option<Quarantined>, CacheError> {
        let digest = damaged.expected;
        let size = {
            let mut state = self.inner.state();
            let Some(meta) = state.remove_blob(&digest) else {
                return Ok(None);
            };
            state.evicting.insert(digest);
            meta.size
        };
        let victim = Victim {
            digest,
            size,
            to: Disposal::Quarantine {
                dir: self.quarantine_dir(),
                inode,
            },
        };
        let outcome = dispose(&self.inner, vec![victim], Vec::new()).await?;
        match outcome.into_iter().next() {
            Some(Disposed::Moved(path)) => damaged.path = Some(path),
            Some(Disposed::Unlinked) => {}
            Some(Disposed::Kept) | None => return Ok(None),
        }
        Ok(Some(damaged))
    }
}

/// Digest, size and inode of the file at `path`; `None` when it is gone.
fn hash_held(path: &Path) -> Result<Option<(Digest, u64, u64)>, CacheError> {
    // The inode before the content: if the name is replaced in between, the
    // hash is of the new file and the inode the old one's, so a mismatch
    // would be found stale at quarantine time (the safe side).
    let inode = match fs::metadata(path) {
        Ok(m) => m.ino(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::io("stat the blob", path)(e)),
    };
    match hash_file(path) {
        Ok((digest, size)) => Ok(Some((digest, size, inode))),
        Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Moves a damaged blob file into `dir` (created 0700: it held cached
/// content) under its name, or `<name>.<n>` when that is taken (the same
/// digest damaged twice).
pub(super) fn move_to_quarantine(path: &Path, dir: &Path) -> io::Result<PathBuf> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("a blob path without a file name"))?
        .to_string_lossy()
        .into_owned();
    let mut target = dir.join(&name);
    let mut n = 0u32;
    while fs::symlink_metadata(&target).is_ok() {
        n += 1;
        target = dir.join(format!("{name}.{n}"));
    }
    fs::rename(path, &target)?;
    // The move itself must survive a crash, or the damaged file would be
    // back under its name (and hashed, and dropped, again at the next open).
    let _ = sync_dir(dir);
    if let Some(parent) = path.parent() {
        let _ = sync_dir(parent);
    }
    Ok(target)
}
