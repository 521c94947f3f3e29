//! `gateway cache rm`: forget a reference and delete the blobs nothing
//! else names.
//!
//! The blobs go the way evicted ones do (evict.rs [`dispose`]): taken out
//! of the state under its lock (never a pinned one, never one being
//! filled), marked `evicting` so a fill of the same digest waits, then
//! unlinked; a device streaming one holds its descriptor and reads on.

use std::collections::HashSet;

use serde::Serialize;

use super::{
    Cache, CacheError, Digest,
    evict::{Disposal, Victim, dispose},
    usage::Owner,
};

/// What `cache rm` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoveReport {
    /// The references forgotten: the one named and the digest aliases of
    /// its manifests that no other tag of the repository holds.
    pub references: Vec<String>,
    /// The pin of the same name was removed.
    pub unpinned: bool,
    pub removed_blobs: usize,
    pub freed_bytes: u64,
    /// Blobs of the reference kept because something else names them
    /// (another reference, an object, a pin).
    pub kept_blobs: usize,
}

impl Cache {
    /// Forgets `site`/`repo` reference `key` (`manifests/<tag>` or
    /// `manifests/<digest>`) and the pin `pin`, and deletes the blobs of
    /// its walk that nothing else names. `Ok(None)` when neither the
    /// reference nor the pin exists.
    pub async fn remove_reference(
        &self,
        site: &str,
        repo: &str,
        key: &str,
        pin: &str,
    ) -> Result<Option<RemoveReport>, CacheError> {
        let entry = self.get_ref(site, repo, key).await?;
        let by_digest = key
            .strip_prefix("manifests/")
            .and_then(|d| Digest::parse(d).ok());
        let root = entry
            .as_ref()
            .and_then(|e| Digest::parse(&e.digest).ok())
            .or(by_digest);
        let walk = match root {
            Some(root) => self.walk(root).await?,
            None => Default::default(),
        };
        let removed_ref = self.remove_ref(site, repo, key).await?;
        let unpinned = self.unpin(pin).await?;
        if !removed_ref && !unpinned {
            return Ok(None);
        }
        let mut report = RemoveReport {
            references: Vec::new(),
            unpinned,
            ..RemoveReport::default()
        };
        if removed_ref {
            report.references.push(
                Owner::Ref {
                    site: site.to_owned(),
                    repo: repo.to_owned(),
                    key: key.to_owned(),
                }
                .label(),
            );
        }

        let mut naming = self.naming().await?;
        // The digest aliases of this content in this repository go too,
        // unless another name of the repository still holds the manifest.
        let same_repo =
            |o: &Owner| matches!(o, Owner::Ref { site: s, repo: r, .. } if s == site && r == repo);
        let still_held: HashSet<Digest> = naming
            .iter()
            .filter(|n| same_repo(&n.owner) && !n.owner.is_digest_alias())
            .flat_map(|n| n.digests.iter().copied())
            .collect();
        let mut aliases = Vec::new();
        for m in &walk.manifests {
            let alias = format!("manifests/{m}");
            if !still_held.contains(m) && self.remove_ref(site, repo, &alias).await? {
                aliases.push(alias);
            }
        }
        naming.retain(|n| {
            !matches!(&n.owner, Owner::Ref { site: s, repo: r, key: k }
                if s == site && r == repo && aliases.contains(k))
        });
        for alias in aliases {
            report.references.push(
                Owner::Ref {
                    site: site.to_owned(),
                    repo: repo.to_owned(),
                    key: alias,
                }
                .label(),
            );
        }

        let named: HashSet<Digest> = naming
            .iter()
            .flat_map(|n| n.digests.iter().copied())
            .collect();
        let (orphans, kept): (Vec<Digest>, Vec<Digest>) =
            walk.held.iter().partition(|d| !named.contains(d));
        report.kept_blobs = kept.len();
        let removed = self.discard(&orphans).await?;
        report.removed_blobs = removed.len();
        report.freed_bytes = removed.iter().map(|(_, size)| size).sum();
        Ok(Some(report))
    }

    /// Deletes these blobs, except the ones pinned or being filled now;
    /// returns those deleted with their sizes.
    pub(super) async fn discard(
        &self,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, u64)>, CacheError> {
        let victims: Vec<(Digest, u64)> = {
            let mut state = self.inner.state();
            let pinned = state.pinned();
            let mut victims = Vec::new();
            for d in digests {
                if pinned.contains(d) || state.fills.contains_key(d) {
                    continue;
                }
                if let Some(meta) = state.remove_blob(d) {
                    state.evicting.insert(*d);
                    victims.push((*d, meta.size));
                }
            }
            victims
        };
        if victims.is_empty() {
            return Ok(victims);
        }
        let to_dispose = victims
            .iter()
            .map(|(digest, size)| Victim {
                digest: *digest,
                size: *size,
                to: Disposal::Unlink,
            })
            .collect();
        dispose(&self.inner, to_dispose, Vec::new()).await?;
        tracing::info!(
            blobs = victims.len(),
            bytes = victims.iter().map(|(_, s)| s).sum::<u64>(),
            "cache: removed blobs no reference names any more"
        );
        Ok(victims)
    }
}
