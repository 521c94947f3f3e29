//! The ClientHello peeker against a hello rustls wrote, every prefix of it,
//! thousands of mutated copies, and hand-made edge cases.

use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection, RootCertStore, pki_types::ServerName};

use super::HOST;
use crate::tls::{
    ClientHelloInfo, Peek, parse_client_hello, provider,
    sni::{MAX_PEEK, MAX_RECORDS},
};

/// The bytes rustls sends first when connecting to `HOST` with ALPN h2,
/// http/1.1.
fn rustls_hello() -> Vec<u8> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(HOST).expect("name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls");
    }
    out
}

fn expected() -> Peek {
    Peek::Hello(ClientHelloInfo {
        server_name: Some(HOST.to_owned()),
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    })
}

/// The handshake message inside one or more records.
fn message_of(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = records;
    while let [_, _, _, hi, lo, tail @ ..] = rest {
        let len = usize::from(*hi) << 8 | usize::from(*lo);
        out.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    out
}

/// `message` framed as handshake records of at most `chunk` bytes.
fn framed(message: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in message.chunks(chunk) {
        out.extend([0x16, 3, 1]);
        out.extend((part.len() as u16).to_be_bytes());
        out.extend(part);
    }
    out
}

/// A ClientHello with these extensions (`None`: no extension block).
fn hello(exts: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    if let Some(exts) = exts {
        let mut block = Vec::new();
        for (ty, data) in exts {
            block.extend(ty.to_be_bytes());
            block.extend((data.len() as u16).to_be_bytes());
            block.extend(data);
        }
        body.extend((block.len() as u16).to_be_bytes());
        body.extend(block);
    }
    let mut message = vec![1];
    message.extend(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend(body);
    framed(&message, 1 << 14)
}

fn vec16(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend(data);
    out
}

fn sni(names: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for name in names {
        list.push(0);
        list.extend(vec16(name));
    }
    (0, vec16(&list))
}

fn alpn(protocols: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for p in protocols {
        list.push(p.len() as u8);
        list.extend(*p);
    }
    (16, vec16(&list))
}

/// Whatever the input: no panic, progress on Incomplete, sane names.
fn check_invariants(input: &[u8]) -> Peek {
    let peek = parse_client_hello(input);
    match &peek {
        Peek::Incomplete { need_at_least } => {
            assert!(*need_at_least > input.len(), "no progress on {input:02x?}");
            assert!(*need_at_least <= MAX_PEEK, "asks beyond MAX_PEEK");
        }
        Peek::Hello(ClientHelloInfo {
            server_name: Some(name),
            ..
        }) => {
            assert!(!name.is_empty() && !name.ends_with('.'));
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
            );
        }
        _ => {}
    }
    peek
}

#[test]
fn rustls_hello_and_every_prefix() {
    let full = rustls_hello();
    assert_eq!(check_invariants(&full), expected());
    for n in 0..full.len() {
        match check_invariants(&full[..n]) {
            Peek::Incomplete { need_at_least } => assert!(need_at_least <= full.len()),
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

#[test]
fn mutated_hellos_never_panic() {
    let full = rustls_hello();
    for i in 0..full.len() {
        for flip in [0x01, 0x02, 0x10, 0x80, 0xff] {
            let mut m = full.clone();
            m[i] ^= flip;
            check_invariants(&m);
        }
    }
    // Deterministic xorshift: several flips, a cut or an extension per copy.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut m = full.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % m.len() as u64) as usize;
            m[i] = next() as u8;
        }
        match next() % 3 {
            0 => m.truncate((next() % m.len() as u64) as usize),
            1 => m.extend((0..next() % 64).map(|_| next() as u8)),
            _ => {}
        }
        check_invariants(&m);
    }
}

#[test]
fn record_splits_are_joined() {
    let message = message_of(&rustls_hello());
    for chunk in [1000, 100, 7] {
        let split = framed(&message, chunk);
        assert_eq!(check_invariants(&split), expected(), "chunks of {chunk}");
        for n in 0..split.len() {
            assert!(matches!(
                check_invariants(&split[..n]),
                Peek::Incomplete { .. }
            ));
        }
    }
    // One byte per record: more records than any real client sends.
    assert!(message.len() > MAX_RECORDS);
    assert!(matches!(
        parse_client_hello(&framed(&message, 1)),
        Peek::Invalid(_)
    ));
}

#[test]
fn other_protocols_are_not_tls() {
    assert_eq!(
        parse_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Peek::NotTls
    );
    assert_eq!(parse_client_hello(b"G"), Peek::NotTls);
    assert_eq!(parse_client_hello(b"SSH-2.0-OpenSSH_9.6\r\n"), Peek::NotTls);
    assert_eq!(parse_client_hello(b"\x16\x01"), Peek::NotTls);
    assert_eq!(
        parse_client_hello(b""),
        Peek::Incomplete { need_at_least: 1 }
    );
    // A record header and a handshake header at least.
    assert_eq!(
        parse_client_hello(b"\x16"),
        Peek::Incomplete { need_at_least: 9 }
    );
    // SSL 2.0 CLIENT-HELLO (offering SSL 3.0), as very old clients send it.
    let sslv2 = b"\x80\x2e\x01\x03\x00\x00\x15\x00\x00\x00\x10";
    assert!(matches!(parse_client_hello(sslv2), Peek::Invalid(_)));
    assert_eq!(
        parse_client_hello(b"\x80"),
        Peek::Incomplete { need_at_least: 3 }
    );
}

#[test]
fn hand_made_hellos() {
    let parse = |exts: &[(u16, Vec<u8>)]| check_invariants(&hello(Some(exts)));
    let name = |s: &str| {
        Peek::Hello(ClientHelloInfo {
            server_name: Some(s.into()),
            alpn: vec![],
        })
    };
    assert_eq!(
        check_invariants(&hello(None)),
        Peek::Hello(ClientHelloInfo::default())
    );
    assert_eq!(
        parse(&[alpn(&[b"h2"])]),
        Peek::Hello(ClientHelloInfo {
            server_name: None,
            alpn: vec![b"h2".to_vec()],
        })
    );
    assert_eq!(parse(&[sni(&[b"Registry.Example.TEST."])]), name(HOST));
    assert_eq!(
        parse(&[(0xfafa, vec![]), sni(&[b"a.b"])]),
        name("a.b"),
        "GREASE skipped"
    );
    // An IP literal is no SNI, as rustls treats it.
    assert_eq!(
        parse(&[sni(&[b"192.0.2.1"])]),
        Peek::Hello(ClientHelloInfo::default())
    );

    let invalid = |exts: &[(u16, Vec<u8>)]| matches!(parse(exts), Peek::Invalid(_));
    assert!(invalid(&[sni(&["rég.example".as_bytes()])]), "non-ASCII");
    assert!(invalid(&[sni(&[b"bad host"])]));
    assert!(invalid(&[sni(&[b"a..b"])]));
    assert!(invalid(&[sni(&[b""])]));
    assert!(invalid(&[sni(&[])]), "empty list");
    assert!(
        invalid(&[sni(&[b"a.example", b"b.example"])]),
        "two host names"
    );
    assert!(
        invalid(&[sni(&[b"a.example"]), sni(&[b"b.example"])]),
        "two extensions"
    );
    assert!(
        invalid(&[(0, vec![0, 5, 0, 0, 1, b'a'])]),
        "list length overruns"
    );
    assert!(invalid(&[alpn(&[b""])]), "empty protocol");
}

#[test]
fn framing_is_strict() {
    let good = hello(Some(&[sni(&[HOST.as_bytes()])]));
    let message = message_of(&good);

    // A record longer than the ClientHello it carries.
    let mut longer = message.clone();
    longer.extend([0, 0, 0, 0]);
    assert!(matches!(
        parse_client_hello(&framed(&longer, 1 << 14)),
        Peek::Invalid(_)
    ));

    // Another record type between the fragments.
    let (head, tail) = message.split_at(10);
    let mut mixed = framed(head, 1 << 14);
    mixed.extend([0x15, 3, 3, 0, 2, 2, 40]);
    mixed.extend(framed(tail, 1 << 14));
    assert!(matches!(parse_client_hello(&mixed), Peek::Invalid(_)));

    // A declared size past 16 KiB is refused on sight, without waiting.
    let huge = [0x16, 3, 1, 0, 4, 1, 0, 0x50, 0];
    assert!(matches!(parse_client_hello(&huge), Peek::Invalid(_)));

    // Not a ClientHello (a ServerHello), a zero-length record, bytes after
    // the extensions.
    assert!(matches!(
        parse_client_hello(&[0x16, 3, 3, 0, 1, 2]),
        Peek::Invalid(_)
    ));
    // ... refused on its first byte, before its 16 KiB record has come.
    assert!(matches!(
        parse_client_hello(&[0x16, 3, 3, 0x40, 0, 2]),
        Peek::Invalid(_)
    ));
    assert!(matches!(
        parse_client_hello(&[0x16, 3, 1, 0, 0]),
        Peek::Invalid(_)
    ));
    let mut trailing = message.clone();
    trailing.push(0);
    let body_len = (trailing.len() - 4) as u32;
    trailing[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    assert!(matches!(
        parse_client_hello(&framed(&trailing, 1 << 14)),
        Peek::Invalid(_)
    ));
}
