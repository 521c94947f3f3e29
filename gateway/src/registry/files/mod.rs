//! `kind: files` sites: GET and HEAD of the paths the site's `paths`
//! globs allow, fetched from `upstream` + the request's path and query,
//! cached with HTTP caching semantics as a shared cache (policy.rs).
//!
//! - Cache key: the request's path and query (the query is sent upstream
//!   and is part of the key: `/a?x=1` and `/a` are two entries), per
//!   variant of the request headers a stored `Vary` names.
//! - Storage: the body is a blob named by its sha256 (a whole body is
//!   verified as it is read back, readback.rs); the objects table maps
//!   (site, key) to it with the response headers to replay and when
//!   upstream last confirmed it. An evicted blob makes the next request a
//!   miss.
//! - Concurrent misses of one key make one upstream fetch (fetch.rs); the
//!   others follow the fill as it is written, ranges included.
//! - Checksums (`checksums:` in the config, or lists such as `SHA256SUMS`
//!   on the site) make a path's digest known before it is fetched: the
//!   fill is verified against it, a mismatch is a 502 and nothing is
//!   stored, and any cached blob of that digest serves the path.

mod fetch;
mod policy;
mod readback;
mod serve;
mod sums;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::{Outcome, SiteService, oci::seed::SeedReport};
use crate::{
    audit::Fault,
    cache::{Cache, Digest},
    config::{Checksum, Site, glob_match, parse_sha256},
    upstream::Upstream,
};

pub struct FilesSite {
    host: String,
    upstream: Upstream,
    cache: Cache,
    paths: Vec<String>,
    ttl: Duration,
    /// `checksums: - path:` entries: path → hex digest.
    path_sums: HashMap<String, String>,
    /// `checksums: - file:` entries: the lists' paths.
    sum_files: Vec<String>,
    /// One lock per key a miss is being resolved for (fetch.rs).
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Response headers of the fills in progress, by fill name, for the
    /// clients that follow them.
    filling: Arc<Mutex<HashMap<String, HeaderMap>>>,
}

impl FilesSite {
    pub fn new(site: &Site, upstream: Upstream, cache: Cache) -> Arc<Self> {
        let mut path_sums = HashMap::new();
        let mut sum_files = Vec::new();
        for c in &site.checksums {
            match c {
                Checksum::Path { path, sha256 } => {
                    // Validated by check-config: 64 hex digits.
                    if let Some(hex) = parse_sha256(sha256) {
                        path_sums.insert(path.clone(), hex);
                    }
                }
                Checksum::File { file } => sum_files.push(file.clone()),
            }
        }
        Arc::new(Self {
            host: site.host.to_ascii_lowercase(),
            upstream,
            cache,
            paths: site.paths.clone(),
            ttl: site.ttl_or_default(),
            path_sums,
            sum_files,
            locks: Mutex::default(),
            filling: Arc::default(),
        })
    }

    /// Whether a request path is one the site serves: one of `paths`
    /// matches, and no `.`/`..` segment or encoded slash could make
    /// upstream see another path than the one matched.
    fn allowed(&self, path: &str) -> bool {
        let lower = path.to_ascii_lowercase();
        let plain = path.starts_with('/')
            && !lower.contains("%2f")
            && !lower.contains("%2e")
            && !lower.contains("%5c")
            && !path.contains('\\')
            && path.split('/').all(|s| s != "." && s != "..");
        plain && self.paths.iter().any(|g| glob_match(g, path))
    }

    /// The digest a path must have, if a checksum names it: a `path:`
    /// entry, else the first checksum list (fetched and cached like any
    /// file of the site) that names it. A list that cannot be fetched
    /// names nothing (logged): the path is then served unverified, as
    /// without the list.
    async fn expected_digest(&self, path: &str) -> Option<Digest> {
        if let Some(hex) = self.path_sums.get(path) {
            return Digest::from_hex(hex);
        }
        for list in &self.sum_files {
            if list == path || !path.starts_with(sums::dir_of(list)) {
                continue;
            }
            match self.read_list(list).await {
                Ok(text) => {
                    if let Some(hex) = sums::parse(&text, sums::dir_of(list)).get(path) {
                        return Digest::from_hex(hex);
                    }
                }
                Err(e) => {
                    tracing::warn!(site = %self.host, list = %list, error = %e, "checksum list unavailable");
                }
            }
        }
        None
    }

