//! Tests against in-process servers on 127.0.0.1; no external network.

mod auth;
mod faults;
mod proxy;
mod rate;
mod redirects;
mod secrets;
mod tls;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle};

use super::{Timeouts, Upstream, UpstreamError};
use crate::config::{Credentials, Site, SiteKind};

pub(super) const PASSWORD: &str = "hunter2-Pa55";

/// What a test server received.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub version: Version,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn path(&self) -> &str {
        self.uri.path()
    }

    pub fn query(&self) -> &str {
        self.uri.query().unwrap_or("")
    }
}

type Reply = Response<Full<Bytes>>;

/// An HTTP/1.1 and HTTP/2 server that records every request and answers
/// with `handler`.
pub(super) struct Server {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with(None, handler).await
    }

    pub async fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
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
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let s = Seen {
                                method: req.method().clone(),
                                uri: req.uri().clone(),
                                headers: req.headers().clone(),
                                version: req.version(),
                            };
                            seen.lock().unwrap().push(s.clone());
                            let reply = handler(&s);
                            async move { Ok::<_, Infallible>(reply) }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match tls {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    let _ = builder
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await;
                                }
                            }
                            None => {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
            }
        });
        Self { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub(super) fn ok(body: &str) -> Reply {
    reply(200, &[], body)
}

pub(super) fn site(upstream: &str) -> Site {
    Site {
        upstream: Some(upstream.into()),
        ..Site::new("registry.test", SiteKind::Oci)
    }
}

/// `site` with user `puller` and [`PASSWORD`] in a file under `dir`.
pub(super) fn with_password(mut site: Site, dir: &Path, password: &str) -> Site {
    let path = dir.join("password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    site.credentials = Some(Credentials {
        username: "puller".into(),
        password_file: Some(path),
        password_env: None,
    });
    site
}

/// `Basic base64(puller:password)`.
pub(super) fn basic(password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("puller:{password}"));
    format!("Basic {encoded}")
}

/// Short timeouts and pauses so that failing tests fail fast.
pub(super) fn fast() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        response_headers: Duration::from_secs(5),
        body_idle: Duration::from_secs(5),
        pool_idle: Duration::from_secs(90),
        retry_backoff: vec![Duration::from_millis(10), Duration::from_millis(20)],
    }
}

pub(super) fn upstream(site: &Site) -> Upstream {
    Upstream::with_timeouts(site, fast()).unwrap()
}

/// The whole body through [`Upstream::body_stream`].
pub(super) async fn body(up: &Upstream, resp: Response<Incoming>) -> Result<String, UpstreamError> {
    let mut stream = up.body_stream(resp);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(String::from_utf8(out).unwrap())
}

/// Display, Debug and the whole source chain of an error.
pub(super) fn all_text(e: &UpstreamError) -> String {
    let mut text = format!("{e} | {e:?}");
    let mut next = std::error::Error::source(e);
    while let Some(source) = next {
        text.push_str(&format!(" | {source} | {source:?}"));
        next = source.source();
    }
    text
}
