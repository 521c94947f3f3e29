//! File handling for the CA: atomic writes with the mode set when the file
//! is created, and a key reader that checks the mode of the file it
//! actually opened (fstat on the descriptor, not a second lookup by path).

use std::{
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::TlsError;

/// Creates `dir` (and parents) as 0700 when missing. An existing directory
/// keeps its mode: the key file's own 0600 is what protects the key.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(TlsError::io("create the CA directory", dir))
}

/// Who may read a file written by [`write_atomic`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Visibility {
    /// 0600 from the moment the file exists; a umask can only narrow it.
    Private,
    /// 0644 whatever the umask, since devices and operators export it.
    Public,
}

/// Writes `bytes` to `dir/name` through a temporary file in `dir` and a
/// rename, so readers see the old file or the new one, never a part.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    visibility: Visibility,
) -> Result<PathBuf, TlsError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A temporary left by a crashed run with the same pid; create_new below
    // must not fail on it (and never follows a planted symlink).
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(TlsError::io("remove the stale temporary", &tmp)(e)),
    }
    let result = write_new(&tmp, bytes, visibility)
        .and_then(|()| fs::rename(&tmp, &path).map_err(TlsError::io("rename into place", &path)));
    if result.is_err() {
        // Best effort: the error being returned is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

fn write_new(path: &Path, bytes: &[u8], visibility: Visibility) -> Result<(), TlsError> {
    let mode = match visibility {
        Visibility::Private => 0o600,
        Visibility::Public => 0o644,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(TlsError::io("create", path))?;
    if visibility == Visibility::Public {
        // Widen past a strict umask before anything is written; never done
        // for the key, whose mode is only ever the one it was created with.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(TlsError::io("set the mode of", path))?;
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(TlsError::io("write", path))
}

/// Flushes the directory entry of renamed files to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), TlsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TlsError::io("sync the directory", dir))
}

/// Reads a text file; a missing one is [`TlsError::CaMissing`].
pub(crate) fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|e| missing_or(path, "read", e))
}

/// Reads a private key file, refusing it when group or others may read it.
pub(crate) fn read_private(path: &Path) -> Result<String, TlsError> {
    let mut file = File::open(path).map_err(|e| missing_or(path, "open", e))?;
    let mode = file
        .metadata()
        .map_err(TlsError::io("inspect", path))?
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(TlsError::io("read", path))?;
    Ok(text)
}

fn missing_or(path: &Path, action: &'static str, e: io::Error) -> TlsError {
    if e.kind() == io::ErrorKind::NotFound {
        TlsError::CaMissing {
            path: path.to_owned(),
        }
    } else {
        TlsError::io(action, path)(e)
    }
}
