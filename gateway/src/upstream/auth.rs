//! Registry auth: the Bearer token dance (the distribution token spec,
//! <https://distribution.github.io/distribution/spec/auth/token/>), Basic
//! challenges, and the per-site token cache.
//!
//! The token realm may live on another host (Docker Hub's is
//! `auth.docker.io`); the site's credentials go there because the
//! configured upstream named it, but never over plain http when the
//! upstream itself is https, and never to an address the gateway refuses
//! (loopback, private, a passthrough service...) unless the site names
//! the host (`targets.rs`).

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::BytesMut;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use tokio::time::Instant;

use super::{
    challenge::Challenge,
    client::Inner,
    credentials::UpstreamCredentials,
    error::UpstreamError,
    redirect::{Origin, redact},
};

/// Tokens kept per site; past this, expired ones go first, then the one
/// expiring soonest. A site rarely needs more than one per repository.
const MAX_TOKENS: usize = 256;
/// The distribution token spec's default when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longer lifetimes are cut to this (a huge `expires_in` must not
/// overflow the clock, and a day-old token is worth refreshing anyway).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A token is refreshed this long before it expires (at most a quarter of
/// its lifetime), so a request never sets out with one about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Token responses are a few KiB of JSON; anything this large is wrong.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

struct CachedToken {
    /// `Bearer …`, marked sensitive.
    header: HeaderValue,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    /// Realm and service of the upstream's last Bearer challenge: with
    /// them a cached token is sent with the first request.
    bearer: Option<(String, Option<String>)>,
    /// The upstream asked for Basic credentials: send them at once.
    basic: bool,
    tokens: HashMap<TokenKey, CachedToken>,
}

pub(super) struct Auth {
    credentials: Option<UpstreamCredentials>,
    state: Mutex<State>,
}

impl Auth {
    pub(super) fn new(credentials: Option<UpstreamCredentials>) -> Self {
        Self {
            credentials,
            state: Mutex::default(),
        }
    }

    pub(super) fn credentials(&self) -> Option<&UpstreamCredentials> {
        self.credentials.as_ref()
    }

    /// The state holds no invariant a panicking holder could break.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What to send with a first request: Basic credentials if the
    /// upstream asked for them before, else a fresh cached token for the
    /// scope, else nothing.
    pub(super) fn preemptive(&self, scope: Option<&str>) -> Option<HeaderValue> {
        let state = self.lock();
        if state.basic {
            return self.credentials.as_ref().map(|c| c.basic_header().clone());
        }
        let (realm, service) = state.bearer.as_ref()?;
        let key = TokenKey {
            realm: realm.clone(),
            service: service.clone(),
            scope: Some(scope?.to_owned()),
        };
        state
            .tokens
            .get(&key)
            .filter(|t| t.refresh_at > Instant::now())
            .map(|t| t.header.clone())
    }

    fn store(&self, key: TokenKey, token: CachedToken) {
        let mut state = self.lock();
        let now = Instant::now();
        if state.tokens.len() >= MAX_TOKENS {
            state.tokens.retain(|_, t| t.refresh_at > now);
        }
        if state.tokens.len() >= MAX_TOKENS {
            let soonest = state
                .tokens
                .iter()
                .min_by_key(|(_, t)| t.refresh_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                state.tokens.remove(&k);
            }
        }
        state.tokens.insert(key, token);
    }
}

impl Inner {
    /// The `Authorization` to retry a 401 with, or `None` when there is
    /// nothing better to send than what was sent (the 401 then goes to
    /// the caller). `sent` is what the 401 answered, so a rejected cached
    /// token is replaced rather than sent again.
    pub(super) async fn authorize(
        &self,
        url: &Uri,
        challenges: &[Challenge],
        scope_hint: Option<&str>,
        sent: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let bearer = challenges
            .iter()
            .find(|c| c.scheme == "bearer" && c.param("realm").is_some_and(|r| !r.is_empty()));
        if let Some(bearer) = bearer {
            let non_empty = |name| bearer.param(name).filter(|v| !v.is_empty());
            let key = TokenKey {
                realm: non_empty("realm").unwrap_or_default().to_owned(),
                service: non_empty("service").map(str::to_owned),
                scope: non_empty("scope").or(scope_hint).map(str::to_owned),
            };
            {
                let mut state = self.auth.lock();
                state.bearer = Some((key.realm.clone(), key.service.clone()));
                state.basic = false;
                if let Some(t) = state.tokens.get(&key)
                    && t.refresh_at > Instant::now()
                    && Some(&t.header) != sent
                {
                    return Ok(Some(t.header.clone()));
                }
                state.tokens.remove(&key);
            }
            return self.fetch_token(url, key).await;
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(credentials) = &self.auth.credentials else {
                return Ok(None);
            };
            let basic = credentials.basic_header();
            if sent == Some(basic) {
                tracing::warn!(site = %self.site(), "upstream rejected the configured credentials");
                return Ok(None);
            }
            self.auth.lock().basic = true;
            return Ok(Some(basic.clone()));
        }
        Ok(None)
    }

