//! Which repositories vouch for a blob: the (site, repository) pairs whose
//! upstream answered 200 for a digest. With device groups, a blob held for
//! one repository is served through another only once that repository's
//! upstream has said it has it too, so a device that learnt a digest from
//! another group's repository cannot fetch it through its own.
//!
//! A fill (its leader's own upstream GET) and an upstream HEAD answering
//! 200 record their repository whether or not groups are configured, so
//! content cached before groups were (or by `gateway cache seed`) is
//! served without asking once they are; only groups read the table.
//!
//! Table `vouched`: (site, repository, digest hex) → seconds since the
//! Unix epoch when it was recorded. Rows outlive an evicted blob: the digest
//! names the same bytes whenever it is fetched again, and upstream's word
//! about a digest is the same for a refetch.

use std::sync::Arc;

use redb::TableDefinition;

use super::{Cache, CacheError, Digest, index::Index};

pub(super) const VOUCHED: TableDefinition<(&str, &str, &str), i64> =
    TableDefinition::new("vouched");

impl Cache {
    /// Records that `site`'s `repo` upstream has `digest`.
    pub async fn vouch(&self, site: &str, repo: &str, digest: &Digest) -> Result<(), CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, repo, hex) = (site.to_owned(), repo.to_owned(), digest.hex());
        tokio::task::spawn_blocking(move || inner.index.vouch((&site, &repo, &hex)))
            .await
            .map_err(CacheError::task("record a repository's blob"))?
    }

    /// Whether `site`'s `repo` upstream is known to have `digest`.
    pub async fn vouched(
        &self,
        site: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, CacheError> {
        let inner = Arc::clone(&self.inner);
        let (site, repo, hex) = (site.to_owned(), repo.to_owned(), digest.hex());
        tokio::task::spawn_blocking(move || inner.index.vouched((&site, &repo, &hex)))
            .await
            .map_err(CacheError::task("read a repository's blob"))?
    }
}

impl Index {
    fn vouch(&self, key: (&str, &str, &str)) -> Result<(), CacheError> {
        let op = "record a repository's blob";
        let tx = self.db.begin_write().map_err(CacheError::index(op))?;
        {
            let mut table = tx.open_table(VOUCHED).map_err(CacheError::index(op))?;
            table
                .insert(key, crate::registry::unix_now())
                .map_err(CacheError::index(op))?;
        }
        tx.commit().map_err(CacheError::index(op))
    }

    fn vouched(&self, key: (&str, &str, &str)) -> Result<bool, CacheError> {
        let op = "read a repository's blob";
        let tx = self.db.begin_read().map_err(CacheError::index(op))?;
        let table = tx.open_table(VOUCHED).map_err(CacheError::index(op))?;
        Ok(table.get(key).map_err(CacheError::index(op))?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_is_vouched_for_per_site_and_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path(), 1 << 20).await.expect("cache");
        let d = Digest::of(b"layer");
        assert!(!cache.vouched("reg", "line-3/app", &d).await.expect("read"));
        cache.vouch("reg", "line-3/app", &d).await.expect("write");
        assert!(cache.vouched("reg", "line-3/app", &d).await.expect("read"));
        assert!(
            !cache
                .vouched("reg", "library/base", &d)
                .await
                .expect("read")
        );
        assert!(
            !cache
                .vouched("other", "line-3/app", &d)
                .await
                .expect("read")
        );
        // Reopened, the record is still there.
        drop(cache);
        let cache = Cache::open(dir.path(), 1 << 20).await.expect("reopen");
        assert!(cache.vouched("reg", "line-3/app", &d).await.expect("read"));
    }
}
