//! The embedded index (redb): which blobs are complete, references, pins.
//!
//! redb commits are atomic and, with its default durability, fsynced; so
//! the index is crash-safe on its own, and the blob files are reconciled
//! with it at open (see reconcile.rs). Tables:
//!
//! - `blobs`: blob hex → (size in bytes, last access in the cache's clock,
//!   milliseconds since the Unix epoch; see state.rs).
//! - `refs`: (site, repo, reference) → [`RefEntry`] as JSON.
//! - `pins`: pin name → JSON array of digest strings.
//! - `objects`: (site, key) → [`super::ObjectEntry`] as JSON (objects.rs).
//! - `vouched`: (site, repo, blob hex) → when that repository's upstream
//!   said it has the blob (vouch.rs; read only with device groups).
//!
//! Every function blocks (redb does file I/O); callers use `spawn_blocking`.
//! redb also holds a lock on the file, so a second process cannot open the
//! same cache while the daemon has it.

use redb::{Database, ReadableTable as _, TableDefinition};

use super::{CacheError, Digest, RefEntry};

const BLOBS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("blobs");
const REFS: TableDefinition<(&str, &str, &str), &str> = TableDefinition::new("refs");
const PINS: TableDefinition<&str, &str> = TableDefinition::new("pins");

/// One row of the `blobs` table, as stored (the key is not yet validated).
pub(super) struct BlobRow {
    pub(super) hex: String,
    pub(super) size: u64,
    pub(super) access: u64,
}

pub(super) struct Index {
    pub(super) db: Database,
}

impl Index {
    /// Opens or creates the index and makes sure every table exists, so
    /// readers never meet a missing table.
    pub(super) fn open(path: &std::path::Path) -> Result<Self, CacheError> {
        let db = Database::create(path).map_err(CacheError::index("open the index file"))?;
        let tx = db
            .begin_write()
            .map_err(CacheError::index("begin a write"))?;
        {
            let op = "create the tables";
            tx.open_table(BLOBS).map_err(CacheError::index(op))?;
            tx.open_table(REFS).map_err(CacheError::index(op))?;
            tx.open_table(PINS).map_err(CacheError::index(op))?;
            tx.open_table(super::objects::OBJECTS)
                .map_err(CacheError::index(op))?;
            tx.open_table(super::vouch::VOUCHED)
                .map_err(CacheError::index(op))?;
        }
        tx.commit().map_err(CacheError::index("commit"))?;
        Ok(Self { db })
    }

    pub(super) fn blobs(&self) -> Result<Vec<BlobRow>, CacheError> {
        let op = "read the blob table";
        let tx = self.db.begin_read().map_err(CacheError::index(op))?;
        let table = tx.open_table(BLOBS).map_err(CacheError::index(op))?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(CacheError::index(op))? {
            let (k, v) = row.map_err(CacheError::index(op))?;
            let (size, access) = v.value();
            rows.push(BlobRow {
                hex: k.value().to_owned(),
                size,
                access,
            });
        }
        Ok(rows)
    }

    /// Inserts or replaces blob rows, in one transaction.
    pub(super) fn put_blobs(&self, rows: &[(Digest, u64, u64)]) -> Result<(), CacheError> {
        let op = "record blobs";
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        {
            let mut table = tx.open_table(BLOBS).map_err(CacheError::index(op))?;
            for (digest, size, access) in rows {
                table
                    .insert(digest.hex().as_str(), (*size, *access))
                    .map_err(CacheError::index(op))?;
            }
        }
        tx.commit().map_err(CacheError::index(op))
    }

    /// Updates last-access times of rows that still exist: a late flush
    /// must not bring back a blob evicted meanwhile.
    pub(super) fn update_access(&self, rows: &[(Digest, u64)]) -> Result<(), CacheError> {
        let op = "record access times";
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        {
            let mut table = tx.open_table(BLOBS).map_err(CacheError::index(op))?;
            for (digest, access) in rows {
                let hex = digest.hex();
                let size = match table.get(hex.as_str()).map_err(CacheError::index(op))? {
                    Some(v) => v.value().0,
                    None => continue,
                };
                table
                    .insert(hex.as_str(), (size, *access))
                    .map_err(CacheError::index(op))?;
            }
        }
        tx.commit().map_err(CacheError::index(op))
    }

