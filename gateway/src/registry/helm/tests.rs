//! The helm handler against in-process upstreams on 127.0.0.1 (the
//! repository's origin and a chart host): the index cached, revalidated
//! and served stale; charts verified against the index's digests before
//! they are stored or served; `.prov` files; seeding.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle};

use super::HelmSite;
use crate::{
    audit::{CacheStatus, Fault},
    cache::{Cache, Digest},
    config::{Site, SiteKind},
    registry::{Outcome, PlainHttp},
    upstream::{Timeouts, Upstream},
};

const SITE: &str = "charts.example.test";
const CDN: &str = "cdn.example.test";

/// An origin serving files by path, with ETags and conditional GETs; or
/// answering every request with one status while `down`.
struct Origin {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<OriginState>>,
    task: JoinHandle<()>,
    /// Its connections' tasks: stopping it closes the pooled ones too.
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

#[derive(Default)]
struct OriginState {
    files: HashMap<String, Bytes>,
    down: Option<StatusCode>,
    /// Paths asked, with the If-None-Match sent.
    asked: Vec<(String, Option<String>)>,
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", &Digest::of(bytes).hex()[..16])
}

impl Origin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<OriginState>> = Arc::default();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let task = tokio::spawn({
            let (state, connections) = (state.clone(), connections.clone());
            async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let state = state.clone();
                    let task = tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let reply = answer(&state, &req);
                            async move { Ok::<_, Infallible>(reply) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(conn), service)
                            .await;
                    });
                    connections.lock().unwrap().push(task);
                }
            }
        });
        Self {
            addr,
            state,
            task,
            connections,
        }
    }

    /// Gone: refuses connections and closes those open.
    fn stop(&self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn put(&self, path: &str, bytes: impl Into<Bytes>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.into(), bytes.into());
    }

    fn down(&self, status: Option<StatusCode>) {
        self.state.lock().unwrap().down = status;
    }

    fn asked(&self, path: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.asked.iter().filter(|(p, _)| p == path).count()
    }

    fn last_if_none_match(&self) -> Option<String> {
        let state = self.state.lock().unwrap();
        state.asked.last().and_then(|(_, inm)| inm.clone())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(
    state: &Mutex<OriginState>,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let inm = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.asked.push((path.clone(), inm.clone()));
    let builder = Response::builder();
    if let Some(status) = state.down {
        return builder.status(status).body(Full::default()).unwrap();
    }
    match state.files.get(&path) {
        Some(bytes) if inm.as_deref() == Some(etag(bytes).as_str()) => builder
            .status(304)
            .header(header::ETAG, etag(bytes))
            .body(Full::default())
            .unwrap(),
        Some(bytes) => builder
            .header(header::ETAG, etag(bytes))
            .header(header::CONTENT_TYPE, "application/x-yaml")
            .body(Full::new(bytes.clone()))
            .unwrap(),
        None => builder.status(404).body(Full::default()).unwrap(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    cache: Cache,
    origin: Origin,
    cdn: Origin,
    site: Arc<HelmSite>,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 30).await.unwrap();
        let (origin, cdn) = (Origin::start().await, Origin::start().await);
        let mut config = Site::new(SITE, SiteKind::Helm);
        config.upstream = Some(format!("http://{}/stable", origin.addr));
        config.chart_hosts = vec![CDN.into()];
        let timeouts = Timeouts {
            retry_backoff: Vec::new(),
            ..Timeouts::default()
        };
        let cdn_url = format!("http://{}", cdn.addr);
        let build = |copy: &Site| {
            // The chart host's copy names https://cdn.example.test: the
            // test's chart host is the second origin.
            let mut copy = copy.clone();
            if copy.upstream.as_deref() == Some("https://cdn.example.test") {
                copy.upstream = Some(cdn_url.clone());
            }
            Upstream::with_timeouts(&copy, timeouts.clone())
        };
        let upstream = Upstream::with_timeouts(&config, timeouts.clone()).unwrap();
        let site = HelmSite::new(&config, upstream, cache.clone(), build).unwrap();
        Self {
            _dir: dir,
            cache,
            origin,
            cdn,
            site,
        }
    }

    async fn get(&self, host: &str, path: &str) -> (Outcome, Bytes) {
        self.request(host, path, None, false).await
    }

    async fn request(
        &self,
        host: &str,
        path: &str,
        range: Option<&str>,
        plain_http: bool,
    ) -> (Outcome, Bytes) {
        let mut req = Request::builder().uri(path);
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        if plain_http {
            parts.extensions.insert(PlainHttp);
        }
        let mut outcome = self.site.route(host.into(), parts).await;
        let body = std::mem::replace(outcome.response.body_mut(), crate::proxy::body::empty());
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (outcome, bytes)
    }

    /// Makes the index held look older than the site's TTL.
    async fn age_index(&self) {
        let mut entry = self
            .cache
            .get_object(SITE, "/stable/index.yaml")
            .await
            .unwrap()
            .unwrap();
        entry.fetched_at -= 3600;
        self.cache
            .put_object(SITE, "/stable/index.yaml", entry)
            .await
            .unwrap();
    }
}

fn sha(bytes: &[u8]) -> String {
    Digest::of(bytes).hex()
}

#[tokio::test]
async fn the_index_is_cached_revalidated_and_served_stale() {
    let f = Fixture::new().await;
    let first = "apiVersion: v1\nentries: {}\n";
    f.origin.put("/stable/index.yaml", first);

    let (o, body) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(o.response.status(), StatusCode::OK);
    assert_eq!(
        (o.cache, body.as_ref()),
        (Some(CacheStatus::Miss), first.as_bytes())
    );
    let (o, _) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(o.cache, Some(CacheStatus::Hit));
    assert_eq!(f.origin.asked("/stable/index.yaml"), 1);

    // Past the TTL: a conditional GET, and a 304 renews the copy.
    f.age_index().await;
    let (o, body) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(o.cache, Some(CacheStatus::Revalidated));
    assert_eq!(body.as_ref(), first.as_bytes());
    assert_eq!(f.origin.last_if_none_match(), Some(etag(first.as_bytes())));
    let (o, _) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(o.cache, Some(CacheStatus::Hit));

    // Changed upstream: the new one.
    let second = "apiVersion: v1\nentries: {}\ngenerated: now\n";
    f.origin.put("/stable/index.yaml", second);
    f.age_index().await;
    let (o, body) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(
        (o.cache, body.as_ref()),
        (Some(CacheStatus::Miss), second.as_bytes())
    );

    // Upstream failing, then sending garbage: the last good copy, stale.
    f.origin.down(Some(StatusCode::SERVICE_UNAVAILABLE));
    f.age_index().await;
    let (o, body) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(o.response.status(), StatusCode::OK);
    assert_eq!(
        (o.cache, body.as_ref()),
        (Some(CacheStatus::Stale), second.as_bytes())
    );
    assert_eq!(o.fault, Some(Fault::Upstream));
    assert!(
        o.detail.as_deref().unwrap().contains("503"),
        "{:?}",
        o.detail
    );
    f.origin.down(None);
    f.origin.put("/stable/index.yaml", "entries: [\n");
    let (o, body) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(
        (o.cache, body.as_ref()),
        (Some(CacheStatus::Stale), second.as_bytes())
    );
    assert!(
        o.detail.as_deref().unwrap().contains("not valid YAML"),
        "{:?}",
        o.detail
    );
    // Upstream gone altogether.
    f.origin.stop();
    let (o, body) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(
        (o.cache, body.as_ref()),
        (Some(CacheStatus::Stale), second.as_bytes())
    );
}

#[tokio::test]
async fn an_index_that_cannot_be_had_is_an_error() {
    let f = Fixture::new().await;
    let (o, _) = f.get(SITE, "/stable/index.yaml").await;
    // Upstream's 404 is passed on, with nothing at fault.
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);
    assert_eq!(o.fault, None);
    f.origin.put("/stable/index.yaml", "- not\n- an index\n");
    let (o, _) = f.get(SITE, "/stable/index.yaml").await;
    assert_eq!(o.response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(o.fault, Some(Fault::Upstream));
    assert!(o.detail.as_deref().unwrap().contains("not a mapping"));
    assert!(
        f.cache
            .get_object(SITE, "/stable/index.yaml")
            .await
            .unwrap()
            .is_none()
    );
    // Not GET or HEAD.
    let (mut parts, ()) = Request::builder()
        .method("PUT")
        .uri("/stable/index.yaml")
        .body(())
        .unwrap()
        .into_parts();
    parts.extensions.clear();
    let o = f.site.route(SITE.into(), parts).await;
    assert_eq!(o.response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// The charts of the chart test: `good` relative, `cdn` on the chart
/// host, `liar` with a digest its bytes do not have, `bare` without one.
fn charts(f: &Fixture) -> (Bytes, Bytes) {
    let good = Bytes::from_static(b"pretend this is a gzipped chart");
    let cdn = Bytes::from_static(b"a chart on the chart host");
    f.origin.put("/stable/charts/good-1.0.0.tgz", good.clone());
    f.origin.put(
        "/stable/charts/good-1.0.0.tgz.prov",
        "-----BEGIN PGP SIGNED MESSAGE-----\n",
    );
    f.cdn.put("/c/cdn-2.0.0.tgz", cdn.clone());
    f.origin
        .put("/stable/liar-1.0.0.tgz", "not what the index says");
    f.origin
        .put("/stable/bare-1.0.0.tgz", "no digest for this one");
    let index = format!(
        "apiVersion: v1\nentries:\n  good:\n  - version: 1.0.0\n    digest: {}\n    urls: [charts/good-1.0.0.tgz]\n  cdn:\n  - version: 2.0.0\n    digest: {}\n    urls: ['https://cdn.example.test/c/cdn-2.0.0.tgz']\n  liar:\n  - version: 1.0.0\n    digest: {}\n    urls: [liar-1.0.0.tgz]\n  bare:\n  - version: 1.0.0\n    urls: [bare-1.0.0.tgz]\n  far:\n  - version: 1.0.0\n    digest: {}\n    urls: ['https://elsewhere.example/far.tgz']\n",
        sha(&good),
        sha(&cdn),
        sha(b"the chart the index describes"),
        sha(&good),
    );
    f.origin.put("/stable/index.yaml", index);
    (good, cdn)
}

#[tokio::test]
async fn charts_are_verified_against_the_index_and_kept() {
    let f = Fixture::new().await;
    let (good, cdn) = charts(&f);

    let (o, body) = f.get(SITE, "/stable/charts/good-1.0.0.tgz").await;
    assert_eq!(o.response.status(), StatusCode::OK);
    assert_eq!((o.cache, &body), (Some(CacheStatus::Miss), &good));
    let (o, body) = f.get(SITE, "/stable/charts/good-1.0.0.tgz").await;
    assert_eq!((o.cache, &body), (Some(CacheStatus::Hit), &good));
    assert_eq!(f.origin.asked("/stable/charts/good-1.0.0.tgz"), 1);
    let (o, body) = f
        .request(
            SITE,
            "/stable/charts/good-1.0.0.tgz",
            Some("bytes=8-11"),
            false,
        )
        .await;
    assert_eq!(o.response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, good.slice(8..12));

    // On the chart host, from the chart host.
    let (o, body) = f.get(CDN, "/c/cdn-2.0.0.tgz").await;
    assert_eq!((o.response.status(), &body), (StatusCode::OK, &cdn));
    assert_eq!(f.cdn.asked("/c/cdn-2.0.0.tgz"), 1);
    // Not on the site host, though the path is the same.
    let (o, _) = f.get(SITE, "/c/cdn-2.0.0.tgz").await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);

    // Wrong bytes: 502, nothing stored under either digest.
    let (o, _) = f.get(SITE, "/stable/liar-1.0.0.tgz").await;
    assert_eq!(o.response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(o.fault, Some(Fault::Upstream));
    let detail = o.detail.unwrap();
    assert!(
        detail.contains("chart liar 1.0.0") && detail.contains("digest"),
        "{detail}"
    );
    for d in [
        sha(b"not what the index says"),
        sha(b"the chart the index describes"),
    ] {
        let d = Digest::from_hex(&d).unwrap();
        assert!(f.cache.get(&d).await.unwrap().is_none());
    }
    // No digest: refused before asking upstream.
    let (o, _) = f.get(SITE, "/stable/bare-1.0.0.tgz").await;
    assert_eq!(o.response.status(), StatusCode::BAD_GATEWAY);
    assert!(o.detail.unwrap().contains("gives no digest"));
    assert_eq!(f.origin.asked("/stable/bare-1.0.0.tgz"), 0);

    // The served index leaves out what the gateway cannot fetch, and says so.
    let (o, body) = f.get(SITE, "/stable/index.yaml").await;
    let served: serde_yaml::Value = serde_yaml::from_slice(&body).unwrap();
    assert!(served["entries"].get("far").is_none());
    assert!(served["entries"].get("good").is_some());
    assert!(o.detail.unwrap().contains("1 chart versions left out"));

    // Unlisted: a 404; a version published since is found once the index
    // is past its TTL (it is refreshed first).
    let (o, _) = f.get(SITE, "/stable/charts/good-1.1.0.tgz").await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);
    let newer = Bytes::from_static(b"the next version");
    f.origin.put("/stable/charts/good-1.1.0.tgz", newer.clone());
    f.origin.put(
        "/stable/index.yaml",
        format!(
            "entries:\n  good:\n  - version: 1.1.0\n    digest: {}\n    urls: [charts/good-1.1.0.tgz]\n  cdn:\n  - version: 2.0.0\n    digest: {}\n    urls: ['https://cdn.example.test/c/cdn-2.0.0.tgz']\n",
            sha(&newer),
            sha(&cdn),
        ),
    );
    f.age_index().await;
    let (o, body) = f.get(SITE, "/stable/charts/good-1.1.0.tgz").await;
    assert_eq!((o.response.status(), body), (StatusCode::OK, newer));
    // A version the index no longer lists is not served, held or not.
    let (o, _) = f.get(SITE, "/stable/charts/good-1.0.0.tgz").await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);

    // Upstream gone, the index past its TTL: the charts held are served.
    f.origin.stop();
    f.cdn.stop();
    f.age_index().await;
    let (o, body) = f.get(CDN, "/c/cdn-2.0.0.tgz").await;
    assert_eq!((o.cache, body), (Some(CacheStatus::Hit), cdn));
}

#[tokio::test]
async fn provenance_files_are_kept_and_missing_ones_passed_on() {
    let f = Fixture::new().await;
    charts(&f);
    let (o, body) = f.get(SITE, "/stable/charts/good-1.0.0.tgz.prov").await;
    assert_eq!(o.response.status(), StatusCode::OK);
    assert_eq!(o.cache, Some(CacheStatus::Miss));
    assert!(body.starts_with(b"-----BEGIN PGP"));
    let (o, _) = f.get(SITE, "/stable/charts/good-1.0.0.tgz.prov").await;
    assert_eq!(o.cache, Some(CacheStatus::Hit));
    assert_eq!(f.origin.asked("/stable/charts/good-1.0.0.tgz.prov"), 1);
    let (o, _) = f.get(CDN, "/c/cdn-2.0.0.tgz.prov").await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);
    assert_eq!(o.fault, None);
    // Beside no listed chart: not asked upstream.
    let (o, _) = f.get(SITE, "/stable/other.tgz.prov").await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);
    assert_eq!(f.origin.asked("/stable/other.tgz.prov"), 0);
}

