//! The cache management commands' cache side: walks (walk.rs), who names
//! what and `du` (usage.rs), `rm` (remove.rs), `verify` (verify.rs).

use std::path::Path;

use serde_json::json;

use super::{
    super::{
        Cache, Digest, ObjectEntry, Owner, RefEntry,
        evict::{Disposal, Disposed, Victim, dispose},
        usage,
    },
    data, fill, open, read_all, tempdir,
};

const MAX: u64 = 16 << 20;

fn descriptor(content: &[u8]) -> serde_json::Value {
    json!({ "digest": Digest::of(content).to_string(), "size": content.len() })
}

fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<_> = layers.iter().map(|l| descriptor(l)).collect();
    serde_json::to_vec(
        &json!({ "schemaVersion": 2, "config": descriptor(config), "layers": layers }),
    )
    .expect("json")
}

fn index(manifests: &[&[u8]]) -> Vec<u8> {
    let children: Vec<_> = manifests.iter().map(|m| descriptor(m)).collect();
    serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": children })).expect("json")
}

/// Records `site`/`repo` tag `tag` -> `doc`, and its digest alias, as the
/// registry does.
async fn tag(cache: &Cache, repo: &str, tag: &str, doc: &[u8]) {
    let entry = RefEntry {
        digest: Digest::of(doc).to_string(),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: doc.len() as u64,
        fetched_at: 1,
    };
    for key in [
        format!("manifests/{tag}"),
        format!("manifests/{}", entry.digest),
    ] {
        cache
            .put_ref("reg.test", repo, &key, entry.clone())
            .await
            .expect("put_ref");
    }
}

fn on_disk(dir: &Path, content: &[u8]) -> bool {
    dir.join("blobs/sha256")
        .join(Digest::of(content).hex())
        .exists()
}

/// Two images (`app:v1`, an index of two platforms; `tool:v1`, one
/// manifest) sharing a base layer.
struct Images {
    base: Vec<u8>,
    app_layer: Vec<u8>,
    app_arm_layer: Vec<u8>,
    app_config: Vec<u8>,
    app_amd: Vec<u8>,
    app_arm: Vec<u8>,
    app_index: Vec<u8>,
    tool_config: Vec<u8>,
    tool: Vec<u8>,
}

impl Images {
    fn new() -> Self {
        let base = data(30_000, 1);
        let app_layer = data(20_000, 2);
        let app_arm_layer = data(20_000, 3);
        let app_config = b"{\"app\":1}".to_vec();
        let tool_config = b"{\"tool\":1}".to_vec();
        let app_amd = manifest(&app_config, &[&base, &app_layer]);
        let app_arm = manifest(&app_config, &[&base, &app_arm_layer]);
        let app_index = index(&[&app_amd, &app_arm]);
        let tool = manifest(&tool_config, &[&base]);
        Self {
            base,
            app_layer,
            app_arm_layer,
            app_config,
            app_amd,
            app_arm,
            app_index,
            tool_config,
            tool,
        }
    }

    fn all(&self) -> [&[u8]; 9] {
        [
            &self.base,
            &self.app_layer,
            &self.app_arm_layer,
            &self.app_config,
            &self.app_amd,
            &self.app_arm,
            &self.app_index,
            &self.tool_config,
            &self.tool,
        ]
    }

    async fn cache_all(&self, cache: &Cache) {
        for content in self.all() {
            fill(cache, content).await;
        }
        tag(cache, "app", "v1", &self.app_index).await;
        tag(cache, "tool", "v1", &self.tool).await;
    }
}

#[tokio::test]
async fn a_walk_names_every_platform_and_says_what_is_missing() {
    let dir = tempdir();
    let cache = open(dir.path(), MAX).await;
    let img = Images::new();
    for content in img.all() {
        if content != img.app_arm_layer.as_slice() {
            fill(&cache, content).await;
        }
    }
    let walk = cache.walk(Digest::of(&img.app_index)).await.expect("walk");
    assert_eq!(walk.held[0], Digest::of(&img.app_index), "root first");
    assert_eq!(walk.manifests.len(), 3, "{walk:?}");
    // index, two manifests, config, base, the amd64 layer; each once.
    assert_eq!(walk.held.len(), 6, "{walk:?}");
    assert_eq!(
        walk.missing,
        vec![format!("blob {}", Digest::of(&img.app_arm_layer))]
    );
    assert!(!walk.complete());

    let unknown = Digest::of(b"never cached");
    let walk = cache.walk(unknown).await.expect("walk");
    assert!(walk.held.is_empty());
    assert_eq!(walk.missing, vec![format!("manifest {unknown}")]);
    cache.close().await.expect("close");
}

