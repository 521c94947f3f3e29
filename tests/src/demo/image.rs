//! Part 2 of the demo, setting up: the image pushed straight to the
//! site's upstream registry, and the gateway restarted with the site
//! configured (sites, cache, site CA).

use std::time::Duration;

use anyhow::{Result, ensure};
use gateway_tests::{
    Gateway, Site,
    oci::{ImageIndex, LINUX_AMD64, LINUX_ARM64, LayerSpec, Layout},
    registry::{self, Client, OciGateway, OciKeys, Registry, start_oci_gateway},
};

use super::trail::short_digests;

/// Tags are revalidated upstream once older than this.
pub const TAG_TTL: Duration = Duration::from_secs(10);
pub const REPO: &str = "demo/app";
pub const TAG: &str = "1.0";
pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// The pushed image: a two-platform index, its layout on disk.
pub struct Pushed {
    pub layout: Layout,
    pub index: ImageIndex,
}

impl Pushed {
    /// Every blob (configs and layers) of every platform.
    pub fn blobs(&self) -> Vec<(String, u64)> {
        self.index
            .images
            .iter()
            .flat_map(|i| std::iter::once(&i.config).chain(&i.layers))
            .map(|d| (d.digest.clone(), d.size))
            .collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.blobs().iter().map(|(_, s)| s).sum()
    }

    /// The GETs a `skopeo copy --all` of the tag must make: the tag, each
    /// platform's manifest by digest, each blob.
    pub fn expected_gets(&self) -> Vec<String> {
        let mut paths = vec![tag_path()];
        for image in &self.index.images {
            paths.push(format!("/v2/{REPO}/manifests/{}", image.manifest.digest));
        }
        for (digest, _) in self.blobs() {
            paths.push(blob_path(&digest));
        }
        paths
    }
}

pub fn tag_path() -> String {
    format!("/v2/{REPO}/manifests/{TAG}")
}

pub fn blob_path(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Generates the image (amd64: a small gzip layer and a 16 MiB tar layer;
/// arm64: one small layer) and pushes it as `demo/app:1.0`, straight to
/// the registry from the upstream host.
pub fn push_image(registry: &Registry<'_>) -> Result<(Pushed, String)> {
    let mut layout = Layout::create(&registry.site().tmp_dir().join("src"))?;
    let amd = layout.image(
        LINUX_AMD64,
        &[
            LayerSpec::gzip(256 * KIB, 101),
            LayerSpec::tar(16 * MIB, 102),
        ],
        "demo amd64",
    )?;
    let arm = layout.image(
        LINUX_ARM64,
        &[LayerSpec::gzip(256 * KIB, 103)],
        "demo arm64",
    )?;
    let index = layout.index(&[amd, arm])?;
    layout.tag(&index.index, TAG)?;
    registry.push(&layout, REPO, &index.index, TAG)?;
    let pushed = Pushed { layout, index };
    let mut shown = vec![format!(
        "{}/{REPO}:{TAG} = index {} ({} platforms, {} in {} blobs)",
        registry::HOST,
        short_digests(&pushed.index.index.digest),
        pushed.index.images.len(),
        mib(pushed.total_bytes()),
        pushed.blobs().len()
    )];
    for image in &pushed.index.images {
        shown.push(format!(
            "  {}/{}: manifest {}, config {}",
            image.platform.os,
            image.platform.architecture,
            short_digests(&image.manifest.digest),
            short_digests(&image.config.digest)
        ));
        for layer in &image.layers {
            shown.push(format!(
                "    layer {} {:>9} bytes  {}",
                short_digests(&layer.digest),
                layer.size,
                layer.media_type
            ));
        }
    }
    shown.push(
        "pushed from the upstream host with the distribution API (not through the gateway)".into(),
    );
    Ok((pushed, shown.join("\n")))
}

/// Stops the plain gateway, adds the site to its config, creates the site
/// CA, starts it again and hands the device the site CA.
pub fn configure<'s>(
    site: &'s Site,
    registry: &Registry<'s>,
    old: &mut Gateway<'s>,
) -> Result<((OciGateway<'s>, Client), String)> {
    let status = old.sigterm(Duration::from_secs(10))?;
    ensure!(status.code() == Some(0), "the gateway exited with {status}");
    let mut shown = vec![format!("gateway stopped (SIGTERM, {status})")];
    let keys = OciKeys::for_registry(registry, &format!("{}s", TAG_TTL.as_secs()));
    shown.push("added to gateway.yaml:".into());
    for line in keys.to_yaml().lines() {
        shown.push(format!("  {line}"));
    }
    let gw = start_oci_gateway(site, keys)?;
    let device = gw.device()?;
    shown.push(format!(
        "gateway ca init: a P-256 site CA in {}, name-constrained to the site hosts",
        gw.keys.ca_dir.display()
    ));
    shown.push(format!(
        "gateway started again (pid {}); `gateway ca export` -> the device's only trust anchor ({})",
        gw.gw.pid().unwrap_or(0),
        device.ca_file.display()
    ));
    shown.push(format!(
        "device resolves {} to {} (the registry's address): the gateway intercepts it",
        registry::HOST,
        registry::ADDR_V4
    ));
    Ok(((gw, device), shown.join("\n")))
}
