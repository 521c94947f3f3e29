//! Tags shared between the gateways of a site: `refs/<site>/<repo>/<tag>`
//! holds the digest a tag named when upstream last confirmed it, and
//! when that was. A gateway whose own copy of the tag is missing or stale
//! adopts a ref confirmed within `tag_ttl` without asking upstream; with
//! upstream down, any ref lets it serve the tag (as a stale copy of its
//! own would).

use bytes::Bytes;
use object_store::{ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};

use super::{SharedStore, StoreError};

/// The largest ref object read: a ref is a digest and a few fields.
const MAX_REF: u64 = 4096;

/// A shared tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRef {
    /// `sha256:<hex>` of the manifest or index.
    pub digest: String,
    /// Its media type as upstream sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Seconds since the Unix epoch when upstream last confirmed it.
    pub confirmed_at: i64,
    /// The gateway that wrote it.
    #[serde(default)]
    pub gateway: String,
}

impl SharedStore {
    fn ref_key(site: &str, repo: &str, tag: &str) -> String {
        format!("refs/{}/{repo}/{tag}", site.to_ascii_lowercase())
    }

    /// Records that upstream confirmed `tag` → `r.digest` now.
    pub async fn put_ref(
        &self,
        site: &str,
        repo: &str,
        tag: &str,
        r: &SharedRef,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec(r).map_err(|e| StoreError::BadRef(e.to_string()))?;
        let key = self.key(&Self::ref_key(site, repo, tag));
        self.call(self.inner.objects.put(&key, PutPayload::from(body)))
            .await?;
        self.inner.stats.ref_written();
        Ok(())
    }

    /// The shared ref of `tag`, if any. A ref object that is not what
    /// this gateway writes is an error (and ignored by the caller).
    pub async fn get_ref(
        &self,
        site: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<SharedRef>, StoreError> {
        let key = self.key(&Self::ref_key(site, repo, tag));
        let got = match self.call(self.inner.objects.get(&key)).await {
            Ok(g) => g,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if got.meta.size > MAX_REF {
            return Err(StoreError::BadRef(format!(
                "{} bytes, more than {MAX_REF}",
                got.meta.size
            )));
        }
        let bytes: Bytes = self.call(got.bytes()).await?;
        let r: SharedRef =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadRef(e.to_string()))?;
        if crate::cache::Digest::parse(&r.digest).is_err() {
            return Err(StoreError::BadRef(format!(
                "`{}` is not a digest",
                r.digest
            )));
        }
        Ok(Some(r))
    }

    /// A ref was adopted instead of asking upstream: counted.
    pub fn ref_adopted(&self) {
        self.inner.stats.ref_adopted();
    }
}