#[tokio::test]
async fn usage_counts_a_shared_blob_in_each_repository_and_once_in_the_total() {
    let dir = tempdir();
    let cache = open(dir.path(), MAX).await;
    let img = Images::new();
    img.cache_all(&cache).await;
    let loose = data(1000, 9);
    fill(&cache, &loose).await;
    cache
        .pin(
            "reg.test/tool:v1",
            &[Digest::of(&img.tool), Digest::of(&img.base)],
        )
        .await
        .expect("pin");

    let naming = cache.naming().await.expect("naming");
    let owners_of_base: Vec<String> = naming
        .iter()
        .filter(|n| n.digests.contains(&Digest::of(&img.base)))
        .map(|n| n.owner.label())
        .collect();
    assert!(
        owners_of_base.contains(&"reg.test/app:v1".to_owned()),
        "{owners_of_base:?}"
    );
    assert!(
        owners_of_base.contains(&"reg.test/tool:v1".to_owned()),
        "{owners_of_base:?}"
    );
    assert!(
        owners_of_base.contains(&"pin reg.test/tool:v1".to_owned()),
        "{owners_of_base:?}"
    );

    let u = usage(&naming, &cache.blob_list());
    let size = |c: &[&[u8]]| c.iter().map(|b| b.len() as u64).sum::<u64>();
    let app = size(&[
        &img.base,
        &img.app_layer,
        &img.app_arm_layer,
        &img.app_config,
        &img.app_amd,
        &img.app_arm,
        &img.app_index,
    ]);
    let tool = size(&[&img.base, &img.tool_config, &img.tool]);
    assert_eq!(u.sites.len(), 1);
    let site = &u.sites[0];
    assert_eq!(site.site, "reg.test");
    let repos: Vec<(&str, u64, usize)> = site
        .repositories
        .iter()
        .map(|r| (r.repository.as_str(), r.total.bytes, r.total.blobs))
        .collect();
    assert_eq!(repos, vec![("app", app, 7), ("tool", tool, 3)]);
    // The base once.
    assert_eq!(site.total.bytes, app + tool - img.base.len() as u64);
    assert_eq!(u.total.bytes, site.total.bytes + loose.len() as u64);
    assert_eq!(u.total.blobs, 10);
    assert_eq!(u.unreferenced.bytes, loose.len() as u64);
    assert_eq!(u.pinned.bytes, size(&[&img.tool, &img.base]));
    cache.close().await.expect("close");
}

#[tokio::test]
async fn rm_deletes_only_what_nothing_else_names_and_a_reader_reads_on() {
    let dir = tempdir();
    let cache = open(dir.path(), MAX).await;
    let img = Images::new();
    img.cache_all(&cache).await;
    // A file site's object names the amd64 layer; a pin the arm64 one.
    cache
        .put_object(
            "files.test",
            "/layer.tar",
            ObjectEntry {
                digest: Digest::of(&img.app_layer).to_string(),
                size: img.app_layer.len() as u64,
                ..ObjectEntry::default()
            },
        )
        .await
        .expect("object");
    cache
        .pin("keep", &[Digest::of(&img.app_arm_layer)])
        .await
        .expect("pin");
    // The app's own pin, as seed or `cache pin` name it.
    cache
        .pin("reg.test/app:v1", &[Digest::of(&img.app_index)])
        .await
        .expect("pin");
    // A device is downloading the app's config when it is removed.
    let reading = cache
        .get(&Digest::of(&img.app_config))
        .await
        .expect("get")
        .expect("held");

    let report = cache
        .remove_reference("reg.test", "app", "manifests/v1", "reg.test/app:v1")
        .await
        .expect("rm")
        .expect("something removed");
    assert!(report.unpinned);
    assert_eq!(
        report.references,
        vec![
            "reg.test/app:v1".to_owned(),
            format!("reg.test/app@{}", Digest::of(&img.app_index)),
        ]
    );
    // The index, its two manifests and the config go; the base (tool
    // names it), the amd64 layer (an object) and the arm64 one (a pin)
    // stay.
    assert_eq!(report.removed_blobs, 4, "{report:?}");
    assert_eq!(report.kept_blobs, 3, "{report:?}");
    for gone in [&img.app_index, &img.app_amd, &img.app_arm, &img.app_config] {
        assert!(!on_disk(dir.path(), gone));
        assert_eq!(cache.held_size(&Digest::of(gone)), None);
    }
    for kept in [&img.base, &img.app_layer, &img.app_arm_layer, &img.tool] {
        assert!(on_disk(dir.path(), kept));
    }
    assert_eq!(read_all(reading.stream(None)).await, img.app_config);
    let refs = cache.list_refs().await.expect("refs");
    assert!(
        refs.iter().all(|(_, repo, _, _)| repo == "tool"),
        "{refs:?}"
    );
    assert!(cache.list_pins().iter().all(|(n, _)| n == "keep"));

    // Nothing left under that name.
    assert_eq!(
        cache
            .remove_reference("reg.test", "app", "manifests/v1", "reg.test/app:v1")
            .await
            .expect("rm again"),
        None
    );
    // The deletions reached the index: a reopened cache agrees.
    cache.close().await.expect("close");
    let cache = open(dir.path(), MAX).await;
    assert_eq!(cache.held_size(&Digest::of(&img.app_index)), None);
    assert!(cache.held_size(&Digest::of(&img.base)).is_some());
    cache.close().await.expect("close");
}

