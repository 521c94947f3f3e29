//! Stale-while-revalidate for tags (`cache.stale_while_revalidate`).
//!
//! A tag's manifest older than `tag_ttl` but younger than `tag_ttl` plus
//! the window is served from the cache at once, and revalidated upstream in
//! the background: a device never waits on an upstream that is down (an
//! offline pull used to wait up to 3 s per tag before its stale copy), and
//! a moved or revoked tag is seen by the request after the revalidation
//! (one request later than with the window at 0, which revalidates before
//! answering, as past the window).
//!
//! One background revalidation per tag at a time. Whenever an attempt to
//! refresh a tag finds upstream unreachable (in the background or before
//! an answer, with the window at 0 too), the site backs off (1 s, doubling
//! up to a minute): until then a held copy past `tag_ttl` is served stale
//! at once instead of waiting on upstream again, so an outage costs a
//! probe a minute, not a stall per request.

use std::{
    collections::HashSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{
    OciSite,
    document::{self, Kind},
};
use crate::{audit::CacheStatus, upstream::UpstreamRequest};

/// First wait after a failed background revalidation; doubles per
/// failure up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Background revalidations of one site.
#[derive(Default)]
pub(super) struct Revalidations {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (repository, key) being revalidated now.
    in_flight: HashSet<(String, String)>,
    /// Failures in a row (upstream unreachable).
    failures: u32,
    /// No new revalidation before this.
    retry_at: Option<Instant>,
}

impl Revalidations {
    /// Claims the background revalidation of `name`/`key`: false when one
    /// runs or the site is backing off.
    fn claim(&self, name: &str, key: &str, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        s.in_flight.insert((name.to_owned(), key.to_owned()))
    }

    /// Ends a claim.
    fn done(&self, name: &str, key: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight.remove(&(name.to_owned(), key.to_owned()));
    }

    /// Whether upstream was found unreachable and the wait before the next
    /// attempt has not passed.
    pub(super) fn backing_off(&self, now: Instant) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.retry_at.is_some_and(|at| now < at)
    }

    /// Records whether an attempt to refresh a held tag reached upstream.
    /// True when this changed whether upstream is known down (worth a log
    /// line).
    fn record(&self, reached: bool, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = s.failures > 0;
        if reached {
            s.failures = 0;
            s.retry_at = None;
        } else {
            let wait = BACKOFF_FIRST
                .saturating_mul(1u32 << s.failures.min(16))
                .min(BACKOFF_MAX);
            s.failures = s.failures.saturating_add(1);
            s.retry_at = Some(now + wait);
        }
        was_down == reached
    }
}

/// Records the result of refreshing a held tag for the site's backoff,
/// logging when upstream is found down or back.
pub(super) fn attempted(site: &OciSite, reached: bool) {
    if site.revalidations.record(reached, Instant::now()) {
        if reached {
            tracing::info!(site = %site.host, "upstream reachable again: tags are revalidated");
        } else {
            tracing::warn!(
                site = %site.host,
                "upstream unreachable: tags past tag_ttl are served from the cache while it is retried (1 s, doubling up to a minute)"
            );
        }
    }
}

/// Whether a tag fetched at `fetched_at` (Unix seconds) is past its TTL
/// but inside the window.
pub(super) fn in_window(site: &OciSite, fetched_at: i64) -> bool {
    let age = crate::registry::age_secs(fetched_at);
    let ttl = site.tag_ttl.as_secs() as i64;
    let window = site.stale_while_revalidate.as_secs() as i64;
    window > 0 && age >= ttl && age < ttl.saturating_add(window)
}

/// Starts the background revalidation of the manifest `key` of `name`
/// (path `path`) unless one runs or the site backs off; false when none
/// could start (the caller then revalidates before answering).
pub(super) fn start(site: &OciSite, name: &str, key: &str, path: &str) -> bool {
    let Some(me) = site.me.upgrade() else {
        return false;
    };
    if !site.revalidations.claim(name, key, Instant::now()) {
        // One is running or upstream was just found down: the stale copy
        // is served all the same.
        return true;
    }
    let (name, key, path) = (name.to_owned(), key.to_owned(), path.to_owned());
    tokio::spawn(async move {
        let head = document::accept(UpstreamRequest::head(&path).with_scope(OciSite::scope(&name)));
        let get = document::accept(UpstreamRequest::get(&path).with_scope(OciSite::scope(&name)));
        let kind = Kind::Manifest;
        let got = document::resolve(
            &me,
            &name,
            &key,
            kind,
            Some(head),
            document::fetch(&me, get, kind),
        )
        .await;
        // resolve() has recorded whether upstream was reached.
        tracing::debug!(site = %me.host, %name, %key, stale = matches!(&got, Ok(r) if r.cache == CacheStatus::Stale), "background revalidation");
        me.revalidations.done(&name, &key);
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_revalidation_per_tag_and_a_backoff_while_upstream_is_down() {
        let r = Revalidations::default();
        let t0 = Instant::now();
        assert!(r.claim("a", "manifests/v1", t0));
        assert!(!r.claim("a", "manifests/v1", t0), "one at a time per tag");
        assert!(r.claim("a", "manifests/v2", t0), "other tags go on");
        assert!(!r.backing_off(t0));
        assert!(r.record(false, t0), "down: logged");
        r.done("a", "manifests/v1");
        assert!(r.backing_off(t0 + Duration::from_millis(500)));
        assert!(
            !r.claim("a", "manifests/v1", t0 + Duration::from_millis(500)),
            "backing off after a failure"
        );
        assert!(!r.backing_off(t0 + Duration::from_secs(1)));
        assert!(r.claim("a", "manifests/v1", t0 + Duration::from_secs(1)));
        assert!(
            !r.record(false, t0 + Duration::from_secs(1)),
            "still down: not logged again"
        );
        r.done("a", "manifests/v1");
        // Second failure: two seconds.
        assert!(!r.claim("a", "manifests/v1", t0 + Duration::from_millis(2900)));
        assert!(r.claim("a", "manifests/v1", t0 + Duration::from_secs(3)));
        assert!(r.record(true, t0 + Duration::from_secs(3)), "back: logged");
        r.done("a", "manifests/v1");
        assert!(!r.record(true, t0 + Duration::from_secs(3)));
        r.done("a", "manifests/v2");
        assert!(r.claim("a", "manifests/v1", t0 + Duration::from_secs(3)));
        r.done("a", "manifests/v1");
        // Many failures: capped at a minute.
        let mut t = t0;
        for _ in 0..20 {
            let _ = r.record(false, t);
            t += BACKOFF_MAX;
            assert!(!r.backing_off(t));
        }
    }
}
