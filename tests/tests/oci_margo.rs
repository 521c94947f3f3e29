//! What a Margo device pulls besides images, through the gateway: a Helm
//! chart as OCI, a Compose package (one tar+gzip layer holding
//! `compose.yaml`), and the signature attached to an image, found through
//! the OCI Referrers API. The upstream registry (distribution 2.8) has no
//! Referrers API: the signature is pushed with the referrers tag schema,
//! and the gateway serves the API from it. Everything is checked byte for
//! byte, online and then with the gateway's upstream link cut.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    Site,
    oci::{
        Descriptor, Image, LINUX_AMD64, LayerSpec, Layout, MT_INDEX, MT_MANIFEST,
        artifact::{
            ChartArtifact, ComposePackage, MT_NOTARY_SIGNATURE, MT_SPDX, Referrer, referrers_tag,
            tgz_file, tgz_files,
        },
        sha256_digest,
    },
    registry::{self, Client, OciGateway, World, start_world},
    require_root,
};
use serde_json::Value;

/// Short, so that once the link is cut every tag and referrers list has
/// outlived it: what is served then is the stale copy, not a fresh hit.
const TAG_TTL: &str = "2s";
const PAST_TTL: Duration = Duration::from_millis(2500);

const CHART_REPO: &str = "charts/mychart";
const CHART_TAG: &str = "0.1.0";
const COMPOSE_REPO: &str = "margo/compose-app";
const COMPOSE_TAG: &str = "1.0.0";
const APP_REPO: &str = "app";

/// Helm asks for an OCI manifest and nothing else.
const HELM_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// What was pushed, kept to compare with what devices get.
struct Pushed {
    layout: Layout,
    chart: ChartArtifact,
    compose: ComposePackage,
    signed: Image,
    /// An image nothing refers to.
    unsigned: Image,
    signature: Referrer,
    sbom: Referrer,
}

/// Pushes the chart, the Compose package, a signed image (a signature and
/// an SBOM, pushed by digest, then listed by the referrers tag schema's
/// index under `sha256-<hex>`) and an unsigned image, straight to the
/// registry.
fn push_all(w: &World<'_>) -> Pushed {
    let site = w.registry.site();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let reg = &w.registry;

    let chart = layout.chart_artifact("mychart", CHART_TAG).unwrap();
    reg.push(&layout, CHART_REPO, &chart.manifest, CHART_TAG)
        .unwrap();

    let signed = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(64 * 1024, 91)], "signed")
        .unwrap();
    reg.push(&layout, APP_REPO, &signed.manifest, "v1").unwrap();
    let unsigned = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(64 * 1024, 92)], "unsigned")
        .unwrap();
    reg.push(&layout, APP_REPO, &unsigned.manifest, "v2")
        .unwrap();

    let compose = layout
        .compose_package("registry.example.test/app:v1")
        .unwrap();
    reg.push(&layout, COMPOSE_REPO, &compose.manifest, COMPOSE_TAG)
        .unwrap();

    let signature = layout.notary_signature(&signed).unwrap();
    let sbom = layout.sbom(&signed).unwrap();
    for r in [&signature, &sbom] {
        reg.push(&layout, APP_REPO, &r.manifest, &r.manifest.digest)
            .unwrap();
    }
    let index = layout.referrers_index(&[&signature, &sbom]).unwrap();
    reg.put_manifest(
        &layout,
        APP_REPO,
        &index,
        &referrers_tag(&signed.manifest.digest),
    )
    .unwrap();

    // The premise: this upstream has no Referrers API, so what devices get
    // below comes from the gateway's reading of the tag schema.
    let direct = reg
        .api(&[&format!(
            "{}/v2/{APP_REPO}/referrers/{}",
            reg.url(),
            signed.manifest.digest
        )])
        .unwrap();
    assert_eq!(
        direct.code,
        404,
        "the registry grew a Referrers API: {}",
        direct.describe()
    );
    Pushed {
        layout,
        chart,
        compose,
        signed,
        unsigned,
        signature,
        sbom,
    }
}

/// An artifact fetched the way Helm and ORAS do it over the OCI API: the
/// manifest with an `Accept` header, then each blob, every digest checked.
struct Fetched {
    manifest: Vec<u8>,
    /// (descriptor from the manifest, bytes): config first, then layers.
    blobs: Vec<(Descriptor, Vec<u8>)>,
}

impl Fetched {
    fn blob(&self, digest: &str) -> &[u8] {
        &self
            .blobs
            .iter()
            .find(|(d, _)| d.digest == digest)
            .unwrap_or_else(|| panic!("{digest} not fetched"))
            .1
    }
}

