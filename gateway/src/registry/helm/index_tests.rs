//! Parsing `index.yaml`: chart URLs located, digests taken, unreachable
//! entries dropped, the served index rewritten only when it must be.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use bytes::Bytes;

use super::{Index, Repo, Source};

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn repo(upstream: &str) -> Repo {
    Repo {
        site_host: "charts.example.test".into(),
        chart_hosts: vec!["cdn.example.test".into()],
        index_url: format!("{upstream}/index.yaml").parse().unwrap(),
    }
}

fn parse(yaml: &str) -> Index {
    Index::parse(
        &repo("https://charts.example.test/stable"),
        Bytes::from(yaml.to_owned()),
    )
    .unwrap()
}

fn served(index: &Index, plain_http: bool) -> serde_yaml::Value {
    serde_yaml::from_slice(&index.served(plain_http)).unwrap()
}

fn urls(v: &serde_yaml::Value, chart: &str) -> Vec<Vec<String>> {
    v["entries"][chart]
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|e| {
                    e["urls"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|u| u.as_str().unwrap().to_owned())
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn relative_and_site_host_urls_are_served_unchanged_over_tls() {
    let yaml = format!(
        "apiVersion: v1\nentries:\n  web:\n  - name: web\n    version: 1.0.0\n    digest: {A}\n    urls: [charts/web-1.0.0.tgz]\n  - name: web\n    version: 0.9.0\n    digest: sha256:{B}\n    urls: [https://charts.example.test/stable/web-0.9.0.tgz]\n  db:\n  - version: '2.1'\n    digest: {B}\n    urls: [https://cdn.example.test/db/db-2.1.tgz?sig=x]\n"
    );
    let index = parse(&yaml);
    assert_eq!(index.served(false), Bytes::from(yaml.clone()));
    assert!(index.dropped.is_empty());

    let web = index
        .chart("charts.example.test", "/stable/charts/web-1.0.0.tgz")
        .unwrap();
    assert_eq!(web.source, Source::Origin);
    assert_eq!(web.digest.as_ref().unwrap().hex(), A);
    let old = index
        .chart("charts.example.test", "/stable/web-0.9.0.tgz")
        .unwrap();
    assert_eq!(old.digest.as_ref().unwrap().hex(), B);
    let db = index
        .chart("cdn.example.test", "/db/db-2.1.tgz?sig=x")
        .unwrap();
    assert_eq!(db.source, Source::ChartHost("cdn.example.test".into()));
    assert_eq!((db.name.as_str(), db.version.as_str()), ("db", "2.1"));
    // Unlisted: another path, another host, the chart host's path on the
    // site host.
    assert!(
        index
            .chart("charts.example.test", "/stable/web-2.0.0.tgz")
            .is_none()
    );
    assert!(
        index
            .chart("charts.example.test", "/db/db-2.1.tgz?sig=x")
            .is_none()
    );
    assert_eq!(
        index
            .version("web", "1.0.0")
            .map(|(h, c)| (h, c.path.as_str())),
        Some(("charts.example.test", "/stable/charts/web-1.0.0.tgz"))
    );
}

#[test]
fn plain_http_devices_get_absolute_urls_on_http() {
    let yaml = format!(
        "entries:\n  web:\n  - version: 1.0.0\n    digest: {A}\n    urls: [web-1.0.0.tgz, https://cdn.example.test/web-1.0.0.tgz]\n"
    );
    let index = parse(&yaml);
    assert_eq!(index.served(false), Bytes::from(yaml));
    assert_eq!(
        urls(&served(&index, true), "web"),
        vec![vec![
            "web-1.0.0.tgz".to_owned(),
            "http://cdn.example.test/web-1.0.0.tgz".to_owned()
        ]]
    );
}

#[test]
fn entries_on_other_hosts_are_dropped_and_counted() {
    let yaml = format!(
        "entries:\n  web:\n  - version: 1.0.0\n    digest: {A}\n    urls: [https://elsewhere.example/web-1.0.0.tgz]\n  - version: 1.1.0\n    digest: {A}\n    urls: ['https://elsewhere.example/web-1.1.0.tgz', web-1.1.0.tgz]\n  - version: 1.2.0\n    digest: {A}\n    urls: ['https://cdn.example.test:8443/web-1.2.0.tgz']\n  gone:\n  - version: 0.1.0\n    digest: {B}\n    urls: ['ftp://charts.example.test/gone.tgz']\n"
    );
    let index = parse(&yaml);
    assert_eq!(index.dropped.len(), 3, "{:?}", index.dropped);
    assert!(
        index.dropped[0].contains("elsewhere.example")
            && index.dropped[0].contains("does not serve"),
        "{:?}",
        index.dropped
    );
    let v = served(&index, false);
    // The 1.1.0 entry stays with its reachable URL only.
    assert_eq!(urls(&v, "web"), vec![vec!["web-1.1.0.tgz".to_owned()]]);
    assert!(v["entries"].get("gone").is_none(), "{v:?}");
    assert_eq!(index.listed(), vec![("web".to_owned(), "1.1.0".to_owned())]);
}

#[test]
fn urls_on_a_differently_named_upstream_are_served_on_the_site_host() {
    let index = Index::parse(
        &repo("https://mirror.internal:8443/helm"),
        Bytes::from(format!(
            "entries:\n  web:\n  - version: 1.0.0\n    digest: {A}\n    urls: ['https://mirror.internal:8443/helm/web-1.0.0.tgz', ../up.tgz]\n"
        )),
    )
    .unwrap();
    assert_eq!(
        urls(&served(&index, false), "web"),
        vec![vec![
            "https://charts.example.test/helm/web-1.0.0.tgz".to_owned(),
            "../up.tgz".to_owned()
        ]]
    );
    let c = index.chart("charts.example.test", "/up.tgz").unwrap();
    assert_eq!(c.source, Source::Origin);
}

#[test]
fn missing_bad_and_conflicting_digests_are_refused_per_chart() {
    let index = parse(&format!(
        "entries:\n  a:\n  - version: 1.0.0\n    urls: [a.tgz]\n  - version: 2.0.0\n    digest: md5:abc\n    urls: [a2.tgz]\n  b:\n  - version: 1.0.0\n    digest: {A}\n    urls: [same.tgz]\n  - version: 1.0.1\n    digest: {B}\n    urls: [same.tgz]\n"
    ));
    let host = "charts.example.test";
    let why = index.chart(host, "/stable/a.tgz").unwrap().digest.clone();
    assert!(why.unwrap_err().contains("gives no digest"));
    let why = index.chart(host, "/stable/a2.tgz").unwrap().digest.clone();
    assert!(why.unwrap_err().contains("not a sha256"));
    let why = index
        .chart(host, "/stable/same.tgz")
        .unwrap()
        .digest
        .clone();
    assert!(why.unwrap_err().contains("different digests"));
}

#[test]
fn malformed_indexes_are_errors() {
    let r = repo("https://charts.example.test");
    for (yaml, expect) in [
        ("entries: [", "not valid YAML"),
        ("- a\n- b\n", "not a mapping"),
        ("entries: 3\n", "entries is not a mapping"),
        ("entries:\n  a: 3\n", "not a list"),
        ("entries:\n  a:\n  - urls: [a.tgz]\n", "has no version"),
        (
            "entries:\n  a:\n  - version: 1\n    urls: a.tgz\n",
            "not a list",
        ),
    ] {
        let e = Index::parse(&r, Bytes::from(yaml)).unwrap_err();
        assert!(e.contains(expect), "{yaml}: {e}");
    }
    // Aliases that expand a short text into billions of nodes.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    laughs.push_str("entries: {}\n");
    let e = Index::parse(&r, Bytes::from(laughs)).unwrap_err();
    assert!(e.contains("repetition limit"), "{e}");
    // An empty repository is an index.
    let empty = Index::parse(&r, Bytes::from("apiVersion: v1\nentries: {}\n")).unwrap();
    assert!(empty.listed().is_empty());
    let too_large = Bytes::from(vec![b' '; super::MAX_INDEX + 1]);
    assert!(
        Index::parse(&r, too_large)
            .unwrap_err()
            .contains("larger than 64 MiB")
    );
}

#[test]
fn no_input_panics_the_parser() {
    let r = repo("https://charts.example.test/stable");
    let sample = format!(
        "apiVersion: v1\nentries:\n  web:\n  - name: web\n    version: 1.0.0\n    digest: {A}\n    urls: [charts/web-1.0.0.tgz, 'https://cdn.example.test/w.tgz?x=1', '//elsewhere/x', 'http://[::1]:8080/a']\n  odd:\n  - version: [1]\n    digest: {{a: b}}\n    urls: [3, null, {{x: y}}, '', '   ', 'https://', '../../../../x', '?q', '#f', 'https://charts.example.test:443/stable/x.tgz']\n"
    );
    // Every prefix: truncated downloads, cut mid-token.
    for end in 0..=sample.len() {
        let _ = Index::parse(&r, Bytes::from(sample.as_bytes()[..end].to_vec()));
    }
    for junk in [
        "\u{0}\u{1}\u{2}",
        "entries:\n  a:\n  - {version: 1, urls: [[[[]]]]}\n",
        "entries: {a: [null, 1, 'x', {version: 2, urls: [1e400]}]}\n",
        "!!binary aGVsbG8=\n",
        "entries:\n  ? [a, b]\n  : []\n",
        "---\n...\n---\n",
    ] {
        let _ = Index::parse(&r, Bytes::from(junk));
    }
}
