//! A chart repository's `index.yaml`, parsed once per version fetched
//! into what the handler needs: the chart URLs it lists (by the host and
//! path a device asks for) with the digest each must match, and the index
//! as devices are served it.
//!
//! Chart URLs are resolved against the index's upstream URL. A URL on the
//! upstream's origin or the site's host is fetched from the upstream
//! origin; one on a chart host from that host; any other host is out of
//! the gateway's reach, and its entry is dropped from the served index.
//! Relative URLs are served as they are; absolute ones name the host the
//! device asks (the site's host for the upstream origin) with the scheme
//! the device fetched the index with: a plain-HTTP device (a site with
//! `http: true`) follows `http://` URLs, which it can without the site CA.
//! When nothing changes, devices get upstream's bytes unchanged.

use std::collections::HashMap;

use bytes::Bytes;
use http::Uri;
use serde_yaml::Value;

use crate::{
    cache::Digest,
    config::parse_sha256,
    upstream::{Origin, redact, resolve_reference},
};

/// The largest `index.yaml` read (a public repository's index with every
/// version it ever published runs to tens of MiB).
pub const MAX_INDEX: usize = 64 << 20;

/// Where the gateway fetches a chart URL from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The site's upstream origin (URLs on it or on the site's host).
    Origin,
    /// A chart host (lowercase), over HTTPS.
    ChartHost(String),
}

/// One chart URL the index lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chart {
    pub name: String,
    pub version: String,
    pub source: Source,
    /// Path and query, on the device's host and on the source alike.
    pub path: String,
    /// The sha256 the chart must match, or why there is none to match.
    pub digest: Result<Digest, String>,
    /// Its place in the index: the first of a version's URLs is the one
    /// clients fetch.
    seq: usize,
}

/// What a site's chart URLs may name.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The site's host, lowercase.
    pub site_host: String,
    /// The chart hosts, lowercase.
    pub chart_hosts: Vec<String>,
    /// Upstream's `index.yaml` URL, what relative chart URLs resolve
    /// against.
    pub index_url: Uri,
}

/// A chart URL located: the host a device asks for it, its path and
/// where it is fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Located {
    host: String,
    path: String,
    source: Source,
    /// Written without scheme and host in the index: served as it is.
    relative: bool,
    /// As the index wrote it.
    written: String,
}

impl Repo {
    fn locate(&self, url: &str) -> Result<Located, String> {
        let url = url.trim();
        let resolved = resolve_reference(&self.index_url, url.as_bytes())
            .ok_or_else(|| format!("`{}` is not an http(s) URL", shorten(url)))?;
        let path = resolved
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let relative = !url.starts_with("//") && !has_scheme(url);
        let host = resolved
            .host()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let default_port = resolved.port_u16().is_none_or(|p| {
            p == if resolved.scheme_str() == Some("http") {
                80
            } else {
                443
            }
        });
        let source = if Origin::of(&resolved) == Origin::of(&self.index_url)
            || (host == self.site_host && default_port)
        {
            Source::Origin
        } else if default_port && self.chart_hosts.contains(&host) {
            Source::ChartHost(host.clone())
        } else {
            return Err(format!(
                "{} is on a host this site does not serve",
                redact(&resolved)
            ));
        };
        let host = match &source {
            Source::Origin => self.site_host.clone(),
            Source::ChartHost(h) => h.clone(),
        };
        Ok(Located {
            host,
            path,
            source,
            relative,
            written: url.to_owned(),
        })
    }
}

/// An `index.yaml` as parsed.
#[derive(Debug)]
pub struct Index {
    /// The digest of upstream's bytes (what the cache holds).
    pub digest: Digest,
    upstream: Bytes,
    /// The served index, when it differs from upstream's: for TLS
    /// devices, and for plain-HTTP ones.
    https: Option<Bytes>,
    http: Option<Bytes>,
    /// Chart URLs by (lowercase host, path and query) as devices ask.
    charts: HashMap<(String, String), Chart>,
    /// Chart versions dropped from the served index, each with why.
    pub dropped: Vec<String>,
}