fn fetch_artifact(
    gw: &OciGateway<'_>,
    dev: &Client,
    repo: &str,
    reference: &str,
    accept: &str,
) -> Fetched {
    let url = Client::url(&format!("/v2/{repo}/manifests/{reference}"));
    let m = gw.must(dev.curl(&["-H", &format!("Accept: {accept}"), &url]));
    assert_eq!(m.code, 200, "{repo}:{reference}: {}", m.describe());
    assert!(m.complete(), "{}", m.describe());
    let manifest = m.body();
    let digest = sha256_digest(&manifest);
    assert_eq!(
        m.header("docker-content-digest"),
        Some(digest.as_str()),
        "{}",
        m.describe()
    );
    let doc: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        m.header("content-type"),
        doc["mediaType"].as_str(),
        "{}",
        m.describe()
    );
    let descriptors = std::iter::once(&doc["config"])
        .chain(doc["layers"].as_array().unwrap())
        .map(|d| Descriptor::from_json(d).unwrap());
    let blobs = descriptors
        .map(|d| {
            let b = gw.must(dev.get(&format!("/v2/{repo}/blobs/{}", d.digest)));
            assert_eq!(b.code, 200, "{}", b.describe());
            assert_eq!(gw.must(b.body_digest()), d.digest, "{}", b.describe());
            assert_eq!(b.body_len(), d.size, "{}", b.describe());
            let bytes = b.body();
            (d, bytes)
        })
        .collect();
    Fetched { manifest, blobs }
}

/// The chart, with skopeo and the Helm way: byte for byte as pushed, and
/// its `.tgz` holds the chart directory.
fn pull_chart(gw: &OciGateway<'_>, dev: &Client, p: &Pushed) {
    let chart = &p.chart;
    let copied = gw.must(dev.skopeo_copy(&format!("{CHART_REPO}:{CHART_TAG}"), false));
    assert_eq!(gw.must(copied.tagged("pulled")), chart.manifest);
    gw.must(copied.verify_blobs());
    for d in [&chart.config, &chart.chart] {
        assert_eq!(
            gw.must(copied.read_blob(&d.digest)),
            p.layout.read_blob(&d.digest).unwrap()
        );
    }

    let f = fetch_artifact(gw, dev, CHART_REPO, CHART_TAG, HELM_ACCEPT);
    assert_eq!(
        f.manifest,
        p.layout.read_blob(&chart.manifest.digest).unwrap()
    );
    let config: Value = serde_json::from_slice(f.blob(&chart.config.digest)).unwrap();
    assert_eq!(config["name"], "mychart", "{config}");
    assert_eq!(config["version"], CHART_TAG, "{config}");
    assert_eq!(config["apiVersion"], "v2", "{config}");
    let tgz = f.blob(&chart.chart.digest);
    assert_eq!(tgz, p.layout.read_blob(&chart.chart.digest).unwrap());
    assert_eq!(tgz_files(tgz).unwrap(), chart.files);
    let chart_yaml = String::from_utf8(tgz_file(tgz, "mychart/Chart.yaml").unwrap()).unwrap();
    assert!(chart_yaml.contains("name: mychart"), "{chart_yaml}");
}

/// The Compose package, with skopeo and over the API: byte for byte, and
/// its layer holds `compose.yaml`.
fn pull_compose(gw: &OciGateway<'_>, dev: &Client, p: &Pushed) {
    let pkg = &p.compose;
    let copied = gw.must(dev.skopeo_copy(&format!("{COMPOSE_REPO}:{COMPOSE_TAG}"), false));
    assert_eq!(gw.must(copied.tagged("pulled")), pkg.manifest);
    gw.must(copied.verify_blobs());
    assert_eq!(
        gw.must(copied.read_blob(&pkg.layer.digest)),
        p.layout.read_blob(&pkg.layer.digest).unwrap()
    );

    let f = fetch_artifact(gw, dev, COMPOSE_REPO, COMPOSE_TAG, HELM_ACCEPT);
    assert_eq!(
        f.manifest,
        p.layout.read_blob(&pkg.manifest.digest).unwrap()
    );
    assert_eq!(f.blob(&pkg.config.digest), b"{}");
    let layer = f.blob(&pkg.layer.digest);
    assert_eq!(tgz_files(layer).unwrap(), pkg.files);
    let compose = String::from_utf8(tgz_file(layer, "compose.yaml").unwrap()).unwrap();
    assert!(
        compose.contains("image: registry.example.test/app:v1"),
        "{compose}"
    );
}

