//! The files handler against an in-process upstream on 127.0.0.1 that
//! answers like a static server (ETag, conditional GETs, headers per
//! path): what is stored, reused, revalidated, served stale, verified and
//! refused.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    collections::HashMap,
    convert::Infallible,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle};

use super::FilesSite;
use crate::{
    audit::CacheStatus,
    cache::{Cache, Digest},
    config::Site,
    registry::Outcome,
    upstream::{Timeouts, Upstream},
};

/// One path's content and extra headers.
#[derive(Clone)]
struct File {
    body: Bytes,
    headers: Vec<(&'static str, String)>,
    /// Answer this status instead (no validators).
    status: Option<StatusCode>,
    /// Never answer.
    hang: bool,
}

#[derive(Default)]
struct Log {
    /// (method, path and query, If-None-Match)
    asked: Vec<(String, String, Option<String>)>,
}

struct Origin {
    addr: std::net::SocketAddr,
    files: Arc<Mutex<HashMap<String, File>>>,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl Origin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, File>>> = Arc::default();
        let log: Arc<Mutex<Log>> = Arc::default();
        let task = tokio::spawn({
            let (files, log) = (files.clone(), log.clone());
            async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (files, log) = (files.clone(), log.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let hang = files
                                .lock()
                                .unwrap()
                                .get(req.uri().path())
                                .is_some_and(|f| f.hang);
                            let reply = answer(&files, &log, &req);
                            async move {
                                if hang {
                                    // A peer that went silent.
                                    std::future::pending::<()>().await;
                                }
                                Ok::<_, Infallible>(reply)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(conn), service)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            files,
            log,
            task,
        }
    }

    fn put(&self, path: &str, body: &[u8], headers: &[(&'static str, &str)]) {
        self.files.lock().unwrap().insert(
            path.to_owned(),
            File {
                body: Bytes::copy_from_slice(body),
                headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
                status: None,
                hang: false,
            },
        );
    }

    fn fail(&self, path: &str, status: StatusCode) {
        self.files.lock().unwrap().insert(
            path.to_owned(),
            File {
                body: Bytes::from_static(b"broken\n"),
                headers: Vec::new(),
                status: Some(status),
                hang: false,
            },
        );
    }

    fn hang(&self, path: &str) {
        if let Some(f) = self.files.lock().unwrap().get_mut(path) {
            f.hang = true;
        }
    }

    /// GETs of `target` (path and query) so far, with their If-None-Match.
    fn gets(&self, target: &str) -> Vec<Option<String>> {
        self.log
            .lock()
            .unwrap()
            .asked
            .iter()
            .filter(|(m, t, _)| m == "GET" && t == target)
            .map(|(_, _, inm)| inm.clone())
            .collect()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A static server's answer: the ETag is the body's digest, an
/// If-None-Match naming it gets 304.
fn answer(
    files: &Mutex<HashMap<String, File>>,
    log: &Mutex<Log>,
    req: &Request<hyper::body::Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    log.lock()
        .unwrap()
        .asked
        .push((req.method().to_string(), target.clone(), inm.clone()));
    let file = files.lock().unwrap().get(req.uri().path()).cloned();
    let Some(file) = file else {
        return Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found\n")).boxed())
            .unwrap();
    };
    if let Some(status) = file.status {
        return Response::builder()
            .status(status)
            .body(Full::new(file.body).boxed())
            .unwrap();
    }
    let etag = format!("\"{}\"", &Digest::of(&file.body).hex()[..16]);
    let mut b = Response::builder().header("etag", &etag);
    for (n, v) in &file.headers {
        b = b.header(*n, v);
    }
    if inm.as_deref() == Some(etag.as_str()) {
        return b.status(304).body(Full::new(Bytes::new()).boxed()).unwrap();
    }
    b.header("content-length", file.body.len())
        .body(Full::new(file.body).boxed())
        .unwrap()
}

async fn site_with(origin: &Origin, dir: &Path, extra: &str) -> Arc<FilesSite> {
    let cache = Cache::open(dir, 1 << 30).await.unwrap();
    let config: Site = serde_yaml::from_str(&format!(
        "host: files.test\nkind: files\nupstream: http://{}\npaths: [\"/pub/**\"]\nttl: 1h\n{extra}",
        origin.addr
    ))
    .unwrap();
    let upstream = Upstream::with_timeouts(&config, Timeouts::default()).unwrap();
    FilesSite::new(&config, upstream, cache)
}

async fn get(site: &FilesSite, target: &str, headers: &[(&'static str, &str)]) -> Outcome {
    get_as(site, Method::GET, target, headers).await
}

async fn get_as(
    site: &FilesSite,
    method: Method,
    target: &str,
    headers: &[(&'static str, &str)],
) -> Outcome {
    let mut h = HeaderMap::new();
    for (n, v) in headers {
        h.append(*n, HeaderValue::from_str(v).unwrap());
    }
    let path = target.split('?').next().unwrap();
    site.get(&method, target, path, &h, None).await
}

/// Status, cache status and the whole body (`None`: it broke).
async fn read(o: Outcome) -> (StatusCode, Option<CacheStatus>, Option<Vec<u8>>) {
    let (status, cache) = (o.response.status(), o.cache);
    let mut body = o.response.into_body().into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => return (status, cache, None),
        }
    }
    (status, cache, Some(out))
}

/// Waits (bounded) until the fill's entry is recorded.
async fn stored(site: &FilesSite, key: &str) {
    for _ in 0..500 {
        if site
            .cache
            .get_object("files.test", key)
            .await
            .unwrap()
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{key} was never stored");
}

#[tokio::test]
async fn a_miss_is_fetched_once_then_served_from_the_cache_with_ranges_and_304s() {
    let origin = Origin::start().await;
    origin.put(
        "/pub/a.bin",
        b"0123456789",
        &[("content-type", "application/x-test")],
    );
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;

    let (status, cache, body) = read(get(&site, "/pub/a.bin", &[]).await).await;
    assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Miss)));
    assert_eq!(body.unwrap(), b"0123456789");
    stored(&site, "/pub/a.bin").await;

    let o = get(&site, "/pub/a.bin", &[("range", "bytes=2-4")]).await;
    assert_eq!(
        o.response.headers()["content-type"],
        "application/x-test",
        "stored headers are replayed"
    );
    let (status, cache, body) = read(o).await;
    assert_eq!(
        (status, cache),
        (StatusCode::PARTIAL_CONTENT, Some(CacheStatus::Hit))
    );
    assert_eq!(body.unwrap(), b"234");

    let etag = format!("\"{}\"", &Digest::of(b"0123456789").hex()[..16]);
    let (status, cache, body) =
        read(get(&site, "/pub/a.bin", &[("if-none-match", &etag)]).await).await;
    assert_eq!(
        (status, cache),
        (StatusCode::NOT_MODIFIED, Some(CacheStatus::Hit))
    );
    assert!(body.unwrap().is_empty());
    assert_eq!(origin.gets("/pub/a.bin").len(), 1, "one upstream GET");

    // The query is part of the key.
    read(get(&site, "/pub/a.bin?v=2", &[]).await).await;
    assert_eq!(origin.gets("/pub/a.bin?v=2").len(), 1);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_fetch() {
    let origin = Origin::start().await;
    let data = vec![5u8; 3 << 20];
    origin.put("/pub/big.bin", &data, &[]);
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;
    let asks = (0..6).map(|_| {
        let site = site.clone();
        async move { read(get(&site, "/pub/big.bin", &[]).await).await }
    });
    for (status, _, body) in futures::future::join_all(asks).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap().len(), data.len());
    }
    assert_eq!(origin.gets("/pub/big.bin").len(), 1);
}

#[tokio::test]
async fn no_store_and_errors_pass_through_and_nothing_is_kept() {
    let origin = Origin::start().await;
    origin.put("/pub/live", b"now", &[("cache-control", "no-store")]);
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;
    for _ in 0..2 {
        let (status, cache, body) = read(get(&site, "/pub/live", &[]).await).await;
        assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Bypass)));
        assert_eq!(body.unwrap(), b"now");
    }
    assert_eq!(origin.gets("/pub/live").len(), 2);
    let (status, _, _) = read(get(&site, "/pub/missing", &[]).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(site.cache.list_objects().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_then_served_stale_when_upstream_fails() {
    let origin = Origin::start().await;
    origin.put("/pub/r.txt", b"v1", &[("cache-control", "max-age=0")]);
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;
    read(get(&site, "/pub/r.txt", &[]).await).await;
    stored(&site, "/pub/r.txt").await;

    let (status, cache, body) = read(get(&site, "/pub/r.txt", &[]).await).await;
    assert_eq!(
        (status, cache),
        (StatusCode::OK, Some(CacheStatus::Revalidated))
    );
    assert_eq!(body.unwrap(), b"v1");
    let gets = origin.gets("/pub/r.txt");
    assert_eq!(gets.len(), 2);
    assert!(gets[1].is_some(), "the second GET was conditional");

    origin.fail("/pub/r.txt", StatusCode::SERVICE_UNAVAILABLE);
    let (status, cache, body) = read(get(&site, "/pub/r.txt", &[]).await).await;
    assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Stale)));
    assert_eq!(body.unwrap(), b"v1");

    // A silent upstream: the copy is served after the stale deadline.
    origin.put("/pub/r.txt", b"v1", &[("cache-control", "max-age=0")]);
    origin.hang("/pub/r.txt");
    let o = get(&site, "/pub/r.txt", &[]).await;
    assert!(
        o.detail
            .as_deref()
            .unwrap_or_default()
            .contains("did not answer")
    );
    let (status, cache, body) = read(o).await;
    assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Stale)));
    assert_eq!(body.unwrap(), b"v1");

    // New content replaces the entry.
    origin.put("/pub/r.txt", b"v2", &[("cache-control", "max-age=0")]);
    let (_, cache, body) = read(get(&site, "/pub/r.txt", &[]).await).await;
    assert_eq!(
        (cache, body.unwrap()),
        (Some(CacheStatus::Miss), b"v2".to_vec())
    );
}