    /// The text of the checksum list at `path`, through the cache (so it
    /// is revalidated by the same rules as any file).
    async fn read_list(&self, path: &str) -> anyhow::Result<String> {
        /// Larger is not a checksum list.
        const MAX_LIST: usize = 4 << 20;
        let outcome = Box::pin(self.get(&Method::GET, path, path, &HeaderMap::new(), None)).await;
        let status = outcome.response.status();
        anyhow::ensure!(status == StatusCode::OK, "{path}: {status}");
        let mut body = outcome.response.into_body();
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                text.extend_from_slice(&data);
                anyhow::ensure!(
                    text.len() <= MAX_LIST,
                    "{path}: larger than {MAX_LIST} bytes"
                );
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// The lock of `name`'s miss, shared by everyone resolving it now.
    fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        locks.retain(|_, w| w.strong_count() > 0);
        if let Some(lock) = locks.get(name).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(name.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

impl SiteService for FilesSite {
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(async move {
            let method = req.method().clone();
            if method != Method::GET && method != Method::HEAD {
                let mut o = serve::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    Fault::Device,
                    format!("{method} is not served: files sites answer GET and HEAD"),
                );
                o.response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return o;
            }
            let path = req.uri().path().to_owned();
            if !self.allowed(&path) {
                return serve::error(
                    StatusCode::FORBIDDEN,
                    "path_not_allowed",
                    Fault::Device,
                    format!("{path} is outside the paths {} serves", self.host),
                );
            }
            let key = req
                .uri()
                .path_and_query()
                .map_or(path.clone(), |pq| pq.as_str().to_owned());
            self.get(&method, &key, &path, req.headers(), None).await
        })
    }
}

/// `gateway cache seed` for `path` on `site`: fetched (verified when a
/// checksum names it) and pinned under `host/path`.
pub async fn seed(
    site: &FilesSite,
    path: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> anyhow::Result<SeedReport> {
    anyhow::ensure!(
        site.allowed(path.split('?').next().unwrap_or(path)),
        "{path} is outside the paths {} serves",
        site.host
    );
    let pin = format!("{}{path}", site.host);
    progress(format!("fetching https://{pin}"));
    let plain = path.split('?').next().unwrap_or(path);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let outcome = site
        .get(&Method::GET, path, plain, &HeaderMap::new(), Some(tx))
        .await;
    let status = outcome.response.status();
    if status != StatusCode::OK {
        let detail = outcome.detail.unwrap_or_default();
        anyhow::bail!("{pin}: {status} {detail}");
    }
    // Read to the end: the body's last byte comes only once the fill is
    // verified.
    let mut body = outcome.response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| anyhow::anyhow!("{pin}: {e}"))?;
    }
    // The digest the entry now names: from the fill this seed led or what
    // was stored already; after following another request's fill, from
    // the entry its task recorded (under the key's lock, which it holds
    // from before the body's end until the entry is written).
    let (digest, size) = match rx.await {
        Ok(Some(found)) => found,
        _ => {
            let name = site.fill_name(path, &HeaderMap::new());
            let _recorded = site.lock_for(&name).lock_owned().await;
            let blob = match site.expected_digest(plain).await {
                Some(d) => site.cache.get(&d).await?,
                None => site.lookup(path, &HeaderMap::new()).await.map(|f| f.blob),
            };
            let blob = blob.ok_or_else(|| {
                anyhow::anyhow!(
                    "{pin}: fetched, but the response may not be stored (no-store, private or Vary: *)"
                )
            })?;
            (blob.digest(), blob.size())
        }
    };
    site.cache.pin(&pin, &[digest]).await?;
    progress(format!("pinned {pin} ({digest}, {size} bytes)"));
    Ok(SeedReport {
        pin,
        manifests: 0,
        blobs: 1,
        bytes: size,
    })
}

#[cfg(test)]
mod tests;
