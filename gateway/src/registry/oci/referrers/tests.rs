//! The referrers API against an in-process upstream on 127.0.0.1: the
//! tag schema fallback, the `artifactType` filter, the empty list, an
//! upstream that has the API, and the stale copy when upstream fails.
//!
//! The upstream module's test server is private to it; this one is the
//! same idea cut down to what a registry answers here.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

use super::{MT_INDEX, artifact_types, percent_decode};
use crate::{
    cache::{Cache, Digest},
    config::Site,
    registry::{Outcome, oci::OciSite},
    upstream::{Timeouts, Upstream},
};

const SIG_TYPE: &str = "application/vnd.cncf.notary.signature";
const SBOM_TYPE: &str = "application/spdx+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// What the upstream server was asked.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

type Reply = Response<Full<Bytes>>;

struct Server {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler = Arc::new(handler);
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let seen = seen.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let s = Seen {
                                method: req.method().clone(),
                                path: req.uri().path().to_owned(),
                                headers: req.headers().clone(),
                            };
                            seen.lock().unwrap().push(s.clone());
                            let reply = handler(&s);
                            async move { Ok::<_, Infallible>(reply) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).unwrap()
}

/// A manifest answer: its media type and the digest of its bytes.
fn manifest_reply(media_type: &str, body: &[u8]) -> Reply {
    let digest = sha256(body);
    reply(
        200,
        &[
            ("content-type", media_type),
            ("docker-content-digest", &digest),
        ],
        Bytes::copy_from_slice(body),
    )
}

fn not_found() -> Reply {
    reply(
        404,
        &[("content-type", "application/json")],
        r#"{"errors":[{"code":"NOT_FOUND","message":"no route"}]}"#,
    )
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", Digest::of(bytes).hex())
}

/// The subject: an image manifest digest.
fn subject() -> String {
    sha256(b"the subject image manifest")
}

fn descriptor(seed: &str, artifact_type: &str) -> Value {
    let bytes = format!("referrer {seed}");
    json!({
        "mediaType": MT_MANIFEST,
        "digest": sha256(bytes.as_bytes()),
        "size": bytes.len(),
        "artifactType": artifact_type,
        "annotations": {"org.opencontainers.image.created": "2026-01-02T03:04:05Z"},
    })
}

/// The referrers tag schema's index for [`subject`]: a signature and an
/// SBOM.
fn schema_index() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [descriptor("sig", SIG_TYPE), descriptor("sbom", SBOM_TYPE)],
    }))
    .unwrap()
}

fn schema_path() -> String {
    format!("/v2/app/manifests/{}", subject().replacen(':', "-", 1))
}

fn api_path() -> String {
    format!("/v2/app/referrers/{}", subject())
}

/// An upstream without the referrers API (answering `api_status` to it)
/// and with the tag schema's index; `down` makes it answer 503 to all.
fn no_api_upstream(api_status: u16, down: Arc<AtomicU16>) -> impl Fn(&Seen) -> Reply {
    let index = schema_index();
    move |s: &Seen| {
        let forced = down.load(Ordering::SeqCst);
        if forced != 0 {
            return reply(forced, &[], "");
        }
        if s.path == api_path() {
            return reply(api_status, &[], "404 page not found\n");
        }
        if s.path == schema_path() {
            return manifest_reply(MT_INDEX, &index);
        }
        not_found()
    }
}

/// A cache in a temp dir and a site on `server` with `ttl`.
async fn site(server: &Server, ttl: Duration) -> (tempfile::TempDir, Arc<OciSite>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), 1 << 30).await.unwrap();
    // From YAML, as an operator writes it: the struct may grow keys.
    let config: Site = serde_yaml::from_str(&format!(
        "host: registry.test\nkind: oci\nupstream: http://{}\n",
        server.addr
    ))
    .unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        response_headers: Duration::from_secs(5),
        body_idle: Duration::from_secs(5),
        pool_idle: Duration::from_secs(90),
        retry_backoff: vec![Duration::from_millis(10)],
    };
    let upstream = Upstream::with_timeouts(&config, timeouts).unwrap();
    (dir, OciSite::new("registry.test", upstream, cache, ttl))
}

