//! What a redirected connection speaks, read without consuming it.
//!
//! The first bytes are peeked (MSG_PEEK) so that the TLS stack or the HTTP
//! parser later reads them from the start.

use std::time::Duration;

use tokio::{net::TcpStream, time::Instant};

use crate::tls::sni::{self, ClientHelloInfo, Peek};

/// The most a ClientHello may take (TLS records of a handshake message).
const MAX_PEEK: usize = crate::tls::sni::MAX_PEEK;

pub enum FirstBytes {
    Tls(ClientHelloInfo),
    Http,
    /// Neither TLS nor HTTP.
    Other,
    /// A broken ClientHello.
    Invalid(&'static str),
    /// Nothing decisive within the time allowed.
    Timeout,
    /// The device closed before sending anything decisive.
    Closed,
}

pub async fn first_bytes(stream: &TcpStream, within: Duration) -> FirstBytes {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; MAX_PEEK];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return FirstBytes::Timeout,
            Ok(Err(_)) | Ok(Ok(0)) => return FirstBytes::Closed,
            Ok(Ok(n)) => n,
        };
        let bytes = &buf[..n];
        match sni::parse_client_hello(bytes) {
            Peek::Hello(info) => return FirstBytes::Tls(info),
            Peek::Invalid(why) => return FirstBytes::Invalid(why),
            Peek::Incomplete { .. } if n < MAX_PEEK => {}
            Peek::Incomplete { .. } => return FirstBytes::Invalid("client hello too large"),
            Peek::NotTls => match looks_like_http(bytes) {
                Some(true) => return FirstBytes::Http,
                Some(false) => return FirstBytes::Other,
                None => {}
            },
        }
        // Peeked data keeps the socket readable, so waiting for readiness
        // would spin: wait a little for the rest of the message instead.
        if Instant::now() + pause > deadline {
            return FirstBytes::Timeout;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `Some(true)` for an HTTP/1 request line or the h2 preface, `Some(false)`
/// for anything else, `None` while too few bytes have come to tell.
pub fn looks_like_http(bytes: &[u8]) -> Option<bool> {
    const STARTS: [&[u8]; 10] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
        b"PRI * HTTP/2.0",
    ];
    let mut undecided = false;
    for start in STARTS {
        let n = bytes.len().min(start.len());
        if bytes[..n] == start[..n] {
            if bytes.len() >= start.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    if undecided { None } else { Some(false) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_detection() {
        assert_eq!(looks_like_http(b"GET /v2/ HTTP/1.1\r\n"), Some(true));
        assert_eq!(looks_like_http(b"PRI * HTTP/2.0\r\n"), Some(true));
        assert_eq!(looks_like_http(b"GE"), None);
        assert_eq!(looks_like_http(b""), None);
        assert_eq!(looks_like_http(b"SSH-2.0-OpenSSH"), Some(false));
        assert_eq!(looks_like_http(b"\x16\x03\x01"), Some(false));
    }
}
