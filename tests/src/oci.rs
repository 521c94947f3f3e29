//! OCI image layouts generated in Rust: layers of chosen sizes with content
//! that is random but fixed by a seed, image configs, manifests, multi-platform
//! indexes and Helm charts as OCI artifacts.
//!
//! A [`Layout`] is an OCI image layout on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), so a generated image can be compared byte for byte
//! with what a client pulled, and pushed with [`crate::registry::Registry::push`].
//! Every blob is written once, hashed while it is written; JSON documents are
//! serialized once and their bytes are what the digest covers.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use flate2::{Compression as GzLevel, write::GzEncoder};
use serde_json::{Value, json};

/// Helm charts, Compose packages and referrers (signatures, SBOMs).
pub mod artifact;
mod pulled;
mod rng;
mod tar_layer;

pub use pulled::PulledLayout;
pub use rng::{Rng, seeded_bytes};
use tar_layer::{HashingWriter, file_header, write_tar};

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
pub const MT_HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// What `Accept` asks for when fetching a manifest of any kind.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// The annotation that names a manifest in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor: what a manifest or index says about a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    /// The digest's hex part.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }

    /// Parses a descriptor (`mediaType`, `digest`, `size`) from JSON.
    pub fn from_json(v: &Value) -> Result<Self> {
        Ok(Self {
            media_type: v["mediaType"]
                .as_str()
                .with_context(|| format!("descriptor without mediaType: {v}"))?
                .to_owned(),
            digest: v["digest"]
                .as_str()
                .with_context(|| format!("descriptor without digest: {v}"))?
                .to_owned(),
            size: v["size"]
                .as_u64()
                .with_context(|| format!("descriptor without size: {v}"))?,
        })
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    )
}

/// `sha256:<hex>` of a file's content.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(ctx.finish())))
}

/// How a layer's tar is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `…layer.v1.tar`: cheap for big layers (random data does not compress).
    None,
    /// `…layer.v1.tar+gzip` (gzip in a debug build runs at a few MB/s:
    /// keep such layers to a few MiB).
    Gzip,
}

/// A layer to generate: a tar holding one file of `size` seeded random bytes.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec {
    pub size: u64,
    pub seed: u64,
    pub compression: Compression,
}

impl LayerSpec {
    pub fn tar(size: u64, seed: u64) -> Self {
        Self {
            size,
            seed,
            compression: Compression::None,
        }
    }

    pub fn gzip(size: u64, seed: u64) -> Self {
        Self {
            size,
            seed,
            compression: Compression::Gzip,
        }
    }
}

/// `os`/`architecture` of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub architecture: &'static str,
}

pub const LINUX_AMD64: Platform = Platform {
    os: "linux",
    architecture: "amd64",
};
pub const LINUX_ARM64: Platform = Platform {
    os: "linux",
    architecture: "arm64",
};

/// A generated single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// sha256 of each layer's uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    pub platform: Platform,
}

impl Image {
    /// Every blob digest: config first, then layers.
    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(self.config.digest.clone())
            .chain(self.layers.iter().map(|l| l.digest.clone()))
            .collect()
    }
}

/// A generated multi-platform index.
#[derive(Clone, Debug)]
pub struct ImageIndex {
    pub index: Descriptor,
    pub images: Vec<Image>,
}

impl ImageIndex {
    pub fn image(&self, platform: Platform) -> Option<&Image> {
        self.images.iter().find(|i| i.platform == platform)
    }
}

/// A generated Helm chart stored as an OCI artifact.
#[derive(Clone, Debug)]
pub struct HelmChart {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub chart: Descriptor,
    pub name: String,
    pub version: String,
}

/// An OCI image layout directory.
pub struct Layout {
    dir: PathBuf,
    /// `index.json` entries: each tagged manifest and its name.
    refs: Vec<(Descriptor, String)>,
}