/// A device's request through the site: the outcome and its body.
async fn ask(site: &OciSite, method: Method, path_and_query: &str) -> (Outcome, Bytes) {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri(path_and_query)
        .body(())
        .unwrap()
        .into_parts();
    let mut outcome = site.route(parts).await;
    let body = std::mem::replace(outcome.response.body_mut(), crate::proxy::body::empty());
    let bytes = body.collect().await.unwrap().to_bytes();
    (outcome, bytes)
}

fn header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
    o.response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn listed(body: &[u8]) -> Vec<Value> {
    let doc: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(doc["schemaVersion"], 2, "{doc}");
    assert_eq!(doc["mediaType"], MT_INDEX, "{doc}");
    doc["manifests"].as_array().unwrap().clone()
}

#[tokio::test]
async fn tag_schema_stands_in_for_a_missing_api() {
    let server = Server::start(no_api_upstream(404, Arc::default())).await;
    let (_dir, site) = site(&server, Duration::from_secs(300)).await;

    let (o, body) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(o.response.status(), StatusCode::OK, "{:?}", o.detail);
    assert_eq!(header(&o, "content-type"), Some(MT_INDEX));
    assert_eq!(
        header(&o, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(header(&o, "oci-filters-applied"), None, "nothing filtered");
    let expected: Value = serde_json::from_slice(&schema_index()).unwrap();
    assert_eq!(
        listed(&body),
        *expected["manifests"].as_array().unwrap(),
        "the tag schema's descriptors, artifactType and annotations included"
    );
    assert_eq!(o.cache, Some(crate::audit::CacheStatus::Miss));
    assert_eq!(o.fault, None);
    let detail = o.detail.unwrap_or_default();
    assert!(
        detail.contains("no referrers API (404 Not Found)")
            && detail.contains(&schema_path()["/v2/app/manifests/".len()..]),
        "{detail}"
    );

    // The API first, then the tag, asked for as an index by digest-checked
    // manifest GET.
    let seen = server.seen();
    assert_eq!(server.paths(), [api_path(), schema_path()]);
    let accept: Vec<&str> = seen[1]
        .headers
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(accept.contains(&MT_INDEX), "{accept:?}");
    assert!(seen.iter().all(|s| s.method == Method::GET));

    // Cached: the next ask does not reach upstream; HEAD says the same.
    let (again, same) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(again.cache, Some(crate::audit::CacheStatus::Hit));
    assert_eq!(same, body);
    let (head, empty) = ask(&site, Method::HEAD, &api_path()).await;
    assert_eq!(head.response.status(), StatusCode::OK);
    assert!(empty.is_empty());
    assert_eq!(
        header(&head, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(server.seen().len(), 2, "{:?}", server.paths());

    // The tag's index was kept as the manifest it is.
    let (tag, tag_body) = ask(&site, Method::GET, &schema_path()).await;
    assert_eq!(tag.cache, Some(crate::audit::CacheStatus::Hit));
    assert_eq!(tag_body, schema_index());
}

#[tokio::test]
async fn artifact_type_filter_is_applied_and_announced() {
    let server = Server::start(no_api_upstream(404, Arc::default())).await;
    let (_dir, site) = site(&server, Duration::from_secs(300)).await;
    let base = api_path();

    // Percent-encoded, as clients send it.
    let (o, body) = ask(
        &site,
        Method::GET,
        &format!("{base}?artifactType=application%2Fvnd.cncf.notary.signature"),
    )
    .await;
    assert_eq!(o.response.status(), StatusCode::OK, "{:?}", o.detail);
    assert_eq!(header(&o, "oci-filters-applied"), Some("artifactType"));
    assert_eq!(listed(&body), [descriptor("sig", SIG_TYPE)]);
    assert_eq!(o.cache, Some(crate::audit::CacheStatus::Miss));

    // Raw, with its `+` kept a `+`; and containerd's ns= beside it.
    let (o, body) = ask(
        &site,
        Method::GET,
        &format!("{base}?ns=registry.test&artifactType={SBOM_TYPE}"),
    )
    .await;
    assert_eq!(header(&o, "oci-filters-applied"), Some("artifactType"));
    assert_eq!(listed(&body), [descriptor("sbom", SBOM_TYPE)]);
    assert_eq!(
        o.cache,
        Some(crate::audit::CacheStatus::Hit),
        "filtered from the cached list"
    );

    let (o, body) = ask(
        &site,
        Method::GET,
        &format!("{base}?artifactType=application/x-none"),
    )
    .await;
    assert_eq!(o.response.status(), StatusCode::OK);
    assert_eq!(header(&o, "oci-filters-applied"), Some("artifactType"));
    assert!(listed(&body).is_empty());

    // Upstream saw the unfiltered list asked for once.
    assert_eq!(server.paths(), [api_path(), schema_path()]);
}

#[tokio::test]
async fn no_api_and_no_tag_is_an_empty_list() {
    let server = Server::start(|_: &Seen| not_found()).await;
    let (_dir, site) = site(&server, Duration::from_secs(300)).await;
    let (o, body) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(o.response.status(), StatusCode::OK, "{:?}", o.detail);
    assert_eq!(header(&o, "content-type"), Some(MT_INDEX));
    assert!(listed(&body).is_empty());
    assert!(
        o.detail.as_deref().unwrap_or_default().contains("either"),
        "{:?}",
        o.detail
    );
    assert_eq!(server.paths(), [api_path(), schema_path()]);
}

#[tokio::test]
async fn other_answers_of_a_missing_api_fall_back_too() {
    for status in [405, 501] {
        let server = Server::start(no_api_upstream(status, Arc::default())).await;
        let (_dir, site) = site(&server, Duration::from_secs(300)).await;
        let (o, body) = ask(&site, Method::GET, &api_path()).await;
        assert_eq!(
            o.response.status(),
            StatusCode::OK,
            "{status}: {:?}",
            o.detail
        );
        assert_eq!(listed(&body).len(), 2, "{status}");
        assert_eq!(server.paths(), [api_path(), schema_path()], "{status}");
    }
}

#[tokio::test]
async fn an_upstream_with_the_api_is_served_as_it_answers() {
    let answer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [descriptor("sig", SIG_TYPE)],
    }))
    .unwrap();
    let served = answer.clone();
    let server = Server::start(move |s: &Seen| {
        if s.path == api_path() {
            reply(
                200,
                &[("content-type", MT_INDEX)],
                Bytes::from(served.clone()),
            )
        } else {
            not_found()
        }
    })
    .await;
    let (_dir, site) = site(&server, Duration::from_secs(300)).await;
    let (o, body) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(o.response.status(), StatusCode::OK, "{:?}", o.detail);
    assert_eq!(body, answer, "upstream's bytes, untouched");
    assert_eq!(o.detail, None, "no fallback to report");
    assert_eq!(server.paths(), [api_path()], "no tag asked for");
    let accept = server.seen()[0]
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(accept.as_deref(), Some(MT_INDEX));

    // Filtered here, not upstream: upstream saw no query and no new ask.
    let (o, body) = ask(
        &site,
        Method::GET,
        &format!("{}?artifactType={SBOM_TYPE}", api_path()),
    )
    .await;
    assert_eq!(header(&o, "oci-filters-applied"), Some("artifactType"));
    assert!(listed(&body).is_empty());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn the_last_list_is_served_stale_when_upstream_fails() {
    let down = Arc::new(AtomicU16::new(0));
    let server = Server::start(no_api_upstream(404, down.clone())).await;
    // TTL 0: every ask revalidates.
    let (_dir, site) = site(&server, Duration::ZERO).await;
    let (first, body) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(first.response.status(), StatusCode::OK);
    let (second, same) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(
        second.cache,
        Some(crate::audit::CacheStatus::Revalidated),
        "{:?}",
        second.detail
    );
    assert_eq!(same, body);

    down.store(503, Ordering::SeqCst);
    let (o, stale) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(o.response.status(), StatusCode::OK);
    assert_eq!(o.cache, Some(crate::audit::CacheStatus::Stale));
    assert_eq!(o.fault, Some(crate::audit::Fault::Upstream));
    assert!(
        o.detail.as_deref().unwrap_or_default().contains("503"),
        "{:?}",
        o.detail
    );
    assert_eq!(stale, body);
    // A filter never asked for online is answered from the same copy.
    let (o, sig) = ask(
        &site,
        Method::GET,
        &format!("{}?artifactType={SIG_TYPE}", api_path()),
    )
    .await;
    assert_eq!(o.cache, Some(crate::audit::CacheStatus::Stale));
    assert_eq!(header(&o, "oci-filters-applied"), Some("artifactType"));
    assert_eq!(listed(&sig), [descriptor("sig", SIG_TYPE)]);

    // Without a copy, the failure is upstream's, and a 502.
    let other = format!("/v2/app/referrers/{}", sha256(b"another subject"));
    let (o, _) = ask(&site, Method::GET, &other).await;
    assert_eq!(o.response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(o.fault, Some(crate::audit::Fault::Upstream));
}

#[tokio::test]
async fn a_tag_that_is_no_index_or_lies_about_its_digest_is_upstreams_fault() {
    let image = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256(b"{}"), "size": 2},
        "layers": [],
    }))
    .unwrap();
    let lie = Arc::new(AtomicU16::new(0));
    let server = Server::start({
        let lie = lie.clone();
        move |s: &Seen| {
            if s.path != schema_path() {
                return not_found();
            }
            if lie.load(Ordering::SeqCst) == 0 {
                manifest_reply(MT_MANIFEST, &image)
            } else {
                // The index's bytes, announced under another digest.
                reply(
                    200,
                    &[
                        ("content-type", MT_INDEX),
                        ("docker-content-digest", &sha256(b"something else")),
                    ],
                    Bytes::from(schema_index()),
                )
            }
        }
    })
    .await;
    let (_dir, site) = site(&server, Duration::from_secs(300)).await;
    let (o, body) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(o.response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(o.fault, Some(crate::audit::Fault::Upstream));
    let detail = o.detail.unwrap_or_default();
    assert!(detail.contains("not an image index"), "{detail}");
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["errors"][0]["code"], "UNAVAILABLE", "{err}");

    lie.store(1, Ordering::SeqCst);
    let (o, _) = ask(&site, Method::GET, &api_path()).await;
    assert_eq!(o.response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(o.cache, None, "nothing was served from the cache");
    assert!(
        o.detail
            .as_deref()
            .unwrap_or_default()
            .contains("announced"),
        "{:?}",
        o.detail
    );
    // Neither answer was cached: upstream is asked each time.
    assert_eq!(
        server.paths(),
        [api_path(), schema_path(), api_path(), schema_path()]
    );
}

