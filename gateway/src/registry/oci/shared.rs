//! Tags through the shared store (`cache.store`, gateway/src/store):
//! a tag upstream confirmed is published as a shared ref; a gateway whose
//! own copy of a tag is missing or older than the store's adopts the
//! store's (the manifest from its cache or the store, verified), so a tag
//! revalidated by one gateway is fresh for all, and a gateway that never
//! saw a tag can serve it while its upstream is down. Manifests fetched
//! by digest get a ref under their digest the same way: a repository's
//! manifest by digest is served only once that repository had it (here
//! or on another gateway of the site).

use super::{
    OciSite,
    document::{self, Doc, Kind, MAX_DOCUMENT},
};
use crate::{
    cache::{Digest, RefEntry},
    store::SharedRef,
};

/// The shared ref name of a manifest key (`manifests/<tag>` or
/// `manifests/sha256:<hex>`); `None` for another kind of document.
fn ref_name(key: &str, kind: Kind) -> Option<&str> {
    key.strip_prefix("manifests/")
        .filter(|_| kind == Kind::Manifest)
}

/// Publishes that upstream confirmed `key` → `doc` now, in the
/// background (no device waits for the store): the tag's ref, and the
/// manifest's digest ref, which lets another gateway serve the manifest
/// by digest for this repository (a platform manifest under an index).
pub(super) fn publish(site: &OciSite, name: &str, key: &str, doc: &Doc, kind: Kind, at: i64) {
    let (Some(store), Some(first)) = (site.cache.shared(), ref_name(key, kind)) else {
        return;
    };
    if !store.is_up() {
        return;
    }
    let r = SharedRef {
        digest: doc.digest.clone(),
        media_type: Some(doc.media_type.clone()),
        confirmed_at: at,
        gateway: store.gateway_id().to_owned(),
    };
    let mut names = vec![first.to_owned()];
    if first != doc.digest {
        names.push(doc.digest.clone());
    }
    let (host, name) = (site.host.clone(), name.to_owned());
    tokio::spawn(async move {
        for reference in names {
            if let Err(e) = store.put_ref(&host, &name, &reference, &r).await {
                tracing::debug!(error = %e, %name, %reference, "reference not published to the shared store");
                return;
            }
        }
    });
}

/// The store's ref for `key` when it is newer than `local` (the
/// gateway's own entry, if any): its document, recorded locally with the
/// store's confirmation time. `None` when there is no such ref, the store
/// is down, or the document cannot be had and verified.
pub(super) async fn adopt(
    site: &OciSite,
    name: &str,
    key: &str,
    kind: Kind,
    local: Option<&RefEntry>,
) -> Option<(RefEntry, Doc)> {
    let reference = ref_name(key, kind)?;
    let store = site.cache.shared().filter(|s| s.is_up())?;
    let r = match store.get_ref(&site.host, name, reference).await {
        Ok(r) => r?,
        Err(e) => {
            tracing::debug!(error = %e, %name, %reference, "shared store ref not read");
            return None;
        }
    };
    if local.is_some_and(|l| l.fetched_at >= r.confirmed_at) {
        return None;
    }
    // A digest's ref names that digest, or it is not the manifest asked
    // for (a bad ref: ignored).
    if reference.contains(':') && r.digest != reference {
        return None;
    }
    let digest = Digest::parse(&r.digest).ok()?;
    let bytes = match site.cache.get(&digest).await.ok().flatten() {
        Some(blob) => crate::registry::fill::read_blob(&blob, MAX_DOCUMENT)
            .await
            .ok()?,
        // Verified against the digest by read_small.
        None => store.read_small(&digest, MAX_DOCUMENT).await.ok()??,
    };
    let media_type = r
        .media_type
        .clone()
        .unwrap_or_else(|| document::media_type_of(&bytes));
    let doc = Doc {
        bytes,
        digest: r.digest.clone(),
        media_type,
        note: None,
    };
    document::store(site, &doc).await;
    let entry = RefEntry {
        digest: doc.digest.clone(),
        media_type: doc.media_type.clone(),
        size: doc.bytes.len() as u64,
        fetched_at: r.confirmed_at,
    };
    for k in [key.to_owned(), format!("manifests/{}", doc.digest)] {
        if let Err(e) = site
            .cache
            .put_ref(&site.host, name, &k, entry.clone())
            .await
        {
            tracing::warn!(error = %e, key = %k, "could not record a shared reference");
        }
    }
    store.ref_adopted();
    Some((entry, doc))
}
