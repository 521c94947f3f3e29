//! The artifacts a Margo device pulls besides images: a Helm chart as OCI
//! (as Helm 3 pushes it), a Compose package (one tar+gzip layer holding
//! `compose.yaml`), and artifacts that refer to an image through `subject`
//! (a Notary signature, an SBOM), with the referrers tag schema's index
//! that lists them for a registry without the Referrers API.
//!
//! Everything is written into a [`Layout`] like the images, so it can be
//! pushed with [`crate::registry::Registry::push`] and compared byte for
//! byte with what a client pulled. Tar entries have fixed owners, modes
//! and times, so the same inputs give the same digests on every run.

use std::io::Read as _;

use anyhow::{Context as _, Result, bail};
use flate2::{Compression as GzLevel, read::GzDecoder, write::GzEncoder};
use serde_json::{Value, json};

use super::{
    Descriptor, Image, Layout, MT_HELM_CHART, MT_HELM_CONFIG, MT_INDEX, MT_LAYER_GZIP, MT_MANIFEST,
    tar_layer::file_header,
};

/// The OCI empty descriptor's media type: an artifact without a config
/// points at the two bytes `{}` with it (image-spec 1.1).
pub const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's bytes.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// A Notary v2 signature (`notation sign`): its `artifactType`.
pub const MT_NOTARY_SIGNATURE: &str = "application/vnd.cncf.notary.signature";
/// The JWS envelope a Notary signature's one layer holds.
pub const MT_JOSE: &str = "application/jose+json";
/// An SPDX SBOM, the other common referrer: what a filter must leave out.
pub const MT_SPDX: &str = "application/spdx+json";
/// The Compose package's `artifactType`. The Margo specification names
/// none for Compose packages in a registry (only their shape: one
/// tar+gzip layer holding `compose.yaml`), and image-spec 1.1 wants one
/// when the config is empty; nothing in the gateway depends on it.
pub const MT_COMPOSE_ARTIFACT: &str = "application/vnd.margo.compose.package.v1";
/// The annotation the referrers tag schema's entries and signatures carry.
pub const ANN_CREATED: &str = "org.opencontainers.image.created";
pub const ANN_TITLE: &str = "org.opencontainers.image.title";

/// A Helm chart as OCI: config `application/vnd.cncf.helm.config.v1+json`
/// (Chart.yaml as JSON), one layer, the chart's `.tgz`.
#[derive(Clone, Debug)]
pub struct ChartArtifact {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub chart: Descriptor,
    pub name: String,
    pub version: String,
    /// The files in the `.tgz` (path, content), in order.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A Compose package: empty config, one tar+gzip layer holding
/// `compose.yaml` (and whatever it refers to).
#[derive(Clone, Debug)]
pub struct ComposePackage {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layer: Descriptor,
    pub files: Vec<(String, Vec<u8>)>,
}

/// An artifact whose `subject` is another manifest (a signature, an SBOM).
#[derive(Clone, Debug)]
pub struct Referrer {
    pub manifest: Descriptor,
    pub artifact_type: String,
    pub config: Descriptor,
    pub layer: Descriptor,
    /// The subject's descriptor.
    pub subject: Descriptor,
    pub annotations: Value,
}

impl Referrer {
    /// Its descriptor as a referrers list carries it: with `artifactType`
    /// and the manifest's annotations.
    pub fn listed(&self) -> Value {
        let mut d = self.manifest.to_json();
        d["artifactType"] = json!(self.artifact_type);
        d["annotations"] = self.annotations.clone();
        d
    }
}

/// A gzipped tar of `files` with fixed metadata.
pub fn tgz(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), GzLevel::default());
    {
        let mut tar = tar::Builder::new(&mut gz);
        for (path, body) in files {
            tar.append_data(&mut file_header(body.len() as u64), path, body.as_slice())
                .with_context(|| format!("adding {path} to a tgz"))?;
        }
        tar.finish()?;
    }
    Ok(gz.finish()?)
}

/// The regular files of a gzipped tar: (path, content), in order.
pub fn tgz_files(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut out = Vec::new();
    for entry in archive.entries().context("reading a tgz")? {
        let mut entry = entry.context("reading a tgz entry")?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut body = Vec::new();
        entry
            .read_to_end(&mut body)
            .with_context(|| format!("reading {path} from a tgz"))?;
        out.push((path, body));
    }
    Ok(out)
}

/// The content of `path` in a gzipped tar.
pub fn tgz_file(bytes: &[u8], path: &str) -> Result<Vec<u8>> {
    let files = tgz_files(bytes)?;
    match files.iter().find(|(p, _)| p == path) {
        Some((_, body)) => Ok(body.clone()),
        None => bail!(
            "no {path} in the tgz; it holds {:?}",
            files.iter().map(|(p, _)| p).collect::<Vec<_>>()
        ),
    }
}

