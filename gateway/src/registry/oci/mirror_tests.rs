//! A mirror run against an in-process upstream: the tag list's `Link`
//! pages are followed, patterns keep their tags only, a second run of
//! unchanged tags asks upstream nothing but HEADs (and the tag list), a
//! moved tag is fetched again and re-pinned, a tag gone upstream is
//! unpinned, a dry run stores nothing, and a closed window stops a run
//! before it fetches.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::{
    OciSite,
    mirror::{Options, pin_name, sync_repository},
};
use crate::{
    cache::{Cache, Digest},
    config::{Mirror, Site},
    mirror::{Watch, rate::Pull},
    upstream::{Timeouts, Upstream},
};

const MT: &str = "application/vnd.oci.image.manifest.v1+json";

/// Path -> (content type, bytes); `tags` pages by whether the query has
/// `last=`.
#[derive(Default)]
struct Registry {
    docs: HashMap<String, (&'static str, Bytes)>,
    tags: Vec<String>,
    /// A tag list answered instead of `tags`: body and `Link` header.
    bad_list: Option<(&'static str, Option<&'static str>)>,
    asked: Vec<String>,
}

type Shared = Arc<Mutex<Registry>>;

async fn serve(reg: Shared) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let reg = reg.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let reply = answer(&reg, &req);
                    async move { Ok::<_, Infallible>(reply) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    addr
}

fn answer(reg: &Shared, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let mut reg = reg.lock().unwrap();
    let path = req.uri().path().to_owned();
    reg.asked.push(format!("{} {path}", req.method()));
    if path == "/v2/r/tags/list"
        && let Some((body, link)) = reg.bad_list
    {
        let mut resp = Response::builder().header("content-type", "application/json");
        if let Some(link) = link {
            resp = resp.header("link", link);
        }
        return resp
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
    }
    if path == "/v2/r/tags/list" {
        // Two pages: the first tag, then the rest.
        let second = req.uri().query().unwrap_or_default().contains("last=");
        let (page, next) = match reg.tags.split_first() {
            Some((first, rest)) if !second => (vec![first.clone()], !rest.is_empty()),
            Some((_, rest)) => (rest.to_vec(), false),
            None => (Vec::new(), false),
        };
        let body = serde_json::json!({ "name": "r", "tags": page }).to_string();
        let mut resp = Response::builder().header("content-type", "application/json");
        if next {
            resp = resp.header(
                "link",
                format!("</v2/r/tags/list?n=1000&last={}>; rel=\"next\"", page[0]),
            );
        }
        return resp.body(Full::new(Bytes::from(body))).unwrap();
    }
    match reg.docs.get(&path) {
        Some((mt, bytes)) => {
            let mut resp = Response::builder()
                .header("content-type", *mt)
                .header("content-length", bytes.len());
            if *mt == MT {
                resp = resp.header("docker-content-digest", Digest::of(bytes).to_string());
            }
            let body = if req.method() == http::Method::HEAD {
                Bytes::new()
            } else {
                bytes.clone()
            };
            resp.body(Full::new(body)).unwrap()
        }
        None => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"{\"errors\":[]}")))
            .unwrap(),
    }
}

/// Puts an image (config and one layer) under `tag`; its manifest digest.
fn image(reg: &Shared, tag: &str, seed: u8) -> (String, Vec<String>) {
    let config = Bytes::from(format!("{{\"seed\":{seed}}}"));
    let layer = Bytes::from(vec![seed; 4096 + usize::from(seed)]);
    let desc = |b: &Bytes| serde_json::json!({ "mediaType": "x", "digest": Digest::of(b).to_string(), "size": b.len() });
    let manifest = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2, "mediaType": MT,
            "config": desc(&config), "layers": [desc(&layer)],
        })
        .to_string(),
    );
    let digest = Digest::of(&manifest).to_string();
    let mut r = reg.lock().unwrap();
    let blobs = vec![
        Digest::of(&config).to_string(),
        Digest::of(&layer).to_string(),
    ];
    for b in [config, layer] {
        r.docs.insert(
            format!("/v2/r/blobs/{}", Digest::of(&b)),
            ("application/octet-stream", b),
        );
    }
    r.docs
        .insert(format!("/v2/r/manifests/{digest}"), (MT, manifest.clone()));
    r.docs
        .insert(format!("/v2/r/manifests/{tag}"), (MT, manifest));
    if !r.tags.iter().any(|t| t == tag) {
        r.tags.push(tag.to_owned());
    }
    (digest, blobs)
}

struct Quiet;

impl Watch for Quiet {
    fn line(&self, _: String) {}
    fn bytes(&self, _: u64, _: u64, _: &str) {}
}

fn entry() -> Mirror {
    serde_yaml::from_str("site: registry.test\nrepositories: [r]\ntags: [\"v1.*\"]\nevery: 1h\n")
        .unwrap()
}

fn opts(dry_run: bool) -> Options {
    Options {
        dry_run,
        deadline: None,
        pull: Arc::new(Pull::new(None)),
    }
}

async fn site(addr: std::net::SocketAddr, dir: &std::path::Path) -> Arc<OciSite> {
    let cache = Cache::open(dir, 1 << 30).await.unwrap();
    let config: Site = serde_yaml::from_str(&format!(
        "host: registry.test\nkind: oci\nupstream: http://{addr}\n"
    ))
    .unwrap();
    let upstream = Upstream::with_timeouts(&config, Timeouts::default()).unwrap();
    OciSite::new("registry.test", upstream, cache, Duration::from_secs(300))
}

