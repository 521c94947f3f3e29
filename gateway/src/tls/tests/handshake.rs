//! Real handshakes, in process: a tokio-rustls server on `server_config`
//! over an in-memory duplex stream, and a rustls client trusting only the
//! site CA.

use std::sync::Arc;

use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{HOST, TestCa, ca_client, ca_roots, test_ca};
use crate::tls::{LeafResolver, provider, server_config};

struct Outcome {
    client: Result<Option<Vec<u8>>, std::io::Error>,
    server: Result<(), std::io::Error>,
    resumed: bool,
}

/// Connects as `name`; on success the client sends "ping", the server
/// answers "pong", and the client returns the negotiated ALPN.
async fn handshake(resolver: Arc<LeafResolver>, client: Arc<ClientConfig>, name: &str) -> Outcome {
    let acceptor = TlsAcceptor::from(server_config(resolver).expect("server config"));
    handshake_with(acceptor, client, name).await
}

/// [`handshake`] against a given server (whose session cache persists).
async fn handshake_with(acceptor: TlsAcceptor, client: Arc<ClientConfig>, name: &str) -> Outcome {
    let resumed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resumed_in = resumed.clone();
    let connector = TlsConnector::from(client);
    let name = ServerName::try_from(name.to_owned()).expect("name");
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = async move {
        let mut tls = acceptor.accept(server_io).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.shutdown().await
    };
    let client = async move {
        let mut tls = connector.connect(name, client_io).await?;
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        let conn = tls.get_ref().1;
        resumed_in.store(
            conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(conn.alpn_protocol().map(<[u8]>::to_vec))
    };
    let (client, server) = tokio::join!(client, server);
    Outcome {
        client,
        server,
        resumed: resumed.load(std::sync::atomic::Ordering::SeqCst),
    }
}

fn setup() -> (TestCa, Arc<LeafResolver>) {
    let t = test_ca(&[HOST]);
    let hosts = vec![HOST.to_owned()];
    let resolver = LeafResolver::new(
        t.ca.clone(),
        hosts,
        std::time::Duration::from_secs(3600),
        16,
    );
    (t, Arc::new(resolver))
}

#[tokio::test]
async fn allowed_name_handshakes_and_prefers_h2() {
    let (t, resolver) = setup();
    let client = ca_client(&t.ca, &[b"h2", b"http/1.1"]);
    let out = handshake(resolver.clone(), client, HOST).await;
    out.server.expect("server side");
    assert_eq!(
        out.client.expect("client side").as_deref(),
        Some(&b"h2"[..])
    );

    let http1 = ca_client(&t.ca, &[b"http/1.1"]);
    let out = handshake(resolver.clone(), http1, HOST).await;
    assert_eq!(
        out.client.expect("client side").as_deref(),
        Some(&b"http/1.1"[..])
    );

    let none = ca_client(&t.ca, &[]);
    let out = handshake(resolver.clone(), none, HOST).await;
    assert_eq!(out.client.expect("client side"), None);
    assert_eq!(resolver.stats().minted, 1, "{:?}", resolver.stats());
}

#[tokio::test]
async fn tls12_clients_are_served() {
    let (t, resolver) = setup();
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(ca_roots(&t.ca))
        .with_no_client_auth();
    let out = handshake(resolver, Arc::new(config), HOST).await;
    out.server.expect("server side");
    out.client.expect("client side");
}

#[tokio::test]
async fn other_names_fail_the_handshake() {
    let (t, resolver) = setup();
    let client = ca_client(&t.ca, &[b"h2"]);
    let out = handshake(resolver.clone(), client, "evil.example.test").await;
    let server = out.server.expect_err("server refuses");
    let client = out.client.expect_err("client fails");
    println!("server: {server}; client: {client}");
    let stats = resolver.stats();
    assert_eq!(
        (stats.minted, stats.refused_unknown_name),
        (0, 1),
        "{stats:?}"
    );
}

/// Clients list AES-256-GCM-SHA384 first; the server's own order (the
/// SHA-256 suites first, hashed with the CPU's SHA extensions) wins.
#[test]
fn sha256_suites_come_first_whatever_the_client_prefers() {
    let (_t, resolver) = setup();
    let config = server_config(resolver).expect("server config");
    assert!(config.ignore_client_order);
    let names: Vec<&str> = config
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite().as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        names.first(),
        Some(&"TLS13_AES_128_GCM_SHA256"),
        "{names:?}"
    );
    let first_other = names
        .iter()
        .position(|n| !n.ends_with("_SHA256"))
        .expect("a SHA-384 suite");
    assert!(
        names[first_other..].iter().all(|n| !n.ends_with("_SHA256")),
        "{names:?}"
    );
    assert!(names.contains(&"TLS13_AES_256_GCM_SHA384"), "{names:?}");
}

/// Counts the TLS 1.3 tickets a client is given, keeping them as rustls'
/// own memory cache would.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// One resumption ticket per handshake (rustls' default is two), and it
/// works: the next connection resumes.
#[tokio::test]
async fn one_ticket_per_handshake_and_it_resumes() {
    let (t, resolver) = setup();
    let store = Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        tickets: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut client = (*ca_client(&t.ca, &[b"http/1.1"])).clone();
    client.resumption = rustls::client::Resumption::store(store.clone());
    let client = Arc::new(client);
    let acceptor = TlsAcceptor::from(server_config(resolver).expect("server config"));
    let first = handshake_with(acceptor.clone(), client.clone(), HOST).await;
    first.client.expect("first handshake");
    first.server.expect("first handshake, server");
    assert!(!first.resumed);
    assert_eq!(
        store.tickets.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "tickets after one handshake"
    );
    let second = handshake_with(acceptor, client, HOST).await;
    second.client.expect("resumed handshake");
    second.server.expect("resumed handshake, server");
    assert!(second.resumed, "the second connection did not resume");
}
