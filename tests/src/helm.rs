//! Helm chart repositories for the tests, and a client that pulls from
//! one as `helm pull` does (Helm's CLI is not installable here).
//!
//! [`package`] makes a chart archive as `helm package` lays it out (a
//! gzipped tar of `<name>/Chart.yaml` and a template); [`index_yaml`]
//! writes the `index.yaml` listing charts with their URLs and digests.
//! [`HelmClient::pull`] does what Helm does with a repository URL: GET
//! `<repo>/index.yaml` with curl from the device namespace, parse it, take
//! the version's first URL, resolve it against the repository URL with a
//! trailing slash (Helm's `ResolveReferenceURL`), GET it, and check its
//! sha256 against the index's `digest`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use flate2::{Compression, write::GzEncoder};

use crate::{
    oci::sha256_digest,
    registry::curl::{CurlResponse, curl},
};

/// A chart archive for `name` at `version`: `Chart.yaml` and a ConfigMap
/// template, `note` in its data so that charts differ.
pub fn package(name: &str, version: &str, note: &str) -> Result<Vec<u8>> {
    let chart_yaml = format!(
        "apiVersion: v2\nname: {name}\nversion: {version}\ndescription: A test chart\ntype: application\n"
    );
    let template = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}-{name}\ndata:\n  note: {note:?}\n"
    );
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, body) in [
        (format!("{name}/Chart.yaml"), chart_yaml),
        (format!("{name}/templates/configmap.yaml"), template),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, &path, body.as_bytes())
            .with_context(|| format!("packaging {path}"))?;
    }
    let gz = tar.into_inner().context("finishing the chart's tar")?;
    gz.finish().context("finishing the chart's gzip")
}

/// One version in an index.
pub struct Entry<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub url: String,
    /// The sha256 (hex) of the archive; `None` writes no `digest`.
    pub digest: Option<String>,
}

