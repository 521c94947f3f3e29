//! What a cached manifest holds: the manifest, the manifests an index
//! names (every platform), and each image's config and layers, as
//! `gateway cache seed` pins them (registry/oci/seed.rs) but read from the
//! cache only: nothing is fetched. `cache pin`, `cache rm`, `cache ls` and
//! `cache du` use it to know which blobs a reference names.
//!
//! Manifests are read from their files directly (not through
//! [`Cache::get`]): looking is not an access for LRU.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, Read as _},
    sync::Arc,
};

use super::{Cache, CacheError, Digest, Inner};

/// The largest document read as a manifest; a larger blob is a layer
/// (the registry refuses larger manifests too).
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// Bounds the walk of nested indexes, as seed does.
const MAX_DEPTH: usize = 4;

/// What a walk from one manifest found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Every held digest it names, the root first, each once.
    pub held: Vec<Digest>,
    /// The held manifests among them (the root included, if held).
    pub manifests: Vec<Digest>,
    /// What it names that the cache does not hold, as `manifest <digest>`
    /// or `blob <digest>`, or why it could not be followed.
    pub missing: Vec<String>,
}

impl Walk {
    /// Everything it names is held.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && !self.held.is_empty()
    }
}

impl Cache {
    /// Walks from the manifest `root`.
    pub async fn walk(&self, root: Digest) -> Result<Walk, CacheError> {
        Ok(self.walk_all(vec![root]).await?.pop().unwrap_or_default())
    }

    /// Walks from each root, in one blocking task.
    pub async fn walk_all(&self, roots: Vec<Digest>) -> Result<Vec<Walk>, CacheError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || roots.iter().map(|r| walk(&inner, *r)).collect())
            .await
            .map_err(CacheError::task("walk manifests"))?
    }
}

fn walk(inner: &Inner, root: Digest) -> Result<Walk, CacheError> {
    let mut out = Walk::default();
    let mut seen = HashSet::new();
    let mut pending = vec![(root, 0usize)];
    while let Some((digest, depth)) = pending.pop() {
        if !seen.insert(digest) {
            continue;
        }
        let Some(doc) = read_manifest(inner, &digest)? else {
            out.missing.push(format!("manifest {digest}"));
            continue;
        };
        out.held.push(digest);
        out.manifests.push(digest);
        // Not JSON (a blob that is no manifest, named as one): it names
        // nothing more.
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&doc) else {
            continue;
        };
        if let Some(children) = doc.get("manifests").and_then(|m| m.as_array()) {
            if depth >= MAX_DEPTH {
                out.missing.push(format!(
                    "indexes nested deeper than {MAX_DEPTH} levels at {digest}"
                ));
                continue;
            }
            for child in children {
                match descriptor(child) {
                    Ok(d) => pending.push((d, depth + 1)),
                    Err(why) => out.missing.push(why),
                }
            }
            continue;
        }
        let leaves = doc.get("config").into_iter().chain(
            doc.get("layers")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten(),
        );
        for leaf in leaves {
            match descriptor(leaf) {
                Ok(d) if !seen.insert(d) => {}
                Ok(d) if inner.state().blobs.contains_key(&d) => out.held.push(d),
                Ok(d) => out.missing.push(format!("blob {d}")),
                Err(why) => out.missing.push(why),
            }
        }
    }
    Ok(out)
}

fn descriptor(d: &serde_json::Value) -> Result<Digest, String> {
    let text = d
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| "a descriptor without a digest".to_owned())?;
    Digest::parse(text).map_err(|_| {
        format!(
            "{} (not a sha256 digest: never cached)",
            text.chars().take(100).collect::<String>()
        )
    })
}

/// The manifest's bytes, if held and small enough to be one.
fn read_manifest(inner: &Inner, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
    let Some(size) = inner.state().blobs.get(digest).map(|m| m.size) else {
        return Ok(None);
    };
    if size > MAX_MANIFEST {
        // Held, but a layer: it names nothing.
        return Ok(Some(Vec::new()));
    }
    let path = inner.layout.blob(digest);
    let file = match File::open(&path) {
        Ok(f) => f,
        // Evicted since the state was read.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::io("open the manifest", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST)
        .read_to_end(&mut bytes)
        .map_err(CacheError::io("read the manifest", &path))?;
    Ok(Some(bytes))
}
