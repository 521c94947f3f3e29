//! A ClientHello peeker: reads the SNI and ALPN offer from the first bytes
//! of a connection (peeked, so the TLS stack later reads them again) to
//! decide between passthrough, termination and refusal.
//!
//! Strict where a lax parser could be steered: lengths must add up exactly,
//! an extension or a host name may appear once, and the host name is
//! checked the way rustls checks it (an IP literal counts as no SNI, as in
//! rustls; anything else that is not a DNS name is `Invalid`). Never
//! panics, and never asks for more than [`MAX_PEEK`] bytes.

use rustls::pki_types::ServerName;

/// The most handshake bytes (message header included) a ClientHello may
/// take. Real ones are under 2 KiB, even with post-quantum key shares.
pub const MAX_HANDSHAKE: usize = 16 * 1024;
/// The most TLS records the ClientHello may be split across.
pub const MAX_RECORDS: usize = 64;
const HEADER: usize = 5;
/// The largest `need_at_least` ever returned: size peek buffers with it.
pub const MAX_PEEK: usize = MAX_HANDSHAKE + MAX_RECORDS * HEADER;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Not a TLS handshake (for example plain HTTP).
    NotTls,
    /// A TLS handshake so far; peek again once this many bytes have come.
    Incomplete {
        need_at_least: usize,
    },
    /// A malformed, oversized or unsupported ClientHello.
    Invalid(&'static str),
    Hello(ClientHelloInfo),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The SNI host name: lowercase, without a trailing dot.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

pub fn parse_client_hello(buf: &[u8]) -> Peek {
    match buf {
        [] => Peek::Incomplete { need_at_least: 1 },
        // SSL 2.0 framing: length with the high bit set, then CLIENT-HELLO.
        [b, ..] if b & 0x80 != 0 => match buf.get(2) {
            None => Peek::Incomplete { need_at_least: 3 },
            Some(1) => Peek::Invalid("SSL 2.0 ClientHello (not supported)"),
            Some(_) => Peek::NotTls,
        },
        [b, ..] if *b != 0x16 => Peek::NotTls,
        [_, major, ..] if *major != 3 => Peek::NotTls,
        _ => match reassemble(buf).and_then(|m| parse_hello(&m).map_err(Peek::Invalid)) {
            Ok(info) => Peek::Hello(info),
            Err(peek) => peek,
        },
    }
}

/// Joins the handshake records into the ClientHello message, header included.
fn reassemble(buf: &[u8]) -> Result<Vec<u8>, Peek> {
    let mut message = Vec::new();
    let (mut pos, mut records) = (0, 0);
    loop {
        let want = match message.get(..4) {
            Some(h) => 4 + usize::from(h[1]) * 65536 + usize::from(h[2]) * 256 + usize::from(h[3]),
            None => 4,
        };
        if want > MAX_HANDSHAKE {
            return Err(Peek::Invalid("ClientHello larger than 16 KiB"));
        }
        if message.len() >= want {
            return match message.len() == want {
                true => Ok(message),
                false => Err(Peek::Invalid("handshake data after the ClientHello")),
            };
        }
        if records == MAX_RECORDS {
            return Err(Peek::Invalid("ClientHello split across too many records"));
        }
        let Some(h) = buf.get(pos..pos + HEADER) else {
            return Err(Peek::Incomplete {
                need_at_least: pos + HEADER + want - message.len(),
            });
        };
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if h[0] != 0x16 {
            return Err(Peek::Invalid("another record type inside the ClientHello"));
        }
        if h[1] != 3 || h[2] > 4 {
            return Err(Peek::Invalid("record version is not TLS"));
        }
        if len == 0 || len > 1 << 14 {
            return Err(Peek::Invalid("handshake record length out of range"));
        }
        if message.len() >= 4 && len > want - message.len() {
            return Err(Peek::Invalid("handshake data after the ClientHello"));
        }
        // Checked on the first byte, before waiting for the whole record.
        if message.is_empty() && buf.get(pos + HEADER).is_some_and(|t| *t != 1) {
            return Err(Peek::Invalid(
                "first handshake message is not a ClientHello",
            ));
        }
        let end = pos + HEADER + len;
        let Some(fragment) = buf.get(pos + HEADER..end) else {
            return Err(Peek::Incomplete { need_at_least: end });
        };
        message.extend_from_slice(fragment);
        (pos, records) = (end, records + 1);
    }
}

fn parse_hello(message: &[u8]) -> Result<ClientHelloInfo, &'static str> {
    let mut r = Reader(message.get(4..).unwrap_or_default());
    let version = r.take(2).ok_or("truncated version")?;
    if version[0] != 3 {
        return Err("legacy_version is not TLS");
    }
    r.take(32).ok_or("truncated random")?;
    if r.vec8().ok_or("truncated session id")?.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.vec16().ok_or("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("cipher suite list length invalid");
    }
    if r.vec8().ok_or("truncated compression methods")?.is_empty() {
        return Err("no compression method");
    }
    let mut info = ClientHelloInfo::default();
    if r.0.is_empty() {
        return Ok(info); // no extensions at all (TLS 1.2 allows it)
    }
    let mut exts = Reader(r.vec16().ok_or("truncated extensions")?);
    if !r.0.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut seen = Vec::new();
    while !exts.0.is_empty() {
        let ty = exts.take(2).ok_or("truncated extension")?;
        let data = exts.vec16().ok_or("truncated extension")?;
        seen.push([ty[0], ty[1]]);
        match ty {
            [0, 0] => info.server_name = server_name(data)?,
            [0, 16] => info.alpn = alpn(data)?,
            _ => {}
        }
    }
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err("an extension appears twice");
    }
    Ok(info)
}

fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut list = Reader(whole_vec16(data).ok_or("server_name length mismatch")?);
    let mut host = None;
    // RFC 6066 defines only host_name (0); other types cannot be skipped.
    while let Some([0]) = list.take(1) {
        let name = list.vec16().ok_or("truncated server_name")?;
        if host.is_some() {
            return Err("two host names in server_name");
        }
        host = Some(match ServerName::try_from(name) {
            Ok(ServerName::DnsName(d)) => Some(super::names::normalize(d.as_ref())),
            Ok(ServerName::IpAddress(_)) => None,
            Ok(_) | Err(_) => return Err("server_name is not a valid DNS host name"),
        });
    }
    host.ok_or("server_name without a host name")
}

fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut list = Reader(whole_vec16(data).ok_or("ALPN length mismatch")?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        match list.vec8() {
            Some(p) if !p.is_empty() => out.push(p.to_vec()),
            _ => return Err("empty or truncated ALPN protocol name"),
        }
    }
    Ok(out)
}

/// A non-empty 16-bit length-prefixed vector that is all of `data`.
fn whole_vec16(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(data);
    r.vec16().filter(|v| !v.is_empty() && r.0.is_empty())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.take(1)?[0];
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.take(2)?;
        self.take(usize::from(u16::from_be_bytes([n[0], n[1]])))
    }
}