/// The `index.yaml` of `entries`, as `helm repo index` writes it.
pub fn index_yaml(entries: &[Entry<'_>]) -> String {
    let mut names: Vec<&str> = entries.iter().map(|e| e.name).collect();
    names.dedup();
    let mut out = String::from("apiVersion: v1\nentries:\n");
    for name in names {
        out.push_str(&format!("  {name}:\n"));
        for e in entries.iter().filter(|e| e.name == name) {
            out.push_str(&format!(
                "  - apiVersion: v2\n    name: {name}\n    version: {}\n    created: \"2026-01-01T00:00:00Z\"\n",
                e.version
            ));
            if let Some(d) = &e.digest {
                out.push_str(&format!("    digest: {d}\n"));
            }
            out.push_str(&format!("    urls:\n    - {}\n", e.url));
        }
    }
    out.push_str("generated: \"2026-01-01T00:00:00Z\"\n");
    out
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256_digest(bytes)
        .trim_start_matches("sha256:")
        .to_owned()
}

/// A chart repository client in a namespace.
pub struct HelmClient {
    pub ns: String,
    /// Where curl writes its responses.
    pub scratch: PathBuf,
    /// The repository URL (`https://charts.example.test/stable`).
    pub repo: String,
    /// The CA devices trust (`--cacert`), for https.
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
}

/// A chart pulled and checked.
#[derive(Debug)]
pub struct Pulled {
    /// The URL it came from.
    pub url: String,
    pub bytes: Vec<u8>,
}

impl HelmClient {
    pub fn new(ns: &str, scratch: &Path, repo: &str, ca: Option<&Path>) -> Self {
        Self {
            ns: ns.to_owned(),
            scratch: scratch.to_owned(),
            repo: repo.trim_end_matches('/').to_owned(),
            ca: ca.map(Path::to_owned),
            timeout: Duration::from_secs(120),
        }
    }

    /// GET of `url` with curl.
    pub fn get(&self, url: &str) -> Result<CurlResponse> {
        let mut args = Vec::new();
        if let Some(ca) = &self.ca {
            args.push("--cacert".to_owned());
            args.push(ca.to_string_lossy().into_owned());
        }
        args.push(url.to_owned());
        curl(&self.ns, &self.scratch, &args, self.timeout)
    }

    /// The repository's `index.yaml`, parsed (what `helm repo update`
    /// fetches).
    pub fn index(&self) -> Result<serde_yaml::Value> {
        let url = format!("{}/index.yaml", self.repo);
        let r = self.get(&url)?;
        ensure!(r.code == 200, "GET {url}: {}", r.describe());
        serde_yaml::from_slice(&r.body()).with_context(|| format!("{url} is not YAML"))
    }

    /// The URL and digest the index gives for `name` at `version`: its
    /// first URL, resolved as Helm resolves it.
    pub fn locate(
        &self,
        index: &serde_yaml::Value,
        name: &str,
        version: &str,
    ) -> Result<(String, Option<String>)> {
        let Some(versions) = index["entries"][name].as_sequence() else {
            bail!("the index lists no chart {name}");
        };
        let Some(entry) = versions
            .iter()
            .find(|e| e["version"].as_str() == Some(version))
        else {
            bail!("the index lists no {name} {version}");
        };
        let Some(url) = entry["urls"][0].as_str() else {
            bail!("{name} {version} has no URL");
        };
        let digest = entry["digest"].as_str().map(str::to_owned);
        Ok((resolve(&self.repo, url), digest))
    }

    /// `helm pull name --version version`: the index, then the chart,
    /// whose sha256 must be the index's digest.
    pub fn pull(&self, name: &str, version: &str) -> Result<Pulled> {
        let index = self.index()?;
        let (url, digest) = self.locate(&index, name, version)?;
        let r = self.get(&url)?;
        ensure!(r.code == 200, "GET {url}: {}", r.describe());
        let bytes = r.body();
        let got = sha256_hex(&bytes);
        match digest {
            Some(d) if d == got => Ok(Pulled { url, bytes }),
            Some(d) => bail!("{url}: sha256 {got}, the index says {d}"),
            None => bail!("{url}: the index gives no digest"),
        }
    }
}

/// `reference` against the repository URL with a trailing slash: what
/// Helm's `ResolveReferenceURL` does (absolute URLs as they are).
pub fn resolve(repo: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    let (scheme, rest) = repo.split_once("://").unwrap_or(("https", repo));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let joined = if let Some(absolute) = reference.strip_prefix('/') {
        absolute.to_owned()
    } else if path.is_empty() {
        reference.to_owned()
    } else {
        format!("{path}/{reference}")
    };
    let mut segments: Vec<&str> = Vec::new();
    for s in joined.split('/') {
        match s {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("{scheme}://{host}/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_as_helm_resolves_them() {
        let repo = "https://charts.example.test/stable";
        assert_eq!(
            resolve(repo, "charts/web-1.0.0.tgz"),
            "https://charts.example.test/stable/charts/web-1.0.0.tgz"
        );
        assert_eq!(
            resolve(repo, "../other/x.tgz"),
            "https://charts.example.test/other/x.tgz"
        );
        assert_eq!(
            resolve(repo, "/abs/x.tgz"),
            "https://charts.example.test/abs/x.tgz"
        );
        assert_eq!(
            resolve(repo, "https://cdn.example.test/x.tgz"),
            "https://cdn.example.test/x.tgz"
        );
        assert_eq!(resolve("http://h", "x.tgz"), "http://h/x.tgz");
    }

    #[test]
    fn charts_are_gzipped_tars_with_chart_yaml() {
        let tgz = package("web", "1.0.0", "a").expect("package");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["web/Chart.yaml", "web/templates/configmap.yaml"]);
        assert_ne!(tgz, package("web", "1.0.0", "b").expect("package"));
        let index = index_yaml(&[Entry {
            name: "web",
            version: "1.0.0",
            url: "web-1.0.0.tgz".into(),
            digest: Some(sha256_hex(&tgz)),
        }]);
        let v: serde_yaml::Value = serde_yaml::from_str(&index).expect("yaml");
        assert_eq!(
            v["entries"]["web"][0]["urls"][0].as_str(),
            Some("web-1.0.0.tgz")
        );
    }
}
