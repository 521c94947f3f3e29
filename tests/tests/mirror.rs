//! `mirror:` with the real registry: `gateway mirror run` fetches the tags
//! an entry's patterns match (the platforms it names, the signatures of
//! them) ahead of any device and pins them; a device's pull (and its read
//! of the image's signature) is then all hits with the upstream link cut;
//! a moved tag is fetched again on the next run and its old content
//! unpinned, while unchanged tags cost a HEAD; `--dry-run` fetches
//! nothing; `max_rate` holds, measured against an unlimited mirror of a
//! blob of the same size; the daemon's schedule runs the entries a reload
//! put in; a failing entry exits 1. (`cache verify` finding a rotted blob
//! is tested in oci.rs.)

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{collections::HashSet, process::Command};

use gateway_tests::{
    Site, incidental,
    oci::{LINUX_AMD64, LINUX_ARM64, LayerSpec, Layout, artifact::referrers_tag},
    registry::{
        self, HOST, OciGateway, Registry, RegistryOptions,
        cmd::Outcome,
        oci_gateway::{OciKeys, cli, start_oci_gateway_with},
    },
    require_root,
};
use serde_json::Value;

const APP: &str = "line-3/app";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A daily window six hours from now (local time, as the daemon reads
/// it): the daemon's own schedule stays out of the way, and `mirror run`
/// ignores windows unless told otherwise.
fn window_elsewhere() -> String {
    let out = Command::new("date").arg("+%H").output().unwrap();
    let hour: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    format!("\"{:02}:00-{:02}:00\"", (hour + 6) % 24, (hour + 7) % 24)
}

fn mirror_yaml(rate: &str) -> String {
    let w = window_elsewhere();
    format!(
        "mirror:
  - site: {HOST}
    repositories: [\"{APP}\"]
    tags: [\"v1.*\", \"latest\"]
    platforms: [linux/amd64]
    every: 24h
    window: {w}
  - site: {HOST}
    repositories: [big/a]
    tags: [v1]
    every: 24h
    window: {w}
  - site: {HOST}
    repositories: [big/b]
    tags: [v1]
    every: 24h
    max_rate: {rate}
    window: {w}
"
    )
}

fn mirror_run(gw: &OciGateway<'_>, args: &[&str]) -> Outcome {
    let mut full = vec!["mirror", "run"];
    full.extend_from_slice(args);
    let out = gw.must(cli(&gw.gw, &full));
    assert!(
        out.success(),
        "`gateway mirror run {args:?}` failed ({}): {}\n{}",
        out.status,
        out.stdout_text(),
        out.stderr
    );
    out
}

fn cache_ls(gw: &OciGateway<'_>) -> Value {
    let out = gw.must(cli(&gw.gw, &["cache", "ls", "--json"]));
    assert!(out.success(), "cache ls: {}", out.stderr);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The pins naming each held blob.
fn pinned_by(ls: &Value) -> Vec<(String, Vec<String>)> {
    ls["blob_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let pins = b["pinned_by"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            (b["digest"].as_str().unwrap().to_owned(), pins)
        })
        .collect()
}

/// [`pinned_by`] once `digests` are listed: a fill is verified (and the
/// run goes on) a moment before its blob is in the store's list.
fn held_once_stored(gw: &OciGateway<'_>, digests: &[String]) -> Vec<(String, Vec<String>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let held = pinned_by(&cache_ls(gw));
        if digests.iter().all(|d| pins_of(&held, d).is_some())
            || std::time::Instant::now() > deadline
        {
            return held;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn pins_of<'a>(held: &'a [(String, Vec<String>)], digest: &str) -> Option<&'a Vec<String>> {
    held.iter().find(|(d, _)| d == digest).map(|(_, p)| p)
}

fn pin(tag: &str) -> String {
    format!("mirror:{HOST}/{APP}:{tag}")
}

fn gets_from_gateway(reg: &Registry<'_>, paths: &[String]) -> usize {
    paths
        .iter()
        .map(|p| reg.requests_from_gateway("GET", p).unwrap().len())
        .sum()
}

#[test]
fn mirror_fetches_ahead_of_devices_follows_moved_tags_and_holds_its_rate() {
    require_root();
    let site = Site::new("mirror").unwrap();
    let reg = Registry::start(&site, RegistryOptions::default()).unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let small = incidental(64 * KIB);
    let image = |seed: u64, label: &str, platform| {
        layout
            .image(platform, &[LayerSpec::gzip(small, seed)], label)
            .unwrap()
    };
    // v1.0 and latest: image A; v1.1: an index of B (amd64, signed) and
    // B' (arm64, not mirrored: the entry names linux/amd64); v2.0: D.
    let a = image(1, "a", LINUX_AMD64);
    let b = image(2, "b", LINUX_AMD64);
    let b_arm = image(3, "b-arm", LINUX_ARM64);
    let d = image(4, "d", LINUX_AMD64);
    let b_index = layout.index(&[b.clone(), b_arm.clone()]).unwrap();
    for (desc, tag) in [
        (&a.manifest, "v1.0"),
        (&a.manifest, "latest"),
        (&b_index.index, "v1.1"),
        (&d.manifest, "v2.0"),
    ] {
        reg.push(&layout, APP, desc, tag).unwrap();
    }
    let signature = layout.notary_signature(&b).unwrap();
    reg.push(
        &layout,
        APP,
        &signature.manifest,
        &signature.manifest.digest,
    )
    .unwrap();
    let listing = layout.referrers_index(&[&signature]).unwrap();
    reg.put_manifest(&layout, APP, &listing, &referrers_tag(&b.manifest.digest))
        .unwrap();
    // Two images of one big layer each: one mirrored unlimited, the other
    // at half its size per second.
    let big = incidental(4 * MIB);
    let big_a = image_big(&layout, big, 5, "big-a");
    let big_b = image_big(&layout, big, 6, "big-b");
    reg.push(&layout, "big/a", &big_a.manifest, "v1").unwrap();
    reg.push(&layout, "big/b", &big_b.manifest, "v1").unwrap();
    let rate_kib = big / 2 / KIB;
    let rate = rate_kib * KIB;

    let keys = OciKeys::for_registry(&reg, "1h");
    let mut config = keys.config(&site);
    let mirrors = mirror_yaml(&format!("{rate_kib}KiB/s"));
    config.extra_yaml.push_str(&mirrors);
    let gw = start_oci_gateway_with(&site, keys, config).unwrap();

    // --dry-run: what would be fetched, and nothing fetched.
    let every_blob: Vec<String> = [&a, &b, &b_arm, &d, &big_a, &big_b]
        .iter()
        .flat_map(|i| i.blob_digests())
        .chain([signature.layer.digest.clone()])
        .collect();
    let blob_paths: Vec<String> = every_blob
        .iter()
        .map(|d| {
            let repo = if big_a.blob_digests().contains(d) {
                "big/a"
            } else if big_b.blob_digests().contains(d) {
                "big/b"
            } else {
                APP
            };
            format!("/v2/{repo}/blobs/{d}")
        })
        .collect();
    let dry = mirror_run(&gw, &["--dry-run"]);
    let text = dry.stdout_text();
    assert!(
        text.contains(&format!(
            "{HOST}/{APP}: would sync [latest, v1.0, v1.1], unchanged [], 6 blob(s) to fetch"
        )),
        "{text}\n{}",
        dry.stderr
    );
    assert_eq!(gets_from_gateway(&reg, &blob_paths), 0, "a dry run fetched");
    assert!(
        pinned_by(&cache_ls(&gw)).is_empty(),
        "a dry run stored blobs"
    );

    // The run: matching tags, amd64 only, the signature, each tag pinned.
    let run = mirror_run(&gw, &[]);
    let text = run.stdout_text();
    assert!(
        text.contains(&format!("{HOST}/{APP}: synced [latest, v1.0, v1.1]")),
        "{text}\n{}",
        run.stderr
    );
    let held = held_once_stored(&gw, &b.blob_digests());
    for digest in a.blob_digests() {
        let pins = pins_of(&held, &digest).unwrap_or_else(|| panic!("{digest}: {held:?}"));
        assert!(
            pins.contains(&pin("v1.0")) && pins.contains(&pin("latest")),
            "{pins:?}"
        );
    }
    for digest in b.blob_digests().iter().chain([&signature.layer.digest]) {
        let pins = pins_of(&held, digest).unwrap_or_else(|| panic!("{digest}: {held:?}"));
        assert_eq!(pins, &vec![pin("v1.1")], "{digest}");
    }
    let elsewhere = d
        .blob_digests()
        .into_iter()
        .chain(b_arm.layers.iter().map(|l| l.digest.clone()));
    for digest in elsewhere {
        assert!(
            pins_of(&held, &digest).is_none(),
            "v2.0 or arm64 fetched: {digest}"
        );
    }
    let records = gw.must(gw.gw.audit());
    let synced: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "mirror.synced")
        .collect();
    let of = |repo: &str| {
        *synced
            .iter()
            .find(|r| r["name"] == repo)
            .unwrap_or_else(|| panic!("no mirror.synced for {repo}: {synced:?}"))
    };
    let app = of(APP);
    assert_eq!(app["host"], HOST, "{app}");
    assert!(
        app["detail"]
            .as_str()
            .unwrap()
            .starts_with("3 tag(s) synced, 0 unchanged, 6 blob(s) fetched"),
        "{app}"
    );

    // max_rate: the limited mirror of a blob as big as the unlimited
    // one's takes at least ~0.7 of size / rate (the bucket's quarter
    // second of burst is the rest), and longer than the unlimited one.
    let (free, limited) = (of("big/a"), of("big/b"));
    for r in [free, limited] {
        assert!(r["bytes"].as_u64().unwrap() >= big, "{r}");
    }
    let ms = |r: &Value| r["duration_ms"].as_u64().unwrap() as f64;
    let floor = 0.7 * big as f64 / rate as f64 * 1000.0;
    eprintln!(
        "mirror of {big} bytes: unlimited {} ms, at {rate} B/s {} ms (floor {floor:.0} ms)",
        ms(free),
        ms(limited)
    );
    assert!(ms(limited) >= floor, "{limited}: under {floor} ms");
    assert!(ms(limited) > ms(free), "{free}\n{limited}");

    // Offline, a device pulls v1.1: every request a hit.
    let before = gw.must(gw.requests()).len();
    registry::cut_upstream(&site).unwrap();
    let dev = gw.must(gw.device());
    let pulled = gw.must(dev.skopeo_copy(&format!("{APP}:v1.1"), false));
    gw.must(pulled.check_image(&b));
    // Its signature too: the referrers list and the signature's manifest.
    let referrers = gw.must(dev.get(&format!("/v2/{APP}/referrers/{}", b.manifest.digest)));
    assert_eq!(referrers.code, 200, "{}", referrers.describe());
    let listed = String::from_utf8_lossy(&referrers.body()).into_owned();
    assert!(listed.contains(&signature.manifest.digest), "{listed}");
    let sig = gw.must(dev.get(&format!(
        "/v2/{APP}/manifests/{}",
        signature.manifest.digest
    )));
    assert_eq!(sig.code, 200, "{}", sig.describe());
    let after: Vec<Value> = gw.must(gw.requests()).split_off(before);
    assert!(after.len() > 2, "{after:?}");
    for r in after.iter().filter(|r| r["path"] != "/v2/") {
        assert_eq!(r["cache"], "hit", "not a hit offline: {r}");
        assert_eq!(r["status"], 200, "{r}");
    }
    registry::restore_upstream(&site).unwrap();

    // v1.1 moves to C: the next run fetches C, unpins B; v1.0 and latest
    // cost a HEAD each, no GET.
    let c = image(7, "c", LINUX_AMD64);
    reg.push(&layout, APP, &c.manifest, "v1.1").unwrap();
    let tag_gets = |tag: &str| {
        reg.requests_from_gateway("GET", &format!("/v2/{APP}/manifests/{tag}"))
            .unwrap()
            .len()
    };
    let gets_before = (tag_gets("v1.0"), tag_gets("latest"));
    let run = mirror_run(&gw, &[]);
    let text = run.stdout_text();
    assert!(
        text.contains(&format!(
            "{HOST}/{APP}: synced [v1.1], unchanged [latest, v1.0], 2 blob(s) fetched"
        )),
        "{text}\n{}",
        run.stderr
    );
    assert_eq!((tag_gets("v1.0"), tag_gets("latest")), gets_before);
    let held = held_once_stored(&gw, &c.blob_digests());
    for digest in c.blob_digests() {
        assert_eq!(
            pins_of(&held, &digest),
            Some(&vec![pin("v1.1")]),
            "{digest}"
        );
    }
    let unpinned: HashSet<String> = b.blob_digests().into_iter().collect();
    for (digest, pins) in &held {
        if unpinned.contains(digest) {
            assert!(
                pins.is_empty(),
                "{digest} of the old v1.1 still pinned: {pins:?}"
            );
        }
    }

    // The daemon's own schedule, after a reload replaced the entries: an
    // `every` entry without a window runs 10 s after it appeared.
    let path = gw.gw.config_path().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();
    let scheduled = format!(
        "mirror:\n  - site: {HOST}\n    repositories: [\"{APP}\"]\n    tags: [\"v2.*\"]\n    every: 1h\n"
    );
    assert!(text.contains(&mirrors), "the mirror section moved");
    std::fs::write(&path, text.replace(&mirrors, &scheduled)).unwrap();
    let reloaded = std::time::Instant::now();
    let reload = gw.must(cli(&gw.gw, &["reload"]));
    assert!(reload.success(), "reload: {}", reload.stderr);
    assert!(
        reload.stdout_text().contains("mirror"),
        "{}",
        reload.stdout_text()
    );
    let record = gw.must(gw.gw.wait_audit(
        |r| {
            r["event"] == "mirror.synced"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("(synced: v2.0)"))
        },
        std::time::Duration::from_secs(60),
    ));
    eprintln!(
        "scheduled run audited {:?} after the reload: {record}",
        reloaded.elapsed()
    );
    // The v1 tags are no longer matched: their pins went.
    assert!(
        record["detail"].as_str().unwrap().contains(&pin("v1.0")),
        "{record}"
    );
    let held = held_once_stored(&gw, &d.blob_digests());
    for digest in d.blob_digests() {
        assert_eq!(
            pins_of(&held, &digest),
            Some(&vec![pin("v2.0")]),
            "{digest}"
        );
    }

    // A run whose entry fails (no such repository upstream) exits 1
    // naming it, and is audited `mirror.failed`. The CLI runs the entries
    // of the file it is given.
    let failing = site.tmp_dir().join("failing.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &failing,
        text.replace(&scheduled, &scheduled.replace(APP, "nothing/here")),
    )
    .unwrap();
    let failing = failing.to_string_lossy().into_owned();
    let mut run = gw.gw.command(&["mirror", "run", "--config", &failing]);
    let out = gw.must(registry::cmd::output(
        &mut run,
        std::time::Duration::from_secs(60),
    ));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        out.stdout_text(),
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{HOST}/nothing/here")),
        "{}",
        out.stderr
    );
    let failed = gw.must(gw.gw.wait_audit(
        |r| r["event"] == "mirror.failed",
        std::time::Duration::from_secs(10),
    ));
    assert_eq!(failed["name"], "nothing/here", "{failed}");
    assert_eq!(failed["fault"], "upstream", "{failed}");
}

fn image_big(layout: &Layout, size: u64, seed: u64, label: &str) -> gateway_tests::oci::Image {
    layout
        .image(LINUX_AMD64, &[LayerSpec::tar(size, seed)], label)
        .unwrap()
}