impl Layout {
    /// Creates an empty layout in `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let layout = Self {
            dir: dir.to_owned(),
            refs: Vec::new(),
        };
        layout.write_index_json()?;
        Ok(layout)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.dir, digest)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Stores `bytes` as a blob and returns its descriptor.
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = sha256_digest(bytes);
        let path = self.blob_path(&digest);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
        })
    }

    /// Stores a JSON document (compact, keys sorted) as a blob.
    pub fn write_json(&self, media_type: &str, doc: &Value) -> Result<Descriptor> {
        let bytes = serde_json::to_vec(doc)?;
        self.write_blob(media_type, &bytes)
    }

    /// Generates a layer: a tar (optionally gzipped) holding
    /// `data/layer-<seed>.bin` with `spec.size` seeded bytes. Returns the
    /// layer's descriptor and its diff id.
    pub fn layer(&self, spec: LayerSpec) -> Result<(Descriptor, String)> {
        let tmp = self
            .dir
            .join(format!("blobs/.layer-{}-{}.tmp", spec.seed, spec.size));
        let file = BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        let stored = HashingWriter::new(file);
        let (stored, diff_id, media_type) = match spec.compression {
            Compression::None => {
                let (stored, diff_id) = write_tar(stored, spec)?;
                (stored, diff_id, MT_LAYER_TAR)
            }
            Compression::Gzip => {
                let gz = GzEncoder::new(stored, GzLevel::fast());
                let (gz, diff_id) = write_tar(gz, spec)?;
                (gz.finish()?, diff_id, MT_LAYER_GZIP)
            }
        };
        let (mut file, digest, size) = stored.finish();
        file.flush()?;
        drop(file);
        std::fs::rename(&tmp, self.blob_path(&digest))?;
        Ok((
            Descriptor {
                media_type: media_type.to_owned(),
                digest,
                size,
            },
            diff_id,
        ))
    }

    /// Generates a runnable-looking image for `platform` with `layers`;
    /// `label` ends up in the config (so two images of the same layers
    /// still differ).
    pub fn image(&self, platform: Platform, layers: &[LayerSpec], label: &str) -> Result<Image> {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for spec in layers {
            let (d, id) = self.layer(*spec)?;
            descs.push(d);
            diff_ids.push(id);
        }
        let config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {
                "Env": ["PATH=/usr/bin:/bin"],
                "Cmd": ["/bin/true"],
                "Labels": {"test.margo.label": label},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|l| json!({
                "created_by": format!("generated layer seed {} size {}", l.seed, l.size),
            })).collect::<Vec<_>>(),
        });
        let config = self.write_json(MT_CONFIG, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config.to_json(),
            "layers": descs.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let manifest = self.write_json(MT_MANIFEST, &manifest)?;
        Ok(Image {
            manifest,
            config,
            layers: descs,
            diff_ids,
            platform,
        })
    }

    /// An index over `images` (each entry carries its platform).
    pub fn index(&self, images: &[Image]) -> Result<ImageIndex> {
        let manifests: Vec<Value> = images
            .iter()
            .map(|img| {
                let mut d = img.manifest.to_json();
                d["platform"] =
                    json!({"os": img.platform.os, "architecture": img.platform.architecture});
                d
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": manifests,
        });
        Ok(ImageIndex {
            index: self.write_json(MT_INDEX, &index)?,
            images: images.to_vec(),
        })
    }

    /// A Helm chart `name`-`version` as Helm 3 pushes it: config
    /// `application/vnd.cncf.helm.config.v1+json`, one layer
    /// `application/vnd.cncf.helm.chart.content.v1.tar+gzip`.
    pub fn helm_chart(&self, name: &str, version: &str, seed: u64) -> Result<HelmChart> {
        let chart_yaml = format!(
            "apiVersion: v2\nname: {name}\nversion: {version}\ndescription: generated test chart\ntype: application\n"
        );
        let values = format!(
            "seed: {seed}\npayload: {}\n",
            hex::encode(seeded_bytes(seed, 512))
        );
        let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  seed: {{ .Values.seed | quote }}\n";
        let mut tgz = GzEncoder::new(Vec::new(), GzLevel::default());
        {
            let mut tar = tar::Builder::new(&mut tgz);
            for (path, body) in [
                (format!("{name}/Chart.yaml"), chart_yaml.as_bytes()),
                (format!("{name}/values.yaml"), values.as_bytes()),
                (
                    format!("{name}/templates/configmap.yaml"),
                    template.as_bytes(),
                ),
            ] {
                tar.append_data(&mut file_header(body.len() as u64), path, body)?;
            }
            tar.finish()?;
        }
        let chart = self.write_blob(MT_HELM_CHART, &tgz.finish()?)?;
        let config = json!({
            "apiVersion": "v2",
            "name": name,
            "version": version,
            "description": "generated test chart",
            "type": "application",
        });
        let config = self.write_json(MT_HELM_CONFIG, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config.to_json(),
            "layers": [chart.to_json()],
            "annotations": {
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": version,
            },
        });
        Ok(HelmChart {
            manifest: self.write_json(MT_MANIFEST, &manifest)?,
            config,
            chart,
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }

    /// Names `desc` `tag` in `index.json` (what `oci:<dir>:<tag>` finds).
    pub fn tag(&mut self, desc: &Descriptor, tag: &str) -> Result<()> {
        self.refs.retain(|(_, t)| t != tag);
        self.refs.push((desc.clone(), tag.to_owned()));
        self.write_index_json()
    }

    fn write_index_json(&self) -> Result<()> {
        let manifests: Vec<Value> = self
            .refs
            .iter()
            .map(|(d, tag)| {
                let mut v = d.to_json();
                v["annotations"] = json!({ REF_NAME: tag });
                v
            })
            .collect();
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }

    /// The manifest JSON of `desc` (a manifest or an index in this layout).
    pub fn manifest_json(&self, desc: &Descriptor) -> Result<Value> {
        serde_json::from_slice(&self.read_blob(&desc.digest)?)
            .with_context(|| format!("parsing manifest {}", desc.digest))
    }
}