#[tokio::test]
async fn variants_are_stored_apart() {
    let origin = Origin::start().await;
    origin.put("/pub/v", b"same", &[("vary", "Accept-Language")]);
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;
    for lang in ["en", "de", "en", "de"] {
        read(get(&site, "/pub/v", &[("accept-language", lang)]).await).await;
        stored(&site, &format!("/pub/v\naccept-language:{lang}")).await;
    }
    assert_eq!(origin.gets("/pub/v").len(), 2, "one fetch per variant");
}

#[tokio::test]
async fn checksums_verify_fills_and_a_mismatch_is_502_with_nothing_stored() {
    let origin = Origin::start().await;
    let good = b"release 1.0";
    // Verified, so stored, whatever its Cache-Control says.
    origin.put("/pub/app.tgz", good, &[("cache-control", "no-store")]);
    origin.put("/pub/lie.tgz", b"not what the list says", &[]);
    origin.put("/pub/listed.bin", b"listed", &[]);
    let sums = format!(
        "{}  lie.tgz\n{}  listed.bin\n",
        Digest::of(b"the truth").hex(),
        Digest::of(b"listed").hex()
    );
    origin.put("/pub/SHA256SUMS", sums.as_bytes(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "checksums:\n  - path: /pub/app.tgz\n    sha256: \"{}\"\n  - file: /pub/SHA256SUMS\n",
        Digest::of(good).hex()
    );
    let site = site_with(&origin, dir.path(), &extra).await;

    let (status, cache, body) = read(get(&site, "/pub/app.tgz", &[]).await).await;
    assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Miss)));
    assert_eq!(body.unwrap(), good);
    // Verified before the answer; stored a moment later.
    let mut kept = false;
    for _ in 0..500 {
        kept = site.cache.get(&Digest::of(good)).await.unwrap().is_some();
        if kept {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(kept, "the verified file was never stored");

    let o = get(&site, "/pub/lie.tgz", &[]).await;
    assert_eq!(o.fault, Some(crate::audit::Fault::Upstream));
    let (status, _, _) = read(o).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let lie = Digest::of(b"not what the list says");
    assert!(
        site.cache.get(&lie).await.unwrap().is_none(),
        "nothing stored"
    );

    let (status, _, body) = read(get(&site, "/pub/listed.bin", &[]).await).await;
    assert_eq!(
        (status, body.unwrap()),
        (StatusCode::OK, b"listed".to_vec())
    );
    // Served from its verified blob from now on, without asking upstream.
    read(get(&site, "/pub/listed.bin", &[]).await).await;
    assert_eq!(origin.gets("/pub/listed.bin").len(), 1);
}

#[tokio::test]
async fn seed_fetches_and_pins_under_host_and_path() {
    let origin = Origin::start().await;
    origin.put("/pub/fw.bin", b"firmware", &[]);
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;
    let report = super::seed(&site, "/pub/fw.bin", &|_| {}).await.unwrap();
    assert_eq!(report.pin, "files.test/pub/fw.bin");
    assert_eq!((report.blobs, report.bytes), (1, 8));
    let pins = site.cache.list_pins();
    assert_eq!(
        pins,
        vec![(
            "files.test/pub/fw.bin".to_owned(),
            vec![Digest::of(b"firmware")]
        )]
    );
    assert!(super::seed(&site, "/etc/passwd", &|_| {}).await.is_err());
}

#[tokio::test]
async fn only_allowed_paths_are_served() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;
    assert!(site.allowed("/pub/a/b.tgz"));
    for bad in [
        "/other/x",
        "/pub/../etc/passwd",
        "/pub/%2e%2e/x",
        "/pub/a%2Fb",
        "pub/x",
    ] {
        assert!(!site.allowed(bad), "{bad}");
    }
    let o = get_as(&site, Method::HEAD, "/pub/none", &[]).await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_blob_damaged_on_disk_is_never_served_whole_and_is_fetched_again() {
    let origin = Origin::start().await;
    let data = vec![9u8; 600 * 1024];
    origin.put("/pub/rot.bin", &data, &[]);
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(&origin, dir.path(), "").await;
    read(get(&site, "/pub/rot.bin", &[]).await).await;
    stored(&site, "/pub/rot.bin").await;
    let file = dir
        .path()
        .join("blobs/sha256")
        .join(Digest::of(&data).hex());
    let mut damaged = std::fs::read(&file).unwrap();
    damaged[1000] ^= 0x5a;
    std::fs::write(&file, &damaged).unwrap();

    let (status, cache, body) = read(get(&site, "/pub/rot.bin", &[]).await).await;
    assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Hit)));
    assert!(body.is_none(), "a damaged blob was served whole");
    // A range is served as read (it cannot be checked).
    let (status, _, body) = read(get(&site, "/pub/rot.bin", &[("range", "bytes=0-9")]).await).await;
    assert_eq!(
        (status, body.unwrap().len()),
        (StatusCode::PARTIAL_CONTENT, 10)
    );
    // The entry was forgotten: the next request fills it afresh.
    for _ in 0..500 {
        if site
            .cache
            .get_object("files.test", "/pub/rot.bin")
            .await
            .unwrap()
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, cache, body) = read(get(&site, "/pub/rot.bin", &[]).await).await;
    assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Miss)));
    assert_eq!(body.unwrap(), data);
    assert_eq!(origin.gets("/pub/rot.bin").len(), 2);
}

