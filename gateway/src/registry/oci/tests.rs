//! Fills and manifests by digest through the site handler, against an
//! in-process upstream on 127.0.0.1 that can stream slowly or for ever:
//! the cache's bounds as devices see them (status, audit fault, nothing
//! left on disk), a device hanging up, and a layer's digest asked for as a
//! manifest.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    convert::Infallible,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt as _, stream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{
    body::{Body as _, Frame},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle, time::timeout};

use super::OciSite;
use crate::{
    cache::{Cache, Digest, Limits},
    config::Site,
    registry::Outcome,
    upstream::{Timeouts, Upstream},
};

type Body = BoxBody<Bytes, Infallible>;

/// How the upstream answers one path.
#[derive(Clone)]
pub(super) enum Answer {
    /// 200 with these bytes and their Content-Length.
    Bytes(&'static str, Bytes),
    /// 200, chunked, `chunk` again and again with `pause` between, for
    /// ever or `count` times.
    Stream {
        chunk: Bytes,
        pause: Duration,
        count: Option<usize>,
        length: Option<u64>,
    },
    /// 404 MANIFEST_UNKNOWN, as a registry answers a digest it has no
    /// manifest for.
    ManifestUnknown,
    /// 503 with an empty body: a registry in an outage.
    Unavailable,
}

pub(super) struct Upstreamish {
    pub(super) addr: std::net::SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Upstreamish {
    pub(super) async fn start(answers: Vec<(String, Answer)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let answers = Arc::new(answers);
        let task = tokio::spawn({
            let asked = asked.clone();
            async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (asked, answers) = (asked.clone(), answers.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let path = req.uri().path().to_owned();
                            asked.lock().unwrap().push(path.clone());
                            let answer = answers.iter().find(|(p, _)| *p == path).map(|(_, a)| a);
                            let reply = reply(answer.cloned());
                            async move { Ok::<_, Infallible>(reply) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(conn), service)
                            .await;
                    });
                }
            }
        });
        Self { addr, asked, task }
    }

    pub(super) fn asked(&self, path: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

impl Drop for Upstreamish {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(answer: Option<Answer>) -> Response<Body> {
    let builder = Response::builder();
    match answer {
        Some(Answer::Bytes(media_type, bytes)) => builder
            .header("content-type", media_type)
            .header("content-length", bytes.len())
            .body(http_body_util::Full::new(bytes).boxed())
            .unwrap(),
        Some(Answer::Stream {
            chunk,
            pause,
            count,
            length,
        }) => {
            let chunks = stream::repeat(chunk)
                .take(count.unwrap_or(usize::MAX))
                .then(move |c| async move {
                    tokio::time::sleep(pause).await;
                    Ok::<_, Infallible>(Frame::data(c))
                });
            let mut builder = builder.header("content-type", "application/octet-stream");
            if let Some(len) = length {
                builder = builder.header("content-length", len);
            }
            builder
                .body(BodyExt::boxed(StreamBody::new(chunks)))
                .unwrap()
        }
        Some(Answer::Unavailable) => builder
            .status(503)
            .body(http_body_util::Full::new(Bytes::new()).boxed())
            .unwrap(),
        Some(Answer::ManifestUnknown) | None => builder
            .status(404)
            .header("content-type", "application/json")
            .body(
                http_body_util::Full::new(Bytes::from_static(
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                ))
                .boxed(),
            )
            .unwrap(),
    }
}

/// A site on `upstream` with a cache bounded by `limits`.
pub(super) async fn site(upstream: &Upstreamish, dir: &Path, limits: Limits) -> OciSite {
    let cache = Cache::open_with(dir, limits).await.unwrap();
    let config: Site = serde_yaml::from_str(&format!(
        "host: registry.test\nkind: oci\nupstream: http://{}\n",
        upstream.addr
    ))
    .unwrap();
    let upstream = Upstream::with_timeouts(&config, Timeouts::default()).unwrap();
    Arc::into_inner(OciSite::new(
        "registry.test",
        upstream,
        cache,
        Duration::from_secs(300),
    ))
    .unwrap()
}

pub(super) async fn ask(site: &OciSite, path: &str) -> Outcome {
    let (parts, ()) = Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(())
        .unwrap()
        .into_parts();
    site.route(parts).await
}

/// The body read to its end, or to its first error.
pub(super) async fn read(o: Outcome) -> (Vec<u8>, bool) {
    let mut body = o.response.into_body().into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => return (out, false),
        }
    }
    (out, true)
}

