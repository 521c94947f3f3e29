//! Objects: content named by a URL rather than a digest (a helm site's
//! `index.yaml`, a files site's files), per site. The body is a blob like
//! any other; this remembers which blob a key held, the response headers to
//! replay and when upstream last confirmed it (freshness decisions belong
//! to the caller). A blob evicted meanwhile leaves its entry behind: the
//! caller refetches.
//!
//! Table `objects`: (site, key) → [`ObjectEntry`] as JSON.

use std::sync::Arc;

use redb::{ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Cache, CacheError, index::Index};

pub(super) const OBJECTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("objects");

/// What an object key held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// `sha256:<hex>` of the body.
    pub digest: String,
    pub size: u64,
    /// Response headers to replay, lowercase names, in order (validators,
    /// `content-type`, `cache-control`, …).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// When upstream last sent or confirmed it, in seconds since the Unix
    /// epoch.
    pub fetched_at: i64,
}

impl ObjectEntry {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Cache {
    /// Records (replacing) what `site`'s object `key` holds.
    pub async fn put_object(
        &self,
        site: &str,
        key: &str,
        entry: ObjectEntry,
    ) -> Result<(), CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, key) = (site.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || inner.index.put_object((&site, &key), &entry))
            .await
            .map_err(CacheError::task("store an object entry"))?
    }

    pub async fn get_object(
        &self,
        site: &str,
        key: &str,
    ) -> Result<Option<ObjectEntry>, CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, key) = (site.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || inner.index.get_object((&site, &key)))
            .await
            .map_err(CacheError::task("read an object entry"))?
    }

    /// Forgets `site`'s object `key`; `Ok(false)` when nothing was held.
    pub async fn remove_object(&self, site: &str, key: &str) -> Result<bool, CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, key) = (site.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || inner.index.remove_object((&site, &key)))
            .await
            .map_err(CacheError::task("remove an object entry"))?
    }

    /// Every object as `(site, key, entry)`, sorted by site and key.
    pub async fn list_objects(&self) -> Result<Vec<(String, String, ObjectEntry)>, CacheError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.list_objects())
            .await
            .map_err(CacheError::task("list object entries"))?
    }
}

fn key_text((site, key): (&str, &str)) -> String {
    format!("object {site} {key}")
}

impl Index {
    pub(super) fn put_object(
        &self,
        key: (&str, &str),
        entry: &ObjectEntry,
    ) -> Result<(), CacheError> {
        let op = "store an object entry";
        let json = serde_json::to_string(entry).map_err(|source| CacheError::IndexEntry {
            key: key_text(key),
            source,
        })?;
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        {
            let mut table = tx.open_table(OBJECTS).map_err(CacheError::index(op))?;
            table
                .insert(key, json.as_str())
                .map_err(CacheError::index(op))?;
        }
        tx.commit().map_err(CacheError::index(op))
    }

    pub(super) fn get_object(&self, key: (&str, &str)) -> Result<Option<ObjectEntry>, CacheError> {
        let op = "read an object entry";
        let tx = self.db.begin_read().map_err(CacheError::index(op))?;
        let table = tx.open_table(OBJECTS).map_err(CacheError::index(op))?;
        let Some(v) = table.get(key).map_err(CacheError::index(op))? else {
            return Ok(None);
        };
        serde_json::from_str(v.value())
            .map(Some)
            .map_err(|source| CacheError::IndexEntry {
                key: key_text(key),
                source,
            })
    }

    pub(super) fn remove_object(&self, key: (&str, &str)) -> Result<bool, CacheError> {
        let op = "remove an object entry";
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        let removed = {
            let mut table = tx.open_table(OBJECTS).map_err(CacheError::index(op))?;
            table.remove(key).map_err(CacheError::index(op))?.is_some()
        };
        tx.commit().map_err(CacheError::index(op))?;
        Ok(removed)
    }

    pub(super) fn list_objects(&self) -> Result<Vec<(String, String, ObjectEntry)>, CacheError> {
        let op = "list object entries";
        let tx = self.db.begin_read().map_err(CacheError::index(op))?;
        let table = tx.open_table(OBJECTS).map_err(CacheError::index(op))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(CacheError::index(op))? {
            let (k, v) = row.map_err(CacheError::index(op))?;
            let key = k.value();
            let entry =
                serde_json::from_str(v.value()).map_err(|source| CacheError::IndexEntry {
                    key: key_text(key),
                    source,
                })?;
            out.push((key.0.to_owned(), key.1.to_owned(), entry));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_are_stored_listed_and_removed() {
        let dir = tempfile::tempdir().expect("object test");
        let cache = Cache::open(dir.path(), 1 << 20).await.expect("object test");
        let entry = ObjectEntry {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 3,
            headers: vec![("etag".into(), "\"x\"".into())],
            fetched_at: 7,
        };
        assert_eq!(
            cache
                .get_object("s", "/index.yaml")
                .await
                .expect("object test"),
            None
        );
        cache
            .put_object("s", "/index.yaml", entry.clone())
            .await
            .expect("object test");
        let got = cache
            .get_object("s", "/index.yaml")
            .await
            .expect("object test")
            .expect("stored entry");
        assert_eq!(got, entry);
        assert_eq!(got.header("etag"), Some("\"x\""));
        assert_eq!(got.header("last-modified"), None);
        let all = cache.list_objects().await.expect("object test");
        assert_eq!(all, vec![("s".into(), "/index.yaml".into(), entry)]);
        assert!(
            cache
                .remove_object("s", "/index.yaml")
                .await
                .expect("object test")
        );
        assert!(
            !cache
                .remove_object("s", "/index.yaml")
                .await
                .expect("object test")
        );
        cache.close().await.expect("object test");
    }
}
