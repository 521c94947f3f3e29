//! The rustls certificate resolver for terminated connections: a leaf per
//! allowed site host, minted on first use, cached (bounded, least recently
//! used first out), renewed when a quarter of its validity remains.
//!
//! Random-SNI floods (EXPECTATIONS.md): names outside the allow list are
//! refused before any work; minting is single-flight per name (concurrent
//! handshakes for one cold name wait for one mint) and rate limited
//! globally, and a refused handshake is counted, not logged one by one.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{SiteCa, TlsError, leaf, limit::TokenBucket, lru::Lru, names};

/// Default global mint rate (leaves per second) and burst.
pub const DEFAULT_MINT_RATE: u32 = 200;
pub const DEFAULT_MINT_BURST: u32 = 400;

/// Counters since the resolver was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeafStats {
    /// Leaves minted.
    pub minted: u64,
    /// Handshakes served without minting: from the cache, or by waiting
    /// for a concurrent handshake's mint of the same name.
    pub cache_hits: u64,
    /// Handshakes without SNI or for a name not in the allow list.
    pub refused_unknown_name: u64,
    /// Mints refused by the rate limit (the handshake fails).
    pub rate_limited: u64,
}

/// One mint, shared by every handshake that asked while it ran.
type Flight = Arc<OnceLock<Option<Arc<CertifiedKey>>>>;

#[derive(Clone)]
struct Cached {
    key: Arc<CertifiedKey>,
    renew_at: Instant,
    expires_at: Instant,
}

struct State {
    cache: Lru<Cached>,
    in_flight: HashMap<String, Flight>,
}

/// Resolves a ClientHello's SNI to a leaf under the site CA.
pub struct LeafResolver {
    ca: Arc<SiteCa>,
    allowed: HashSet<String>,
    validity: Duration,
    state: Mutex<State>,
    limiter: Mutex<TokenBucket>,
    minted: AtomicU64,
    cache_hits: AtomicU64,
    refused: AtomicU64,
    rate_limited: AtomicU64,
}