/// `<layout>/blobs/sha256/<hex>` for `digest`.
pub fn blob_path(layout_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    layout_dir.join("blobs/sha256").join(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_reproducible_and_hashed_right() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let a = Layout::create(&tmp.path().join("a"))?;
        let b = Layout::create(&tmp.path().join("b"))?;
        for spec in [LayerSpec::tar(100_000, 3), LayerSpec::gzip(100_000, 3)] {
            let (da, ida) = a.layer(spec)?;
            let (db, idb) = b.layer(spec)?;
            assert_eq!(da, db);
            assert_eq!(ida, idb);
            assert_eq!(sha256_file(&a.blob_path(&da.digest))?, da.digest);
            assert_eq!(std::fs::metadata(a.blob_path(&da.digest))?.len(), da.size);
        }
        // The uncompressed layer's digest is its diff id.
        let (d, id) = a.layer(LayerSpec::tar(10, 1))?;
        assert_eq!(d.digest, id);
        Ok(())
    }

    #[test]
    fn image_index_and_chart_reference_their_blobs() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let mut l = Layout::create(tmp.path())?;
        let amd = l.image(LINUX_AMD64, &[LayerSpec::gzip(1000, 1)], "a")?;
        let arm = l.image(LINUX_ARM64, &[LayerSpec::gzip(1000, 2)], "b")?;
        let idx = l.index(&[amd.clone(), arm])?;
        let doc = l.manifest_json(&idx.index)?;
        assert_eq!(doc["manifests"][0]["digest"], amd.manifest.digest);
        assert_eq!(doc["manifests"][1]["platform"]["architecture"], "arm64");
        let chart = l.helm_chart("demo", "0.1.0", 9)?;
        let m = l.manifest_json(&chart.manifest)?;
        assert_eq!(m["config"]["mediaType"], MT_HELM_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], MT_HELM_CHART);
        l.tag(&amd.manifest, "v1")?;
        let pulled = PulledLayout::new(tmp.path());
        assert_eq!(pulled.tagged("v1")?, amd.manifest);
        pulled.check_image(&amd)?;
        assert!(pulled.verify_blobs()? >= 9);
        Ok(())
    }
}
