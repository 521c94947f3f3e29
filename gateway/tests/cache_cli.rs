//! `gateway cache ls|pin|unpin|rm|verify|du` with no daemon running (on the
//! cache directly): exit codes and errors that say what is wrong. The
//! cache is made with the library, as the daemon would have left it.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::Path, process::Command};

use gateway::cache::{Cache, Digest, Fill, RefEntry};
use serde_json::{Value, json};

struct Setup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                "devices:\n  interfaces: [dev0]\nmanager:\n  name: wfm.site.example\n  addresses: [\"10.77.2.2:443\"]\nstate_dir: {}\ncache:\n  dir: {}\n",
                dir.path().join("state").display(),
                self::cache_dir(dir.path()).display(),
            ),
        )
        .unwrap();
        Self { dir, config }
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        cache_dir(self.dir.path())
    }

    /// `gateway cache ARGS`: exit code, stdout, stderr.
    fn cache(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("cache")
            .arg(args[0])
            .arg("--config")
            .arg(&self.config)
            .args(&args[1..])
            .env("GATEWAY_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.cache(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    }
}

fn cache_dir(root: &Path) -> std::path::PathBuf {
    root.join("cache")
}

/// An image `reg.test/app:v1`: a manifest naming a config and a layer, the
/// layer not cached unless `with_layer`.
fn make_cache(dir: &Path, with_layer: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let config = b"{\"architecture\":\"amd64\"}".to_vec();
    let layer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"digest": Digest::of(&layer).to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = Cache::open(dir, 1 << 30).await.unwrap();
        let mut contents = vec![&config, &manifest];
        if with_layer {
            contents.push(&layer);
        }
        for content in contents {
            let digest = Digest::of(content);
            let Fill::Leader(mut w) = cache
                .begin_fill(&digest, Some(content.len() as u64))
                .await
                .unwrap()
            else {
                panic!("not a leader");
            };
            w.write(content).await.unwrap();
            w.finish().await.unwrap();
        }
        let entry = RefEntry {
            digest: Digest::of(&manifest).to_string(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: manifest.len() as u64,
            fetched_at: 1,
        };
        cache
            .put_ref("reg.test", "app", "manifests/v1", entry)
            .await
            .unwrap();
        cache.close().await.unwrap();
    });
    (manifest, config, layer)
}

#[test]
fn without_a_cache_every_command_but_seed_says_so() {
    let s = Setup::new();
    for args in [
        &["ls"][..],
        &["du"],
        &["verify"],
        &["rm", "reg.test/app:v1"],
        &["pin", "reg.test/app:v1"],
        &["unpin", "reg.test/app:v1"],
    ] {
        let (code, _, err) = s.cache(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("no cache in {}", s.cache_dir().display())),
            "{args:?}: {err}"
        );
    }
    // Nothing was created where the config points.
    assert!(!s.cache_dir().exists());
}

#[test]
fn pin_names_what_is_missing_rm_and_unpin_name_what_is_unknown() {
    let s = Setup::new();
    let (_, _, layer) = make_cache(&s.cache_dir(), false);

    let (code, _, err) = s.cache(&["pin", "reg.test/app:v1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("reg.test/app:v1 is not all cached")
            && err.contains(&format!("blob {}", Digest::of(&layer)))
            && err.contains("gateway cache seed reg.test/app:v1"),
        "{err}"
    );
    let (code, _, err) = s.cache(&["pin", "reg.test/other:v1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("nothing is cached for reg.test/other:v1"),
        "{err}"
    );
    let (code, _, err) = s.cache(&["rm", "reg.test/other:v1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("nothing is cached under reg.test/other:v1"),
        "{err}"
    );
    let (code, _, err) = s.cache(&["unpin", "nope"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no pin is named `nope`"), "{err}");
    let (code, _, err) = s.cache(&["rm", "no-host"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("has no host"), "{err}");
}

#[test]
fn ls_pin_du_verify_rm_on_the_cache_directly() {
    let s = Setup::new();
    let (manifest, config, layer) = make_cache(&s.cache_dir(), true);
    let total = (manifest.len() + config.len() + layer.len()) as u64;

    let (code, out, err) = s.cache(&["pin", "reg.test/app:v1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("pinned reg.test/app:v1: 3 blobs, {total} bytes")),
        "{out}"
    );
    // Unpinned by the reference as typed (host case, the pin's name is
    // lowercase), then pinned again.
    let (code, out, err) = s.cache(&["unpin", "Reg.Test/app:v1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("unpinned reg.test/app:v1"), "{out}");
    assert_eq!(s.json(&["ls", "--json"])["pins"], json!([]));
    let (code, _, err) = s.cache(&["pin", "reg.test/app:v1"]);
    assert_eq!(code, Some(0), "{err}");

    let ls = s.json(&["ls", "--json"]);
    let blobs = ls["blob_list"].as_array().unwrap();
    assert_eq!(blobs.len(), 3, "{ls}");
    let layer_entry = blobs
        .iter()
        .find(|b| b["digest"] == Digest::of(&layer).to_string())
        .unwrap();
    assert_eq!(layer_entry["size"], layer.len());
    assert_eq!(layer_entry["pinned_by"], json!(["reg.test/app:v1"]));
    assert_eq!(
        layer_entry["referenced_by"],
        json!(["reg.test/app:v1", "pin reg.test/app:v1"])
    );
    assert!(layer_entry["last_used"].as_str().unwrap().ends_with('Z'));
    let (_, text, _) = s.cache(&["ls"]);
    assert!(text.starts_with("3 blobs, "), "{text}");
    assert!(
        text.contains(&format!("blob {} ", Digest::of(&layer))),
        "{text}"
    );

    let du = s.json(&["du", "--json"]);
    assert_eq!(du["total"]["bytes"], total, "{du}");
    assert_eq!(du["pinned"]["bytes"], total, "{du}");
    assert_eq!(du["sites"][0]["repositories"][0]["repository"], "app");
    assert_eq!(du["sites"][0]["repositories"][0]["total"]["bytes"], total);
    let (_, text, _) = s.cache(&["du"]);
    assert!(text.contains("counts in each"), "{text}");

    let (code, out, err) = s.cache(&["verify"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("verified 3 blobs"), "{out}");
    // Rot in the layer: same size, one byte changed.
    let path = s
        .cache_dir()
        .join("blobs/sha256")
        .join(Digest::of(&layer).hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, err) = s.cache(&["verify"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.contains(&format!(
            "damaged {}: content hashes to {}",
            Digest::of(&layer),
            Digest::of(&bytes)
        )),
        "{out}"
    );
    let quarantined = s
        .cache_dir()
        .join("quarantine")
        .join(Digest::of(&layer).hex());
    assert_eq!(std::fs::read(&quarantined).unwrap(), bytes);
    assert!(err.contains("moved to"), "{err}");

    let (code, out, err) = s.cache(&["rm", "reg.test/app:v1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("forgot reg.test/app:v1"), "{out}");
    assert!(out.contains("unpinned reg.test/app:v1"), "{out}");
    assert!(out.contains("removed 2 blobs"), "{out}");
    let ls = s.json(&["ls", "--json"]);
    assert_eq!(ls["blobs"], 0, "{ls}");
    assert_eq!(ls["references"], json!([]), "{ls}");
    assert_eq!(ls["pins"], json!([]), "{ls}");
}
