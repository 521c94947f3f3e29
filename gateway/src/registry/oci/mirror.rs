//! One mirror run over one repository of an OCI site: list upstream's
//! tags (following `Link` pages), keep those the entry's patterns match,
//! and for each new or moved tag fetch everything it names
//! (mirror_content.rs), then pin it as `mirror:<site>/<repo>:<tag>`.
//!
//! A tag whose digest upstream still answers and whose pinned content is
//! all held costs one manifest HEAD (its reference is marked fresh, so
//! devices are served it as a hit). A moved tag's pin is replaced, so what
//! only the old content named becomes evictable; a tag gone upstream or no
//! longer matched loses its pin. A tag is pinned only once all of it is
//! held: a run stopped by the end of its window pins the tags it
//! completed and leaves the rest to the next run.

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt as _;
use http::StatusCode;
use serde::Serialize;

use super::{OciSite, document, mirror_content};
use crate::{
    cache::Digest,
    config::Mirror,
    mirror::{Watch, rate::Pull},
    upstream::UpstreamRequest,
};
use mirror_content::Filled;

/// Tags asked for per page of the tag list.
const PAGE: usize = 1000;
/// Pages followed at most (a million tags).
const MAX_PAGES: usize = 1000;
/// The largest tag list page read.
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// How one run goes.
pub struct Options {
    /// List what would be fetched; fetch and pin nothing.
    pub dry_run: bool,
    /// When the window closes: fetching stops there.
    pub deadline: Option<tokio::time::Instant>,
    /// The rate limit and byte count of the whole run.
    pub pull: Arc<Pull>,
}

/// What a run did for one repository.
#[derive(Debug, Default, Serialize)]
pub struct RepoReport {
    pub site: String,
    pub repository: String,
    /// New or moved tags fetched and pinned (a dry run: that would be).
    pub synced: Vec<String>,
    /// Tags whose pinned content was current.
    pub unchanged: Vec<String>,
    pub failed: Vec<TagFailure>,
    /// Blobs fetched (a dry run: that would be) and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    /// Pins removed: tags gone upstream or no longer matched.
    pub unpinned: Vec<String>,
    /// Why the run stopped early (the window closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// A dry run's blobs counted already (tags sharing content).
    #[serde(skip)]
    counted: std::collections::HashSet<Digest>,
}

#[derive(Debug, Serialize)]
pub struct TagFailure {
    pub tag: String,
    pub error: String,
}

/// The pin of a mirrored tag.
pub fn pin_name(site: &str, repo: &str, tag: &str) -> String {
    format!("mirror:{site}/{repo}:{tag}")
}

/// Runs `entry` over `repo`. `Err` only when the tag list could not be
/// read; a tag's failure is in the report, and the other tags go on.
pub async fn sync_repository(
    site: &OciSite,
    repo: &str,
    entry: &Mirror,
    opts: &Options,
    watch: &dyn Watch,
) -> anyhow::Result<RepoReport> {
    let mut report = RepoReport {
        site: site.host.clone(),
        repository: repo.to_owned(),
        ..RepoReport::default()
    };
    let mut tags: Vec<String> = list_tags(site, repo)
        .await?
        .into_iter()
        .filter(|t| entry.wants_tag(t))
        .collect();
    tags.sort();
    tags.dedup();
    watch.line(format!(
        "{}/{repo}: {} tag(s) match: {}",
        site.host,
        tags.len(),
        tags.join(", ")
    ));
    let pins: HashMap<String, Vec<Digest>> = site.cache.list_pins().into_iter().collect();
    let mut total = 0u64;
    for tag in &tags {
        if opts
            .deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            report.stopped = Some(format!("the window closed before {tag}"));
            break;
        }
        match sync_tag(
            site,
            repo,
            tag,
            entry,
            opts,
            watch,
            &pins,
            &mut total,
            &mut report,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => {
                watch.line(format!("{}/{repo}:{tag}: failed: {e:#}", site.host));
                report.failed.push(TagFailure {
                    tag: tag.clone(),
                    error: format!("{e:#}"),
                });
            }
        }
        if report.stopped.is_some() {
            break;
        }
    }
    if !opts.dry_run && report.stopped.is_none() {
        // Tags deleted upstream, or no longer matched: their content may go.
        let prefix = pin_name(&site.host, repo, "");
        for name in pins.keys() {
            let Some(tag) = name.strip_prefix(&prefix) else {
                continue;
            };
            if !tags.iter().any(|t| t == tag) && site.cache.unpin(name).await? {
                watch.line(format!(
                    "unpinned {name}: the tag is gone or no longer matched"
                ));
                report.unpinned.push(name.clone());
            }
        }
    }
    Ok(report)
}

