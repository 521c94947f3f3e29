//! Who names which blob, and what each site and repository takes up:
//! `gateway cache ls` (per blob: size, last use, pins, names) and
//! `gateway cache du`.
//!
//! A reference names its manifest's whole walk (walk.rs), an object its
//! body, a pin its digests. A blob several repositories name counts in
//! each of them, and once in the totals.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{Cache, CacheError, Digest};

/// What names blobs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// A row of the references table: `key` is the registry's, such as
    /// `manifests/v1`, `manifests/sha256:…` or `tags/list`.
    Ref {
        site: String,
        repo: String,
        key: String,
    },
    Object {
        site: String,
        key: String,
    },
    Pin {
        name: String,
    },
}

impl Owner {
    /// How `cache ls` shows it: `host/repo:tag`, `host/repo@sha256:…`,
    /// `host/repo tags/list`, `host/path`, `pin NAME`.
    pub fn label(&self) -> String {
        match self {
            Owner::Ref { site, repo, key } => match key.strip_prefix("manifests/") {
                Some(d) if d.starts_with("sha256:") => format!("{site}/{repo}@{d}"),
                Some(tag) => format!("{site}/{repo}:{tag}"),
                None => format!("{site}/{repo} {key}"),
            },
            Owner::Object { site, key } if key.starts_with('/') => format!("{site}{key}"),
            Owner::Object { site, key } => format!("{site} {key}"),
            Owner::Pin { name } => format!("pin {name}"),
        }
    }

    /// A reference by digest (`manifests/sha256:…`): the registry records
    /// one beside every tag it resolves, so it is an alias of the tag's
    /// content rather than a name of its own.
    pub fn is_digest_alias(&self) -> bool {
        matches!(self, Owner::Ref { key, .. } if key.starts_with("manifests/sha256:"))
    }
}

/// One owner and the held blobs it names.
#[derive(Clone, Debug)]
pub struct Named {
    pub owner: Owner,
    pub digests: Vec<Digest>,
}

/// A held blob, from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// Last access, milliseconds since the Unix epoch (the cache clock).
    pub last_used_ms: u64,
}

impl Cache {
    /// Every held blob, sorted by digest.
    pub fn blob_list(&self) -> Vec<BlobInfo> {
        let mut out: Vec<BlobInfo> = self
            .inner
            .state()
            .blobs
            .iter()
            .map(|(d, m)| BlobInfo {
                digest: *d,
                size: m.size,
                last_used_ms: m.access,
            })
            .collect();
        out.sort_unstable_by_key(|b| b.digest);
        out
    }

    /// Every reference, object and pin with the held blobs it names.
    pub async fn naming(&self) -> Result<Vec<Named>, CacheError> {
        let refs = self.list_refs().await?;
        let roots: Vec<Option<Digest>> = refs
            .iter()
            .map(|(_, _, _, e)| Digest::parse(&e.digest).ok())
            .collect();
        let walks = self
            .walk_all(roots.iter().flatten().copied().collect())
            .await?;
        let mut walks = walks.into_iter();
        let mut out = Vec::new();
        for ((site, repo, key, _), root) in refs.into_iter().zip(roots) {
            // References to other algorithms' digests name nothing cached.
            let digests = match root {
                Some(_) => walks.next().map(|w| w.held).unwrap_or_default(),
                None => Vec::new(),
            };
            out.push(Named {
                owner: Owner::Ref { site, repo, key },
                digests,
            });
        }
        let held: HashSet<Digest> = self.blob_list().iter().map(|b| b.digest).collect();
        for (site, key, entry) in self.list_objects().await? {
            let digests = Digest::parse(&entry.digest)
                .ok()
                .filter(|d| held.contains(d))
                .into_iter()
                .collect();
            out.push(Named {
                owner: Owner::Object { site, key },
                digests,
            });
        }
        for (name, digests) in self.list_pins() {
            out.push(Named {
                owner: Owner::Pin { name },
                digests: digests.into_iter().filter(|d| held.contains(d)).collect(),
            });
        }
        Ok(out)
    }
}

/// Bytes and blob count of a set of blobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub bytes: u64,
    pub blobs: usize,
}

impl Amount {
    fn of<'a>(digests: impl IntoIterator<Item = &'a Digest>, sizes: &HashMap<Digest, u64>) -> Self {
        let unique: HashSet<&Digest> = digests.into_iter().collect();
        let mut out = Amount::default();
        for d in unique {
            if let Some(size) = sizes.get(d) {
                out.bytes += size;
                out.blobs += 1;
            }
        }
        out
    }
}

/// `gateway cache du`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub sites: Vec<SiteUsage>,
    /// Every held blob, each once.
    pub total: Amount,
    /// Held blobs some pin names.
    pub pinned: Amount,
    /// Held blobs nothing names (evicted first when room is needed).
    pub unreferenced: Amount,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SiteUsage {
    pub site: String,
    /// The site's references and objects, each blob once.
    pub total: Amount,
    pub repositories: Vec<RepoUsage>,
    /// URL-named content (helm and files sites).
    pub objects: Amount,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepoUsage {
    pub repository: String,
    pub total: Amount,
}

/// One site's references' digests by repository, and its objects'.
type SiteDigests<'a> = (BTreeMap<&'a str, Vec<Digest>>, Vec<Digest>);

/// Sums `naming` over the held `blobs`.
pub fn usage(naming: &[Named], blobs: &[BlobInfo]) -> Usage {
    let sizes: HashMap<Digest, u64> = blobs.iter().map(|b| (b.digest, b.size)).collect();
    let mut sites: BTreeMap<&str, SiteDigests<'_>> = BTreeMap::new();
    let mut pinned = Vec::new();
    let mut named = HashSet::new();
    for n in naming {
        named.extend(n.digests.iter().copied());
        match &n.owner {
            Owner::Ref { site, repo, .. } => sites
                .entry(site)
                .or_default()
                .0
                .entry(repo)
                .or_default()
                .extend(&n.digests),
            Owner::Object { site, .. } => sites.entry(site).or_default().1.extend(&n.digests),
            Owner::Pin { .. } => pinned.extend(&n.digests),
        }
    }
    let sites = sites
        .into_iter()
        .map(|(site, (repos, objects))| SiteUsage {
            site: site.to_owned(),
            total: Amount::of(repos.values().flatten().chain(&objects), &sizes),
            repositories: repos
                .iter()
                .map(|(repo, digests)| RepoUsage {
                    repository: (*repo).to_owned(),
                    total: Amount::of(digests, &sizes),
                })
                .collect(),
            objects: Amount::of(&objects, &sizes),
        })
        .collect();
    Usage {
        sites,
        total: Amount::of(sizes.keys(), &sizes),
        pinned: Amount::of(&pinned, &sizes),
        unreferenced: Amount::of(sizes.keys().filter(|d| !named.contains(*d)), &sizes),
    }
}