    /// Removes blob rows by their stored key (raw, so reconcile can drop
    /// keys that are not even valid digests).
    pub(super) fn remove_blobs<'a>(
        &self,
        hexes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), CacheError> {
        let op = "remove blobs";
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        {
            let mut table = tx.open_table(BLOBS).map_err(CacheError::index(op))?;
            for hex in hexes {
                table.remove(hex).map_err(CacheError::index(op))?;
            }
        }
        tx.commit().map_err(CacheError::index(op))
    }

    pub(super) fn put_ref(
        &self,
        key: (&str, &str, &str),
        entry: &RefEntry,
    ) -> Result<(), CacheError> {
        let op = "store a reference";
        let json = serde_json::to_string(entry).map_err(|source| CacheError::IndexEntry {
            key: ref_key_text(key),
            source,
        })?;
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        {
            let mut table = tx.open_table(REFS).map_err(CacheError::index(op))?;
            table
                .insert(key, json.as_str())
                .map_err(CacheError::index(op))?;
        }
        tx.commit().map_err(CacheError::index(op))
    }

    /// Forgets a reference; `Ok(false)` when there was none.
    pub(super) fn remove_ref(&self, key: (&str, &str, &str)) -> Result<bool, CacheError> {
        let op = "remove a reference";
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        let removed = {
            let mut table = tx.open_table(REFS).map_err(CacheError::index(op))?;
            table.remove(key).map_err(CacheError::index(op))?.is_some()
        };
        tx.commit().map_err(CacheError::index(op))?;
        Ok(removed)
    }

    pub(super) fn get_ref(&self, key: (&str, &str, &str)) -> Result<Option<RefEntry>, CacheError> {
        let op = "read a reference";
        let tx = self.db.begin_read().map_err(CacheError::index(op))?;
        let table = tx.open_table(REFS).map_err(CacheError::index(op))?;
        let Some(v) = table.get(key).map_err(CacheError::index(op))? else {
            return Ok(None);
        };
        serde_json::from_str(v.value())
            .map(Some)
            .map_err(|source| CacheError::IndexEntry {
                key: ref_key_text(key),
                source,
            })
    }

    pub(super) fn list_refs(&self) -> Result<Vec<(String, String, String, RefEntry)>, CacheError> {
        let op = "list references";
        let tx = self.db.begin_read().map_err(CacheError::index(op))?;
        let table = tx.open_table(REFS).map_err(CacheError::index(op))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(CacheError::index(op))? {
            let (k, v) = row.map_err(CacheError::index(op))?;
            let key = k.value();
            let entry =
                serde_json::from_str(v.value()).map_err(|source| CacheError::IndexEntry {
                    key: ref_key_text(key),
                    source,
                })?;
            out.push((key.0.to_owned(), key.1.to_owned(), key.2.to_owned(), entry));
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) a pin.
    pub(super) fn set_pin(&self, name: &str, digests: Option<&[Digest]>) -> Result<(), CacheError> {
        let op = "store a pin";
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        {
            let mut table = tx.open_table(PINS).map_err(CacheError::index(op))?;
            match digests {
                Some(digests) => {
                    let texts: Vec<String> = digests.iter().map(Digest::to_string).collect();
                    let json =
                        serde_json::to_string(&texts).map_err(|source| CacheError::IndexEntry {
                            key: format!("pin {name}"),
                            source,
                        })?;
                    table
                        .insert(name, json.as_str())
                        .map_err(CacheError::index(op))?;
                }
                None => {
                    table.remove(name).map_err(CacheError::index(op))?;
                }
            }
        }
        tx.commit().map_err(CacheError::index(op))
    }

    pub(super) fn pins(&self) -> Result<Vec<(String, Vec<Digest>)>, CacheError> {
        let op = "read pins";
        let tx = self.db.begin_read().map_err(CacheError::index(op))?;
        let table = tx.open_table(PINS).map_err(CacheError::index(op))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(CacheError::index(op))? {
            let (k, v) = row.map_err(CacheError::index(op))?;
            let name = k.value().to_owned();
            let texts: Vec<String> =
                serde_json::from_str(v.value()).map_err(|source| CacheError::IndexEntry {
                    key: format!("pin {name}"),
                    source,
                })?;
            // Only valid digests were ever stored; a bad one would come from
            // outside tampering, and skipping it only unpins that entry.
            let digests = texts.iter().filter_map(|t| Digest::parse(t).ok()).collect();
            out.push((name, digests));
        }
        Ok(out)
    }
}

fn ref_key_text((site, repo, reference): (&str, &str, &str)) -> String {
    format!("{site}/{repo}:{reference}")
}
