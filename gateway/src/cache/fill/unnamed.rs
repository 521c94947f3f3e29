//! Fills whose digest is known only at the end: a files site's URL whose
//! sha256 nobody announced. The fill takes the slot of a stand-in digest
//! derived from its name (the sha256 of a tagged string, which no content
//! of a site will hash to in practice), so concurrent misses of one name
//! single-flight and follow it like any fill; `finish` then publishes the
//! blob under the sha256 of what was written (fill.rs `named`), which is
//! what readers were verified against: nothing to mismatch.
//!
//! Reading a published blob back is verified as for any blob (blob.rs):
//! the name it is stored under is its content's sha256.

use std::sync::Arc;

use super::{Fill, FillWriter};
use crate::cache::{Cache, CacheError, Digest, FillReader};

/// The stand-in digest of the fill named `name`.
fn slot(name: &str) -> Digest {
    Digest::of(format!("margo-gateway unnamed fill\0{name}").as_bytes())
}

impl Cache {
    /// Starts or joins the fill named `name` (e.g. `site\0key`); a
    /// leader's blob is stored under its content's digest by
    /// [`FillWriter::finish`], whose [`crate::cache::Blob::digest`] says
    /// which.
    pub async fn begin_unnamed_fill(&self, name: &str) -> Result<Fill, CacheError> {
        match self.begin_fill(&slot(name), None).await? {
            Fill::Leader(mut writer) => {
                writer.named = false;
                Ok(Fill::Leader(writer))
            }
            other => Ok(other),
        }
    }

    /// A reader of the fill named `name` if one is running; never starts
    /// one.
    pub fn follow_unnamed_fill(&self, name: &str) -> Option<FillReader> {
        self.follow_fill(&slot(name))
    }

    /// A reader of the fill of `digest` if one is running; never starts
    /// one (a caller that must ask upstream before it can lead checks
    /// this first).
    pub fn follow_fill(&self, digest: &Digest) -> Option<FillReader> {
        let state = self.inner.state();
        state
            .fills
            .get(digest)
            .map(|shared| FillReader::new(Arc::clone(shared)))
    }
}

impl FillWriter {
    /// Whether this fill's digest is learnt at the end.
    pub fn is_unnamed(&self) -> bool {
        !self.named
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn an_unnamed_fill_is_stored_under_its_content_digest_and_followed_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path(), 1 << 20).await.expect("cache");
        let Fill::Leader(mut writer) = cache.begin_unnamed_fill("s\0/a").await.expect("begin")
        else {
            panic!("expected to lead");
        };
        assert!(writer.is_unnamed());
        let follower = cache.follow_unnamed_fill("s\0/a").expect("a running fill");
        assert!(cache.follow_unnamed_fill("s\0/b").is_none());
        let Fill::Follower(_) = cache.begin_unnamed_fill("s\0/a").await.expect("join") else {
            panic!("a second miss must follow");
        };
        writer.write(b"hello ").await.expect("write");
        writer.write(b"world").await.expect("write");
        let blob = writer.finish().await.expect("finish");
        assert_eq!(blob.digest(), Digest::of(b"hello world"));
        let mut got = Vec::new();
        let mut s = Box::pin(follower.stream(None));
        while let Some(chunk) = s.next().await {
            got.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(got, b"hello world");
        let stored = cache
            .get(&Digest::of(b"hello world"))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(stored.size(), 11);
        assert!(cache.follow_unnamed_fill("s\0/a").is_none(), "slot freed");
    }
}
