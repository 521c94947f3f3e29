//! Making the index and the blob files agree, at open.
//!
//! A crash can leave three kinds of disagreement, all harmless to fix:
//! an index entry whose file is gone (crash inside eviction, between unlink
//! and index delete: the entry is dropped), a blob file without an entry
//! (crash inside publish, between rename and index insert: the file is
//! hashed again and indexed if it matches, removed if not), and temp files
//! of interrupted fills (removed). Indexed files are checked by size only:
//! hashing a whole cache at every start would take minutes.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File},
    io::{self, Read as _},
    path::Path,
};

use sha2::{Digest as _, Sha256};

use super::{
    CacheError, Digest,
    index::Index,
    state::{BlobMeta, unix_millis},
    store::{self, Layout, READ_CHUNK},
};

/// What the index and files agree on after reconciling.
pub(super) struct Loaded {
    pub(super) blobs: HashMap<Digest, BlobMeta>,
    pub(super) pins: BTreeMap<String, Vec<Digest>>,
}

pub(super) fn reconcile(layout: &Layout, index: &Index) -> Result<Loaded, CacheError> {
    let wiped = layout.wipe_tmp()?;

    let mut blobs = HashMap::new();
    let mut dropped = Vec::new();
    for row in index.blobs()? {
        let Some(digest) = Digest::from_hex(&row.hex) else {
            dropped.push(row.hex);
            continue;
        };
        let path = layout.blob(&digest);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == row.size => {
                blobs.insert(
                    digest,
                    BlobMeta {
                        size: row.size,
                        access: row.access,
                        persisted: row.access,
                    },
                );
            }
            Ok(m) => {
                // Published files are never rewritten, so this is damage
                // from outside; the content cannot be trusted.
                tracing::warn!(path = %path.display(), len = m.len(), size = row.size, "cache: blob file does not match its index entry; removing it");
                store::remove_quietly(&path);
                dropped.push(row.hex);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => dropped.push(row.hex),
            Err(e) => return Err(CacheError::io("stat the blob", path)(e)),
        }
    }

    let adopted = adopt_unindexed(layout, &blobs)?;
    let recovered: Vec<_> = adopted
        .iter()
        .map(|(d, size)| (*d, *size, unix_millis()))
        .collect();
    for (digest, size, access) in &recovered {
        blobs.insert(
            *digest,
            BlobMeta {
                size: *size,
                access: *access,
                persisted: *access,
            },
        );
    }
    if !dropped.is_empty() {
        index.remove_blobs(dropped.iter().map(String::as_str))?;
    }
    if !recovered.is_empty() {
        index.put_blobs(&recovered)?;
    }
    if wiped + dropped.len() + recovered.len() > 0 {
        tracing::info!(
            stale_temp_files = wiped,
            missing_blobs = dropped.len(),
            reindexed_blobs = recovered.len(),
            "cache: reconciled the index with the files"
        );
    }

    let pins = index.pins()?.into_iter().collect();
    Ok(Loaded { blobs, pins })
}

/// Blob files the index does not list: kept (and returned) if their content
/// matches their name, removed otherwise. Names that are not digests are
/// not ours and are left alone.
fn adopt_unindexed(
    layout: &Layout,
    indexed: &HashMap<Digest, BlobMeta>,
) -> Result<Vec<(Digest, u64)>, CacheError> {
    let listed: HashSet<Digest> = indexed.keys().copied().collect();
    let mut adopted = Vec::new();
    let entries = fs::read_dir(&layout.blobs).map_err(CacheError::io("list", &layout.blobs))?;
    for entry in entries {
        let entry = entry.map_err(CacheError::io("list", &layout.blobs))?;
        let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) else {
            continue;
        };
        if listed.contains(&digest) {
            continue;
        }
        let path = entry.path();
        let (actual, size) = hash_file(&path)?;
        if actual == digest {
            adopted.push((digest, size));
        } else {
            tracing::warn!(path = %path.display(), %actual, "cache: unindexed blob does not match its name; removing it");
            store::remove_quietly(&path);
        }
    }
    Ok(adopted)
}

pub(super) fn hash_file(path: &Path) -> Result<(Digest, u64), CacheError> {
    let read_err = CacheError::io("read the blob to verify it", path);
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Err(read_err(e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut size = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok((Digest::from_hasher(hasher), size))
}
