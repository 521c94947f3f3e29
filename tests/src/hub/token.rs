//! The hub's token server (`auth.docker.io`): the registry token protocol
//! as Docker Hub speaks it, over TLS, on plain threads.
//!
//! `GET /token?service=registry.docker.io&scope=repository:NAME:pull` with
//! HTTP Basic credentials (or `POST /token` with an OAuth2 password grant,
//! which containerd uses when it holds credentials) answers
//! `{"token", "access_token", "expires_in", "issued_at"}`. The token is a JWT
//! signed ES256 with a key whose self-signed certificate is the registry's
//! `rootcertbundle` and travels in the JWT header's `x5c`, which is how
//! distribution's token verifier finds and checks the signing key.
//!
//! Wrong credentials are refused with 401 whatever the policy, as Docker
//! Hub does; requests without credentials get a token only while
//! anonymous pulls are allowed ([`TokenServer::set_anonymous`]): containerd
//! pulls anonymously, the gateway with the site's credentials. Every token
//! issued and every refusal is recorded for the tests' assertions.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};
use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use serde_json::{Value, json};

use super::b64;
use crate::{netns::in_ns, registry::Credentials};

/// `iss` of every token, and the registry's `auth.token.issuer`.
pub const ISSUER: &str = "auth.docker.io";
/// How long a token is valid (Docker Hub: 300 s).
pub const TOKEN_TTL_SECS: u64 = 300;
/// Bound on reading a request and writing its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests are small (a query, a form); anything bigger is refused.
const MAX_REQUEST: usize = 64 * 1024;

/// One grant of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// `repository`.
    pub kind: String,
    /// `library/app`.
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    fn to_json(&self) -> Value {
        json!({"type": self.kind, "name": self.name, "actions": self.actions})
    }
}

/// A token the server issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The authenticated user, `None` for an anonymous request.
    pub user: Option<String>,
    /// `GET` or `POST`.
    pub method: String,
    /// The `scope` parameters as asked.
    pub scopes: Vec<String>,
    /// What the token grants.
    pub access: Vec<Access>,
    pub remote: SocketAddr,
    pub jti: String,
}

/// A request that got no token.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    pub remote: SocketAddr,
}

/// The signing key and its self-signed certificate.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    cert_der: Vec<u8>,
    /// The certificate's PEM: the registry's `auth.token.rootcertbundle`.
    pub cert_pem: String,
}

impl Signer {
    /// A fresh P-256 key and a self-signed certificate for it.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().context("generating the token signing key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway-tests hub token signer");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let cert = params
            .self_signed(&key)
            .context("self-signing the token certificate")?;
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .map_err(|e| anyhow!("loading the token signing key into ring: {e}"))?;
        Ok(Self {
            key,
            rng,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        })
    }

    /// A signed JWT for `sub` granting `access` to `service`, and its `jti`.
    pub fn token(
        &self,
        sub: &str,
        service: &str,
        access: &[Access],
        now: u64,
    ) -> Result<(String, String)> {
        let jti = hex::encode(crate::device::random_bytes(16));
        let header = json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [b64::encode_std(&self.cert_der)],
        });
        // `aud` as a string: distribution 2.8 reads it into a string field.
        let claims = json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": service,
            "exp": now + TOKEN_TTL_SECS,
            "nbf": now,
            "iat": now,
            "jti": jti,
            "access": access.iter().map(Access::to_json).collect::<Vec<_>>(),
        });
        let input = format!(
            "{}.{}",
            b64::encode_url(header.to_string().as_bytes()),
            b64::encode_url(claims.to_string().as_bytes())
        );
        // FIXED signing: r || s, 64 bytes, as JWS ES256 wants.
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| anyhow!("signing a token: {e}"))?;
        Ok((format!("{input}.{}", b64::encode_url(sig.as_ref())), jti))
    }
}

