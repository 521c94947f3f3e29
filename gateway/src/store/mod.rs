//! The shared cache tier: an S3-compatible bucket every gateway of a site
//! reads and writes (`cache.store`), behind each gateway's local cache.
//!
//! Layout in the bucket (under `prefix/` when set):
//! - `blobs/sha256/<hex>`: content, written only after the local fill
//!   verified the digest (blobs.rs); read back into a local fill, which
//!   verifies it again.
//! - `refs/<site>/<repository>/<tag>`: a tag's digest and when upstream
//!   last confirmed it (refs.rs).
//! - `leases/sha256/<hex>/<gateway_id>`: who fetches a digest from
//!   upstream now (lease.rs).
//!
//! Every call has a deadline (`timeout`). A call that fails for a reason
//! other than the answer "no such object" marks the store unreachable:
//! from then on it is not asked at all (no added latency per request)
//! until a background probe gets an answer (health.rs).

mod blobs;
mod error;
mod health;
pub mod http;
mod lease;
mod refs;
mod stats;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use object_store::{ObjectStore, path::Path};

pub use blobs::{ReadOutcome, read_into};
pub use error::StoreError;
pub use lease::{Lease, LeaseGuard, LeaseMode};
pub use refs::SharedRef;
pub use stats::{StoreStats, StoreStatus};

use crate::cache::Digest;

/// Timings of the tier; the defaults suit a store on the site's LAN.
/// Tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Deadline of one call (`cache.store.timeout`).
    pub timeout: Duration,
    /// How often an unreachable store is probed.
    pub probe_every: Duration,
    /// A list election's wait between writing its lease and listing the
    /// contenders: longer than the time two gateways' PUTs can take to
    /// become visible to each other's LIST.
    pub settle: Duration,
    /// How long a lease holds: a winner that crashed is replaced after it.
    pub lease_ttl: Duration,
    /// How often a gateway that lost the lease looks for the blob.
    pub poll: Duration,
    /// Multipart uploads above this size, in parts of it.
    pub part_size: usize,
}

impl Tuning {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            probe_every: Duration::from_secs(5),
            settle: Duration::from_millis(300),
            lease_ttl: Duration::from_secs(600),
            poll: Duration::from_millis(250),
            part_size: 16 << 20,
        }
    }
}

/// The shared tier. Cheap to clone.
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("location", &self.inner.location)
            .field("gateway_id", &self.inner.gateway_id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    objects: Arc<dyn ObjectStore>,
    prefix: Option<String>,
    gateway_id: String,
    /// `endpoint/bucket[/prefix]`, for status and logs (no credentials).
    location: String,
    tuning: Tuning,
    up: AtomicBool,
    probing: AtomicBool,
    last_error: Mutex<Option<String>>,
    lease_mode: Mutex<LeaseMode>,
    /// Digests whose store object failed verification and could not be
    /// deleted: not read from the store again by this process.
    bad: Mutex<HashSet<Digest>>,
    stats: StoreStats,
}

/// Why the store could not be set up from the config.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("`{key}`: {message}")]
    Secret { key: &'static str, message: String },
    #[error("`cache.store`: {0}")]
    Client(String),
}

impl SharedStore {
    /// The store of `cache.store`: the S3 client on this project's HTTP
    /// and TLS stack. Nothing is sent yet; [`SharedStore::start`] probes.
    pub fn open(cfg: &crate::config::Store) -> Result<Self, OpenError> {
        let secret = cfg.secret().map_err(|e| OpenError::Secret {
            key: cfg.secret_key(),
            message: e.to_string(),
        })?;
        let plain = cfg.endpoint.to_ascii_lowercase().starts_with("http://");
        let tls = match crate::tls::client_config(cfg.ca_file.as_deref()) {
            Ok(tls) => tls,
            // A plain-HTTP store needs no trust anchors: a host without a
            // system CA bundle still starts.
            Err(_) if plain && cfg.ca_file.is_none() => no_roots()?,
            Err(e) => return Err(OpenError::Client(e.to_string())),
        };
        let retry = object_store::RetryConfig {
            // The deadline is ours (Tuning::timeout); a failed call marks
            // the store down rather than retrying while a device waits.
            max_retries: 1,
            retry_timeout: cfg.timeout,
            ..Default::default()
        };
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(cfg.endpoint.trim_end_matches('/'))
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(secret.expose())
            .with_allow_http(plain)
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .with_retry(retry)
            .with_http_connector(http::HyperConnector::new(tls))
            .build()
            .map_err(|e| OpenError::Client(e.to_string()))?;
        let location = format!(
            "{}/{}{}",
            cfg.endpoint.trim_end_matches('/'),
            cfg.bucket,
            cfg.prefix
                .as_deref()
                .map(|p| format!("/{}", p.trim_matches('/')))
                .unwrap_or_default()
        );
        let id = cfg.gateway_id.clone().unwrap_or_else(default_gateway_id);
        Ok(Self::new(
            Arc::new(s3),
            cfg.prefix.clone(),
            id,
            location,
            Tuning::new(cfg.timeout),
        ))
    }