#[tokio::test]
async fn plain_http_devices_are_served_http_chart_urls() {
    let f = Fixture::new().await;
    charts(&f);
    let (_, body) = f.request(SITE, "/stable/index.yaml", None, true).await;
    let served: serde_yaml::Value = serde_yaml::from_slice(&body).unwrap();
    assert_eq!(
        served["entries"]["cdn"][0]["urls"][0].as_str(),
        Some("http://cdn.example.test/c/cdn-2.0.0.tgz")
    );
    assert_eq!(
        served["entries"]["good"][0]["urls"][0].as_str(),
        Some("charts/good-1.0.0.tgz")
    );
}

#[tokio::test]
async fn a_seed_pins_the_index_the_chart_and_its_provenance() {
    let f = Fixture::new().await;
    let (good, _) = charts(&f);
    let lines = Mutex::new(Vec::new());
    let report = super::seed(&f.site, "good", "1.0.0", &|l| lines.lock().unwrap().push(l))
        .await
        .unwrap();
    assert_eq!(report.pin, "charts.example.test/good@1.0.0");
    assert_eq!((report.manifests, report.blobs), (0, 3));
    let pins = f.cache.list_pins();
    let (_, digests) = pins.iter().find(|(n, _)| *n == report.pin).unwrap();
    assert!(digests.contains(&Digest::of(&good)), "{digests:?}");
    assert_eq!(digests.len(), 3);
    // Seeded: served with upstream gone.
    f.origin.stop();
    let (o, body) = f.get(SITE, "/stable/charts/good-1.0.0.tgz").await;
    assert_eq!((o.response.status(), body), (StatusCode::OK, good));

    // What cannot be seeded says why.
    let f = Fixture::new().await;
    charts(&f);
    let quiet = |_: String| {};
    for (chart, version, expect) in [
        ("good", "9.9.9", "lists no chart good at version 9.9.9"),
        ("liar", "1.0.0", "digest"),
        ("bare", "1.0.0", "gives no digest"),
        ("far", "1.0.0", "lists no chart far"),
    ] {
        let e = super::seed(&f.site, chart, version, &quiet)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{chart}@{version}: {e}");
    }
}
