//! The S3 client on the project's HTTP stack (http.rs), against an
//! in-process HTTP server standing in for the store: requests are
//! path-style, signed with SigV4 for the key id, and never carry the
//! secret; a 404 is an answer, a refused connection marks the store
//! down.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::SharedStore;

#[tokio::test]
async fn the_s3_client_signs_path_style_requests_and_a_404_is_an_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let server = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok((conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        seen.lock().unwrap().push((
                            req.method().to_string(),
                            req.uri().path().to_owned(),
                            auth,
                        ));
                        async {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        }
    });
    // A secret file, not an environment variable: setting one races with
    // other tests reading theirs.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s3.secret");
    std::fs::write(&file, "s3cr3t-value\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret = format!("secret_access_key_file: {}", file.display());
    let cfg: crate::config::Store = serde_yaml::from_str(&format!(
        "endpoint: http://{addr}\nbucket: gateway-cache\nregion: garage\naccess_key_id: GK0123\n{secret}\nprefix: site-a\n"
    ))
    .unwrap();
    let store = SharedStore::open(&cfg).unwrap();
    assert!(!format!("{store:?}").contains("s3cr3t"));
    store.probe_once().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let (method, path, auth) = seen.first().expect("no request reached the store");
    assert_eq!(method, "HEAD");
    assert_eq!(path, "/gateway-cache/site-a/probe");
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=GK0123/") && auth.contains("/garage/s3/"),
        "{auth}"
    );
    assert!(seen.iter().all(|(_, _, a)| !a.contains("s3cr3t")));
    // A refused connection: the store is marked down at once.
    server.abort();
    let _ = server.await;
    let cfg_closed: crate::config::Store = serde_yaml::from_str(&format!(
        "endpoint: http://127.0.0.1:1\nbucket: gateway-cache\nregion: garage\naccess_key_id: GK0123\n{secret}\n"
    ))
    .unwrap();
    let closed = SharedStore::open(&cfg_closed).unwrap();
    assert!(closed.probe_once().await.unwrap_err().marks_down());
    closed.check_now().await;
    assert!(!closed.is_up());
    assert!(closed.status().last_error.is_some());
}