fn asked_since(reg: &Shared, from: usize) -> Vec<String> {
    reg.lock().unwrap().asked[from..].to_vec()
}

#[tokio::test]
async fn runs_follow_pages_skip_unchanged_tags_and_follow_moves() {
    let reg: Shared = Arc::default();
    let (v10, v10_blobs) = image(&reg, "v1.0", 1);
    image(&reg, "v2.0", 2);
    let (v11, _) = image(&reg, "v1.1", 3);
    let addr = serve(reg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(addr, dir.path()).await;
    let e = entry();

    // A dry run: both v1 tags (v1.1 is on the second page), nothing kept.
    let dry = sync_repository(&site, "r", &e, &opts(true), &Quiet)
        .await
        .unwrap();
    assert_eq!(dry.synced, ["v1.0", "v1.1"]);
    assert_eq!(dry.blobs, 4);
    assert_eq!(site.cache.stats().blobs, 0, "a dry run stored blobs");
    assert!(site.cache.list_pins().is_empty());

    let first = sync_repository(&site, "r", &e, &opts(false), &Quiet)
        .await
        .unwrap();
    assert_eq!(first.synced, ["v1.0", "v1.1"]);
    assert_eq!((first.blobs, first.failed.len()), (4, 0));
    let pins: HashMap<String, Vec<Digest>> = site.cache.list_pins().into_iter().collect();
    let v10_pin = &pins[&pin_name("registry.test", "r", "v1.0")];
    assert_eq!(v10_pin[0].to_string(), v10);
    for b in &v10_blobs {
        assert!(
            v10_pin.iter().any(|d| d.to_string() == *b),
            "{b} not pinned"
        );
    }
    assert_eq!(
        pins[&pin_name("registry.test", "r", "v1.1")][0].to_string(),
        v11
    );
    assert!(
        !reg.lock().unwrap().asked.iter().any(|a| a.contains("v2.0")),
        "a tag no pattern matches was asked for"
    );
    // Blobs land in the store a moment after their fill is verified.
    for _ in 0..200 {
        if site.cache.stats().blobs >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Unchanged: a HEAD per tag, and the tag list.
    let mark = reg.lock().unwrap().asked.len();
    let again = sync_repository(&site, "r", &e, &opts(false), &Quiet)
        .await
        .unwrap();
    assert_eq!(again.unchanged, ["v1.0", "v1.1"]);
    assert!(again.synced.is_empty() && again.blobs == 0);
    let asked = asked_since(&reg, mark);
    assert!(
        asked
            .iter()
            .all(|a| a.starts_with("HEAD /v2/r/manifests/v1.") || a == "GET /v2/r/tags/list"),
        "{asked:?}"
    );

    // v1.1 moves; v1.0 is deleted upstream.
    let (moved, _) = image(&reg, "v1.1", 4);
    {
        let mut r = reg.lock().unwrap();
        r.tags.retain(|t| t != "v1.0");
        r.docs.remove("/v2/r/manifests/v1.0");
    }
    let third = sync_repository(&site, "r", &e, &opts(false), &Quiet)
        .await
        .unwrap();
    assert_eq!(third.synced, ["v1.1"]);
    assert_eq!(third.blobs, 2);
    assert_eq!(third.unpinned, [pin_name("registry.test", "r", "v1.0")]);
    let pins: HashMap<String, Vec<Digest>> = site.cache.list_pins().into_iter().collect();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(
        pins[&pin_name("registry.test", "r", "v1.1")][0].to_string(),
        moved
    );
}

#[tokio::test]
async fn a_closed_window_stops_the_run_before_it_fetches() {
    let reg: Shared = Arc::default();
    image(&reg, "v1.0", 1);
    let addr = serve(reg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let site = site(addr, dir.path()).await;
    let closed = Options {
        deadline: Some(tokio::time::Instant::now()),
        ..opts(false)
    };
    let r = sync_repository(&site, "r", &entry(), &closed, &Quiet)
        .await
        .unwrap();
    assert!(r.stopped.is_some(), "{r:?}");
    assert!(r.synced.is_empty());
    assert!(site.cache.list_pins().is_empty());
    assert!(
        !reg.lock()
            .unwrap()
            .asked
            .iter()
            .any(|a| a.contains("/blobs/")),
        "a blob was fetched after the window closed"
    );
}

/// A tag list upstream sends that is not JSON, or whose next page links to
/// another repository, fails the run with an error naming it; nothing is
/// fetched or pinned.
#[tokio::test]
async fn a_bad_tag_list_from_upstream_fails_the_run_and_keeps_nothing() {
    for (bad, expect) in [
        (("<html>oops</html>", None), "is not JSON"),
        (
            (
                r#"{"name":"r","tags":["v1.0"]}"#,
                Some("</v2/other/tags/list?n=1&last=v1.0>; rel=\"next\""),
            ),
            "links elsewhere",
        ),
    ] {
        let reg: Shared = Arc::default();
        image(&reg, "v1.0", 1);
        reg.lock().unwrap().bad_list = Some(bad);
        let addr = serve(reg.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let site = site(addr, dir.path()).await;
        let err = sync_repository(&site, "r", &entry(), &opts(false), &Quiet)
            .await
            .expect_err("a bad tag list was taken");
        assert!(format!("{err:#}").contains(expect), "{err:#}");
        assert!(site.cache.list_pins().is_empty());
        assert_eq!(site.cache.stats().blobs, 0);
        assert!(
            !reg.lock()
                .unwrap()
                .asked
                .iter()
                .any(|a| a.contains("/manifests/") || a.contains("/blobs/")),
            "fetched after a bad tag list"
        );
    }
}
