//! `gateway cache pin|unpin|rm|verify|du`: the daemon's side (or the
//! offline client's, on the cache it opened).
//!
//! A reference is `host/repo:tag` or `host/repo@sha256:…`; the registry
//! stores it as `manifests/<tag or digest>` under the site's host, and
//! `cache seed` pins it under the name `host/repo:tag` (or `@digest`), so
//! `pin` and `rm` use that same name.

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Reply, Step, parse_reference};
use crate::cache::{Cache, Digest, VerifyStep, usage};

/// What the cache calls a reference: the site, the repository, the
/// registry's key and the pin name seed gives it.
struct Named {
    site: String,
    repo: String,
    key: String,
    pin: String,
}

fn resolve(reference: &str) -> anyhow::Result<Named> {
    let (site, repo, r) = parse_reference(reference)?;
    let separator = if r.starts_with("sha256:") { '@' } else { ':' };
    Ok(Named {
        pin: format!("{site}/{repo}{separator}{r}"),
        key: format!("manifests/{r}"),
        site,
        repo,
    })
}

/// Pins everything a cached reference names, or says what is missing.
pub(super) async fn pin(cache: &Cache, reference: &str) -> anyhow::Result<Value> {
    let named = resolve(reference)?;
    let seed_hint = format!(
        "`gateway cache seed {}` fetches what is missing and pins it",
        named.pin
    );
    let root = match cache.get_ref(&named.site, &named.repo, &named.key).await? {
        Some(entry) => Some(Digest::parse(&entry.digest).map_err(|e| {
            anyhow::anyhow!(
                "{} resolves to {}, which the cache cannot hold: {e}",
                named.pin,
                entry.digest
            )
        })?),
        None => named
            .key
            .strip_prefix("manifests/")
            .and_then(|d| Digest::parse(d).ok()),
    };
    let Some(root) = root else {
        anyhow::bail!(
            "nothing is cached for {} (`gateway cache ls` lists the references); {seed_hint}",
            named.pin
        );
    };
    let walk = cache.walk(root).await?;
    if !walk.complete() {
        let shown: Vec<&str> = walk.missing.iter().take(3).map(String::as_str).collect();
        let more = walk.missing.len().saturating_sub(shown.len());
        anyhow::bail!(
            "{} is not all cached: missing {}{}; {seed_hint}",
            named.pin,
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    let bytes: u64 = walk.held.iter().filter_map(|d| cache.held_size(d)).sum();
    cache.pin(&named.pin, &walk.held).await?;
    Ok(json!({ "pin": named.pin, "blobs": walk.held.len(), "bytes": bytes }))
}

/// Removes a pin by its name (as `cache ls` shows it, or the reference it
/// was made from).
pub(super) async fn unpin(cache: &Cache, name: &str) -> anyhow::Result<Value> {
    if cache.unpin(name).await? {
        return Ok(json!({ "unpinned": name }));
    }
    // `Reg.Test/app` names the pin `reg.test/app:latest`.
    if let Ok(named) = resolve(name)
        && named.pin != name
        && cache.unpin(&named.pin).await?
    {
        return Ok(json!({ "unpinned": named.pin }));
    }
    anyhow::bail!("no pin is named `{name}` (`gateway cache ls` lists the pins)")
}

pub(super) async fn rm(cache: &Cache, reference: &str) -> anyhow::Result<Value> {
    let named = resolve(reference)?;
    let report = cache
        .remove_reference(&named.site, &named.repo, &named.key, &named.pin)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "nothing is cached under {} (`gateway cache ls` lists the references and pins)",
                named.pin
            )
        })?;
    Ok(serde_json::to_value(report)?)
}

pub(super) async fn verify(
    cache: &Cache,
    progress: &mpsc::UnboundedSender<Reply>,
) -> anyhow::Result<Value> {
    let on_step = |s: VerifyStep| {
        let verdict = if s.ok { "ok" } else { "DAMAGED: quarantined" };
        let _ = progress.send(Reply::Step(Step {
            done: s.done_bytes,
            total: s.total_bytes,
            line: format!(
                "{}/{} blobs: {} {verdict}",
                s.done_blobs, s.total_blobs, s.digest
            ),
        }));
    };
    let report = cache.verify(&on_step).await?;
    let quarantined: Vec<Value> = report
        .quarantined
        .iter()
        .map(|q| {
            json!({
                "digest": q.expected.to_string(),
                "actual_digest": q.actual.to_string(),
                "size": q.expected_size,
                "actual_size": q.actual_size,
                "path": q.path.as_ref().map(|p| p.display().to_string()),
            })
        })
        .collect();
    Ok(json!({
        "checked": report.checked,
        "bytes": report.bytes,
        "vanished": report.vanished,
        "quarantined": quarantined,
        "quarantine_dir": cache.quarantine_dir().display().to_string(),
    }))
}

pub(super) async fn du(cache: &Cache) -> anyhow::Result<Value> {
    let naming = cache.naming().await?;
    let usage = usage(&naming, &cache.blob_list());
    let mut v = serde_json::to_value(usage)?;
    v["note"] = json!(
        "a blob several repositories (or sites) name counts in each of them, and once in a site's and the cache's total"
    );
    Ok(v)
}