impl LeafResolver {
    /// `allowed_hosts` are the site hosts (any case, trailing dot allowed);
    /// `validity` is each leaf's lifetime; `capacity` bounds the cache (at
    /// least 1). Mints are limited to [`DEFAULT_MINT_RATE`] per second.
    pub fn new(
        ca: Arc<SiteCa>,
        allowed_hosts: Vec<String>,
        validity: Duration,
        capacity: usize,
    ) -> Self {
        let allowed: HashSet<String> = allowed_hosts.iter().map(|h| names::normalize(h)).collect();
        for host in allowed.iter().filter(|h| !ca.permits(h)) {
            tracing::warn!(
                host,
                permitted = ?ca.permitted(),
                "site host is outside the site CA's name constraints, so devices will \
                 reject its certificate: cover it with `gateway ca rotate --permit …` and \
                 `gateway ca activate` (see `gateway check-config`)"
            );
        }
        Self {
            ca,
            allowed,
            validity,
            state: Mutex::new(State {
                cache: Lru::new(capacity),
                in_flight: HashMap::new(),
            }),
            limiter: Mutex::new(TokenBucket::new(
                DEFAULT_MINT_RATE,
                DEFAULT_MINT_BURST,
                Instant::now(),
            )),
            minted: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// Replaces the mint rate limit: `per_second` sustained (0: none after
    /// the burst), `burst` at once.
    pub fn with_rate_limit(self, per_second: u32, burst: u32) -> Self {
        Self {
            limiter: Mutex::new(TokenBucket::new(per_second, burst, Instant::now())),
            ..self
        }
    }

    pub fn stats(&self) -> LeafStats {
        LeafStats {
            minted: self.minted.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            refused_unknown_name: self.refused.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// Leaves currently cached.
    pub fn cached(&self) -> usize {
        lock(&self.state).cache.len()
    }

    /// The leaf for `server_name` (an SNI), minting it if needed; `None`
    /// for a name not allowed, or when minting is refused or fails.
    pub fn certificate_for(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        self.resolve_at(Some(server_name), Instant::now())
    }

    pub(crate) fn resolve_at(&self, sni: Option<&str>, now: Instant) -> Option<Arc<CertifiedKey>> {
        let host = sni.map(names::normalize);
        let Some(host) = host.filter(|h| self.allowed.contains(h)) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(sni, "no certificate for a name outside the site hosts");
            return None;
        };
        // Cache lookup and joining a flight happen under one lock, and a
        // flight publishes to the cache and leaves under the same lock, so
        // no handshake can miss both and mint a second time.
        let (flight, stale) = {
            let mut state = lock(&self.state);
            let stale = match state.cache.get(&host) {
                Some(c) if now < c.renew_at => {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Some(c.key.clone());
                }
                Some(c) if now < c.expires_at => Some(c.key.clone()),
                _ => None,
            };
            (
                state.in_flight.entry(host.clone()).or_default().clone(),
                stale,
            )
        };
        let mut ran = false;
        let result = flight.get_or_init(|| {
            ran = true;
            self.mint_and_publish(&host, &flight, now)
        });
        if !ran && result.is_some() {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        // A renewal that could not mint keeps serving the still-valid leaf.
        result.clone().or(stale)
    }

    /// Runs once per flight; other handshakes for `host` wait on it.
    fn mint_and_publish(
        &self,
        host: &str,
        flight: &Flight,
        now: Instant,
    ) -> Option<Arc<CertifiedKey>> {
        let leaf = if lock(&self.limiter).try_take(now) {
            self.mint(host)
        } else {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            None
        };
        let mut state = lock(&self.state);
        if let Some(leaf) = &leaf {
            let cached = Cached {
                key: leaf.key.clone(),
                renew_at: now + leaf.lifetime.mul_f64(0.75),
                expires_at: now + leaf.lifetime,
            };
            state.cache.insert(host.to_owned(), cached);
        }
        if state
            .in_flight
            .get(host)
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            state.in_flight.remove(host);
        }
        leaf.map(|l| l.key)
    }

    fn mint(&self, host: &str) -> Option<leaf::Leaf> {
        match leaf::mint(&self.ca, host, self.validity) {
            Ok(leaf) => {
                self.minted.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().leaves_minted.inc();
                tracing::debug!(host, "leaf certificate minted");
                Some(leaf)
            }
            Err(e) => {
                tracing::warn!(host, error = %e, "could not mint a leaf certificate");
                None
            }
        }
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolve_at(client_hello.server_name(), Instant::now())
    }
}

impl std::fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafResolver")
            .field("ca", &self.ca)
            .field("allowed", &self.allowed)
            .field("validity", &self.validity)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The server side of terminated connections: TLS 1.3 and 1.2, no client
/// certificates, ALPN `h2` then `http/1.1`, resumption with one TLS 1.3
/// ticket per handshake.
pub fn server_config(resolver: Arc<LeafResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Config {
            side: "server",
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order, not the client's: see `server_provider`.
    config.ignore_client_order = true;
    // rustls sends two tickets by default (for clients that open two
    // connections at once); devices reconnect one at a time, and each
    // ticket costs a random draw, a cache entry and an encrypted record.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// rustls' ring suites with the SHA-256 ones first. Clients (curl, Go,
/// rustls) list AES-256-GCM-SHA384 first, whose key schedule runs SHA-512
/// blocks in software on every handshake, where SHA-256 uses the CPU's SHA
/// extensions: measured, that alone was 8% of a handshake's CPU time.
/// AES-128-GCM is as acceptable to every current TLS profile.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // Stable: SHA-256 suites before the others, order otherwise kept.
    p.cipher_suites.sort_by_key(|s| {
        !s.suite()
            .as_str()
            .is_some_and(|name| name.ends_with("_SHA256"))
    });
    Arc::new(p)
}

/// Nothing panics while these locks are held, so a poisoned lock still
/// guards consistent data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
