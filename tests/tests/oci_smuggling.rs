//! Request smuggling against the gateway's TLS termination: a device sends
//! raw HTTP/1.1 over TLS (rustls, trusting only the site CA) to
//! registry.example.test, each request on a fresh connection. Requests
//! whose framing two parsers could read differently get 400 and the
//! connection closes, so whatever follows them (here, a second request
//! smuggled in the same write) is never served. Controls: a plain
//! `GET /v2/` is 200 on a connection that stays open, a wrong `Host` is 421.
//!
//! The version ALPN settled is the one served (RFC 9113 §3.3): the h2
//! preface where HTTP/1.1 was settled, or HTTP/1.1 text where h2 was, is
//! refused and closes the connection, audited as `malformed_request`.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use gateway_tests::{
    Site, device,
    registry::{self, RegistryOptions, start_world},
    require_root,
    site::v4,
};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::Value;

/// Bound on reading a response or the close after it.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A second request in the same write as the ambiguous one: if the
/// gateway kept reading the connection it would answer it.
const SMUGGLED_PATH: &str = "/v2/smuggled/manifests/latest";

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A client that trusts only the site CA and offers `alpn` (one protocol).
fn client_config(site_ca_pem: &str, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(site_ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS connection from the device to the registry's address (which the
/// gateway intercepts), handshake done. Returns it with its local address
/// (the audit's `device`).
fn connect(site: &Site, config: &Arc<ClientConfig>) -> Result<(Tls, SocketAddr)> {
    let tcp = device::connect_ok(site, v4(registry::ADDR_V4, registry::PORT))?;
    let local = tcp.local_addr()?;
    let name = ServerName::try_from(registry::HOST)?;
    let conn = ClientConnection::new(config.clone(), name)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .context("TLS handshake with the gateway")?;
    }
    Ok((tls, local))
}

/// How a connection ended after the response.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// TLS close_notify, then EOF.
    CloseNotify,
    /// TCP FIN without close_notify.
    Eof,
    /// TCP RST.
    Reset,
    /// Nothing within the bound: the connection is still open.
    StillOpen,
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads until `buf` holds a complete response; returns it and removes it
/// from `buf`. `Ok(None)`: the connection ended first.
fn read_response(tls: &mut Tls, buf: &mut Vec<u8>) -> Result<Option<Response>> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        if let Some((resp, used)) = parse_response(buf)? {
            buf.drain(..used);
            return Ok(Some(resp));
        }
        match read_some(tls, buf, deadline)? {
            None => {}
            Some(_) => return Ok(None),
        }
    }
}

/// One read into `buf`: `None` if bytes came, else how the connection
/// ended (or that it is still open at `deadline`).
fn read_some(tls: &mut Tls, buf: &mut Vec<u8>, deadline: Instant) -> Result<Option<Closed>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(Some(Closed::StillOpen));
    }
    tls.sock.set_read_timeout(Some(left))?;
    let mut chunk = [0u8; 16 * 1024];
    match tls.read(&mut chunk) {
        Ok(0) => Ok(Some(Closed::CloseNotify)),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(None)
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(Some(Closed::Eof)),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            Ok(Some(Closed::Reset))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Ok(Some(Closed::StillOpen))
        }
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e).context("reading from the gateway"),
    }
}

/// Reads until the connection ends or `wait` passes; returns how it ended
/// and anything that came before.
fn read_to_close(tls: &mut Tls, wait: Duration) -> Result<(Closed, Vec<u8>)> {
    let deadline = Instant::now() + wait;
    let mut rest = Vec::new();
    loop {
        if let Some(closed) = read_some(tls, &mut rest, deadline)? {
            return Ok((closed, rest));
        }
    }
}