/// Splits a JWT into its decoded header and claims (no verification: the
/// registry verifies; tests look at what was granted).
pub fn decode_jwt(token: &str) -> Result<(Value, Value)> {
    let mut parts = token.split('.');
    let mut segment = |what: &str| -> Result<Value> {
        let s = parts
            .next()
            .with_context(|| format!("JWT without {what}"))?;
        let bytes = b64::decode(s).with_context(|| format!("JWT {what} is not base64url"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("JWT {what} is not JSON"))
    };
    let header = segment("header")?;
    let claims = segment("claims")?;
    Ok((header, claims))
}

/// What the token server serves.
pub struct TokenConfig {
    /// The registry's `auth.token.service` (`aud` of every token).
    pub service: String,
    /// The TLS certificate for `auth.docker.io` and its PKCS#8 key, DER.
    pub tls_cert_der: Vec<u8>,
    pub tls_key_der: Vec<u8>,
    pub signer: Signer,
    /// The only credentials accepted.
    pub credentials: Credentials,
    /// Whether requests without credentials get a token.
    pub anonymous: bool,
}

/// Shared by the accept loop and the sessions.
struct State {
    tls: Arc<ServerConfig>,
    signer: Signer,
    service: String,
    credentials: Credentials,
    anonymous: AtomicBool,
    issued: Mutex<Vec<IssuedToken>>,
    refused: Mutex<Vec<Refusal>>,
}

/// The running token server; stopped (its socket closed) on drop.
pub struct TokenServer {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Binds `addr:443` inside `ns` and serves tokens as `config` says.
    pub fn start(ns: &str, addr: Ipv4Addr, config: TokenConfig) -> Result<Self> {
        let TokenConfig {
            service,
            tls_cert_der,
            tls_key_der,
            signer,
            credentials,
            anonymous,
        } = config;
        let tls =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("TLS versions for the token server")?
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(tls_cert_der)],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls_key_der)),
                )
                .context("the token server's certificate")?;
        let target = SocketAddr::from((addr, 443));
        let listener = in_ns(ns, || -> Result<TcpListener> {
            let l = TcpListener::bind(target).with_context(|| format!("binding {target}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })??;
        let state = Arc::new(State {
            tls: Arc::new(tls),
            signer,
            service,
            credentials,
            anonymous: AtomicBool::new(anonymous),
            issued: Mutex::default(),
            refused: Mutex::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::Builder::new()
                .name("hub-token".into())
                .spawn(move || accept_loop(&listener, &state, &stop))
                .context("spawning the token server")?
        };
        Ok(Self {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Allows or refuses token requests without credentials from now on.
    pub fn set_anonymous(&self, allowed: bool) {
        self.state.anonymous.store(allowed, Ordering::SeqCst);
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.state
            .issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every refused request so far, oldest first.
    pub fn refused(&self) -> Vec<Refusal> {
        self.state
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The signing certificate's PEM (the registry's `rootcertbundle`).
    pub fn signer_cert_pem(&self) -> &str {
        &self.state.signer.cert_pem
    }

    /// Stops accepting, waits for the sessions and closes the socket.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, state: &State, stop: &AtomicBool) {
    // Sessions are scoped: the loop returns only once every session ended
    // (each is bounded by IO_TIMEOUT), so no socket outlives `stop`.
    thread::scope(|s| {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, remote)) => {
                    s.spawn(move || {
                        if let Err(e) = session(stream, remote, state) {
                            eprintln!("hub token server, {remote}: {e:#}");
                        }
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    eprintln!("hub token server accept: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
}

/// A parsed HTTP/1.1 request.
struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, reason, extra headers, JSON body.
struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

/// One request per connection (`Connection: close`): clients reconnect,
/// which keeps the server free of keep-alive state.
fn session(stream: TcpStream, remote: SocketAddr, state: &State) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = ServerConnection::new(state.tls.clone()).context("TLS session")?;
    let mut tls = StreamOwned::new(conn, stream);
    let response = match read_request(&mut tls) {
        Ok(req) => handle(&req, remote, state),
        Err(e) => Response {
            status: 400,
            reason: "Bad Request",
            headers: Vec::new(),
            body: json!({"details": format!("{e:#}")}),
        },
    };
    let body = response.body.to_string();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.reason,
        body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.write_all(body.as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

fn read_request(r: &mut impl Read) -> Result<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            bail!("request head over {MAX_REQUEST} bytes");
        }
        let n = r.read(&mut chunk).context("reading the request")?;
        if n == 0 {
            bail!("connection closed before the request head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(_version)) = (words.next(), words.next(), words.next())
    else {
        bail!("bad request line {request_line:?}");
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().context("bad Content-Length"))
        .transpose()?
        .unwrap_or(0);
    if length > MAX_REQUEST {
        bail!("request body of {length} bytes");
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = r.read(&mut chunk).context("reading the request body")?;
        if n == 0 {
            bail!("connection closed inside the request body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body,
    })
}

fn handle(req: &Request, remote: SocketAddr, state: &State) -> Response {
    let refuse = |status: u16, reason: &'static str, why: String| {
        state
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Refusal {
                status,
                reason: why.clone(),
                remote,
            });
        let headers = if status == 401 {
            vec![("WWW-Authenticate", format!("Basic realm=\"{ISSUER}\""))]
        } else {
            Vec::new()
        };
        Response {
            status,
            reason,
            headers,
            body: json!({"details": why}),
        }
    };
    if req.path != "/token" {
        return refuse(404, "Not Found", format!("no such endpoint {}", req.path));
    }
    let mut params = parse_form(&req.query);
    let mut creds = req.header("authorization").and_then(basic_credentials);
    match req.method.as_str() {
        "GET" => {}
        "POST" => {
            let form = parse_form(&String::from_utf8_lossy(&req.body));
            let grant = form_value(&form, "grant_type").unwrap_or_default();
            if grant != "password" {
                return refuse(
                    400,
                    "Bad Request",
                    format!("unsupported grant_type {grant:?}"),
                );
            }
            if let (Some(u), Some(p)) =
                (form_value(&form, "username"), form_value(&form, "password"))
            {
                creds = Some((u.to_owned(), p.to_owned()));
            }
            params.extend(form);
        }
        other => return refuse(405, "Method Not Allowed", format!("method {other}")),
    }
    if let Some(service) = form_value(&params, "service")
        && service != state.service
    {
        return refuse(400, "Bad Request", format!("unknown service {service:?}"));
    }
    let user = match creds {
        Some((u, p)) if u == state.credentials.username && p == state.credentials.password => {
            Some(u)
        }
        // The user name only: a password never lands in a record or log.
        Some((u, _)) => {
            return refuse(
                401,
                "Unauthorized",
                format!("incorrect username or password (user {u:?})"),
            );
        }
        None if state.anonymous.load(Ordering::SeqCst) => None,
        None => return refuse(401, "Unauthorized", "credentials required".to_owned()),
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned))
        .filter(|s| !s.is_empty())
        .collect();
    let access: Vec<Access> = scopes.iter().filter_map(|s| grant(s)).collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signed = state
        .signer
        .token(user.as_deref().unwrap_or(""), &state.service, &access, now);
    let (token, jti) = match signed {
        Ok(t) => t,
        Err(e) => {
            return Response {
                status: 500,
                reason: "Internal Server Error",
                headers: Vec::new(),
                body: json!({"details": format!("{e:#}")}),
            };
        }
    };
    state
        .issued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(IssuedToken {
            user,
            method: req.method.clone(),
            scopes,
            access,
            remote,
            jti,
        });
    let issued_at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(now).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    Response {
        status: 200,
        reason: "OK",
        headers: Vec::new(),
        body: json!({
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_TTL_SECS,
            "issued_at": issued_at,
        }),
    }
}

/// What a `scope` is granted: pull of any repository, nothing else (a
/// public hub: pushes and other resource types get no grant).
fn grant(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind != "repository" || name.is_empty() {
        return None;
    }
    let pull = actions.split(',').any(|a| a == "pull");
    Some(Access {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions: if pull {
            vec!["pull".to_owned()]
        } else {
            Vec::new()
        },
    })
}

/// `Authorization: Basic …` as (user, password).
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, coded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let plain = String::from_utf8(b64::decode(coded.trim())?).ok()?;
    let (u, p) = plain.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// `a=1&b=x%2Fy` (query or form body) as decoded pairs, in order.
fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn form_value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                match hex {
                    Some(h) => {
                        out.push(u8::from_str_radix(&String::from_utf8_lossy(h), 16).unwrap_or(0));
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries_and_scopes() {
        let q = parse_form(
            "service=registry.docker.io&scope=repository%3Alibrary%2Fapp%3Apull%2Cpush&x=a+b&bad=%zz&end=%4",
        );
        assert_eq!(form_value(&q, "service"), Some("registry.docker.io"));
        assert_eq!(
            form_value(&q, "scope"),
            Some("repository:library/app:pull,push")
        );
        assert_eq!(form_value(&q, "x"), Some("a b"));
        assert_eq!(form_value(&q, "bad"), Some("%zz"));
        assert_eq!(form_value(&q, "end"), Some("%4"));
        assert_eq!(
            grant("repository:library/app:pull,push"),
            Some(Access {
                kind: "repository".into(),
                name: "library/app".into(),
                actions: vec!["pull".into()],
            })
        );
        assert_eq!(
            grant("repository:localhost:5000/app:push").map(|a| (a.name, a.actions)),
            Some(("localhost:5000/app".into(), vec![]))
        );
        assert_eq!(grant("registry:catalog:*"), None);
        assert_eq!(
            basic_credentials("Basic cHVsbGVyOnB3OnM="),
            Some(("puller".into(), "pw:s".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
    }

    #[test]
    fn tokens_are_es256_jwts_with_the_certificate() -> Result<()> {
        let signer = Signer::generate()?;
        let access = [Access {
            kind: "repository".into(),
            name: "library/app".into(),
            actions: vec!["pull".into()],
        }];
        let (jwt, jti) = signer.token("puller", "registry.docker.io", &access, 1_700_000_000)?;
        let (header, claims) = decode_jwt(&jwt)?;
        assert_eq!(header["alg"], "ES256");
        let x5c = header["x5c"][0].as_str().and_then(b64::decode);
        assert_eq!(x5c.as_deref(), Some(signer.cert_der.as_slice()));
        assert_eq!(claims["aud"], "registry.docker.io");
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "puller");
        assert_eq!(claims["jti"], jti.as_str());
        assert_eq!(claims["exp"], 1_700_000_000 + TOKEN_TTL_SECS);
        assert_eq!(claims["access"][0]["actions"][0], "pull");
        // The signature verifies with the certificate's public key.
        let (input, sig) = jwt.rsplit_once('.').context("no signature")?;
        let sig = b64::decode(sig).context("signature not base64url")?;
        assert_eq!(sig.len(), 64, "ES256 signatures are r || s");
        let public = ring::signature::KeyPair::public_key(&signer.key);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            public.as_ref(),
        )
        .verify(input.as_bytes(), &sig)
        .map_err(|_| anyhow!("the token's signature does not verify"))?;
        Ok(())
    }
}