fn tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}

/// Waits (bounded) until no fill runs and no temp file is left.
pub(super) async fn settled(site: &OciSite, dir: &Path) {
    for _ in 0..1000 {
        if site.cache.stats().fills_in_progress == 0 && tmp_files(dir) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "fills left: {:?}, temp files: {}",
        site.cache.stats(),
        tmp_files(dir)
    );
}

pub(super) fn blob_path(digest: &str) -> String {
    format!("/v2/app/blobs/{digest}")
}

pub(super) fn small() -> Limits {
    small_but(1 << 20)
}

/// Blobs up to `max_blob_size`, a short abandon grace.
fn small_but(max_blob_size: u64) -> Limits {
    Limits {
        max_blob_size,
        abandon_grace: Duration::from_millis(100),
        ..Limits::new(1 << 30)
    }
}

#[tokio::test]
async fn an_endless_blob_is_cut_at_the_cap_and_nothing_is_stored() {
    let digest = Digest::of(b"anything").to_string();
    let up = Upstreamish::start(vec![(
        blob_path(&digest),
        Answer::Stream {
            chunk: Bytes::from(vec![7u8; 64 * 1024]),
            pause: Duration::ZERO,
            count: None,
            length: None,
        },
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(&up, dir.path(), small()).await;
    let o = ask(&site, &blob_path(&digest)).await;
    // Chunked (no size to announce), and it ends in an error, short.
    assert_eq!(o.response.status(), StatusCode::OK);
    let (bytes, clean) = read(o).await;
    assert!(!clean, "an endless body ended cleanly");
    assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
    settled(&site, dir.path()).await;
    let d = Digest::parse(&digest).unwrap();
    assert!(site.cache.get(&d).await.unwrap().is_none());
    assert_eq!(site.cache.stats().reserved_bytes, 0);
}

#[tokio::test]
async fn an_announced_blob_over_the_cap_is_507_before_a_byte() {
    let digest = Digest::of(b"big").to_string();
    let up = Upstreamish::start(vec![(
        blob_path(&digest),
        Answer::Bytes("application/octet-stream", Bytes::from(vec![1u8; 2 << 20])),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(&up, dir.path(), small()).await;
    let o = ask(&site, &blob_path(&digest)).await;
    assert_eq!(o.response.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(o.fault, Some(crate::audit::Fault::Local));
    let detail = o.detail.clone().unwrap();
    assert!(detail.contains("max_blob_size"), "{detail}");
    let (body, _) = read(o).await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("SIZE_INVALID"), "{text}");
    settled(&site, dir.path()).await;
}

#[tokio::test]
async fn a_fill_nobody_follows_stops_and_its_temp_file_goes() {
    let digest = Digest::of(b"slow").to_string();
    let up = Upstreamish::start(vec![(
        blob_path(&digest),
        Answer::Stream {
            chunk: Bytes::from(vec![3u8; 16 * 1024]),
            pause: Duration::from_millis(20),
            count: None,
            length: None,
        },
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(&up, dir.path(), small()).await;
    let o = ask(&site, &blob_path(&digest)).await;
    let mut body = o.response.into_body().into_data_stream();
    assert!(body.next().await.unwrap().is_ok());
    assert_eq!(site.cache.stats().fills_in_progress, 1);
    // The device hangs up.
    drop(body);
    settled(&site, dir.path()).await;
    assert_eq!(site.cache.stats().reserved_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_device_leaving_fails_nobody() {
    let chunk = Bytes::from(vec![5u8; 16 * 1024]);
    let content: Vec<u8> = chunk
        .iter()
        .copied()
        .cycle()
        .take(64 * chunk.len())
        .collect();
    let digest = Digest::of(&content).to_string();
    let up = Upstreamish::start(vec![(
        blob_path(&digest),
        Answer::Stream {
            chunk,
            pause: Duration::from_millis(5),
            count: Some(64),
            length: Some(content.len() as u64),
        },
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = Arc::new(site(&up, dir.path(), small()).await);
    // The first device leads the fill, and leaves after a chunk.
    let first = ask(&site, &blob_path(&digest)).await;
    let second = ask(&site, &blob_path(&digest)).await;
    let mut body = first.response.into_body().into_data_stream();
    assert!(body.next().await.unwrap().is_ok());
    drop(body);
    let (bytes, clean) = timeout(Duration::from_secs(60), read(second))
        .await
        .unwrap();
    assert!(
        clean && bytes == content,
        "the follower got {} bytes",
        bytes.len()
    );
    // Readers finish at verification, a moment before the blob is stored.
    settled(&site, dir.path()).await;
    let d = Digest::parse(&digest).unwrap();
    assert!(site.cache.get(&d).await.unwrap().is_some());
    assert_eq!(up.asked(&blob_path(&digest)), 1);
}

#[tokio::test]
async fn a_layer_asked_for_as_a_manifest_is_manifest_unknown() {
    let layer = Bytes::from_static(b"layer bytes, not a manifest");
    let digest = Digest::of(&layer).to_string();
    let up = Upstreamish::start(vec![
        (
            blob_path(&digest),
            Answer::Bytes("application/octet-stream", layer.clone()),
        ),
        (
            format!("/v2/app/manifests/{digest}"),
            Answer::ManifestUnknown,
        ),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(&up, dir.path(), small()).await;
    let (bytes, clean) = read(ask(&site, &blob_path(&digest)).await).await;
    assert!(clean && bytes == layer);
    // Held as a blob, but never fetched as a manifest: not served as one.
    let o = ask(&site, &format!("/v2/app/manifests/{digest}")).await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);
    let (body, _) = read(o).await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");
    // A small blob might be a manifest fetched as a blob: upstream says.
    assert_eq!(up.asked(&format!("/v2/app/manifests/{digest}")), 1);
}

#[tokio::test]
async fn a_layer_larger_than_any_manifest_is_manifest_unknown_without_upstream() {
    let layer = Bytes::from(vec![9u8; (4 << 20) + 1]);
    let digest = Digest::of(&layer).to_string();
    let manifest_path = format!("/v2/app/manifests/{digest}");
    let up = Upstreamish::start(vec![(
        blob_path(&digest),
        Answer::Bytes("application/octet-stream", layer.clone()),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(&up, dir.path(), small_but(8 << 20)).await;
    let (bytes, clean) = read(ask(&site, &blob_path(&digest)).await).await;
    assert!(clean && bytes.len() == layer.len());
    settled(&site, dir.path()).await;
    let o = ask(&site, &manifest_path).await;
    assert_eq!(o.response.status(), StatusCode::NOT_FOUND);
    assert!(
        o.detail
            .clone()
            .unwrap()
            .contains("larger than any manifest")
    );
    let (body, _) = read(o).await;
    assert!(String::from_utf8_lossy(&body).contains("MANIFEST_UNKNOWN"));
    assert_eq!(up.asked(&manifest_path), 0, "upstream was asked");
}

#[tokio::test]
async fn a_manifest_by_digest_is_streamed_from_its_file() {
    const MT: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    let digest = Digest::of(&manifest).to_string();
    let path = format!("/v2/app/manifests/{digest}");
    let up = Upstreamish::start(vec![(path.clone(), Answer::Bytes(MT, manifest.clone()))]).await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(&up, dir.path(), small()).await;
    let miss = ask(&site, &path).await;
    assert_eq!(miss.cache, Some(crate::audit::CacheStatus::Miss));
    assert_eq!(read(miss).await, (manifest.to_vec(), true));

    let hit = ask(&site, &path).await;
    assert_eq!(hit.cache, Some(crate::audit::CacheStatus::Hit));
    let h = hit.response.headers();
    assert_eq!(h["content-type"], MT);
    assert_eq!(h["content-length"], manifest.len().to_string().as_str());
    assert_eq!(h["docker-content-digest"], digest.as_str());
    // A stream from the file, not a buffer: its length is not known to
    // the body itself.
    assert_eq!(hit.response.body().size_hint().exact(), None);
    assert_eq!(read(hit).await, (manifest.to_vec(), true));
    assert_eq!(up.asked(&path), 1, "the hit went upstream");

    // Another repository never fetched it: it is not served from here.
    let other = ask(&site, &format!("/v2/other/manifests/{digest}")).await;
    assert_eq!(other.response.status(), StatusCode::NOT_FOUND);
}

/// `cache.stale_while_revalidate`: a tag past its TTL is answered from the
/// cache at once, marked stale, and revalidated in the background, after
/// which it is fresh again; with upstream gone it is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_is_served_at_once_and_revalidated_in_the_background() {
    use crate::audit::CacheStatus;
    const MT: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    let path = "/v2/app/manifests/v1".to_owned();
    let up = Upstreamish::start(vec![(path.clone(), Answer::Bytes(MT, manifest.clone()))]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open_with(dir.path(), small()).await.unwrap();
    let config: Site = serde_yaml::from_str(&format!(
        "host: registry.test\nkind: oci\nupstream: http://{}\n",
        up.addr
    ))
    .unwrap();
    let upstream = Upstream::with_timeouts(&config, Timeouts::default()).unwrap();
    let site = OciSite::with_stale_while_revalidate(
        "registry.test",
        upstream,
        cache,
        Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    let miss = ask(&site, &path).await;
    assert_eq!(miss.cache, Some(CacheStatus::Miss));
    assert_eq!(read(miss).await, (manifest.to_vec(), true));
    // Two minutes old: past the TTL, inside the window.
    let age = |site: Arc<OciSite>| async move {
        let key = ("registry.test", "app", "manifests/v1");
        let mut e = site
            .cache
            .get_ref(key.0, key.1, key.2)
            .await
            .unwrap()
            .unwrap();
        e.fetched_at -= 120;
        site.cache.put_ref(key.0, key.1, key.2, e).await.unwrap();
    };
    age(site.clone()).await;
    let asked = up.asked(&path);

    let stale = ask(&site, &path).await;
    assert_eq!(stale.cache, Some(CacheStatus::Stale));
    assert!(
        stale.detail.as_deref().unwrap_or("").contains("background"),
        "{:?}",
        stale.detail
    );
    assert_eq!(stale.fault, None, "upstream was not asked for this answer");
    assert_eq!(read(stale).await, (manifest.to_vec(), true));
    // The revalidation refreshes the tag: a later request is a hit.
    let mut hit = false;
    for _ in 0..200 {
        if ask(&site, &path).await.cache == Some(CacheStatus::Hit) {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hit, "the tag was never revalidated in the background");
    assert!(up.asked(&path) > asked, "upstream was not asked");

    // Upstream gone (the same cache behind an upstream on a port nobody
    // listens on: dropping `up` would leave its pooled connections
    // answering): answered from the cache every time, stale, since no
    // background revalidation can refresh it.
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let config: Site = serde_yaml::from_str(&format!(
        "host: registry.test\nkind: oci\nupstream: http://{gone}\n"
    ))
    .unwrap();
    let offline = OciSite::with_stale_while_revalidate(
        "registry.test",
        Upstream::with_timeouts(&config, Timeouts::default()).unwrap(),
        site.cache.clone(),
        Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    age(offline.clone()).await;
    for _ in 0..3 {
        let o = ask(&offline, &path).await;
        assert_eq!(o.cache, Some(CacheStatus::Stale));
        assert_eq!(read(o).await, (manifest.to_vec(), true));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With the window at 0 (the default) a tag past its TTL is revalidated
/// before the answer: a revalidated or missed answer, never stale while
/// upstream answers.
#[tokio::test]
async fn without_the_window_a_stale_tag_is_revalidated_first() {
    use crate::audit::CacheStatus;
    const MT: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    let path = "/v2/app/manifests/v1".to_owned();
    let up = Upstreamish::start(vec![(path.clone(), Answer::Bytes(MT, manifest.clone()))]).await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(&up, dir.path(), small()).await;
    assert_eq!(ask(&site, &path).await.cache, Some(CacheStatus::Miss));
    let key = ("registry.test", "app", "manifests/v1");
    let mut e = site
        .cache
        .get_ref(key.0, key.1, key.2)
        .await
        .unwrap()
        .unwrap();
    e.fetched_at -= 600;
    site.cache.put_ref(key.0, key.1, key.2, e).await.unwrap();
    let o = ask(&site, &path).await;
    assert!(
        matches!(o.cache, Some(CacheStatus::Revalidated | CacheStatus::Miss)),
        "{:?}",
        o.cache
    );
}

/// With the window at 0, an outage stalls one request, not every one: a
/// tag past its TTL whose refresh finds upstream down is served stale,
/// and while the site backs off (swr.rs) the next requests get the held
/// copy without asking upstream again.
#[tokio::test]
async fn an_outage_found_once_is_not_asked_again_for_every_request() {
    use crate::audit::CacheStatus;
    const MT: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    let path = "/v2/app/manifests/v1".to_owned();
    let up = Upstreamish::start(vec![(path.clone(), Answer::Bytes(MT, manifest.clone()))]).await;
    let dir = tempfile::tempdir().unwrap();
    let online = site(&up, dir.path(), small()).await;
    assert_eq!(ask(&online, &path).await.cache, Some(CacheStatus::Miss));
    let key = ("registry.test", "app", "manifests/v1");
    let mut e = online
        .cache
        .get_ref(key.0, key.1, key.2)
        .await
        .unwrap()
        .unwrap();
    e.fetched_at -= 600;
    online.cache.put_ref(key.0, key.1, key.2, e).await.unwrap();

    // The same cache behind an upstream in an outage.
    let down = Upstreamish::start(vec![(path.clone(), Answer::Unavailable)]).await;
    let config: Site = serde_yaml::from_str(&format!(
        "host: registry.test\nkind: oci\nupstream: http://{}\n",
        down.addr
    ))
    .unwrap();
    let offline = OciSite::new(
        "registry.test",
        Upstream::with_timeouts(&config, Timeouts::default()).unwrap(),
        online.cache.clone(),
        Duration::from_secs(60),
    );
    let first = ask(&offline, &path).await;
    assert_eq!(first.cache, Some(CacheStatus::Stale));
    // (The upstream client retries a 503 itself.)
    assert!(down.asked(&path) >= 1, "the first request asks upstream");
    assert_eq!(read(first).await, (manifest.to_vec(), true));
    // The backoff after a failure is a second, doubling: one of three
    // requests made right after a failed attempt skips upstream however
    // slow this machine is.
    let mut skipped = false;
    for _ in 0..3 {
        let before = down.asked(&path);
        let o = ask(&offline, &path).await;
        assert_eq!(o.cache, Some(CacheStatus::Stale));
        let detail = o.detail.clone().unwrap_or_default();
        assert_eq!(read(o).await, (manifest.to_vec(), true));
        if down.asked(&path) == before {
            assert!(detail.contains("last attempt"), "{detail}");
            skipped = true;
            break;
        }
    }
    assert!(skipped, "every request during the outage asked upstream");
}
