//! The cache's bounds with the real registry and real clients: a cache
//! whose disk (a small tmpfs of its own) cannot hold an image refuses the
//! pull with a clear error before filling the disk, leaves no temp file,
//! and keeps serving what fits; a layer's digest asked for as a manifest is
//! not served as one.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use gateway_tests::{
    Site,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{self, Registry, RegistryOptions},
    require_root,
};

const MIB: u64 = 1024 * 1024;
/// The cache's disk: smaller than the big image, roomy for the small one.
const TMPFS_MIB: u64 = 48;

/// A tmpfs mounted on a directory of the test's own temp dir, unmounted
/// (lazily, so a process still inside cannot keep it) when dropped. Drop
/// it before the temp dir goes.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Result<Self> {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={mib}m,mode=0700").as_str()),
        )
        .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
        Ok(Self(dir.to_owned()))
    }

    /// Bytes in use on it.
    fn used(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.0).unwrap();
        (s.blocks() - s.blocks_free()) * s.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}

#[test]
fn an_image_bigger_than_the_cache_disk_is_refused_clearly_and_smaller_ones_still_pull() {
    require_root();
    let site = Site::new("oci-bounds").unwrap();
    let registry = Registry::start(&site, RegistryOptions::default()).unwrap();
    // The harness's cache: max_size 20GiB, so only the disk bounds it
    // (the case of a max_size set larger than the disk has room for).
    let keys = registry::OciKeys::for_registry(&registry, "5m");
    let disk = Tmpfs::mount(&keys.cache_dir, TMPFS_MIB).unwrap();
    let gw = registry::start_oci_gateway(&site, keys).unwrap();
    let device = gw.device().unwrap();

    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let big = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(64 * MIB, 81)], "big")
        .unwrap();
    let small = layout
        .image(LINUX_AMD64, &[LayerSpec::tar(5 * MIB, 82)], "small")
        .unwrap();
    registry.push(&layout, "big", &big.manifest, "v1").unwrap();
    registry
        .push(&layout, "small", &small.manifest, "v1")
        .unwrap();

    // The big layer: refused up front, with the reason, before its bytes
    // could fill the disk.
    let layer = &big.layers[0];
    let path = format!("/v2/big/blobs/{}", layer.digest);
    let r = gw.must(device.get(&path));
    let body = String::from_utf8_lossy(&r.body()).into_owned();
    eprintln!("the device saw {}: {body}", r.describe());
    assert_eq!(r.code, 507, "{}", r.describe());
    assert!(
        body.contains("no room in the cache") && body.contains("filesystem"),
        "{body}"
    );
    let records = gw.must(gw.wait_requests("GET", &path, 1));
    assert!(
        records
            .iter()
            .all(|r| r["status"] == 507 && r["fault"] == "local"),
        "{records:?}"
    );
    assert!(
        disk.used() < 16 * MIB,
        "the refused fill left {} bytes on the cache's disk",
        disk.used()
    );

    // A real client's pull of the image fails, and says why.
    let (out, _) = gw.must(device.try_skopeo_copy("big:v1", false));
    eprintln!("skopeo: {}", out.stderr.trim());
    assert!(!out.success(), "pulled an image bigger than the cache disk");
    assert!(
        out.stderr.contains("no room in the cache") || out.stderr.contains("507"),
        "skopeo's error does not say why: {}",
        out.stderr
    );
    gw.wait_no_temp_files();
    assert!(gw.must(gw.cache_files_named(&layer.digest)).is_empty());

    // The gateway goes on serving what fits.
    let pulled = gw.must(device.skopeo_copy("small:v1", false));
    // Config, layer and manifest, each matching its digest.
    assert_eq!(
        pulled.verify_blobs().unwrap(),
        small.blob_digests().len() + 1
    );
    for digest in small.blob_digests() {
        assert_eq!(
            gw.must(gw.cache_files_named(&digest)).len(),
            1,
            "{digest} is not in the cache"
        );
    }
    gw.wait_no_temp_files();
    assert!(
        disk.used() < 16 * MIB,
        "{} bytes on the cache's disk",
        disk.used()
    );

    // Manifests by digest: the small image's manifest is one (from the
    // cache now), its layer's digest is not (5 MiB, larger than any
    // manifest: answered without upstream, whose registry says 500 to it).
    let manifest_path = format!("/v2/small/manifests/{}", small.manifest.digest);
    let m = gw.must(device.get(&manifest_path));
    assert_eq!(m.code, 200, "{}", m.describe());
    assert_eq!(gw.must(m.body_digest()), small.manifest.digest);
    let records = gw.must(gw.wait_requests("GET", &manifest_path, 1));
    assert!(
        records.iter().any(|r| r["cache"] == "hit"),
        "the pulled manifest was not served from the cache: {records:?}"
    );
    let as_manifest = format!("/v2/small/manifests/{}", small.layers[0].digest);
    let wrong = gw.must(device.get(&as_manifest));
    let text = String::from_utf8_lossy(&wrong.body()).into_owned();
    assert_eq!(wrong.code, 404, "{}: {text}", wrong.describe());
    assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");

    drop(device);
    drop(gw);
    drop(disk);
}