#[expect(
    clippy::too_many_arguments,
    reason = "the run's state, threaded through one tag"
)]
async fn sync_tag(
    site: &OciSite,
    repo: &str,
    tag: &str,
    entry: &Mirror,
    opts: &Options,
    watch: &dyn Watch,
    pins: &HashMap<String, Vec<Digest>>,
    total: &mut u64,
    report: &mut RepoReport,
) -> anyhow::Result<()> {
    let name = pin_name(&site.host, repo, tag);
    let Some(digest) = tag_digest(site, repo, tag).await? else {
        watch.line(format!("{}/{repo}:{tag}: gone upstream", site.host));
        return Ok(());
    };
    if let Some(pinned) = pins.get(&name)
        && pinned.first().is_some_and(|d| d.to_string() == digest)
        && pinned.iter().all(|d| site.cache.held_size(d).is_some())
        && (opts.dry_run || refresh_tag(site, repo, tag, &digest).await?)
    {
        report.unchanged.push(tag.to_owned());
        watch.line(format!("{}/{repo}:{tag}: unchanged ({digest})", site.host));
        return Ok(());
    }
    let content =
        mirror_content::collect(site, repo, &digest, entry, opts.dry_run, &opts.pull).await?;
    let missing: Vec<(Digest, u64)> = content
        .blobs
        .iter()
        .filter(|(d, _)| site.cache.held_size(d).is_none())
        .copied()
        .collect();
    if opts.dry_run {
        // What an earlier tag of this run would have fetched is not
        // counted again.
        let new: Vec<&(Digest, u64)> = missing
            .iter()
            .filter(|(d, _)| !report.counted.contains(d))
            .collect();
        report.blobs += new.len();
        report.bytes += new.iter().map(|(_, s)| s).sum::<u64>();
        report.counted.extend(new.iter().map(|(d, _)| *d));
    }
    let missing_bytes: u64 = missing.iter().map(|(_, s)| s).sum();
    watch.line(format!(
        "{}/{repo}:{tag}: {digest}: {} manifest(s), {} blob(s), {} to fetch ({missing_bytes} bytes)",
        site.host,
        content.manifests,
        content.blobs.len(),
        missing.len(),
    ));
    if opts.dry_run {
        report.synced.push(tag.to_owned());
        return Ok(());
    }
    *total += missing_bytes;
    for (i, (d, _)) in missing.iter().enumerate() {
        let note = format!("{repo}:{tag} blob {}/{}", i + 1, missing.len());
        watch.bytes(opts.pull.pulled(), *total, &note);
        match mirror_content::fill_blob(site, repo, *d, &opts.pull, opts.deadline, watch, *total)
            .await?
        {
            Filled::Present => {}
            Filled::Fetched(size) => {
                report.blobs += 1;
                report.bytes += size;
            }
            Filled::Stopped => {
                report.stopped = Some(format!("the window closed during {tag}"));
                watch.line(format!(
                    "{}/{repo}:{tag}: the window closed: not pinned, left to the next run",
                    site.host
                ));
                return Ok(());
            }
        }
    }
    watch.bytes(opts.pull.pulled(), *total, &format!("{repo}:{tag} done"));
    site.cache.pin(&name, &content.digests).await?;
    // The tag now names the mirrored content for devices too, fresh.
    let top = mirror_content::manifest(site, repo, &digest, false, &opts.pull).await?;
    document::remember(
        site,
        repo,
        &format!("manifests/{tag}"),
        &top,
        document::Kind::Manifest,
    )
    .await;
    report.synced.push(tag.to_owned());
    watch.line(format!(
        "{}/{repo}:{tag}: pinned {} digests as {name}",
        site.host,
        content.digests.len()
    ));
    Ok(())
}

