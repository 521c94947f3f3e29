//! A fault-injecting upstream: a TLS proxy in the site's upstream namespace
//! in front of the real registry, which the gateway's site points at
//! instead of the registry itself.
//!
//! ```text
//!  {P}-up: 10.77.2.3:8443  registry.example.test (this proxy, its own test CA)
//!            -> 10.77.2.3:443 (docker-registry)
//! ```
//!
//! Every request is forwarded to the registry on a connection of its own
//! (HTTP/1.0, so the answer is delimited by the close and never chunked),
//! read whole, checked against its `Content-Length` and sent back on the
//! gateway's keep-alive connection with a `Content-Length` of its own. One
//! rule ([`Faulty::set`]) names a path whose `200` answers to GET get a
//! [`Fault`]; everything else passes through unchanged, so other transfers
//! meanwhile go through the same proxy healthily.
//!
//! Faults that end at a cut point (a reset, a close one byte short, a
//! flipped byte) stop there and wait for [`Faulty::release`], so a test can
//! look at the gateway while the fill is in progress (temp file present,
//! nothing published, other blobs served) before the fault strikes.
//! Parsing HTTP here, not working on TCP bytes, is what lets a cut land at
//! a fraction of the body rather than of the connection.
//!
//! Plain threads, like the hub's token server; dropping the proxy stops it
//! and waits for every session (each polls the stop flag every 100 ms).

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, pem::PemObject},
};

use crate::{
    netns::spawn_in_ns,
    registry::{ADDR_V4, HOST, OciKeys, PORT, Registry, certs},
};

/// The proxy's port on the registry's address.
pub const FAULTY_PORT: u16 = 8443;
/// How often a waiting session looks at the stop and release flags.
const POLL: Duration = Duration::from_millis(100);
/// Bound on one write to the gateway and on the registry's answer.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Request heads from the gateway are small.
const MAX_HEAD: usize = 64 * 1024;
/// A held fault strikes by itself after this, so that a test that forgot
/// to release cannot hang the proxy.
const MAX_HOLD: Duration = Duration::from_secs(60);

/// What happens to a `200` answer of the faulted path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `percent`% of the body, hold, then a TCP reset (no TLS close).
    ResetAt { percent: u8 },
    /// Every byte but the last, hold, then a clean close (TLS close_notify
    /// and FIN).
    OneByteShort,
    /// The body at `bytes_per_sec`, a tenth every 100 ms, until it is all
    /// sent or [`Faulty::release`] (then a reset).
    Trickle { bytes_per_sec: usize },
    /// The headers, then nothing until the gateway hangs up (or
    /// [`Faulty::release`], then a reset).
    StallAfterHeaders,
    /// The whole length with the byte in the middle flipped; holds at 30%
    /// of the body, before the flipped byte.
    FlipByte,
}

#[derive(Default)]
struct State {
    /// The faulted path and its fault.
    rule: Mutex<Option<(String, Fault)>>,
    /// Set by `release`, cleared by `set`.
    released: AtomicBool,
    /// Faulted answers started so far.
    applied: AtomicUsize,
    /// Sessions inside their fault right now (held, trickling, stalled).
    in_fault: AtomicUsize,
    /// Requests forwarded, for messages.
    forwarded: AtomicUsize,
}

/// The running proxy; stopped on drop.
pub struct Faulty {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The PEM of the CA that signed the proxy's certificate for
    /// [`HOST`]: the gateway's `sites[].ca_file`.
    pub ca_pem: PathBuf,
}

