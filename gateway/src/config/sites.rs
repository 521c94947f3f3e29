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
    /// A Helm chart repository (`index.yaml` and the charts it lists).
    Helm,
    /// Plain files under allowed paths (downloads, keys, packages).
    Files,
}

impl SiteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oci => "oci",
            Self::Helm => "helm",
            Self::Files => "files",
        }
    }
}

/// A checksum a `files` site's content must match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Checksum {
    /// One path's sha256 (64 hex digits, with or without `sha256:`).
    Path { path: String, sha256: String },
    /// A checksum list on the same site (`sha256sum` output, as
    /// `SHA256SUMS`): the paths it names, relative to its directory, must
    /// match it.
    File { file: String },
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
    /// A client certificate (PEM, the chain the parent gateway's CA
    /// issued) presented to the upstream: set when `upstream` is a parent
    /// gateway's `children` listener. With `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PKCS#8 PEM), mode 0600 or 0400.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
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
    /// Also serve this site over plain HTTP (port 80), routed by `Host`.
    /// Default false: a plain HTTP request for it gets 403.
    #[serde(default)]
    pub http: bool,
    /// `helm`: other hosts the index's chart URLs may name. The gateway
    /// terminates them too and serves their charts from this site.
    #[serde(default)]
    pub chart_hosts: Vec<String>,
    /// `helm`: how long `index.yaml` is served before it is revalidated
    /// (default `10m`). `files`: how long a response without validators
    /// or `Cache-Control` lifetime is fresh (default `1h`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    /// `files`: the paths served, as globs (`*` within a segment, `**`
    /// across segments): `/releases/**`, `/keys/*.asc`. Required.
    #[serde(default)]
    pub paths: Vec<String>,
    /// `files`: checksums the content must match; a mismatch is an error
    /// and nothing is stored.
    #[serde(default)]
    pub checksums: Vec<Checksum>,
}

/// Default `ttl` of a `helm` site's `index.yaml`.
pub const DEFAULT_HELM_TTL: Duration = Duration::from_secs(600);
/// Default `ttl` of a `files` site's responses without a lifetime.
pub const DEFAULT_FILES_TTL: Duration = Duration::from_secs(3600);

impl Site {
    /// A site of `kind` for `host`, every other key at its default.
    pub fn new(host: &str, kind: SiteKind) -> Self {
        Self {
            host: host.to_owned(),
            kind,
            upstream: None,
            ca_file: None,
            credentials: None,
            client_cert: None,
            client_key: None,
            redirect_hosts: Vec::new(),
            upstream_proxy: None,
            http: false,
            chart_hosts: Vec::new(),
            ttl: None,
            paths: Vec::new(),
            checksums: Vec::new(),
        }
    }

    /// The `ttl` given, or the kind's default.
    pub fn ttl_or_default(&self) -> Duration {
        self.ttl.unwrap_or(match self.kind {
            SiteKind::Files => DEFAULT_FILES_TTL,
            SiteKind::Oci | SiteKind::Helm => DEFAULT_HELM_TTL,
        })
    }

    /// Every host the gateway terminates for this site: its own, then a
    /// helm site's chart hosts; lowercase.
    pub fn served_hosts(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(&self.host)
            .chain(&self.chart_hosts)
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
    }

    /// Whether `upstream` is a parent gateway (a client certificate is
    /// configured): requests then name the origin host in
    /// [`crate::children::ORIGIN_HOST_HEADER`].
    pub fn via_parent(&self) -> bool {
        self.client_cert.is_some()
    }

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
    /// Past `tag_ttl` by less than this, a tag is served from the cache at
    /// once and revalidated upstream in the background (a device never
    /// waits on an upstream that is down; a moved tag is seen one request
    /// later). Default `0s`: revalidated before answering, so a moved or
    /// revoked tag is seen at once.
    #[serde(
        default = "default_stale_while_revalidate",
        deserialize_with = "duration"
    )]
    pub stale_while_revalidate: Duration,
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
    /// The shared tier on an S3-compatible bucket (config/store.rs);
    /// none by default.
    #[serde(default)]
    pub store: Option<super::store::Store>,
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
            stale_while_revalidate: default_stale_while_revalidate(),
            max_blob_size: None,
            max_concurrent_fills: default_max_concurrent_fills(),
            store: None,
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
fn default_stale_while_revalidate() -> Duration {
    Duration::ZERO
}
fn default_max_concurrent_fills() -> usize {
    crate::cache::DEFAULT_MAX_CONCURRENT_FILLS
}

/// `5m`, `30s`, `1h 30m` (humantime).
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("`{text}` is not a duration like 5m or 30s: {e}"))
    })
}

/// A [`duration`] given, or nothing.
fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
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