/// Marks the held reference of `tag` confirmed now (it is what upstream
/// still answers); false when the repository has no record of `digest`
/// (then the tag is walked again, which fetches nothing held).
async fn refresh_tag(site: &OciSite, repo: &str, tag: &str, digest: &str) -> anyhow::Result<bool> {
    let Some(mut entry) = site
        .cache
        .get_ref(&site.host, repo, &format!("manifests/{digest}"))
        .await?
    else {
        return Ok(false);
    };
    entry.fetched_at = crate::registry::unix_now();
    site.cache
        .put_ref(&site.host, repo, &format!("manifests/{tag}"), entry)
        .await?;
    Ok(true)
}

/// What `tag` names upstream now (a HEAD), or `None` when upstream no
/// longer has it.
async fn tag_digest(site: &OciSite, repo: &str, tag: &str) -> anyhow::Result<Option<String>> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let head = document::accept(UpstreamRequest::head(&path).with_scope(OciSite::scope(repo)));
    let resp = site.upstream.send(head).await?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status => anyhow::bail!("upstream answered {status} to HEAD {path}"),
    }
    if let Some(d) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| Digest::parse(d).is_ok())
    {
        return Ok(Some(d.to_owned()));
    }
    // No digest header on the HEAD: the GET's bytes say it.
    let get = document::accept(UpstreamRequest::get(&path).with_scope(OciSite::scope(repo)));
    match document::fetch(site, get, document::Kind::Manifest).await {
        Ok(doc) => Ok(Some(doc.digest)),
        Err(f) => anyhow::bail!("GET {path}: {}", f.describe()),
    }
}

/// Every tag of `repo` upstream, following `Link: <…>; rel="next"`.
async fn list_tags(site: &OciSite, repo: &str) -> anyhow::Result<Vec<String>> {
    let first = format!("/v2/{repo}/tags/list");
    let mut path = format!("{first}?n={PAGE}");
    let mut tags = Vec::new();
    for _ in 0..MAX_PAGES {
        let req = UpstreamRequest::get(&path).with_scope(OciSite::scope(repo));
        let resp = site.upstream.send(req).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            anyhow::bail!("listing the tags of {repo}: upstream answered {status}");
        }
        let next = resp
            .headers()
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let mut body = std::pin::pin!(site.upstream.body_stream(resp));
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() > MAX_PAGE_BYTES {
                anyhow::bail!("the tag list of {repo} has a page over {MAX_PAGE_BYTES} bytes");
            }
        }
        let page: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("the tag list of {repo} is not JSON: {e}"))?;
        // `tags` may be null for a repository without tags.
        tags.extend(
            page.get("tags")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned)),
        );
        match next {
            Some(n) if n.starts_with(&first) => path = n,
            Some(n) => anyhow::bail!("the tag list of {repo} links elsewhere: {n}"),
            None => return Ok(tags),
        }
    }
    anyhow::bail!("the tag list of {repo} has more than {MAX_PAGES} pages")
}

/// The path and query of a `Link` header's `rel="next"` target (absolute
/// targets are cut to their path: the request goes to the site anyway).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params
            .split(';')
            .any(|p| p.trim().eq_ignore_ascii_case("rel=\"next\"") || p.trim() == "rel=next")
        {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        match target.split_once("://") {
            Some((_, rest)) => rest.find('/').map(|i| rest[i..].to_owned()),
            None => target.starts_with('/').then(|| target.to_owned()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link("</v2/a/tags/list?n=2&last=b>; rel=\"next\"").as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link("<https://r.test/v2/a/tags/list?last=b>; rel=\"next\"").as_deref(),
            Some("/v2/a/tags/list?last=b")
        );
        assert_eq!(next_link("</x>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }
}
