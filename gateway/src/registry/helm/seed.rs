//! `gateway cache seed host/chart@version`: the index refreshed, the chart
//! version fetched and verified through the code that serves devices, its
//! `.prov` when upstream has one, all pinned as `host/chart@version`
//! (the index too, so that a device can find the chart offline).

use http::StatusCode;

use super::{HelmSite, chart, refresh};
use crate::{
    audit::CacheStatus,
    registry::{Outcome, oci::seed::SeedReport},
};

/// `chart` at `version` on `site`; `progress` gets a line per item.
pub async fn seed(
    site: &HelmSite,
    chart: &str,
    version: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> anyhow::Result<SeedReport> {
    if chart.is_empty() || version.is_empty() || chart.contains('/') {
        anyhow::bail!("write the chart as <host>/<chart>@<version>, not `{chart}@{version}`");
    }
    let current = refresh::current(site, true)
        .await
        .map_err(|o| failure("index.yaml", o))?;
    let index = &current.index;
    match &current.stale_because {
        Some(why) => progress(format!("index.yaml: {why}")),
        None => progress(format!(
            "index.yaml {} ({} bytes, {})",
            index.digest,
            index.upstream_bytes().len(),
            label(current.cache)
        )),
    }
    let Some((host, found)) = index.version(chart, version) else {
        anyhow::bail!(
            "the index of {} lists no chart {chart} at version {version} that the gateway can fetch",
            site.host
        );
    };
    let (host, found) = (host.to_owned(), found.clone());
    let digest = found
        .digest
        .clone()
        .map_err(|why| anyhow::anyhow!("{why}"))?;
    let mut report = SeedReport {
        pin: format!("{}/{chart}@{version}", site.host),
        ..SeedReport::default()
    };
    let mut digests = vec![index.digest];
    report.blobs += 1;
    report.bytes += index.upstream_bytes().len() as u64;

    let got = chart::fetch(site, &found, digest)
        .await
        .map_err(|o| failure(&format!("chart {chart} {version}"), o))?;
    progress(format!(
        "chart {host}{} {} ({} bytes)",
        found.path, got.digest, got.size
    ));
    digests.push(got.digest);
    report.blobs += 1;
    report.bytes += got.size;

    let prov_path = format!("{}.prov", found.path);
    match chart::prov(site, &host, &prov_path, &found).await {
        Ok(got) => {
            progress(format!(
                "provenance {host}{prov_path} {} ({} bytes)",
                got.digest, got.size
            ));
            digests.push(got.digest);
            report.blobs += 1;
            report.bytes += got.size;
        }
        Err(o) if o.response.status() == StatusCode::NOT_FOUND => {
            progress(format!("no provenance file at {host}{prov_path}"));
        }
        Err(o) => return Err(failure("the provenance file", o)),
    }
    site.cache.pin(&report.pin, &digests).await?;
    progress(format!("pinned {} as {}", digests.len(), report.pin));
    Ok(report)
}

fn label(cache: CacheStatus) -> &'static str {
    match cache {
        CacheStatus::Hit => "held",
        CacheStatus::Revalidated => "unchanged upstream",
        _ => "fetched",
    }
}

/// An outcome that is not the content, as the seed's error.
fn failure(what: &str, o: Outcome) -> anyhow::Error {
    let status = o.response.status();
    let detail = o.detail.unwrap_or_else(|| status.to_string());
    anyhow::anyhow!("{what}: {status}: {detail}")
}