/// `sha256-<hex>`: the referrers tag schema's tag for a subject.
pub fn referrers_tag(subject_digest: &str) -> String {
    subject_digest.replacen(':', "-", 1)
}

impl Layout {
    /// A Helm chart `name`-`version` as Helm 3 pushes it: the chart
    /// directory `<name>/` (Chart.yaml, values.yaml, templates/…) tarred
    /// and gzipped as the one layer, Chart.yaml's fields as the config.
    pub fn chart_artifact(&self, name: &str, version: &str) -> Result<ChartArtifact> {
        let chart_yaml = format!(
            "apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: \"{version}\"\ndescription: A Margo test chart\ntype: application\n"
        );
        let values = "replicaCount: 1\nimage:\n  repository: registry.example.test/app\n  tag: v1\nservice:\n  port: 8080\n";
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  replicas: {{ .Values.replicaCount }}\n  selector:\n    matchLabels:\n      app: {{ .Release.Name }}\n  template:\n    metadata:\n      labels:\n        app: {{ .Release.Name }}\n    spec:\n      containers:\n        - name: app\n          image: \"{{ .Values.image.repository }}:{{ .Values.image.tag }}\"\n          ports:\n            - containerPort: {{ .Values.service.port }}\n";
        let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  selector:\n    app: {{ .Release.Name }}\n  ports:\n    - port: {{ .Values.service.port }}\n";
        let files: Vec<(String, Vec<u8>)> = [
            ("Chart.yaml", chart_yaml.as_str()),
            ("values.yaml", values),
            ("templates/deployment.yaml", deployment),
            ("templates/service.yaml", service),
        ]
        .into_iter()
        .map(|(p, body)| (format!("{name}/{p}"), body.as_bytes().to_vec()))
        .collect();
        let chart = self.write_blob(MT_HELM_CHART, &tgz(&files)?)?;
        let config = self.write_json(
            MT_HELM_CONFIG,
            &json!({
                "apiVersion": "v2",
                "name": name,
                "version": version,
                "appVersion": version,
                "description": "A Margo test chart",
                "type": "application",
            }),
        )?;
        let manifest = self.write_json(
            MT_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": config.to_json(),
                "layers": [chart.to_json()],
                "annotations": {
                    ANN_TITLE: name,
                    "org.opencontainers.image.version": version,
                },
            }),
        )?;
        Ok(ChartArtifact {
            manifest,
            config,
            chart,
            name: name.to_owned(),
            version: version.to_owned(),
            files,
        })
    }

    /// A Compose package: `compose.yaml` running `image` (and an env file
    /// it names) in one tar+gzip layer, with the empty config.
    pub fn compose_package(&self, image: &str) -> Result<ComposePackage> {
        let compose = format!(
            "services:\n  app:\n    image: {image}\n    env_file: app.env\n    ports:\n      - \"8080:8080\"\n    restart: unless-stopped\n"
        );
        let files = vec![
            ("compose.yaml".to_owned(), compose.into_bytes()),
            (
                "app.env".to_owned(),
                b"GREETING=hello from margo\n".to_vec(),
            ),
        ];
        let layer = self.write_blob(MT_LAYER_GZIP, &tgz(&files)?)?;
        let config = self.write_blob(MT_EMPTY, EMPTY_CONFIG)?;
        let mut layer_json = layer.to_json();
        layer_json["annotations"] = json!({ ANN_TITLE: "compose.tar.gz" });
        let manifest = self.write_json(
            MT_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "artifactType": MT_COMPOSE_ARTIFACT,
                "config": config.to_json(),
                "layers": [layer_json],
            }),
        )?;
        Ok(ComposePackage {
            manifest,
            config,
            layer,
            files,
        })
    }

    /// A Notary signature of `image` as `notation sign` stores it in OCI
    /// 1.1 form: `artifactType` the signature type, the empty config, one
    /// `application/jose+json` layer, `subject` the image's manifest. The
    /// envelope is a fixed JWS-shaped payload naming the image's digest:
    /// nothing here verifies signatures, only that they are found.
    pub fn notary_signature(&self, image: &Image) -> Result<Referrer> {
        let payload = json!({
            "targetArtifact": image.manifest.to_json(),
        });
        let jws = json!({
            "payload": hex::encode(serde_json::to_vec(&payload)?),
            "protected": hex::encode(br#"{"alg":"PS256","cty":"application/vnd.cncf.notary.payload.v1+json"}"#),
            "header": {"x5c": []},
            "signature": hex::encode(super::seeded_bytes(image.manifest.size, 256)),
        });
        self.referrer(
            image,
            MT_NOTARY_SIGNATURE,
            MT_JOSE,
            &serde_json::to_vec(&jws)?,
            json!({
                "io.cncf.notary.x509chain.thumbprint#S256": "[\"0000000000000000000000000000000000000000000000000000000000000000\"]",
                ANN_CREATED: "2026-01-02T03:04:05Z",
            }),
        )
    }

    /// An SPDX SBOM of `image`, attached the same way.
    pub fn sbom(&self, image: &Image) -> Result<Referrer> {
        let doc = json!({
            "spdxVersion": "SPDX-2.3",
            "name": "app",
            "describes": image.manifest.digest,
        });
        self.referrer(
            image,
            MT_SPDX,
            MT_SPDX,
            &serde_json::to_vec(&doc)?,
            json!({ ANN_CREATED: "2026-01-02T03:04:06Z" }),
        )
    }

    fn referrer(
        &self,
        image: &Image,
        artifact_type: &str,
        layer_type: &str,
        layer_bytes: &[u8],
        annotations: Value,
    ) -> Result<Referrer> {
        let config = self.write_blob(MT_EMPTY, EMPTY_CONFIG)?;
        let layer = self.write_blob(layer_type, layer_bytes)?;
        let manifest = self.write_json(
            MT_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "artifactType": artifact_type,
                "config": config.to_json(),
                "layers": [layer.to_json()],
                "subject": image.manifest.to_json(),
                "annotations": annotations,
            }),
        )?;
        Ok(Referrer {
            manifest,
            artifact_type: artifact_type.to_owned(),
            config,
            layer,
            subject: image.manifest.clone(),
            annotations,
        })
    }

    /// The referrers tag schema's index for a subject: an image index whose
    /// `manifests` are the referrers' descriptors with their
    /// `artifactType` and annotations. Push it under [`referrers_tag`] of
    /// the subject's digest.
    pub fn referrers_index(&self, referrers: &[&Referrer]) -> Result<Descriptor> {
        let manifests: Vec<Value> = referrers.iter().map(|r| r.listed()).collect();
        self.write_json(
            MT_INDEX,
            &json!({
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": manifests,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{LINUX_AMD64, LayerSpec, sha256_digest};

    #[test]
    fn artifacts_have_the_shapes_clients_expect() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let l = Layout::create(tmp.path())?;

        let chart = l.chart_artifact("mychart", "0.3.1")?;
        let m = l.manifest_json(&chart.manifest)?;
        assert_eq!(m["config"]["mediaType"], MT_HELM_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], MT_HELM_CHART);
        let config: Value = serde_json::from_slice(&l.read_blob(&chart.config.digest)?)?;
        assert_eq!(config["name"], "mychart");
        assert_eq!(config["version"], "0.3.1");
        assert_eq!(config["apiVersion"], "v2");
        let tgz_bytes = l.read_blob(&chart.chart.digest)?;
        let names: Vec<String> = tgz_files(&tgz_bytes)?.into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            names,
            [
                "mychart/Chart.yaml",
                "mychart/values.yaml",
                "mychart/templates/deployment.yaml",
                "mychart/templates/service.yaml"
            ]
        );
        assert!(
            String::from_utf8(tgz_file(&tgz_bytes, "mychart/Chart.yaml")?)?
                .contains("name: mychart")
        );
        // Reproducible: the same chart, the same digests.
        let again =
            Layout::create(&tmp.path().join("again"))?.chart_artifact("mychart", "0.3.1")?;
        assert_eq!(again.manifest, chart.manifest);

        let compose = l.compose_package("registry.example.test/app:v1")?;
        let m = l.manifest_json(&compose.manifest)?;
        assert_eq!(m["artifactType"], MT_COMPOSE_ARTIFACT);
        assert_eq!(m["config"]["mediaType"], MT_EMPTY);
        assert_eq!(m["config"]["digest"], sha256_digest(b"{}"));
        assert_eq!(m["layers"].as_array().map(Vec::len), Some(1));
        assert_eq!(m["layers"][0]["mediaType"], MT_LAYER_GZIP);
        let yaml = tgz_file(&l.read_blob(&compose.layer.digest)?, "compose.yaml")?;
        assert!(String::from_utf8(yaml)?.contains("image: registry.example.test/app:v1"));

        let image = l.image(LINUX_AMD64, &[LayerSpec::gzip(1000, 5)], "signed")?;
        let sig = l.notary_signature(&image)?;
        let sbom = l.sbom(&image)?;
        let m = l.manifest_json(&sig.manifest)?;
        assert_eq!(m["artifactType"], MT_NOTARY_SIGNATURE);
        assert_eq!(m["subject"], image.manifest.to_json());
        assert_eq!(m["layers"][0]["mediaType"], MT_JOSE);
        let index = l.referrers_index(&[&sig, &sbom])?;
        let doc = l.manifest_json(&index)?;
        assert_eq!(doc["manifests"][0]["artifactType"], MT_NOTARY_SIGNATURE);
        assert_eq!(doc["manifests"][0]["digest"], sig.manifest.digest);
        assert_eq!(doc["manifests"][1]["artifactType"], MT_SPDX);
        assert_eq!(
            referrers_tag(&image.manifest.digest),
            format!("sha256-{}", image.manifest.hex())
        );
        Ok(())
    }
}