    /// GET the realm with `service` and `scope`, with Basic credentials
    /// when the site has them; `None` if the token service refuses them.
    async fn fetch_token(
        &self,
        url: &Uri,
        key: TokenKey,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let token_url = self.token_url(url, &key)?;
        if let Err(refused) = self.targets.check(&token_url) {
            return Err(self.refuse("token realm", &token_url, refused));
        }
        let realm = redact(&token_url);
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let basic = self.auth.credentials.as_ref().map(|c| c.basic_header());
        let resp = self
            .send_with_retries("token realm", &Method::GET, &token_url, &headers, basic)
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            tracing::warn!(
                site = %self.site(),
                realm = %realm,
                status = status.as_u16(),
                anonymous = basic.is_none(),
                "token service refused"
            );
            return Ok(None);
        }
        if !status.is_success() {
            return Err(UpstreamError::TokenStatus { realm, status });
        }
        let body = read_limited(resp, self.timeouts.body_idle, &realm).await?;
        let (header, lifetime) = parse_token(&body, &realm)?;
        let margin = REFRESH_MARGIN.min(lifetime / 4);
        tracing::debug!(
            site = %self.site(),
            realm = %realm,
            service = key.service.as_deref().unwrap_or(""),
            scope = key.scope.as_deref().unwrap_or(""),
            expires_in_s = lifetime.as_secs(),
            "upstream token issued"
        );
        self.auth.store(
            key,
            CachedToken {
                header: header.clone(),
                refresh_at: Instant::now() + lifetime - margin,
            },
        );
        Ok(Some(header))
    }

    /// The realm with `service` and one `scope` per space-separated scope
    /// appended to any query it has.
    fn token_url(&self, url: &Uri, key: &TokenKey) -> Result<Uri, UpstreamError> {
        let bad = |reason| UpstreamError::BadRealm {
            url: redact(url),
            realm: key.realm.chars().take(200).collect(),
            reason,
        };
        let realm: Uri = key.realm.parse().map_err(|_| bad("not a URI"))?;
        let origin = Origin::of(&realm).ok_or_else(|| bad("not an http(s) URL with a host"))?;
        let authority = realm.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("it carries user-info"));
        }
        if self.origin.is_https() && !origin.is_https() {
            return Err(bad(
                "plain http for an https upstream: credentials and tokens would travel in clear",
            ));
        }
        let mut query = realm.query().unwrap_or("").to_owned();
        let mut add = |name: &str, value: &str| {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(name);
            query.push('=');
            query.push_str(&percent_encode(value));
        };
        if let Some(service) = &key.service {
            add("service", service);
        }
        for scope in key.scope.iter().flat_map(|s| s.split_whitespace()) {
            add("scope", scope);
        }
        let path_and_query = if query.is_empty() {
            realm.path().to_owned()
        } else {
            format!("{}?{query}", realm.path())
        };
        Uri::builder()
            .scheme(realm.scheme_str().unwrap_or("https"))
            .authority(authority.as_str())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| bad("cannot carry the service and scope"))
    }
}

/// Reads a small body whole, bounded in size and in idle time.
async fn read_limited(
    resp: http::Response<hyper::body::Incoming>,
    idle: Duration,
    realm: &str,
) -> Result<BytesMut, UpstreamError> {
    let mut body = BytesMut::new();
    let mut stream = super::body_stream(resp, idle);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err(UpstreamError::BadToken {
                realm: realm.to_owned(),
                reason: "the response is larger than 1 MiB",
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `token` (or `access_token`, its OAuth2 alias) and `expires_in`. The
/// body is parsed as a generic value first so that no type error can
/// quote a token back into a message.
fn parse_token(body: &[u8], realm: &str) -> Result<(HeaderValue, Duration), UpstreamError> {
    let bad = |reason| UpstreamError::BadToken {
        realm: realm.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|source| UpstreamError::TokenJson {
            realm: realm.to_owned(),
            source,
        })?;
    let object = value.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let field = |name| {
        object
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
    };
    let token = field("token")
        .or_else(|| field("access_token"))
        .ok_or_else(|| bad("neither `token` nor `access_token` is a non-empty string"))?;
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| bad("the token cannot be sent in a header"))?;
    header.set_sensitive(true);
    let lifetime = object
        .get("expires_in")
        .and_then(serde_json::Value::as_u64)
        .filter(|&s| s > 0)
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .min(MAX_TOKEN_LIFETIME);
    Ok((header, lifetime))
}

/// Percent-encodes all but RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn token_fields() {
        let (h, life) = parse_token(br#"{"token":"abc","expires_in":300}"#, "r").unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer abc");
        assert!(h.is_sensitive());
        assert_eq!(life, Duration::from_secs(300));
        let (h, life) = parse_token(br#"{"access_token":"xyz"}"#, "r").unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer xyz");
        assert_eq!(life, DEFAULT_TOKEN_LIFETIME);
        let (h, _) = parse_token(
            br#"{"token":"","access_token":"xyz","expires_in":"x"}"#,
            "r",
        )
        .unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer xyz");
        let (_, life) =
            parse_token(br#"{"token":"a","expires_in":18446744073709551615}"#, "r").unwrap();
        assert_eq!(life, MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn token_errors_never_quote_the_body() {
        for body in [
            &br#""sekrit-token""#[..],
            br#"["sekrit-token"]"#,
            br#"{"token":["sekrit-token"]}"#,
            br#"{"token":"sekrit-token\n"}"#,
            br#"{"token":"sekrit-token"#,
            b"sekrit-token",
        ] {
            let e = parse_token(body, "https://auth.example/token").unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(!text.contains("sekrit"), "{text}");
            assert!(!e.retryable());
        }
    }

    #[test]
    fn encodes_scopes() {
        assert_eq!(
            percent_encode("repository:library/nginx:pull,push"),
            "repository%3Alibrary%2Fnginx%3Apull%2Cpush"
        );
        assert_eq!(percent_encode("a b~"), "a%20b~");
    }
}
