//! The upstream proxy's CONNECT exchange against an in-process fake proxy
//! on 127.0.0.1: tunnels that carry plain HTTP and TLS to the origin,
//! refusals (407, 403), a proxy that talks garbage, stalls, floods its
//! head or hangs up, and `no_proxy`.

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::{
    config::UpstreamProxy,
    upstream::{BodyRate, Fault, ProxyError, UpstreamRequest, proxy_problems},
};

const PROXY_PASSWORD: &str = "proxy-Pa55-word";

/// What the fake proxy does after reading a CONNECT head.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200, then relays bytes to the CONNECT target.
    Tunnel,
    /// Answers this raw response and closes.
    Answer(&'static str),
    /// Says nothing and holds the connection.
    Hold,
    /// Closes without a byte.
    Close,
    /// Sends a head that never ends.
    Flood,
}

struct FakeProxy {
    addr: SocketAddr,
    /// Every CONNECT head received, in order.
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProxy {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let heads = heads.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, behaviour, heads.clone()));
                }
            }
        });
        Self {
            addr,
            heads,
            accepted,
            task,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// A config for this proxy, with credentials when `password` is given
    /// (in a 0600 file under `dir`).
    fn config(&self, dir: &Path, password: Option<&str>) -> UpstreamProxy {
        let password_file = password.map(|p| {
            let path = dir.join("proxy.password");
            std::fs::write(&path, format!("{p}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        });
        UpstreamProxy {
            url: format!("http://{}", self.addr),
            username: password.map(|_| "gateway".to_owned()),
            password_file,
            no_proxy: Vec::new(),
        }
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    behaviour: Behaviour,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    heads.lock().unwrap().push(head.clone());
    match behaviour {
        Behaviour::Tunnel => {
            let target = head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let Ok(mut origin) = tokio::net::TcpStream::connect(target.as_str()).await else {
                let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                return;
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut origin).await;
        }
        Behaviour::Answer(raw) => {
            let _ = stream.write_all(raw.as_bytes()).await;
        }
        Behaviour::Hold => super::faults::hold(stream).await,
        Behaviour::Close => drop(stream),
        Behaviour::Flood => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
            for _ in 0..20 {
                if stream.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            super::faults::hold(stream).await;
        }
    }
}

fn through(site: &Site, proxy: &UpstreamProxy, timeouts: Timeouts) -> Upstream {
    Upstream::with_proxy(site, &[], timeouts, BodyRate::default(), Some(proxy)).unwrap()
}

/// The error of a GET of `/v2/` through `proxy`.
async fn failure(proxy: &FakeProxy, with_password: bool, timeouts: Timeouts) -> UpstreamError {
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.config(dir.path(), with_password.then_some(PROXY_PASSWORD));
    // Nothing listens there: the fake proxy never connects for these.
    let up = through(&site("https://registry.invalid"), &config, timeouts);
    up.send(UpstreamRequest::get("/v2/")).await.unwrap_err()
}

fn proxy_error(e: &UpstreamError) -> &ProxyError {
    match e {
        UpstreamError::Proxy { error, .. } => error,
        other => panic!("not a proxy error: {other:?}"),
    }
}

#[tokio::test]
async fn a_tunnel_carries_plain_http_with_the_credentials_only_in_connect() {
    let server = Server::start(|_| ok("through")).await;
    let proxy = FakeProxy::start(Behaviour::Tunnel).await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.config(dir.path(), Some(PROXY_PASSWORD));
    let up = through(&site(&server.url()), &config, fast());
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(&up, resp).await.unwrap(), "through");

    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let target = server.addr.to_string();
    assert!(
        heads[0].starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")),
        "{heads:?}"
    );
    assert!(
        heads[0].contains(&format!("\r\nHost: {target}\r\n")),
        "{heads:?}"
    );
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("gateway:{PROXY_PASSWORD}"));
    assert!(
        heads[0].contains(&format!("\r\nProxy-Authorization: Basic {basic}\r\n")),
        "{heads:?}"
    );
    // The origin never sees the proxy's credentials.
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("proxy-authorization"), None);
    // The pooled tunnel serves the next request: one CONNECT in all.
    let resp = up.send(UpstreamRequest::get("/v2/again")).await.unwrap();
    assert_eq!(body(&up, resp).await.unwrap(), "through");
    assert_eq!(proxy.accepted(), 1);
}

#[tokio::test]
async fn tls_to_the_origin_runs_inside_the_tunnel() {
    let pki = super::tls::pki();
    let server = Server::start_with(Some(super::tls::acceptor(&pki)), |_| ok("{}")).await;
    let proxy = FakeProxy::start(Behaviour::Tunnel).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    // By name: the proxy resolves it, the certificate must match it.
    let mut s = site(&format!("https://localhost:{}", server.addr.port()));
    s.ca_file = Some(ca);
    let up = through(&s, &proxy.config(dir.path(), None), fast());
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(
        proxy.heads()[0].lines().next(),
        Some(format!("CONNECT localhost:{} HTTP/1.1", server.addr.port()).as_str())
    );

    // Without the site's CA the origin's certificate is refused as on a
    // direct connection: the tunnel changes nothing of TLS.
    let up = through(
        &site(&format!("https://localhost:{}", server.addr.port())),
        &proxy.config(dir.path(), None),
        fast(),
    );
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Request { .. }), "{e:?}");
}