#[test]
fn queries_are_decoded() {
    assert_eq!(
        artifact_types("?artifactType=application%2Fvnd.cncf.notary.signature"),
        [SIG_TYPE]
    );
    assert_eq!(
        artifact_types("?n=1&artifactType=a%2Fb%2Bjson&artifactType=c/d+json&artifactType="),
        ["a/b+json", "c/d+json"]
    );
    assert!(artifact_types("").is_empty());
    assert!(artifact_types("?artifacttype=x").is_empty());
    assert_eq!(percent_decode("%zz%4"), "%zz%4", "malformed escapes kept");
    assert_eq!(percent_decode("%+1x"), "%+1x", "a sign is no hex digit");
    assert_eq!(percent_decode("%c3%a9"), "é");
}

/// A 403 from upstream is an answer, not an outage: access was revoked,
/// so the tag held is neither served stale now nor later, when upstream
/// goes down.
#[tokio::test]
async fn a_403_revokes_the_held_tag() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let status = Arc::new(AtomicU16::new(200));
    let server = Server::start({
        let status = status.clone();
        move |_seen| match status.load(Ordering::SeqCst) {
            200 => manifest_reply(MT_MANIFEST, manifest),
            s => reply(s, &[], ""),
        }
    })
    .await;
    let (_dir, site) = site(&server, Duration::ZERO).await;
    let path = "/v2/app/manifests/v1";
    let (o, body) = ask(&site, Method::GET, path).await;
    assert_eq!(o.response.status(), StatusCode::OK);
    assert_eq!(&body[..], &manifest[..]);

    status.store(403, Ordering::SeqCst);
    let (o, body) = ask(&site, Method::GET, path).await;
    assert_eq!(o.response.status(), StatusCode::FORBIDDEN, "{:?}", o.detail);
    assert!(
        String::from_utf8_lossy(&body).contains("DENIED"),
        "{body:?}"
    );

    // Upstream down now: the revoked tag is not brought back as stale.
    status.store(503, Ordering::SeqCst);
    let (o, body) = ask(&site, Method::GET, path).await;
    assert_ne!(o.response.status(), StatusCode::OK, "{body:?}");
    assert_ne!(o.cache, Some(crate::audit::CacheStatus::Stale));
    assert_ne!(&body[..], &manifest[..]);
}