    /// A tier over any object store (tests use `InMemory`).
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        prefix: Option<String>,
        gateway_id: String,
        location: String,
        tuning: Tuning,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                objects,
                prefix: prefix.map(|p| p.trim_matches('/').to_owned()),
                gateway_id,
                location,
                tuning,
                up: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                last_error: Mutex::new(None),
                lease_mode: Mutex::new(LeaseMode::Unknown),
                bad: Mutex::new(HashSet::new()),
                stats: StoreStats::default(),
            }),
        }
    }

    /// Probes reachability and the lease mechanism in the background.
    pub fn start(&self) {
        let me = self.clone();
        tokio::spawn(async move { me.check_now().await });
    }

    pub fn gateway_id(&self) -> &str {
        &self.inner.gateway_id
    }

    pub fn tuning(&self) -> &Tuning {
        &self.inner.tuning
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Whether calls are made at all (false: marked unreachable).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// The object key of `rel` under the prefix.
    fn key(&self, rel: &str) -> Path {
        match &self.inner.prefix {
            Some(p) => Path::from(format!("{p}/{rel}")),
            None => Path::from(rel),
        }
    }

    fn blob_key(digest: &Digest) -> String {
        format!("blobs/sha256/{}", digest.hex())
    }

    /// Runs one store call under the deadline; a failure other than an
    /// answer marks the store down. Not made at all while it is down.
    async fn call<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, object_store::Error>>,
    {
        if !self.is_up() {
            return Err(StoreError::Down);
        }
        let timeout = self.inner.tuning.timeout;
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        if let Err(e) = &result
            && e.marks_down()
        {
            self.mark_down(e);
        }
        result
    }

    /// Skips the store from now on and starts probing it.
    pub(crate) fn mark_down(&self, e: &StoreError) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
        if self.inner.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(store = %self.inner.location, error = %e,
                "shared store unreachable: serving from the local cache and upstream until it answers again");
            self.inner.stats.count_down();
        }
        self.spawn_probe();
    }

    fn is_bad(&self, digest: &Digest) -> bool {
        self.inner
            .bad
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(digest)
    }

    fn remember_bad(&self, digest: Digest) {
        self.inner
            .bad
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest);
    }

    /// The status `gateway status` and the control API show.
    pub fn status(&self) -> StoreStatus {
        StoreStatus {
            location: self.inner.location.clone(),
            gateway_id: self.inner.gateway_id.clone(),
            reachable: self.is_up(),
            last_error: self
                .inner
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            lease: self.lease_mode(),
            counts: self.inner.stats.snapshot(),
        }
    }
}

/// A TLS client configuration trusting nothing (never used to connect:
/// the endpoint is plain HTTP).
fn no_roots() -> Result<Arc<rustls::ClientConfig>, OpenError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| OpenError::Client(e.to_string()))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host name plus a random suffix: two gateways of one site may
/// share a host name (containers, network namespaces), never a suffix.
pub fn default_gateway_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    let mut suffix = [0u8; 4];
    // Without randomness the suffix is the process id and time: still
    // distinct between two gateways started side by side.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut suffix)
        .is_err()
    {
        let mix = std::process::id() ^ (crate::registry::unix_now() as u32);
        suffix = mix.to_be_bytes();
    }
    let host = if host.is_empty() { "gateway" } else { &host };
    format!("{host}-{}", hex::encode(suffix))
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_http;
