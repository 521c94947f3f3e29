//! References: mutable names (tags) resolved to digests, per site and
//! repository. The content itself is a blob like any other; this only
//! remembers what a name pointed to and when that was learnt, so a tag can
//! be answered from the cache while upstream is down (freshness decisions
//! belong to the caller).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Cache, CacheError};

/// What a reference resolved to. Stored as JSON in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefEntry {
    /// `sha256:<hex>` (a string: upstream may use other algorithms, which
    /// are proxied uncached but still worth remembering).
    pub digest: String,
    pub media_type: String,
    /// Size of the manifest in bytes.
    pub size: u64,
    /// When upstream last confirmed it, in seconds since the Unix epoch.
    pub fetched_at: i64,
}

impl Cache {
    /// Records (replacing) what `site`/`repo`:`reference` resolves to.
    pub async fn put_ref(
        &self,
        site: &str,
        repo: &str,
        reference: &str,
        entry: RefEntry,
    ) -> Result<(), CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, repo, reference) = (site.to_owned(), repo.to_owned(), reference.to_owned());
        tokio::task::spawn_blocking(move || inner.index.put_ref((&site, &repo, &reference), &entry))
            .await
            .map_err(CacheError::task("store a reference"))?
    }

    pub async fn get_ref(
        &self,
        site: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Option<RefEntry>, CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, repo, reference) = (site.to_owned(), repo.to_owned(), reference.to_owned());
        tokio::task::spawn_blocking(move || inner.index.get_ref((&site, &repo, &reference)))
            .await
            .map_err(CacheError::task("read a reference"))?
    }

    /// Forgets what `site`/`repo`:`reference` resolved to (upstream
    /// revoked it); `Ok(false)` when nothing was held.
    pub async fn remove_ref(
        &self,
        site: &str,
        repo: &str,
        reference: &str,
    ) -> Result<bool, CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, repo, reference) = (site.to_owned(), repo.to_owned(), reference.to_owned());
        tokio::task::spawn_blocking(move || inner.index.remove_ref((&site, &repo, &reference)))
            .await
            .map_err(CacheError::task("remove a reference"))?
    }

    /// Every reference as `(site, repo, reference, entry)`, sorted by key.
    pub async fn list_refs(&self) -> Result<Vec<(String, String, String, RefEntry)>, CacheError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.list_refs())
            .await
            .map_err(CacheError::task("list references"))?
    }
}