#[tokio::test]
async fn a_407_with_credentials_is_a_clear_final_error() {
    let proxy = FakeProxy::start(Behaviour::Answer(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let e = failure(&proxy, true, fast()).await;
    let text = e.to_string();
    assert!(
        matches!(proxy_error(&e), ProxyError::BadCredentials { .. }),
        "{e:?}"
    );
    let named = format!(
        "the upstream proxy http://{} refused the gateway's credentials \
         (407 Proxy Authentication Required)",
        proxy.addr
    );
    assert!(text.contains(&named), "{text}");
    assert!(
        text.starts_with("request to https://registry.invalid/v2/ failed"),
        "{text}"
    );
    assert!(!text.contains(PROXY_PASSWORD), "{text}");
    assert_eq!(e.fault(), Fault::Upstream);
    assert!(!e.retryable());
    // Not retried: the same credentials would be refused again.
    assert_eq!(proxy.accepted(), 1);
}

#[tokio::test]
async fn a_407_without_credentials_says_what_to_configure() {
    let proxy = FakeProxy::start(Behaviour::Answer(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
    ))
    .await;
    let e = failure(&proxy, false, fast()).await;
    assert!(
        matches!(proxy_error(&e), ProxyError::CredentialsRequired { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("set username and password_file"),
        "{e}"
    );
    // No credentials were sent.
    assert!(!proxy.heads()[0].contains("Proxy-Authorization"));
}

#[tokio::test]
async fn other_statuses_name_the_proxy_and_the_status() {
    let proxy = FakeProxy::start(Behaviour::Answer("HTTP/1.1 403 Forbidden\r\n\r\n")).await;
    let e = failure(&proxy, false, fast()).await;
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "the upstream proxy http://{} answered 403 Forbidden to CONNECT registry.invalid:443",
            proxy.addr
        )),
        "{text}"
    );
    assert_eq!(proxy.accepted(), 1, "a refusal is not retried");

    // A 502 (the proxy's own upstream failed) is retried like one from
    // the origin: the first try and the two retries of fast().
    let proxy = FakeProxy::start(Behaviour::Answer("HTTP/1.1 502 Bad Gateway\r\n\r\n")).await;
    let e = failure(&proxy, false, fast()).await;
    assert!(e.to_string().contains("answered 502 Bad Gateway"), "{e}");
    assert!(e.retryable());
    assert_eq!(proxy.accepted(), 3);
}

#[tokio::test]
async fn a_proxy_that_talks_garbage_or_hangs_up_is_named() {
    let proxy = FakeProxy::start(Behaviour::Answer("SSH-2.0-OpenSSH_9.2\r\n\r\n")).await;
    let e = failure(&proxy, false, fast()).await;
    assert!(
        matches!(
            proxy_error(&e),
            ProxyError::Garbage {
                what: "no HTTP/1.x status line",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains(&format!("upstream proxy http://{}", proxy.addr)),
        "{e}"
    );
    assert_eq!(proxy.accepted(), 1);

    let proxy = FakeProxy::start(Behaviour::Answer("HTTP/1.1 200 Conn")).await;
    let e = failure(&proxy, false, fast()).await;
    assert!(
        matches!(proxy_error(&e), ProxyError::Garbage { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("closed in the middle of the response head"),
        "{e}"
    );

    let proxy = FakeProxy::start(Behaviour::Close).await;
    let e = failure(&proxy, false, fast()).await;
    assert!(
        matches!(proxy_error(&e), ProxyError::Closed { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("closed the connection before answering CONNECT"),
        "{e}"
    );
    // Retried: a proxy restarting or shedding load may answer next time.
    assert_eq!(proxy.accepted(), 3);
}

#[tokio::test]
async fn the_answer_to_connect_is_bounded_in_time_and_size() {
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        ..fast()
    };
    let proxy = FakeProxy::start(Behaviour::Hold).await;
    let e = failure(&proxy, false, timeouts.clone()).await;
    assert!(
        matches!(proxy_error(&e), ProxyError::HeadTimeout { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("did not answer CONNECT registry.invalid:443 within 300ms"),
        "{e}"
    );
    assert_eq!(proxy.accepted(), 1);

    let proxy = FakeProxy::start(Behaviour::Flood).await;
    let e = failure(&proxy, false, fast()).await;
    assert!(
        matches!(proxy_error(&e), ProxyError::HeadTooLong { max: 8192, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_unreachable_proxy_is_named() {
    // A port that was just free: nothing accepts there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = UpstreamProxy {
        url: format!("http://{addr}"),
        username: None,
        password_file: None,
        no_proxy: Vec::new(),
    };
    let up = through(&site("https://registry.invalid"), &config, fast());
    let e = up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    assert!(
        matches!(proxy_error(&e), ProxyError::Connect { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!(
            "cannot connect to the upstream proxy http://{addr}"
        )),
        "{e}"
    );
    assert!(e.retryable());
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly() {
    let server = Server::start(|_| ok("direct")).await;
    let proxy = FakeProxy::start(Behaviour::Answer("HTTP/1.1 403 Forbidden\r\n\r\n")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy.config(dir.path(), None);
    config.no_proxy = vec![".example".to_owned(), "127.0.0.1".to_owned()];
    let up = through(&site(&server.url()), &config, fast());
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(body(&up, resp).await.unwrap(), "direct");
    assert_eq!(proxy.accepted(), 0);
}

#[tokio::test]
async fn status_shows_a_sites_last_proxy_failure_until_a_tunnel_opens() {
    let server = Server::start(|_| ok("{}")).await;
    let refusing = FakeProxy::start(Behaviour::Answer(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
    ))
    .await;
    let tunnel = FakeProxy::start(Behaviour::Tunnel).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = site(&server.url());
    // Unique: the record is process-wide and tests run in parallel.
    s.host = "proxy-status.test".into();
    let mine = || {
        proxy_problems()
            .into_iter()
            .filter(|p| p.site == "proxy-status.test")
            .collect::<Vec<_>>()
    };

    let up = through(&s, &refusing.config(dir.path(), Some("wrong")), fast());
    up.send(UpstreamRequest::get("/v2/")).await.unwrap_err();
    let problems = mine();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].proxy, format!("http://{}", refusing.addr));
    assert!(problems[0].error.contains("407"), "{problems:?}");
    assert!(!problems[0].error.contains("wrong"), "{problems:?}");
    assert!(
        time::OffsetDateTime::parse(
            &problems[0].at,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );

    let up = through(&s, &tunnel.config(dir.path(), None), fast());
    let resp = up.send(UpstreamRequest::get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(mine(), Vec::new());
}

#[tokio::test]
async fn the_proxy_password_file_must_be_private() {
    let proxy = FakeProxy::start(Behaviour::Tunnel).await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy.config(dir.path(), Some(PROXY_PASSWORD));
    let file = config.password_file.clone().unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Upstream::with_proxy(
        &site("https://registry.invalid"),
        &[],
        fast(),
        BodyRate::default(),
        Some(&config),
    )
    .unwrap_err();
    assert!(matches!(e, UpstreamError::ProxyCredentials { .. }), "{e:?}");
    assert_eq!(e.fault(), Fault::Internal);
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert!(chain.contains("chmod 600"), "{chain}");
    assert!(!chain.contains(PROXY_PASSWORD), "{chain}");
}