/// A complete response at the start of `buf` and its length in bytes.
fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status_line = head.lines().next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    ensure!(
        words.next().is_some_and(|v| v.starts_with("HTTP/1.")),
        "not an HTTP/1 response: {head:?}"
    );
    let status: u16 = words
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {status_line:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let body_start = end + 4;
    let rest = &buf[body_start..];
    if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .with_context(|| format!("bad length in {head:?}"))?;
        if rest.len() < len {
            return Ok(None);
        }
        let resp = Response {
            status,
            head,
            body: rest[..len].to_vec(),
        };
        return Ok(Some((resp, body_start + len)));
    }
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let Some(eol) = rest[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_text = String::from_utf8_lossy(&rest[at..at + eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            let data = at + eol + 2;
            if rest.len() < data + size + 2 {
                return Ok(None);
            }
            if size == 0 {
                // No trailers are sent: the last chunk ends with CRLF.
                let resp = Response { status, head, body };
                return Ok(Some((resp, body_start + data + 2)));
            }
            body.extend_from_slice(&rest[data..data + size]);
            at = data + size + 2;
        }
    }
    // Delimited by the close: complete only once the peer has closed,
    // which the caller learns from the read; treat what is here as all.
    let resp = Response {
        status,
        head,
        body: rest.to_vec(),
    };
    Ok(Some((resp, buf.len())))
}

/// What one ambiguous request got.
#[derive(Debug)]
struct Outcome {
    name: &'static str,
    device: SocketAddr,
    status: Option<u16>,
    head: String,
    closed: Closed,
    /// Bytes after the first response (a second response would be here).
    after: Vec<u8>,
}

/// Sends `head` (request line and headers, without the blank line), the
/// blank line, `body` and then a whole second request, in one write; reads
/// the first response and then until the connection ends.
fn send_ambiguous(
    site: &Site,
    config: &Arc<ClientConfig>,
    name: &'static str,
    head: &str,
    body: &str,
) -> Result<Outcome> {
    let (mut tls, device) = connect(site, config)?;
    let raw = format!(
        "{head}\r\n\r\n{body}GET {SMUGGLED_PATH} HTTP/1.1\r\nHost: {}\r\n\r\n",
        registry::HOST
    );
    tls.write_all(raw.as_bytes())?;
    tls.flush()?;
    let mut buf = Vec::new();
    let first = read_response(&mut tls, &mut buf)?;
    let (closed, rest) = read_to_close(&mut tls, READ_TIMEOUT)?;
    buf.extend_from_slice(&rest);
    Ok(Outcome {
        name,
        device,
        status: first.as_ref().map(|r| r.status),
        head: first.map(|r| r.head).unwrap_or_default(),
        closed,
        after: buf,
    })
}

/// Request lines and headers for `GET /v2/` (a request the gateway would
/// otherwise answer 200) with `framing` added.
fn get_v2(framing: &str) -> String {
    format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nUser-Agent: smuggler\r\n{framing}",
        registry::HOST
    )
}