#[tokio::test]
async fn a_file_the_cache_will_not_take_is_passed_on_uncached() {
    let origin = Origin::start().await;
    let data = vec![3u8; 64 * 1024];
    origin.put("/pub/huge.iso", &data, &[]);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open_with(
        dir.path(),
        crate::cache::Limits {
            max_blob_size: 1024,
            ..crate::cache::Limits::new(1 << 30)
        },
    )
    .await
    .unwrap();
    let config: Site = serde_yaml::from_str(&format!(
        "host: files.test\nkind: files\nupstream: http://{}\npaths: [\"/pub/**\"]\n",
        origin.addr
    ))
    .unwrap();
    let upstream = Upstream::with_timeouts(&config, Timeouts::default()).unwrap();
    let site = FilesSite::new(&config, upstream, cache);
    for _ in 0..2 {
        let o = get(&site, "/pub/huge.iso", &[]).await;
        assert!(
            o.detail
                .as_deref()
                .unwrap_or_default()
                .starts_with("not cached"),
            "{:?}",
            o.detail
        );
        let (status, cache, body) = read(o).await;
        assert_eq!((status, cache), (StatusCode::OK, Some(CacheStatus::Bypass)));
        assert_eq!(body.unwrap(), data);
    }
    assert_eq!(origin.gets("/pub/huge.iso").len(), 2);
    assert!(site.cache.list_objects().await.unwrap().is_empty());
}
