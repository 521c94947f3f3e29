//! One upstream fetch per site: before a gateway fetches a digest from
//! upstream it takes a lease on it in the store; the gateways that do not
//! get it wait for the blob to appear in the store and read it there.
//!
//! Two mechanisms, chosen by a probe at start ([`LeaseMode`]):
//! - `conditional`: one object `leases/sha256/<hex>/owner`, created with
//!   `If-None-Match: *`; the store refuses the second create (412). S3,
//!   MinIO and R2 support it.
//! - `list`: for stores that ignore `If-None-Match` (Garage 2.5 does).
//!   Each contender writes `leases/sha256/<hex>/<gateway_id>`, waits
//!   `settle`, lists the prefix: the earliest live entry (by the store's
//!   last-modified time, ties by key) wins; the winner lists again after
//!   another `settle` before it fetches. This assumes read-after-write and
//!   list-after-write consistency (Garage, S3) and that two contenders'
//!   writes become visible to each other within `settle`; when that fails
//!   (a store much slower than `settle`) two gateways both win and the
//!   blob is fetched twice, never wrongly served (the fill verifies it).
//!
//! A lease expires `lease_ttl` after it was written (a winner that died
//! is replaced); the winner deletes it when its fill ended, whether it
//! stored the blob or failed. A loser polls for the blob until the lease
//! is gone or expired, then contends again.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, path::Path};
use serde::Serialize;

use super::{SharedStore, StoreError};
use crate::cache::Digest;

/// How the store lets gateways agree on one fetcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseMode {
    /// Not probed yet (the store has not answered since start).
    Unknown,
    /// Conditional create (`If-None-Match: *`).
    Conditional,
    /// A list election (the store ignores conditional creates).
    List,
    /// Neither works: each gateway fetches on its own.
    Unsupported,
}

impl LeaseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Conditional => "conditional",
            Self::List => "list",
            Self::Unsupported => "unsupported",
        }
    }
}

/// What [`SharedStore::lease`] decided.
#[derive(Debug)]
pub enum Lease {
    /// Fetch from upstream; release the guard when the fill ended.
    Won(LeaseGuard),
    /// Another gateway fetched it: the blob is in the store now.
    InStore,
    /// No lease to be had (store down, no mechanism, gave up): fetch as
    /// if alone.
    Alone,
}

/// A lease held; dropping it releases it in the background.
#[derive(Debug)]
pub struct LeaseGuard {
    store: SharedStore,
    key: Option<Path>,
}

impl LeaseGuard {
    /// Deletes the lease object now.
    pub async fn release(mut self) {
        if let Some(key) = self.key.take() {
            let _ = self.store.call(self.store.inner.objects.delete(&key)).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            rt.spawn(async move {
                let _ = store.call(store.inner.objects.delete(&key)).await;
            });
        }
    }
}

/// Times a loser contends again before it fetches on its own.
const CONTENDS: usize = 3;