impl Faulty {
    /// Listens on the registry's address, port [`FAULTY_PORT`], in the
    /// upstream namespace, forwarding to `registry`.
    pub fn start(registry: &Registry<'_>) -> Result<Self> {
        let site = registry.site();
        let dir = site.tmp_dir().join("faulty");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = certs::server_pki(&[HOST])?;
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, &pki.ca_pem)?;
        let mut server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("TLS versions for the proxy")?
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(pki.cert_der)],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der)),
                )
                .context("the proxy's certificate")?;
        // HTTP/1.1 only: the faults are written as HTTP/1.1 framing.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_file(&registry.ca_pem)
                    .map_err(|e| anyhow!("reading {}: {e}", registry.ca_pem.display()))?,
            )
            .context("the registry's CA")?;
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("TLS versions for the registry client")?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let conf = Conf {
            server: Arc::new(server),
            client: Arc::new(client),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            spawn_in_ns(&site.up_ns, "faulty-proxy", move || {
                let target = SocketAddr::from((ADDR_V4, FAULTY_PORT));
                let listener = TcpListener::bind(target)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .with_context(|| format!("binding {target}"));
                let listener = match listener {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                accept_loop(&listener, &conf, &state, &stop);
            })?
        };
        let mut me = Self {
            state,
            stop,
            thread: Some(thread),
            ca_pem,
        };
        match rx.recv() {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => {
                me.stop();
                Err(e)
            }
            Err(_) => {
                me.stop();
                bail!("the proxy thread died before listening")
            }
        }
    }

    /// `https://registry.example.test:8443`.
    pub fn url(&self) -> String {
        format!("https://{HOST}:{FAULTY_PORT}")
    }

    /// `registry`'s OCI keys with the upstream pointed at this proxy.
    pub fn keys(&self, registry: &Registry<'_>, tag_ttl: &str) -> OciKeys {
        let mut keys = OciKeys::for_registry(registry, tag_ttl);
        keys.upstream = self.url();
        keys.ca_file = self.ca_pem.clone();
        keys
    }

    /// From now on, `200` answers to GETs of `path` get `fault`.
    pub fn set(&self, path: &str, fault: Fault) {
        self.state.released.store(false, Ordering::SeqCst);
        *self.state.rule.lock().unwrap_or_else(|e| e.into_inner()) = Some((path.to_owned(), fault));
    }

    /// New requests pass through unchanged; answers already in their fault
    /// stay there until [`Self::release`].
    pub fn clear(&self) {
        *self.state.rule.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Lets every faulted answer reach its end: held ones strike (reset,
    /// close, the rest with the flipped byte), trickles and stalls are
    /// reset.
    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }

    /// Faulted answers started so far.
    pub fn applied(&self) -> usize {
        self.state.applied.load(Ordering::SeqCst)
    }

    /// Sessions inside their fault right now (held, trickling, stalled).
    pub fn in_fault(&self) -> usize {
        self.state.in_fault.load(Ordering::SeqCst)
    }

    /// Requests forwarded to the registry so far.
    pub fn forwarded(&self) -> usize {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    /// Waits until a faulted answer is inside its fault (at its cut point,
    /// trickling or stalled).
    pub fn wait_in_fault(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.in_fault() == 0 {
            if Instant::now() > deadline {
                bail!(
                    "no answer reached its fault after {timeout:?} ({} forwarded, {} faulted)",
                    self.forwarded(),
                    self.applied()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Conf {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn accept_loop(listener: &TcpListener, conf: &Conf, state: &State, stop: &AtomicBool) {
    // Scoped: the loop returns only once every session ended, so no socket
    // (nor thread in the namespace) outlives `stop`.
    thread::scope(|s| {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((tcp, remote)) => {
                    s.spawn(move || {
                        if let Err(e) = session(tcp, conf, state, stop) {
                            eprintln!("faulty proxy, {remote}: {e:#}");
                        }
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => {
                    eprintln!("faulty proxy accept: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// What a session does after an answer.
enum Then {
    KeepAlive,
    Close,
}

fn session(tcp: TcpStream, conf: &Conf, state: &State, stop: &AtomicBool) -> Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(POLL))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let conn = ServerConnection::new(conf.server.clone()).context("TLS session")?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut tls, &mut buf, stop)? else {
            return Ok(());
        };
        let req = Request::parse(&head)?;
        if req.has_body {
            tls.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            tls.flush()?;
            return Ok(());
        }
        state.forwarded.fetch_add(1, Ordering::SeqCst);
        let answer = match forward(&req, conf) {
            Ok(a) => a,
            Err(e) => {
                eprintln!(
                    "faulty proxy: forwarding {} {}: {e:#}",
                    req.method, req.path
                );
                tls.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")?;
                tls.flush()?;
                continue;
            }
        };
        let fault = if req.method == "GET" && answer.status == 200 {
            let rule = state.rule.lock().unwrap_or_else(|e| e.into_inner());
            rule.as_ref()
                .filter(|(p, _)| *p == req.path)
                .map(|(_, f)| *f)
        } else {
            None
        };
        let then = match fault {
            None => {
                tls.write_all(&answer.head(answer.body.len()))?;
                if req.method != "HEAD" {
                    tls.write_all(&answer.body)?;
                }
                tls.flush()?;
                Then::KeepAlive
            }
            Some(fault) => {
                state.applied.fetch_add(1, Ordering::SeqCst);
                state.in_fault.fetch_add(1, Ordering::SeqCst);
                let r = apply(&mut tls, &answer, fault, state, stop);
                state.in_fault.fetch_sub(1, Ordering::SeqCst);
                r?
            }
        };
        match then {
            Then::KeepAlive => {}
            Then::Close => return Ok(()),
        }
    }
}

/// Sends `answer` with `fault`; says whether the connection lives on.
fn apply(
    tls: &mut Tls,
    answer: &Answer,
    fault: Fault,
    state: &State,
    stop: &AtomicBool,
) -> Result<Then> {
    let body = &answer.body;
    let len = body.len();
    tls.write_all(&answer.head(len))?;
    match fault {
        Fault::ResetAt { percent } => {
            let cut = len * usize::from(percent.min(100)) / 100;
            tls.write_all(&body[..cut])?;
            tls.flush()?;
            hold(state, stop);
            reset(tls);
            Ok(Then::Close)
        }
        Fault::OneByteShort => {
            tls.write_all(&body[..len.saturating_sub(1)])?;
            tls.flush()?;
            hold(state, stop);
            close_cleanly(tls);
            Ok(Then::Close)
        }
        Fault::FlipByte => {
            let mut wrong = body.clone();
            if let Some(b) = wrong.get_mut(len / 2) {
                *b ^= 0xff;
            }
            let cut = len * 30 / 100;
            tls.write_all(&wrong[..cut])?;
            tls.flush()?;
            hold(state, stop);
            tls.write_all(&wrong[cut..])?;
            tls.flush()?;
            Ok(Then::KeepAlive)
        }
        Fault::Trickle { bytes_per_sec } => {
            tls.flush()?;
            let step = (bytes_per_sec / 10).max(1);
            for chunk in body.chunks(step) {
                if stop.load(Ordering::SeqCst) || state.released.load(Ordering::SeqCst) {
                    reset(tls);
                    return Ok(Then::Close);
                }
                tls.write_all(chunk)?;
                tls.flush()?;
                thread::sleep(POLL);
            }
            Ok(Then::KeepAlive)
        }
        Fault::StallAfterHeaders => {
            tls.flush()?;
            let mut scratch = [0u8; 4096];
            loop {
                if stop.load(Ordering::SeqCst) || state.released.load(Ordering::SeqCst) {
                    reset(tls);
                    return Ok(Then::Close);
                }
                match tls.read(&mut scratch) {
                    // The gateway hung up (its body timeout).
                    Ok(0) => return Ok(Then::Close),
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => return Ok(Then::Close),
                }
            }
        }
    }
}

/// Waits for [`Faulty::release`] (or stop, or [`MAX_HOLD`]).
fn hold(state: &State, stop: &AtomicBool) {
    let deadline = Instant::now() + MAX_HOLD;
    while !state.released.load(Ordering::SeqCst)
        && !stop.load(Ordering::SeqCst)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP reset: linger 0 makes the close send RST, without a TLS close.
fn reset(tls: &mut Tls) {
    let _ = socket2::SockRef::from(&tls.sock).set_linger(Some(Duration::ZERO));
    let _ = tls.sock.shutdown(Shutdown::Both);
}

/// close_notify and FIN, then a short drain so that unread bytes from the
/// gateway do not turn the close into a reset.
fn close_cleanly(tls: &mut Tls) {
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut scratch = [0u8; 4096];
    while Instant::now() < deadline {
        match tls.sock.read(&mut scratch) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads one request head (through the blank line) into a `String`,
/// keeping what follows in `buf`; `None` when the gateway closed the
/// connection or the proxy stops.
fn read_head(tls: &mut Tls, buf: &mut Vec<u8>, stop: &AtomicBool) -> Result<Option<String>> {
    let mut scratch = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        if buf.len() > MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match tls.read(&mut scratch) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if is_timeout(&e) => {}
            // A peer that closes without close_notify between requests.
            Err(_) if buf.is_empty() => return Ok(None),
            Err(e) => return Err(e).context("reading a request"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request from the gateway.
struct Request {
    method: String,
    path: String,
    /// Header lines to forward (hop-by-hop and framing ones dropped).
    headers: Vec<(String, String)>,
    has_body: bool,
}

impl Request {
    fn parse(head: &str) -> Result<Self> {
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("bad request line {line:?}");
        };
        let mut headers = Vec::new();
        let mut has_body = false;
        for l in lines {
            let Some((name, value)) = l.split_once(':') else {
                bail!("bad header line {l:?}");
            };
            let (name, value) = (name.trim(), value.trim());
            let lower = name.to_ascii_lowercase();
            match lower.as_str() {
                "content-length" => has_body |= value != "0",
                "transfer-encoding" => has_body = true,
                "host" | "connection" | "keep-alive" | "te" | "upgrade" | "proxy-connection" => {}
                _ => headers.push((name.to_owned(), value.to_owned())),
            }
        }
        Ok(Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            has_body,
        })
    }
}

/// The registry's answer, read whole.
struct Answer {
    status: u16,
    reason: String,
    /// End-to-end headers (framing ones dropped).
    headers: Vec<(String, String)>,
    /// For HEAD: the registry's Content-Length (there is no body).
    head_length: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    /// The HTTP/1.1 head for a body of `len` bytes.
    fn head(&self, len: usize) -> Vec<u8> {
        let mut h = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (n, v) in &self.headers {
            h.push_str(&format!("{n}: {v}\r\n"));
        }
        match &self.head_length {
            Some(l) => h.push_str(&format!("Content-Length: {l}\r\n")),
            None => h.push_str(&format!("Content-Length: {len}\r\n")),
        }
        h.push_str("\r\n");
        h.into_bytes()
    }
}

/// Sends `req` to the registry as HTTP/1.0 on a fresh connection and reads
/// the answer to the close.
fn forward(req: &Request, conf: &Conf) -> Result<Answer> {
    let target = SocketAddr::from((ADDR_V4, PORT));
    let tcp = TcpStream::connect_timeout(&target, IO_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ServerName::try_from(HOST).context("registry name")?;
    let conn = ClientConnection::new(conf.client.clone(), name).context("TLS to the registry")?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut head = format!("{} {} HTTP/1.0\r\nHost: {HOST}\r\n", req.method, req.path);
    for (n, v) in &req.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.flush()?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)
        .context("reading the registry's answer")?;
    let end =
        find(&raw, b"\r\n\r\n").ok_or_else(|| anyhow!("no header end in the registry's answer"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = raw[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    let mut length = None;
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            continue;
        };
        let (n, v) = (n.trim(), v.trim());
        match n.to_ascii_lowercase().as_str() {
            "content-length" => length = Some(v.to_owned()),
            "connection" | "keep-alive" | "transfer-encoding" => {}
            _ => headers.push((n.to_owned(), v.to_owned())),
        }
    }
    let head_length = if req.method == "HEAD" {
        length
    } else {
        // A body cut short on the way here would be forwarded as complete:
        // refuse it rather than inject a fault nobody asked for.
        if let Some(l) = &length
            && l.parse::<usize>().ok() != Some(body.len())
        {
            bail!(
                "the registry said Content-Length {l} and sent {} bytes",
                body.len()
            );
        }
        None
    };
    Ok(Answer {
        status,
        reason,
        headers,
        head_length,
        body,
    })
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_head() {
        let r = Request::parse("GET /v2/app/blobs/sha256:ab HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nConnection: keep-alive").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/v2/app/blobs/sha256:ab")
        );
        assert_eq!(r.headers, vec![("Accept".to_owned(), "*/*".to_owned())]);
        assert!(!r.has_body);
        assert!(
            Request::parse("GET /x HTTP/1.1\r\nContent-Length: 3")
                .unwrap()
                .has_body
        );
        assert!(Request::parse("GARBAGE").is_err());
    }
}