impl Index {
    /// Parses upstream's bytes. `Err` says what is wrong with them.
    pub fn parse(repo: &Repo, upstream: Bytes) -> Result<Self, String> {
        if upstream.len() > MAX_INDEX {
            return Err(format!("index.yaml is larger than {} MiB", MAX_INDEX >> 20));
        }
        let mut value: Value = serde_yaml::from_slice(&upstream)
            .map_err(|e| format!("index.yaml is not valid YAML: {e}"))?;
        let Some(top) = value.as_mapping_mut() else {
            return Err("index.yaml is not a mapping".into());
        };
        let mut charts: HashMap<(String, String), Chart> = HashMap::new();
        let mut dropped = Vec::new();
        // Rewrites per entry URL: (chart, entry index, url index) -> how
        // it is served; `None` drops it.
        let mut plan: Vec<Vec<Vec<Option<Located>>>> = Vec::new();
        let mut names = Vec::new();
        match top.get_mut("entries") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(entries)) => {
                for (key, versions) in entries.iter() {
                    let name = scalar(key).ok_or("index.yaml: a chart name is not a string")?;
                    let versions = match versions {
                        Value::Sequence(v) => v.as_slice(),
                        Value::Null => &[],
                        _ => return Err(format!("index.yaml: entries.{name} is not a list")),
                    };
                    let mut per_chart = Vec::new();
                    for entry in versions {
                        per_chart.push(plan_entry(repo, &name, entry, &mut charts, &mut dropped)?);
                    }
                    plan.push(per_chart);
                    names.push(key.clone());
                }
            }
            Some(_) => return Err("index.yaml: entries is not a mapping".into()),
        }
        let digest = Digest::of(&upstream);
        let needs = |scheme: &str| {
            plan.iter()
                .flatten()
                .flatten()
                .any(|l| l.as_ref().is_none_or(|l| served_url(scheme, l).is_some()))
        };
        let (needs_https, needs_http) = (needs("https"), needs("http"));
        let https = needs_https
            .then(|| render(value.clone(), &names, &plan, "https"))
            .transpose()?;
        let http = needs_http
            .then(|| render(value, &names, &plan, "http"))
            .transpose()?;
        Ok(Self {
            digest,
            upstream,
            https,
            http,
            charts,
            dropped,
        })
    }

    /// Upstream's bytes as fetched.
    pub fn upstream_bytes(&self) -> &Bytes {
        &self.upstream
    }

    /// The index a device is served: `plain_http` when it came over port 80.
    pub fn served(&self, plain_http: bool) -> Bytes {
        let rendered = if plain_http { &self.http } else { &self.https };
        rendered.clone().unwrap_or_else(|| self.upstream.clone())
    }

    /// The chart a device asks for as `path` (with query) on `host`.
    pub fn chart(&self, host: &str, path: &str) -> Option<&Chart> {
        self.charts.get(&(host.to_owned(), path.to_owned()))
    }

    /// The URL a device would fetch `name` at `version` from (as `helm
    /// pull` does: the entry's first URL the gateway can reach).
    pub fn version(&self, name: &str, version: &str) -> Option<(&str, &Chart)> {
        self.charts
            .iter()
            .filter(|(_, c)| c.name == name && c.version == version)
            .min_by_key(|(_, c)| c.seq)
            .map(|((host, _), c)| (host.as_str(), c))
    }

    /// Every chart version the index lists, as (name, version).
    #[cfg(test)]
    pub fn listed(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self
            .charts
            .values()
            .map(|c| (c.name.clone(), c.version.clone()))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Locates one version's URLs, records them, and plans how each is served.
fn plan_entry(
    repo: &Repo,
    chart: &str,
    entry: &Value,
    charts: &mut HashMap<(String, String), Chart>,
    dropped: &mut Vec<String>,
) -> Result<Vec<Option<Located>>, String> {
    let Some(entry) = entry.as_mapping() else {
        return Err(format!("index.yaml: an entry of {chart} is not a mapping"));
    };
    let name = entry
        .get("name")
        .and_then(scalar)
        .unwrap_or_else(|| chart.to_owned());
    let version = entry
        .get("version")
        .and_then(scalar)
        .ok_or_else(|| format!("index.yaml: an entry of {chart} has no version"))?;
    let digest = match entry.get("digest").and_then(scalar) {
        None => Err(format!(
            "the index gives no digest for {name} {version}: nothing unverified is served"
        )),
        Some(d) => parse_sha256(&d)
            .and_then(|hex| Digest::from_hex(&hex))
            .ok_or_else(|| {
                format!(
                    "the index's digest for {name} {version} is not a sha256: `{}`",
                    shorten(&d)
                )
            }),
    };
    let urls = match entry.get("urls") {
        Some(Value::Sequence(urls)) => urls.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => {
            return Err(format!(
                "index.yaml: the urls of {name} {version} are not a list"
            ));
        }
    };
    let mut planned = Vec::new();
    let mut why_not = None;
    for url in urls {
        let located = scalar(url)
            .ok_or_else(|| "a URL that is not a string".to_owned())
            .and_then(|u| repo.locate(&u));
        match located {
            Ok(l) => {
                let key = (l.host.clone(), l.path.clone());
                let chart = Chart {
                    name: name.clone(),
                    version: version.clone(),
                    source: l.source.clone(),
                    path: l.path.clone(),
                    digest: digest.clone(),
                    seq: charts.len(),
                };
                match charts.get_mut(&key) {
                    Some(held) if held.digest != chart.digest => {
                        held.digest = Err(format!(
                            "the index lists {} for {} {} and {name} {version} with different digests",
                            key.1, held.name, held.version
                        ));
                    }
                    Some(_) => {}
                    None => {
                        charts.insert(key, chart);
                    }
                }
                planned.push(Some(l));
            }
            Err(why) => {
                why_not.get_or_insert(why);
                planned.push(None);
            }
        }
    }
    if let Some(why) = why_not
        && planned.iter().all(Option::is_none)
    {
        dropped.push(format!("{name} {version}: {why}"));
    }
    Ok(planned)
}

/// The URL a device is served for a located chart URL, when it differs
/// from the one written (`None`: unchanged).
fn served_url(scheme: &str, l: &Located) -> Option<String> {
    if l.relative {
        return None;
    }
    let url = format!("{scheme}://{}{}", l.host, l.path);
    (url != l.written).then_some(url)
}

/// The index with unreachable URLs (and entries left without any)
/// removed and absolute URLs rewritten for `scheme`.
fn render(
    mut value: Value,
    names: &[Value],
    plan: &[Vec<Vec<Option<Located>>>],
    scheme: &str,
) -> Result<Bytes, String> {
    if let Some(Value::Mapping(entries)) = value.get_mut("entries") {
        for (key, per_chart) in names.iter().zip(plan) {
            let Some(Value::Sequence(versions)) = entries.get_mut(key) else {
                continue;
            };
            let mut kept = Vec::new();
            for (mut entry, urls_plan) in std::mem::take(versions).into_iter().zip(per_chart) {
                if let Some(Value::Sequence(urls)) = entry.get_mut("urls") {
                    let old = std::mem::take(urls);
                    for (url, located) in old.into_iter().zip(urls_plan) {
                        match located {
                            None => {}
                            Some(l) => {
                                urls.push(served_url(scheme, l).map_or(url, Value::String));
                            }
                        }
                    }
                    if urls.is_empty() && !urls_plan.is_empty() {
                        continue;
                    }
                }
                kept.push(entry);
            }
            *versions = kept;
        }
        entries.retain(|_, v| !matches!(v, Value::Sequence(s) if s.is_empty()));
    }
    serde_yaml::to_string(&value)
        .map(Bytes::from)
        .map_err(|e| format!("cannot write the served index.yaml: {e}"))
}

/// A YAML scalar as text (a version written `1.0` is a number to YAML).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether a URL reference starts with a scheme (`https:`).
fn has_scheme(url: &str) -> bool {
    let Some((scheme, _)) = url.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// At most 200 characters of untrusted text, for messages.
fn shorten(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
