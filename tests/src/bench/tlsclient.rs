//! A small synchronous TLS client (rustls over std sockets) for what curl
//! cannot do: full handshakes as fast as the server takes them, and many
//! requests on one keep-alive connection with each one timed.
//!
//! The handshake client can skip certificate verification
//! ([`blind_config`]): the benchmark measures the server, and a verifying
//! client would spend more CPU than the server on the shared cores. Every
//! configuration is checked once with a verifying client first.
//! Resumption is off everywhere: each handshake is a full one.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

/// Bound on connect, and on each read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2, ALPN `http/1.1`, no resumption, trusting only the
/// certificates in `ca_pem`.
pub fn verifying_config(ca_pem: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("reading {}", ca_pem.display()))?
    {
        roots
            .add(cert.with_context(|| format!("parsing {}", ca_pem.display()))?)
            .with_context(|| format!("trusting {}", ca_pem.display()))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Like [`verifying_config`] but accepting any certificate and signature.
pub fn blind_config() -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects (from the calling thread's namespace) and completes a full
/// handshake for `name`.
pub fn connect(addr: SocketAddr, name: &str, config: &Arc<ClientConfig>) -> Result<Tls> {
    let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let server_name = ServerName::try_from(name.to_owned())
        .with_context(|| format!("{name} is not a server name"))?;
    let mut conn = ClientConnection::new(config.clone(), server_name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .with_context(|| format!("TLS handshake with {addr} for {name}"))?;
    }
    // The client's Finished may still be queued.
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// One full handshake, then a clean close (close_notify, FIN) and a wait
/// for the server's end of stream, so the server has done all its work
/// for this connection when this returns.
pub fn handshake_and_close(addr: SocketAddr, name: &str, config: &Arc<ClientConfig>) -> Result<()> {
    let mut tls = connect(addr, name, config)?;
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock)?;
    }
    tls.sock.shutdown(Shutdown::Write)?;
    let mut sink = [0u8; 4096];
    loop {
        match tls.sock.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // The server may reset rather than close: it is done either way.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e).context("waiting for the server to close"),
        }
    }
}

/// A response's status and header block.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: String,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// HTTP/1.1 on a keep-alive TLS connection.
pub struct Http {
    pub tls: Tls,
    buf: Vec<u8>,
    host: String,
}

impl Http {
    pub fn new(tls: Tls, host: &str) -> Self {
        Self {
            tls,
            buf: Vec::with_capacity(16 * 1024),
            host: host.to_owned(),
        }
    }

    /// Sends one request and reads the response (its body too, unless the
    /// method is HEAD). Returns the status line's code and headers.
    pub fn request(&mut self, method: &str, path: &str, accept: &str) -> Result<Head> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nUser-Agent: margo-bench\r\n\r\n",
            self.host
        );
        self.tls.write_all(req.as_bytes())?;
        self.tls.flush()?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let text = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = text.lines();
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let head = Head {
            status,
            headers: lines.collect::<Vec<_>>().join("\n"),
        };
        if method != "HEAD" {
            self.skip_body(&head)?;
        }
        Ok(head)
    }

    fn skip_body(&mut self, head: &Head) -> Result<()> {
        if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().context("bad content-length")?;
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len);
        } else if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            // Small bodies only: wait for the last chunk.
            loop {
                if let Some(i) = find(&self.buf, b"0\r\n\r\n") {
                    self.buf.drain(..i + 5);
                    break;
                }
                self.fill()?;
            }
        }
        Ok(())
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tls.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_header_values() {
        let h = Head {
            status: 200,
            headers: "Content-Length: 12\nDocker-Content-Digest: sha256:ab".into(),
        };
        assert_eq!(h.header("content-length"), Some("12"));
        assert_eq!(h.header("docker-content-digest"), Some("sha256:ab"));
        assert_eq!(h.header("etag"), None);
        assert_eq!(find(b"abc\r\n\r\nx", b"\r\n\r\n"), Some(3));
    }
}