#[tokio::test]
async fn a_tag_removed_keeps_what_another_tag_of_the_same_content_names() {
    let dir = tempdir();
    let cache = open(dir.path(), MAX).await;
    let img = Images::new();
    img.cache_all(&cache).await;
    tag(&cache, "tool", "latest", &img.tool).await;
    let report = cache
        .remove_reference("reg.test", "tool", "manifests/v1", "reg.test/tool:v1")
        .await
        .expect("rm")
        .expect("removed");
    assert_eq!(report.references, vec!["reg.test/tool:v1".to_owned()]);
    assert_eq!(report.removed_blobs, 0);
    assert!(on_disk(dir.path(), &img.tool));
    let alias = format!("manifests/{}", Digest::of(&img.tool));
    assert!(
        cache
            .get_ref("reg.test", "tool", &alias)
            .await
            .expect("ref")
            .is_some()
    );
    cache.close().await.expect("close");
}

#[tokio::test]
async fn verify_quarantines_a_damaged_blob_and_it_can_be_filled_again() {
    let dir = tempdir();
    let cache = open(dir.path(), MAX).await;
    let good = data(300_000, 4);
    let rotten = data(300_000, 5);
    fill(&cache, &good).await;
    fill(&cache, &rotten).await;
    let path = dir
        .path()
        .join("blobs/sha256")
        .join(Digest::of(&rotten).hex());
    // Rot in place: same size, one byte flipped.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[150_000] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");

    let steps = std::sync::Mutex::new(Vec::new());
    let report = cache
        .verify(&|s| steps.lock().expect("steps").push(s))
        .await
        .expect("verify");
    assert_eq!(report.checked, 2);
    assert_eq!(report.bytes, 600_000);
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    let q = &report.quarantined[0];
    assert_eq!(q.expected, Digest::of(&rotten));
    assert_eq!(q.actual, Digest::of(&bytes));
    assert_eq!((q.expected_size, q.actual_size), (300_000, 300_000));
    let moved = q.path.clone().expect("moved");
    assert_eq!(
        moved,
        cache.quarantine_dir().join(Digest::of(&rotten).hex())
    );
    assert_eq!(std::fs::read(&moved).expect("quarantined file"), bytes);
    assert!(!path.exists());
    let steps = steps.into_inner().expect("steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps.iter().filter(|s| !s.ok).count(), 1);
    assert_eq!(steps[1].done_bytes, steps[1].total_bytes);

    assert!(
        cache
            .get(&Digest::of(&rotten))
            .await
            .expect("get")
            .is_none()
    );
    assert!(cache.get(&Digest::of(&good)).await.expect("get").is_some());
    // A clean second run.
    let again = cache.verify(&|_| {}).await.expect("verify");
    assert_eq!((again.checked, again.quarantined.len()), (1, 0));
    // Filled again (a device asked), and damaged again: the first
    // quarantined copy stays.
    fill(&cache, &rotten).await;
    std::fs::write(&path, &bytes).expect("write");
    let third = cache.verify(&|_| {}).await.expect("verify");
    let second_copy = third.quarantined[0].path.clone().expect("moved");
    assert_ne!(second_copy, moved);
    assert!(moved.exists() && second_copy.exists());
    cache.close().await.expect("close");
    // Gone from the index too.
    let cache = open(dir.path(), MAX).await;
    assert_eq!(cache.held_size(&Digest::of(&rotten)), None);
    cache.close().await.expect("close");
}

#[tokio::test]
async fn a_fresh_copy_under_the_name_is_not_quarantined() {
    let dir = tempdir();
    let cache = open(dir.path(), MAX).await;
    let content = data(1000, 6);
    fill(&cache, &content).await;
    let digest = Digest::of(&content);
    {
        let mut state = cache.inner.state();
        state.remove_blob(&digest);
        state.evicting.insert(digest);
    }
    let victim = Victim {
        digest,
        size: 1000,
        // Not the file's inode: as if hashed before an evict and refill.
        to: Disposal::Quarantine {
            dir: cache.quarantine_dir(),
            inode: u64::MAX,
        },
    };
    let outcome = dispose(&cache.inner, vec![victim], Vec::new())
        .await
        .expect("dispose");
    assert_eq!(outcome, vec![Disposed::Kept]);
    assert_eq!(cache.held_size(&digest), Some(1000));
    assert!(cache.get(&digest).await.expect("get").is_some());
    assert!(!cache.quarantine_dir().exists());
    cache.close().await.expect("close");
}

#[test]
fn labels() {
    let r = |key: &str| Owner::Ref {
        site: "reg.test".into(),
        repo: "a/b".into(),
        key: key.into(),
    };
    assert_eq!(r("manifests/v1").label(), "reg.test/a/b:v1");
    let d = format!("sha256:{}", "e".repeat(64));
    assert_eq!(
        r(&format!("manifests/{d}")).label(),
        format!("reg.test/a/b@{d}")
    );
    assert!(r(&format!("manifests/{d}")).is_digest_alias());
    assert!(!r("manifests/v1").is_digest_alias());
    assert_eq!(r("tags/list").label(), "reg.test/a/b tags/list");
    let o = Owner::Object {
        site: "files.test".into(),
        key: "/x/y.tar".into(),
    };
    assert_eq!(o.label(), "files.test/x/y.tar");
}
