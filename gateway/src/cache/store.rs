//! The on-disk layout and the blocking file operations behind it.
//!
//! ```text
//! <dir>/blobs/sha256/<hex>   complete, verified blobs (never written in place)
//! <dir>/tmp/<hex>.<pid>-<n>.part   fills in progress
//! <dir>/index.redb           the index (see index.rs)
//! ```
//!
//! A blob reaches its name only by `rename` from `tmp/` after its digest
//! matched and its data was fsynced, and the directory is fsynced after the
//! rename; so a name under `blobs/` is either the whole verified content or
//! absent, even across a crash. Everything here blocks: callers run it on
//! `spawn_blocking`.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;

use super::{CacheError, Digest};

/// Read size for streaming blobs to clients: large enough that the
/// per-chunk blocking hop is noise, small enough to keep memory flat.
pub(super) const READ_CHUNK: usize = 256 * 1024;

const TEMP_SUFFIX: &str = ".part";

/// Distinguishes temp files of one process; the pid distinguishes processes.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Paths under the cache directory.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) root: PathBuf,
    pub(super) blobs: PathBuf,
    pub(super) tmp: PathBuf,
    pub(super) index: PathBuf,
}

impl Layout {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            blobs: root.join("blobs").join("sha256"),
            tmp: root.join("tmp"),
            index: root.join("index.redb"),
        }
    }

    pub(super) fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub(super) fn create_dirs(&self) -> Result<(), CacheError> {
        // Cached content may be private to some devices: owner only.
        for dir in [&self.root, &self.blobs, &self.tmp] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(CacheError::io("create the cache directory", dir))?;
        }
        Ok(())
    }

    /// Creates a fresh temp file for a fill, open for reading and writing
    /// (followers read through the same open file).
    pub(super) fn create_temp(&self, digest: &Digest) -> Result<(TempPath, File), CacheError> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{}-{seq}{TEMP_SUFFIX}", digest.hex(), std::process::id());
        let path = self.tmp.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(CacheError::io("create the temp file", &path))?;
        Ok((TempPath(Some(path)), file))
    }

    /// Makes a verified temp file the blob: fsync data, rename, fsync the
    /// directory so the rename itself survives a crash.
    pub(super) fn publish(
        &self,
        temp: &Path,
        file: &File,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        file.sync_all().map_err(CacheError::io("fsync", temp))?;
        let target = self.blob(digest);
        fs::rename(temp, &target).map_err(CacheError::io("move the verified fill to", &target))?;
        sync_dir(&self.blobs)
    }

    /// Removes our own temp files (a crash mid-fill leaves them). Only names
    /// this module makes are touched, so a mistyped cache directory cannot
    /// cost anyone their own `tmp/`.
    pub(super) fn wipe_tmp(&self) -> Result<usize, CacheError> {
        let entries = fs::read_dir(&self.tmp).map_err(CacheError::io("list", &self.tmp))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(CacheError::io("list", &self.tmp))?;
            let is_ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(TEMP_SUFFIX));
            if is_ours {
                let path = entry.path();
                fs::remove_file(&path)
                    .map_err(CacheError::io("remove the stale temp file", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A temp file's name that removes itself unless kept: if the task that
/// created it is abandoned (its caller cancelled), the file goes with it.
pub(super) struct TempPath(Option<PathBuf>);

impl TempPath {
    /// Takes over responsibility for removing the file.
    pub(super) fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_in_background(path);
        }
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CacheError::io("fsync the directory", dir))
}

/// Unlinks, treating "already gone" as done; failures are logged, since
/// every caller is cleaning up after something else already went wrong.
pub(super) fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cache: cannot remove file"),
    }
}

/// Removes a temp file off the async threads when there is a runtime
/// (Drop paths may run outside one).
pub(super) fn remove_in_background(path: PathBuf) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || remove_quietly(&path));
        }
        Err(_) => remove_quietly(&path),
    }
}

/// Reads exactly `len` bytes at `pos` from a shared open file.
///
/// Positional reads need no seek state, so any number of streams share one
/// descriptor; holding the descriptor keeps an unlinked (evicted) blob
/// readable to the end.
pub(super) async fn read_chunk(file: Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || pread_exact(&file, pos, len).map(Bytes::from))
        .await
        .map_err(io::Error::other)?
}

/// `len` bytes at `pos`, read into a fresh buffer that is never zeroed
/// first: `read_exact_at` needs an initialised slice, and zeroing every
/// 256 KiB chunk before the read overwrote it was 5% of a cold pull's CPU.
fn pread_exact(file: &File, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd as _;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        let offset = libc::off_t::try_from(pos + filled as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        // SAFETY: pread writes at most `spare.len()` bytes into `spare`,
        // which is this Vec's own unused capacity.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                offset,
            )
        };
        match n {
            n if n > 0 => {
                // SAFETY: the kernel initialised `n` more bytes (n <= spare.len()).
                unsafe { buf.set_len(filled + n as usize) };
            }
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[tokio::test]
    async fn chunks_read_back_exactly_and_short_files_are_an_error() {
        let mut f = tempfile::tempfile().expect("temp file");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        let f = Arc::new(f);
        let chunk = read_chunk(f.clone(), 1234, 262_144).await.expect("read");
        assert_eq!(&chunk[..], &data[1234..1234 + 262_144]);
        let tail = read_chunk(f.clone(), 299_000, 1000).await.expect("tail");
        assert_eq!(&tail[..], &data[299_000..]);
        let err = read_chunk(f, 299_500, 1000)
            .await
            .expect_err("past the end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