fn unix_now() -> i64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SharedStore {
    pub fn lease_mode(&self) -> LeaseMode {
        *self
            .inner
            .lease_mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_lease_mode(&self, mode: LeaseMode) {
        *self
            .inner
            .lease_mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
    }

    fn lease_dir(digest: &Digest) -> String {
        format!("leases/sha256/{}", digest.hex())
    }

    fn lease_body(&self) -> PutPayload {
        let expires = unix_now() + self.inner.tuning.lease_ttl.as_secs() as i64;
        PutPayload::from(format!(
            "{{\"gateway\":\"{}\",\"expires\":{expires}}}",
            self.inner.gateway_id
        ))
    }

    /// Creates a probe key twice: a store that refuses the second create
    /// supports conditional leases; one that lists what was written
    /// supports the list election.
    pub(super) async fn learn_lease_mode(&self) {
        let key = self.key(&format!("leases/probe/{}", self.inner.gateway_id));
        let create = || {
            self.inner
                .objects
                .put_opts(&key, self.lease_body(), PutOptions::from(PutMode::Create))
        };
        let _ = self.call(self.inner.objects.delete(&key)).await;
        let first = self.call(create()).await;
        let second = self.call(create()).await;
        let mode = match (&first, &second) {
            (Ok(_), Err(StoreError::Exists)) => LeaseMode::Conditional,
            (Err(StoreError::Down), _) | (_, Err(StoreError::Down)) => LeaseMode::Unknown,
            _ => {
                // Ignored or refused: is an ordinary write listed?
                let put = self
                    .call(self.inner.objects.put(&key, self.lease_body()))
                    .await;
                let dir = self.key("leases/probe");
                let listed = self
                    .call(self.inner.objects.list(Some(&dir)).try_collect::<Vec<_>>())
                    .await;
                match (put, listed) {
                    (Ok(_), Ok(found)) if found.iter().any(|m| m.location == key) => {
                        LeaseMode::List
                    }
                    (Err(StoreError::Down), _) | (_, Err(StoreError::Down)) => LeaseMode::Unknown,
                    _ => LeaseMode::Unsupported,
                }
            }
        };
        let _ = self.call(self.inner.objects.delete(&key)).await;
        if mode != LeaseMode::Unknown {
            tracing::info!(store = %self.inner.location, lease = mode.as_str(),
                "shared store lease mechanism");
        }
        self.set_lease_mode(mode);
    }

    /// Decides who fetches `digest` from upstream.
    pub async fn lease(&self, digest: &Digest) -> Lease {
        let outcome = self.contend(digest).await;
        match &outcome {
            Lease::Won(_) => self.inner.stats.lease_won(),
            Lease::InStore => self.inner.stats.lease_waited(),
            Lease::Alone => self.inner.stats.lease_fallback(),
        }
        outcome
    }

    async fn contend(&self, digest: &Digest) -> Lease {
        for _ in 0..CONTENDS {
            let step = match self.lease_mode() {
                LeaseMode::Conditional => self.try_conditional(digest).await,
                LeaseMode::List => self.try_list(digest).await,
                LeaseMode::Unknown | LeaseMode::Unsupported => return Lease::Alone,
            };
            match step {
                Ok(Some(guard)) => return Lease::Won(guard),
                Ok(None) => {}
                Err(_) => return Lease::Alone,
            }
            // Lost: wait for the winner's blob, or for its lease to end.
            match self.wait_for_blob(digest).await {
                Ok(true) => return Lease::InStore,
                Ok(false) => {}
                Err(_) => return Lease::Alone,
            }
        }
        Lease::Alone
    }

    /// Conditional create of the one lease object; an expired one is
    /// removed and the create tried again.
    async fn try_conditional(&self, digest: &Digest) -> Result<Option<LeaseGuard>, StoreError> {
        let key = self.key(&format!("{}/owner", Self::lease_dir(digest)));
        for _ in 0..2 {
            let put = self.inner.objects.put_opts(
                &key,
                self.lease_body(),
                PutOptions::from(PutMode::Create),
            );
            match self.call(put).await {
                Ok(_) => {
                    return Ok(Some(LeaseGuard {
                        store: self.clone(),
                        key: Some(key),
                    }));
                }
                Err(StoreError::Exists) => {}
                Err(e) => return Err(e),
            }
            match self.call(self.inner.objects.head(&key)).await {
                Ok(meta) if self.expired(meta.last_modified.timestamp_millis()) => {
                    tracing::info!(%digest, "an expired shared-store lease is taken over");
                    let _ = self.call(self.inner.objects.delete(&key)).await;
                }
                Ok(_) => return Ok(None),
                // Released meanwhile: try again.
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Whether a lease written at `written_ms` (the store's clock, ms
    /// since the epoch) has expired by this gateway's clock.
    fn expired(&self, written_ms: i64) -> bool {
        written_ms + self.inner.tuning.lease_ttl.as_millis() as i64 <= unix_now_ms()
    }

    /// The live contenders under the digest's lease prefix, winner first.
    async fn contenders(&self, digest: &Digest) -> Result<Vec<(i64, Path)>, StoreError> {
        let dir = self.key(&Self::lease_dir(digest));
        let listed = self
            .call(self.inner.objects.list(Some(&dir)).try_collect::<Vec<_>>())
            .await?;
        let mut live: Vec<(i64, Path)> = listed
            .into_iter()
            .map(|m| (m.last_modified.timestamp_millis(), m.location))
            .filter(|(at, _)| !self.expired(*at))
            .collect();
        live.sort();
        Ok(live)
    }

    /// One round of the list election.
    async fn try_list(&self, digest: &Digest) -> Result<Option<LeaseGuard>, StoreError> {
        let mine = self.key(&format!(
            "{}/{}",
            Self::lease_dir(digest),
            self.inner.gateway_id
        ));
        self.call(self.inner.objects.put(&mine, self.lease_body()))
            .await?;
        let guard = LeaseGuard {
            store: self.clone(),
            key: Some(mine.clone()),
        };
        for _ in 0..2 {
            tokio::time::sleep(self.inner.tuning.settle).await;
            let live = self.contenders(digest).await?;
            if live.first().map(|(_, k)| k) != Some(&mine) {
                // Lost: the guard's drop withdraws this entry, so it does
                // not win a later round by age.
                drop(guard);
                return Ok(None);
            }
        }
        Ok(Some(guard))
    }

    /// Polls for the blob while a live lease (someone else's) stands.
    /// `true`: the blob is there; `false`: the lease ended without it.
    async fn wait_for_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        let blob = self.key(&Self::blob_key(digest));
        let deadline = tokio::time::Instant::now() + self.inner.tuning.lease_ttl;
        let mut round: u32 = 0;
        while tokio::time::Instant::now() < deadline {
            match self.call(self.inner.objects.head(&blob)).await {
                Ok(_) => return Ok(true),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
            // The lease is looked at every fourth poll: a list costs more.
            if round % 4 == 3 && !self.lease_stands(digest).await? {
                // The blob may have landed just before the lease went.
                return match self.call(self.inner.objects.head(&blob)).await {
                    Ok(_) => Ok(true),
                    Err(StoreError::NotFound) => Ok(false),
                    Err(e) => Err(e),
                };
            }
            round = round.wrapping_add(1);
            tokio::time::sleep(self.inner.tuning.poll).await;
        }
        Ok(false)
    }

    async fn lease_stands(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self.lease_mode() {
            LeaseMode::Conditional => {
                let key = self.key(&format!("{}/owner", Self::lease_dir(digest)));
                match self.call(self.inner.objects.head(&key)).await {
                    Ok(meta) => Ok(!self.expired(meta.last_modified.timestamp_millis())),
                    Err(StoreError::NotFound) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(!self.contenders(digest).await?.is_empty()),
        }
    }
}
