//! A minimal HTTP/1.1 client over rustls for the harness's own requests to
//! the registry (pushes), run in-process on a thread inside the upstream
//! namespace.
//!
//! Why not curl, as for everything a device does: a push is dozens of
//! requests, and each curl run costs a process start, an OpenSSL set-up and
//! a handshake. Under TCG emulation in the VM runs that was about 0.9 s a
//! request, 39 s to push one test's images; here it is one handshake per
//! push. What the gateway is tested against stays curl, skopeo and podman.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    net::SocketAddr,
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, Result, bail, ensure};
use rustls::ClientConfig;

use crate::bench::tlsclient::{self, Tls};

/// Bound on a response head (the registry's are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
/// Bound on a response body read into memory (errors, upload replies).
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// What to send as a request body.
pub enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// Streamed from the file, never held in memory (layers may be GiBs).
    File(&'a Path),
}

/// One response: status, headers (names lowercased), body.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "HTTP {} headers {:?} body {:?}",
            self.code,
            self.headers,
            String::from_utf8_lossy(&self.body[..self.body.len().min(512)])
        )
    }
}

/// A keep-alive connection to one TLS server, reopened when the server
/// closes it.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    config: Arc<ClientConfig>,
    /// `Authorization` header value, if any.
    auth: Option<String>,
    stream: Option<BufReader<Tls>>,
}

impl Conn {
    /// Trusts only `ca_pem`; connects lazily, from the calling thread's
    /// network namespace.
    pub fn new(addr: SocketAddr, host: &str, ca_pem: &Path, auth: Option<String>) -> Result<Self> {
        Ok(Self {
            addr,
            host: host.to_owned(),
            config: tlsclient::verifying_config(ca_pem)?,
            auth,
            stream: None,
        })
    }

    /// Sends one request (`target` is the path and query) and reads the
    /// whole response.
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Reply> {
        let what = format!("{method} {target}");
        self.exchange(method, target, headers, &body)
            .with_context(|| format!("{what} to {}", self.host))
    }

    fn exchange(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &Body<'_>,
    ) -> Result<Reply> {
        let len = match body {
            Body::None => None,
            Body::Bytes(b) => Some(b.len() as u64),
            Body::File(p) => Some(
                std::fs::metadata(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .len(),
            ),
        };
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: margo-test-harness\r\n",
            self.host
        );
        if let Some(auth) = &self.auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(len) = len {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");

        let stream = match &mut self.stream {
            Some(s) => s,
            None => self.stream.insert(BufReader::new(tlsclient::connect(
                self.addr,
                &self.host,
                &self.config,
            )?)),
        };
        let tls = stream.get_mut();
        tls.write_all(head.as_bytes())?;
        match body {
            Body::None => {}
            Body::Bytes(b) => tls.write_all(b)?,
            Body::File(p) => {
                let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                io::copy(&mut f, tls).with_context(|| format!("sending {}", p.display()))?;
            }
        }
        tls.flush()?;

        let reply = read_reply(stream, method == "HEAD");
        // Any failure leaves the connection in an unknown state.
        let keep = matches!(&reply, Ok((_, true)));
        if !keep {
            self.stream = None;
        }
        reply.map(|(r, _)| r)
    }
}

/// Reads a response; also says whether the connection may be reused.
fn read_reply(stream: &mut impl BufRead, head_only: bool) -> Result<(Reply, bool)> {
    let mut status = String::new();
    stream.read_line(&mut status)?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status:?}"))?;
    let mut headers = Vec::new();
    let mut total = status.len();
    loop {
        let mut line = String::new();
        let n = stream.read_line(&mut line)?;
        ensure!(n > 0, "connection closed inside the response head");
        total += n;
        ensure!(total <= MAX_HEAD, "response head over {MAX_HEAD} bytes");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (n, v) = line
            .split_once(':')
            .with_context(|| format!("bad header line {line:?}"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut keep = !get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if head_only || code == 204 || code == 304 || (100..200).contains(&code) {
        // No body.
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, &mut body)?;
    } else if let Some(len) = get("content-length") {
        let len: u64 = len
            .parse()
            .with_context(|| format!("bad Content-Length {len:?}"))?;
        ensure!(len <= MAX_BODY, "response body of {len} bytes");
        stream.take(len).read_to_end(&mut body)?;
        ensure!(body.len() as u64 == len, "response body cut short");
    } else {
        stream.take(MAX_BODY).read_to_end(&mut body)?;
        keep = false;
    }
    Ok((
        Reply {
            code,
            headers,
            body,
        },
        keep,
    ))
}

fn read_chunked(stream: &mut impl BufRead, body: &mut Vec<u8>) -> Result<()> {
    loop {
        let mut line = String::new();
        stream.read_line(&mut line)?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size.trim(), 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut t = String::new();
                if stream.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        if body.len() as u64 + size > MAX_BODY {
            bail!("chunked body over {MAX_BODY} bytes");
        }
        let before = body.len();
        stream.take(size).read_to_end(body)?;
        ensure!((body.len() - before) as u64 == size, "chunk cut short");
        let mut crlf = String::new();
        stream.read_line(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lengths_chunks_and_heads() {
        let raw = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nLocation: /x\r\n\r\nokHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        let mut r = io::Cursor::new(&raw[..]);
        let (a, keep) = read_reply(&mut r, false).expect("first");
        assert_eq!((a.code, a.body.as_slice(), keep), (201, &b"ok"[..], true));
        assert_eq!(a.header("Location"), Some("/x"));
        let (b, _) = read_reply(&mut r, false).expect("chunked");
        assert_eq!(b.body, b"abcde");
        let (c, _) = read_reply(&mut r, true).expect("head");
        assert_eq!((c.code, c.body.len()), (200, 0));
    }

    #[test]
    fn refuses_bad_responses() {
        for raw in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let mut r = io::Cursor::new(raw);
            assert!(read_reply(&mut r, false).is_err(), "{raw:?}");
        }
    }
}
