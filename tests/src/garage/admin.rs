//! Garage's admin API (v2, JSON over plain HTTP with a bearer token),
//! spoken in-process from a thread inside a node's namespace: under TCG
//! every `garage` CLI call would be a process start and an RPC handshake,
//! and the cluster takes about ten such calls to set up.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::netns::in_ns;

/// Bound on one admin request (connect, write, read): generous, as under
/// TCG a debug node's answer to a layout change takes many seconds.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where a node's admin API listens and the token it wants.
pub struct Admin<'a> {
    pub ns: &'a str,
    pub addr: SocketAddr,
    pub token: &'a str,
}

impl Admin<'_> {
    /// `GET /v2/<endpoint>`: the JSON body of a 200 answer.
    pub fn get(&self, endpoint: &str) -> Result<Value> {
        self.call("GET", endpoint, None)
    }

    /// `POST /v2/<endpoint>` with `body`: the JSON body of a 200 answer.
    pub fn post(&self, endpoint: &str, body: &Value) -> Result<Value> {
        self.call("POST", endpoint, Some(body))
    }

    fn call(&self, method: &str, endpoint: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} /v2/{endpoint} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        let addr = self.addr;
        let raw = in_ns(self.ns, move || -> Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
                .with_context(|| format!("connecting to {addr}"))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())
                .with_context(|| format!("sending to {addr}"))?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)
                .with_context(|| format!("reading the answer from {addr} (bound {TIMEOUT:?})"))?;
            Ok(raw)
        })??;
        let (code, body) = parse_response(&raw)
            .with_context(|| format!("{method} /v2/{endpoint} on {}", self.addr))?;
        if code != 200 {
            bail!(
                "{method} /v2/{endpoint} on {} answered {code}: {}",
                self.addr,
                String::from_utf8_lossy(&body)
            );
        }
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{method} /v2/{endpoint}: not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })
    }
}

/// Status code and body of a whole HTTP/1.1 response (`Connection: close`,
/// so the body runs to the end unless it is chunked).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked"
        })
    });
    let body = &raw[split + 4..];
    Ok((
        code,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line without end")?;
        let size_text = String::from_utf8_lossy(&body[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("chunk of {size} bytes cut short");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_answers() -> Result<()> {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain)?, (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked)?, (400, b"{\"a\":1}".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab")
                .is_err()
        );
        Ok(())
    }
}