#[test]
fn ambiguous_framing_gets_400_and_the_connection_closes() {
    require_root();
    let site = Site::new("oci-smuggling").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let gw = &w.gw;
    let config = client_config(&gw.site_ca_pem, b"http/1.1");

    // Control: a plain GET /v2/ is 200 and the connection stays open for
    // the next request; `Connection: close` then ends it.
    let (mut tls, control_device) = gw.must(connect(&site, &config));
    let plain = format!("{}\r\n\r\n", get_v2("").trim_end());
    tls.write_all(plain.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let ok = gw.must(read_response(&mut tls, &mut buf)).unwrap();
    assert_eq!(ok.status, 200, "GET /v2/: {}", ok.head);
    let (still, extra) = gw.must(read_to_close(&mut tls, Duration::from_millis(500)));
    assert_eq!(
        still,
        Closed::StillOpen,
        "a good request's connection was closed ({extra:?})"
    );
    let closing = format!("{}Connection: close\r\n\r\n", get_v2(""));
    tls.write_all(closing.as_bytes()).unwrap();
    let ok = gw.must(read_response(&mut tls, &mut buf)).unwrap();
    assert_eq!(ok.status, 200, "GET /v2/ (close): {}", ok.head);
    assert_eq!(ok.body, b"{}", "{}", ok.head);
    let (closed, extra) = gw.must(read_to_close(&mut tls, READ_TIMEOUT));
    assert!(
        matches!(closed, Closed::CloseNotify | Closed::Eof) && extra.is_empty(),
        "after Connection: close: {closed:?} {extra:?}"
    );

    // Control: a Host other than the SNI is 421.
    let (mut tls, _) = gw.must(connect(&site, &config));
    let other = "GET /v2/ HTTP/1.1\r\nHost: other.example.test\r\nConnection: close\r\n\r\n";
    tls.write_all(other.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let misdirected = gw.must(read_response(&mut tls, &mut buf)).unwrap();
    assert_eq!(misdirected.status, 421, "{}", misdirected.head);

    // The ambiguous shapes, each on a fresh connection with a second
    // request right behind it. None asks for the connection to close.
    let cases: [(&str, String, &str); 5] = [
        (
            "CL.TE",
            get_v2("Content-Length: 3\r\nTransfer-Encoding: chunked"),
            "0\r\n\r\n",
        ),
        (
            "TE.CL",
            get_v2("Transfer-Encoding: chunked\r\nContent-Length: 3"),
            "0\r\n\r\n",
        ),
        ("CL +3", get_v2("Content-Length: +3"), "abc"),
        (
            "TE twice",
            get_v2("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
            "0\r\n\r\n",
        ),
        (
            "CL 3 and 5",
            get_v2("Content-Length: 3\r\nContent-Length: 5"),
            "abcde",
        ),
    ];
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (name, head, body) in &cases {
        let o = gw.must(send_ambiguous(&site, &config, name, head, body));
        eprintln!(
            "{name}: status {:?}, then {:?}, {} bytes after the response (device {})",
            o.status,
            o.closed,
            o.after.len(),
            o.device
        );
        if o.status != Some(400) {
            failures.push(format!("{name}: status {:?}\n{}", o.status, o.head));
        }
        if !matches!(o.closed, Closed::CloseNotify | Closed::Eof) {
            failures.push(format!(
                "{name}: connection not closed after the 400 but {:?}",
                o.closed
            ));
        }
        if !o.after.is_empty() {
            failures.push(format!(
                "{name}: more came after the first response (the smuggled request was served?): {:?}",
                String::from_utf8_lossy(&o.after)
            ));
        }
        outcomes.push(o);
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        gw.gw.diagnostics()
    );

    // The audit: each refusal the gateway's own check made is a `request`
    // record with status 400 and fault `device`, on that connection.
    let records = gw.must(
        gw.gw
            .wait_audit_all(|rs| refusals(rs).len() >= 5, Duration::from_secs(10)),
    );
    let refused = refusals(&records);
    for r in &refused {
        eprintln!(
            "audit: request from {} status {} fault {} reason {}",
            r["device"], r["status"], r["fault"], r["reason"]
        );
    }
    for r in &refused {
        assert_eq!(r["host"], registry::HOST, "{r}");
        assert!(r["reason"].as_str().is_some(), "no reason: {r}");
        // Refused by the gateway's check: the request line is known.
        // Refused by hyper's parser: only the connection is.
        if r["reason"] != "malformed_request" {
            assert_eq!(r["method"], "GET", "{r}");
            assert_eq!(r["path"], "/v2/", "{r}");
        }
    }
    // Every refusal is audited, whether the gateway's own check or hyper's
    // parser made it.
    for o in &outcomes {
        let device = o.device.to_string();
        assert!(
            refused.iter().any(|r| r["device"] == device.as_str()),
            "{}: no 400 request record from {device}; refusals: {refused:?}",
            o.name
        );
    }
    // The control's requests were served and recorded as such.
    let control = control_device.to_string();
    let served: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "request" && r["device"] == control.as_str())
        .collect();
    assert!(
        served.iter().all(|r| r["status"] == 200),
        "control: {served:?}"
    );
    // Nothing behind an ambiguous request was served or sent upstream.
    assert!(
        !records.iter().any(|r| r["path"] == SMUGGLED_PATH),
        "the smuggled request was handled: {records:?}"
    );
    let upstream = w.registry.access_log().unwrap();
    assert!(
        !upstream.iter().any(|l| l.path.contains("smuggled")),
        "the smuggled request reached the registry: {upstream:?}"
    );
}

/// The client connection preface of h2 (RFC 9113 §3.4) and an empty
/// SETTINGS frame after it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[test]
fn the_protocol_alpn_settled_is_the_one_served() {
    require_root();
    let site = Site::new("oci-alpn").unwrap();
    let w = start_world(&site, RegistryOptions::default(), "5m").unwrap();
    let gw = &w.gw;
    let http1 = client_config(&gw.site_ca_pem, b"http/1.1");
    let h2 = client_config(&gw.site_ca_pem, b"h2");
    let get = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        registry::HOST
    );

    // Control: ALPN http/1.1 and HTTP/1.1 text is served.
    let (mut tls, control) = gw.must(connect(&site, &http1));
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(get.as_bytes()).unwrap();
    let ok = gw.must(read_response(&mut tls, &mut Vec::new())).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.head);

    // ALPN http/1.1, then the h2 preface: no answer, the connection ends.
    let (mut tls, preface_device) = gw.must(connect(&site, &http1));
    tls.write_all(H2_PREFACE).unwrap();
    tls.flush().unwrap();
    let (closed, got) = gw.must(read_to_close(&mut tls, READ_TIMEOUT));
    assert_ne!(closed, Closed::StillOpen, "h2 preface on HTTP/1.1: {got:?}");
    assert!(
        got.is_empty(),
        "h2 preface on HTTP/1.1 was answered: {got:?}"
    );

    // ALPN h2, then HTTP/1.1 text: at most h2's own frames (its SETTINGS,
    // a GOAWAY), never an HTTP/1 response, and the connection ends.
    let (mut tls, text_device) = gw.must(connect(&site, &h2));
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(get.as_bytes()).unwrap();
    tls.flush().unwrap();
    let (closed, got) = gw.must(read_to_close(&mut tls, READ_TIMEOUT));
    assert_ne!(closed, Closed::StillOpen, "HTTP/1.1 on h2: {got:?}");
    assert!(
        !got.windows(5).any(|w| w == b"HTTP/"),
        "HTTP/1.1 on h2 was answered in HTTP/1: {:?}",
        String::from_utf8_lossy(&got)
    );

    // Both refusals are audited against the device's connection, without a
    // status (none was sent); the control was served.
    let wanted = [preface_device.to_string(), text_device.to_string()];
    let records = gw.must(gw.gw.wait_audit_all(
        |rs| {
            wanted.iter().all(|d| {
                rs.iter()
                    .any(|r| r["device"] == d.as_str() && r["reason"] == "malformed_request")
            })
        },
        READ_TIMEOUT,
    ));
    for device in &wanted {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| r["device"] == device.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{device}: {mine:?}");
        let r = mine[0];
        eprintln!("audit: {r}");
        assert_eq!(r["event"], "request", "{r}");
        assert_eq!(r["fault"], "device", "{r}");
        assert_eq!(r["host"], registry::HOST, "{r}");
        assert!(r["status"].is_null(), "{r}");
        assert!(r["detail"].as_str().is_some_and(|d| !d.is_empty()), "{r}");
    }
    let control = control.to_string();
    assert!(
        records
            .iter()
            .any(|r| r["device"] == control.as_str() && r["status"] == 200),
        "control not recorded as served: {records:?}"
    );
}

/// `request` records refused with 400 for the device's fault.
fn refusals(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["event"] == "request" && r["status"] == 400 && r["fault"] == "device")
        .collect()
}

#[test]
fn parses_responses() {
    let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 404";
    let (resp, used) = parse_response(r).unwrap().unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice(), used),
        (200, &b"{}"[..], 40)
    );
    let c = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let (resp, used) = parse_response(c).unwrap().unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice(), used),
        (400, &b"abc"[..], c.len())
    );
    assert!(
        parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
            .unwrap()
            .is_none()
    );
    if let Ok(Some(_)) = parse_response(b"garbage\r\n\r\n") {
        panic!("garbage parsed");
    }
}