/// `GET /v2/app/referrers/<digest>[?query]` from the device: the listed
/// descriptors and the `OCI-Filters-Applied` header.
fn referrers(
    gw: &OciGateway<'_>,
    dev: &Client,
    subject: &str,
    query: &str,
) -> (Vec<Value>, Option<String>) {
    let r = gw.must(dev.curl(&[
        "-H",
        &format!("Accept: {MT_INDEX}"),
        &Client::url(&format!("/v2/{APP_REPO}/referrers/{subject}{query}")),
    ]));
    assert_eq!(
        r.code,
        200,
        "referrers of {subject}{query}: {}",
        r.describe()
    );
    assert_eq!(r.header("content-type"), Some(MT_INDEX), "{}", r.describe());
    let doc: Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(doc["schemaVersion"], 2, "{doc}");
    assert_eq!(doc["mediaType"], MT_INDEX, "{doc}");
    let listed = doc["manifests"].as_array().unwrap().clone();
    (listed, r.header("oci-filters-applied").map(str::to_owned))
}

/// The signed image's referrers (all, then filtered to signatures and, if
/// asked, to SBOMs), the signature followed to its envelope, and the
/// unsigned image's empty list.
fn find_signature(gw: &OciGateway<'_>, dev: &Client, p: &Pushed, sbom_filter: bool) {
    let subject = &p.signed.manifest.digest;
    let (all, filters) = referrers(gw, dev, subject, "");
    assert_eq!(filters, None, "nothing was filtered");
    assert!(
        all.contains(&p.signature.listed()) && all.contains(&p.sbom.listed()),
        "signature and SBOM not both listed: {all:?}"
    );
    assert_eq!(all.len(), 2, "{all:?}");

    let (sigs, filters) = referrers(
        gw,
        dev,
        subject,
        "?artifactType=application%2Fvnd.cncf.notary.signature",
    );
    assert_eq!(sigs, [p.signature.listed()]);
    assert_eq!(sigs[0]["artifactType"], MT_NOTARY_SIGNATURE);
    assert_eq!(filters.as_deref(), Some("artifactType"));
    if sbom_filter {
        let (sboms, filters) = referrers(gw, dev, subject, &format!("?artifactType={MT_SPDX}"));
        assert_eq!(sboms, [p.sbom.listed()]);
        assert_eq!(filters.as_deref(), Some("artifactType"));
    }

    // What a verifier does next: the signature manifest by digest, its
    // subject, its envelope.
    let sig = fetch_artifact(
        gw,
        dev,
        APP_REPO,
        sigs[0]["digest"].as_str().unwrap(),
        MT_MANIFEST,
    );
    assert_eq!(
        sig.manifest,
        p.layout.read_blob(&p.signature.manifest.digest).unwrap()
    );
    let doc: Value = serde_json::from_slice(&sig.manifest).unwrap();
    assert_eq!(doc["subject"]["digest"], subject.as_str(), "{doc}");
    assert_eq!(
        sig.blob(&p.signature.layer.digest),
        p.layout.read_blob(&p.signature.layer.digest).unwrap()
    );

    let (none, _) = referrers(gw, dev, &p.unsigned.manifest.digest, "");
    assert!(
        none.is_empty(),
        "the unsigned image has referrers: {none:?}"
    );
}

/// Every `request` record after the first `from`.
fn records_since(gw: &OciGateway<'_>, from: usize) -> Vec<Value> {
    gw.must(gw.requests()).split_off(from)
}

fn referrers_path(p: &Pushed) -> String {
    format!("/v2/{APP_REPO}/referrers/{}", p.signed.manifest.digest)
}

