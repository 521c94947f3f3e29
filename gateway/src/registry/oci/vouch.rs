//! The cross-group check for blobs (device groups only): a blob the cache
//! holds is served through repository `name` only when `name`'s upstream
//! has it too. The answer is asked once per repository and digest (a HEAD
//! with the gateway's credentials) and recorded in the cache index, so
//! later pulls, offline ones included, are plain hits.

use http::StatusCode;

use super::{OciSite, response};
use crate::{audit::Fault, cache::Digest, registry::Outcome, upstream::UpstreamRequest};

/// Whether `name`'s upstream is known to have `digest`. An index that
/// cannot be read counts as not known: upstream is asked instead.
pub(super) async fn recorded(site: &OciSite, name: &str, digest: &Digest) -> bool {
    match site.cache.vouched(&site.host, name, digest).await {
        Ok(known) => known,
        Err(e) => {
            tracing::error!(error = %e, "cache index read failed; asking upstream");
            false
        }
    }
}

/// Records that `name`'s upstream has `digest`, in the background: an
/// index commit (an fsync) must not delay the answer. Logged when it
/// cannot be recorded; the next request then asks upstream again.
pub(super) fn record(site: &OciSite, name: &str, digest: &Digest) {
    let (cache, host, name, digest) = (
        site.cache.clone(),
        site.host.clone(),
        name.to_owned(),
        *digest,
    );
    tokio::spawn(async move {
        if let Err(e) = cache.vouch(&host, &name, &digest).await {
            tracing::warn!(error = %e, repository = %name, %digest, "could not record a repository's blob");
        }
    });
}

/// Asks `name`'s upstream whether it has `digest`; `Ok` (and recorded)
/// when it answers 200, else the answer for the device: `BLOB_UNKNOWN`
/// (404) as the registry itself would give, or `UNAVAILABLE` when
/// upstream cannot say (the cached bytes are not served unvouched).
pub(super) async fn ask(site: &OciSite, name: &str, digest: &Digest) -> Result<(), Outcome> {
    let path = format!("/v2/{name}/blobs/{digest}");
    let req = UpstreamRequest::head(&path).with_scope(OciSite::scope(name));
    let status = match site.upstream.send(req).await {
        Ok(resp) => resp.status(),
        Err(e) => {
            return Err(response::failed(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                e.fault().into(),
                format!(
                    "{digest} is cached for another repository; whether {name} has it could not be asked upstream: {e}"
                ),
            ));
        }
    };
    if status == StatusCode::OK {
        // Recorded before answering (the upstream round trip dwarfs the
        // commit): the device's next request finds it.
        if let Err(e) = site.cache.vouch(&site.host, name, digest).await {
            tracing::warn!(error = %e, repository = name, %digest, "could not record a repository's blob");
        }
        return Ok(());
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(response::failed(
            StatusCode::BAD_GATEWAY,
            "UNAVAILABLE",
            Fault::Upstream,
            format!(
                "{digest} is cached for another repository; upstream answered {status} for {name}"
            ),
        ));
    }
    let mut o = Outcome::new(response::error(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        "blob unknown to registry",
    ));
    o.detail = Some(format!(
        "{digest} is cached for another repository, but upstream answered {status} for {name}: not served across repositories"
    ));
    o.fault = Some(Fault::Device);
    Err(o)
}
