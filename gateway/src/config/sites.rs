//! Site hosts (what the gateway terminates and serves), the site CA and
//! the cache.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

/// The site CA and minted leaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Directory of the site CA (`ca.pem`, `ca.key` mode 0600).
    /// Default `/var/lib/gateway/ca`.
    #[serde(default = "default_ca_dir")]
    pub ca_dir: PathBuf,
    /// Lifetime of a minted leaf certificate. Default `24h`; leaves are
    /// re-minted before they expire.
    #[serde(default = "default_leaf_validity", deserialize_with = "duration")]
    pub leaf_validity: Duration,
    /// Leaf certificates kept in memory (least recently used go first).
    /// Default 1024.
    #[serde(default = "default_leaf_cache")]
    pub leaf_cache: usize,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            ca_dir: default_ca_dir(),
            leaf_validity: default_leaf_validity(),
            leaf_cache: default_leaf_cache(),
        }
    }
}

fn default_ca_dir() -> PathBuf {
    PathBuf::from("/var/lib/gateway/ca")
}
fn default_leaf_validity() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_leaf_cache() -> usize {
    1024
}

/// What a site serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    /// An OCI distribution registry (images, Helm charts, artifacts).
    Oci,
}

/// One allowed artifact host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// The DNS name devices use (SNI and Host).
    pub host: String,
    pub kind: SiteKind,
    /// Where misses are filled from. Default `https://<host>`. The gateway
    /// connects by this name, never to an address a device chose.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Extra PEM trust anchors for the upstream, beside the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Hosts (DNS names or IP addresses, no port) that redirects and
    /// token realms of this site may lead to although their addresses are
    /// refused otherwise: loopback, link-local, private, CGNAT, unique
    /// local, multicast, and the passthrough services' addresses. A
    /// listed name is reached whatever it resolves to. The upstream's own
    /// host is always allowed. Default none; public addresses need no
    /// entry.
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
    /// This site's HTTP proxy instead of the global `upstream_proxy`, or
    /// `direct` for none. Default: the global one.
    #[serde(default)]
    pub upstream_proxy: Option<super::SiteProxy>,
}

impl Site {
    /// The upstream base URL, without a trailing slash.
    pub fn upstream_url(&self) -> String {
        self.upstream
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.host))
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Upstream credentials; the password never appears in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    /// A file holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// The local cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Default `/var/lib/gateway/cache`.
    #[serde(default = "default_cache_dir")]
    pub dir: PathBuf,
    /// Total size of cached blobs; least recently used unpinned blobs are
    /// evicted past it. Units: B, KiB, MiB, GiB, TiB (or kB, MB, GB).
    /// Default `20GiB`.
    #[serde(default = "default_max_size", deserialize_with = "size")]
    pub max_size: u64,
    /// How long a tag's digest is served before it is revalidated
    /// upstream. Default `5m`.
    #[serde(default = "default_tag_ttl", deserialize_with = "duration")]
    pub tag_ttl: Duration,
    /// The largest blob a fill accepts: a larger announced size is
    /// refused before a byte is written, a body without one is cut off
    /// past it. Default half of `max_size`, at most `16GiB`; at most
    /// `max_size`.
    #[serde(default, deserialize_with = "optional_size")]
    pub max_blob_size: Option<u64>,
    /// Fills from upstream running at once; one more is refused (503,
    /// retry). Default 32.
    #[serde(default = "default_max_concurrent_fills")]
    pub max_concurrent_fills: usize,
}

impl Cache {
    /// The cache's bounds, defaults filled in.
    pub fn limits(&self) -> crate::cache::Limits {
        let defaults = crate::cache::Limits::new(self.max_size);
        crate::cache::Limits {
            max_blob_size: self.max_blob_size.unwrap_or(defaults.max_blob_size),
            max_concurrent_fills: self.max_concurrent_fills,
            ..defaults
        }
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            dir: default_cache_dir(),
            max_size: default_max_size(),
            tag_ttl: default_tag_ttl(),
            max_blob_size: None,
            max_concurrent_fills: default_max_concurrent_fills(),
        }
    }
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/lib/gateway/cache")
}
fn default_max_size() -> u64 {
    20 * 1024 * 1024 * 1024
}
fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_max_concurrent_fills() -> usize {
    crate::cache::DEFAULT_MAX_CONCURRENT_FILLS
}

/// `5m`, `30s`, `1h 30m` (humantime).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("`{text}` is not a duration like 5m or 30s: {e}"))
    })
}

/// A [`size`] given, or nothing.
fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

/// `20GiB`, `512MiB`, `1000000` (bytes).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!("`{text}` is not a size like 20GiB: {e}"))
            }),
    }
}