#[test]
fn helm_chart_and_compose_package_pull_byte_identical_online_and_offline() {
    require_root();
    let site = Site::new("margo-pkgs").unwrap();
    let w = start_world(&site, registry::RegistryOptions::default(), TAG_TTL).unwrap();
    let p = push_all(&w);
    let gw = &w.gw;

    pull_chart(gw, &w.device, &p);
    pull_compose(gw, &w.device, &p);
    let online_done = Instant::now();
    // Each blob crossed the upstream link once, however many pulls.
    for (repo, d) in [
        (CHART_REPO, &p.chart.chart),
        (COMPOSE_REPO, &p.compose.layer),
    ] {
        let path = format!("/v2/{repo}/blobs/{}", d.digest);
        let up = w.registry.requests_from_gateway("GET", &path).unwrap();
        assert_eq!(up.len(), 1, "upstream GETs of {path}: {up:?}");
        let recs = gw.must(gw.wait_requests("GET", &path, 2));
        assert_eq!(recs[0]["cache"], "miss", "{}", recs[0]);
        assert!(recs[1..].iter().all(|r| r["cache"] == "hit"), "{recs:?}");
    }

    let before = gw.must(gw.requests()).len();
    let upstream_before = w.registry.access_log().unwrap().len();
    registry::cut_upstream(&site).unwrap();
    // Every tag was last fetched before `online_done`: wait out the rest
    // of the TTL only (the checks since took part of it, much of it under
    // TCG).
    thread::sleep(PAST_TTL.saturating_sub(online_done.elapsed()));

    // A fresh device: nothing of its own cached.
    let dev = gw.must(gw.device());
    pull_chart(gw, &dev, &p);
    pull_compose(gw, &dev, &p);

    let after = records_since(gw, before);
    assert!(!after.is_empty());
    for r in after.iter().filter(|r| r["path"] != "/v2/") {
        assert_eq!(r["status"], 200, "{r}");
        let path = r["path"].as_str().unwrap_or_default();
        let by_tag = path.ends_with(&format!("/manifests/{CHART_TAG}"))
            || path.ends_with(&format!("/manifests/{COMPOSE_TAG}"));
        if by_tag {
            // The TTL ran out with upstream gone: the last good copy.
            assert_eq!(r["cache"], "stale", "{r}");
            assert_eq!(r["fault"], "upstream", "{r}");
        } else {
            assert_eq!(r["cache"], "hit", "{r}");
        }
    }
    for tag_path in [
        format!("/v2/{CHART_REPO}/manifests/{CHART_TAG}"),
        format!("/v2/{COMPOSE_REPO}/manifests/{COMPOSE_TAG}"),
    ] {
        assert!(
            after.iter().any(|r| r["path"] == tag_path.as_str()),
            "no offline record of {tag_path}"
        );
    }
    assert_eq!(
        w.registry.access_log().unwrap().len(),
        upstream_before,
        "the registry was reached with the link down"
    );
}

#[test]
fn signature_is_found_through_the_referrers_api_online_and_offline() {
    require_root();
    let site = Site::new("margo-sigs").unwrap();
    let w = start_world(&site, registry::RegistryOptions::default(), TAG_TTL).unwrap();
    let p = push_all(&w);
    let gw = &w.gw;

    // The image itself, then what refers to it.
    let pulled = gw.must(w.device.skopeo_copy(&format!("{APP_REPO}:v1"), false));
    gw.must(pulled.check_image(&p.signed));
    find_signature(gw, &w.device, &p, false);
    let online_done = Instant::now();

    // The gateway asked upstream's API, was told 404, and read the tag.
    let api = w
        .registry
        .requests_from_gateway("GET", &referrers_path(&p))
        .unwrap();
    assert!(
        !api.is_empty() && api.iter().all(|l| l.status == 404),
        "{api:?}"
    );
    let schema = w
        .registry
        .requests_from_gateway(
            "GET",
            &format!(
                "/v2/{APP_REPO}/manifests/{}",
                referrers_tag(&p.signed.manifest.digest)
            ),
        )
        .unwrap();
    assert!(
        schema.iter().any(|l| l.status == 200),
        "the tag schema was never read: {schema:?}"
    );
    let first = gw.must(gw.wait_requests("GET", &referrers_path(&p), 1));
    assert_eq!(first[0]["status"], 200, "{}", first[0]);
    assert_eq!(first[0]["cache"], "miss", "{}", first[0]);
    assert!(first[0].get("fault").is_none(), "{}", first[0]);
    let detail = first[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("no referrers API") && detail.contains("referrers tag sha256-"),
        "the fallback is not on record: {}",
        first[0]
    );

    let before = gw.must(gw.requests()).len();
    let upstream_before = w.registry.access_log().unwrap().len();
    registry::cut_upstream(&site).unwrap();
    // As above: every list was last fetched before `online_done`.
    thread::sleep(PAST_TTL.saturating_sub(online_done.elapsed()));

    let dev = gw.must(gw.device());
    // An SBOM filter never asked for online is answered too: the filter is
    // applied to the cached list.
    find_signature(gw, &dev, &p, true);
    let again = gw.must(dev.skopeo_copy(&format!("{APP_REPO}:v1"), false));
    gw.must(again.check_image(&p.signed));

    let after = records_since(gw, before);
    let lists: Vec<&Value> = after
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("/v2/{APP_REPO}/referrers/")))
        })
        .collect();
    // Signed: all, signatures, SBOMs; unsigned: all.
    assert_eq!(lists.len(), 4, "{lists:?}");
    for r in &lists {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["cache"], "stale", "{r}");
        assert_eq!(r["fault"], "upstream", "{r}");
    }
    for r in after.iter().filter(|r| r["path"] != "/v2/") {
        assert_eq!(r["status"], 200, "{r}");
        assert!(r["cache"] == "hit" || r["cache"] == "stale", "{r}");
    }
    assert_eq!(
        w.registry.access_log().unwrap().len(),
        upstream_before,
        "the registry was reached with the link down"
    );
}
