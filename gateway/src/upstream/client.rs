//! [`Upstream`]: one site's HTTP client, and [`Upstream::send`], which
//! follows redirects and answers auth challenges around the bare
//! request-with-retries in [`Inner::send_with_retries`].

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri,
    header::{self, AUTHORIZATION, LOCATION, USER_AGENT},
};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::rate::BodyRate;
use super::{
    auth::Auth,
    credentials::UpstreamCredentials,
    error::{UpstreamError, Waiting, find_in, is_tls_rejection},
    proxy::{Connector, ProxyError, ProxyRoute},
    redirect::{MAX_REDIRECTS, Origin, is_redirect, redact, resolve},
    targets::{GuardedResolver, Refused, Targets},
};
use crate::config::{Site, Upstream as UpstreamSettings, UpstreamProxy};

type HttpClient = Client<HttpsConnector<Connector>, Empty<Bytes>>;

/// Timeouts and retry pauses; [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect, per address tried. Default 10 s.
    pub connect: Duration,
    /// From sending a request to its status line and headers, per attempt;
    /// includes connect and the TLS handshake, so it catches a peer that
    /// accepts and then says nothing. Default 30 s.
    pub response_headers: Duration,
    /// The longest wait for the next body bytes in
    /// [`Upstream::body_stream`] and for token responses. Default 30 s.
    pub body_idle: Duration,
    /// Pooled connections idle longer than this are closed. Default 90 s.
    pub pool_idle: Duration,
    /// The pause before each retry; its length is the number of retries.
    /// Default 100 ms then 400 ms (two retries).
    pub retry_backoff: Vec<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            response_headers: Duration::from_secs(30),
            body_idle: super::DEFAULT_BODY_IDLE,
            pool_idle: Duration::from_secs(90),
            retry_backoff: vec![Duration::from_millis(100), Duration::from_millis(400)],
        }
    }
}

/// A request to a site's upstream registry.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// GET or HEAD; anything else is refused.
    pub method: Method,
    /// Path and query relative to the site's upstream URL, starting with
    /// `/`: `/v2/library/nginx/manifests/1.27`.
    pub path_and_query: String,
    /// Extra headers (`Accept`, possibly several; `Range`). Credentials,
    /// `Host`, cookies and hop-by-hop headers are dropped: the gateway's
    /// own credentials are the only ones sent upstream.
    pub headers: HeaderMap,
    /// The OCI scope for a token request when the challenge names none:
    /// `repository:library/nginx:pull`.
    pub scope: Option<String>,
}

impl UpstreamRequest {
    pub fn get(path_and_query: impl Into<String>) -> Self {
        Self::new(Method::GET, path_and_query)
    }

    pub fn head(path_and_query: impl Into<String>) -> Self {
        Self::new(Method::HEAD, path_and_query)
    }

    pub fn new(method: Method, path_and_query: impl Into<String>) -> Self {
        Self {
            method,
            path_and_query: path_and_query.into(),
            headers: HeaderMap::new(),
            scope: None,
        }
    }

    /// Appends a header (several `Accept` values stay separate).
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

/// Put in the extensions of every response [`Upstream::send`] returns.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// The URL that answered, redacted ([`super::redact`]).
    pub url: String,
    /// Redirects followed to get there.
    pub redirects: usize,
    /// Whether the answer came from the configured upstream origin (not a
    /// CDN it redirected to).
    pub same_origin: bool,
}

/// One configured site's upstream: a pooled HTTP/1.1 and HTTP/2 client
/// (h2 by ALPN) with the site's trust anchors, credentials and token
/// cache. Cheap to clone; clones share the pool and the tokens.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    site: String,
    /// The upstream URL, without a trailing slash.
    base: Uri,
    pub(super) origin: Origin,
    client: HttpClient,
    pub(super) timeouts: Timeouts,
    /// The progress floor on bodies read with [`Upstream::body_stream`].
    body_rate: BodyRate,
    pub(super) auth: Auth,
    /// Which redirect and realm targets may be reached (`targets.rs`).
    pub(super) targets: Arc<Targets>,
    /// The site's upstream proxy, if it has one (`proxy.rs`).
    proxy: Option<Arc<ProxyRoute>>,
    /// When the upstream is a parent gateway: the origin host to ask it
    /// for, sent in [`crate::children::ORIGIN_HOST_HEADER`].
    parent_origin: Option<HeaderValue>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("site", &self.inner.site)
            .field("url", &redact(&self.inner.base))
            .field("credentials", &self.inner.auth.credentials())
            .field("proxy", &self.inner.proxy)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Reads the site's password and trust anchors and builds the client;
    /// connects to nothing yet. `passthrough` is every passthrough
    /// service's address ([`crate::config::Config::passthrough_addresses`]):
    /// redirects and token realms never lead there unless the site lists
    /// the host in `redirect_hosts`.
    pub fn new(site: &Site, passthrough: &[SocketAddr]) -> Result<Self, UpstreamError> {
        Self::with_settings(site, passthrough, Timeouts::default())
    }

    /// With other timeouts, and no passthrough addresses (tests).
    pub fn with_timeouts(site: &Site, timeouts: Timeouts) -> Result<Self, UpstreamError> {
        Self::with_settings(site, &[], timeouts)
    }

    /// With the timeouts and progress floor of the config's `upstream:`
    /// section (pool idle and retry pauses stay the defaults) and the
    /// site's proxy ([`crate::config::Config::upstream_proxy_for`]).
    pub fn configured(
        site: &Site,
        passthrough: &[SocketAddr],
        settings: &UpstreamSettings,
        proxy: Option<&UpstreamProxy>,
    ) -> Result<Self, UpstreamError> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(settings.connect_timeout_secs),
            response_headers: Duration::from_secs(settings.headers_timeout_secs),
            body_idle: Duration::from_secs(settings.body_idle_secs),
            ..Timeouts::default()
        };
        let rate = BodyRate {
            floor: settings.min_body_rate,
            window: Duration::from_secs(settings.min_body_rate_window_secs),
        };
        Self::with_proxy(site, passthrough, timeouts, rate, proxy)
    }

    /// With the default progress floor ([`BodyRate::default`]).
    pub fn with_settings(
        site: &Site,
        passthrough: &[SocketAddr],
        timeouts: Timeouts,
    ) -> Result<Self, UpstreamError> {
        Self::with_limits(site, passthrough, timeouts, BodyRate::default())
    }

    /// Direct, with no proxy.
    pub fn with_limits(
        site: &Site,
        passthrough: &[SocketAddr],
        timeouts: Timeouts,
        body_rate: BodyRate,
    ) -> Result<Self, UpstreamError> {
        Self::with_proxy(site, passthrough, timeouts, body_rate, None)
    }

    /// Reads the proxy's password file too, when it has one; the proxy's
    /// connect and CONNECT-answer waits are `timeouts.connect`.
    pub fn with_proxy(
        site: &Site,
        passthrough: &[SocketAddr],
        timeouts: Timeouts,
        body_rate: BodyRate,
        proxy: Option<&UpstreamProxy>,
    ) -> Result<Self, UpstreamError> {
        let (base, origin) = parse_base(site)?;
        let proxy = proxy
            .map(|p| ProxyRoute::load(&site.host, p, timeouts.connect))
            .transpose()?
            .map(Arc::new);
        let targets = Arc::new(Targets::new(
            base.host().unwrap_or_default(),
            &site.redirect_hosts,
            passthrough,
        ));
        let credentials = site
            .credentials
            .as_ref()
            .map(UpstreamCredentials::load)
            .transpose()
            .map_err(|source| UpstreamError::Credentials {
                site: site.host.clone(),
                source,
            })?;
        let tls = match (&site.client_cert, &site.client_key) {
            // A parent gateway: present the certificate its CA issued us.
            (Some(cert), Some(key)) => crate::tls::identity::ClientIdentity::load(cert, key)
                .and_then(|id| {
                    crate::tls::identity::client_config_with_identity(site.ca_file.as_deref(), &id)
                }),
            _ => crate::tls::client_config(site.ca_file.as_deref()),
        }
        .map_err(|source| UpstreamError::Tls {
            site: site.host.clone(),
            source,
        })?;
        // The origin host a parent gateway is asked for. The site's host
        // passed validation as a DNS name, so it is a valid header value.
        let parent_origin = site
            .via_parent()
            .then(|| HeaderValue::from_str(&site.host.to_ascii_lowercase()).ok())
            .flatten();
        // The connector sets ALPN itself and panics if it is already set.
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();

        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(targets.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeouts.connect));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(Connector::new(http, proxy.clone()));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.pool_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);

        Ok(Self {
            inner: Arc::new(Inner {
                site: site.host.clone(),
                base,
                origin,
                client,
                timeouts,
                body_rate,
                auth: Auth::new(credentials),
                targets,
                proxy,
                parent_origin,
            }),
        })
    }

    /// The site's host (as devices name it).
    pub fn site(&self) -> &str {
        &self.inner.site
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.inner.timeouts
    }

    pub fn body_rate(&self) -> BodyRate {
        self.inner.body_rate
    }

    /// Sends a GET or HEAD upstream and returns the final response, any
    /// status: the caller decides what a 404 or a 429 means. On the way:
    ///
    /// - auth: a `401` from the upstream origin is answered once, with a
    ///   Bearer token from the challenge's realm (cached per realm,
    ///   service and scope) or with Basic credentials; a `401`/`403`
    ///   after that is returned as it is;
    /// - redirects are followed up to [`MAX_REDIRECTS`]; `Authorization`
    ///   goes only to the configured upstream origin, never to a CDN;
    /// - a redirect or token realm leading to a refused address (loopback,
    ///   private, link-local, a passthrough service...) is an error unless
    ///   the site names the host (`targets.rs`);
    /// - connection failures before a response and `502`/`503`/`504` are
    ///   retried per [`Timeouts::retry_backoff`]; `429` is not.
    ///
    /// The response carries a [`ResponseMeta`] extension. Read its body
    /// with [`Upstream::body_stream`] to bound stalls.
    pub async fn send(&self, req: UpstreamRequest) -> Result<Response<Incoming>, UpstreamError> {
        let UpstreamRequest {
            method,
            path_and_query,
            headers,
            scope,
        } = req;
        if method != Method::GET && method != Method::HEAD {
            return Err(UpstreamError::MethodNotAllowed { method });
        }
        let mut url = self.join(&path_and_query)?;
        let headers = sanitize(headers);
        let inner = &self.inner;
        // Only the parent itself hears which origin we want; a host it
        // redirected to (it does not, but a misconfigured upstream might)
        // gets the plain request.
        let to_origin = match &inner.parent_origin {
            Some(origin) => {
                let mut h = headers.clone();
                h.insert(crate::children::ORIGIN_HOST_HEADER, origin.clone());
                h
            }
            None => headers.clone(),
        };
        let mut authorization = inner.auth.preemptive(scope.as_deref());
        let mut auth_answered = false;
        let mut redirects = 0;
        loop {
            let same_origin = Origin::of(&url).as_ref() == Some(&inner.origin);
            let sent = authorization.as_ref().filter(|_| same_origin);
            let what = if redirects == 0 {
                "request to"
            } else {
                "redirect to"
            };
            let sent_headers = if same_origin { &to_origin } else { &headers };
            let resp = inner
                .send_with_retries(what, &method, &url, sent_headers, sent)
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_origin && !auth_answered {
                auth_answered = true;
                let challenges = super::challenge::from_headers(resp.headers());
                if let Some(answer) = inner
                    .authorize(&url, &challenges, scope.as_deref(), sent)
                    .await?
                {
                    authorization = Some(answer);
                    continue;
                }
            } else if is_redirect(status) {
                let next = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| resolve(&url, l.as_bytes()))
                    .ok_or_else(|| UpstreamError::BadRedirect {
                        url: redact(&url),
                        status,
                    })?;
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(UpstreamError::TooManyRedirects {
                        url: redact(&url),
                        max: MAX_REDIRECTS,
                    });
                }
                let from_https = Origin::of(&url).is_some_and(|o| o.is_https());
                if from_https && !Origin::of(&next).is_some_and(|o| o.is_https()) {
                    return Err(UpstreamError::InsecureRedirect {
                        from: redact(&url),
                        to: redact(&next),
                    });
                }
                if let Err(refused) = inner.targets.check(&next) {
                    return Err(inner.refuse("redirect to", &next, refused));
                }
                tracing::debug!(
                    site = %inner.site,
                    status = status.as_u16(),
                    from = %redact(&url),
                    to = %redact(&next),
                    "following upstream redirect"
                );
                url = next;
                continue;
            }
            let mut resp = resp;
            resp.extensions_mut().insert(ResponseMeta {
                url: redact(&url),
                redirects,
                same_origin,
            });
            return Ok(resp);
        }
    }

    /// The response body as a stream that fails with
    /// [`UpstreamError::Timeout`] when no bytes arrive for
    /// [`Timeouts::body_idle`], and with [`UpstreamError::TooSlow`] when
    /// it crawls below the progress floor ([`BodyRate`]).
    pub fn body_stream(&self, resp: Response<Incoming>) -> super::BodyStream {
        super::body_stream(resp, self.inner.timeouts.body_idle).with_min_rate(self.inner.body_rate)
    }

    fn join(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let invalid = || UpstreamError::InvalidTarget {
            target: path_and_query.chars().take(200).collect(),
        };
        if !path_and_query.starts_with('/') || path_and_query.contains('#') {
            return Err(invalid());
        }
        let base = &self.inner.base;
        let prefix = base.path().trim_end_matches('/');
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{prefix}{path_and_query}")
                .parse()
                .map_err(|_| invalid())?,
        );
        Uri::from_parts(parts).map_err(|_| invalid())
    }
}

impl Inner {
    /// One request, retried per [`Timeouts::retry_backoff`] when it failed
    /// before a response (a TLS rejection excepted) or got 502/503/504.
    /// The dropped response's body was never read, so the retry cannot
    /// duplicate data. A header timeout is not retried: the caller's time
    /// budget is already spent.
    ///
    /// `what` names the request in a refusal's message (`redirect to`,
    /// `token realm`): the resolver refuses a name that resolves only to
    /// refused addresses, and that is never retried.
    pub(super) async fn send_with_retries(
        &self,
        what: &'static str,
        method: &Method,
        url: &Uri,
        headers: &HeaderMap,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut attempt = 0;
        loop {
            let mut req = Request::new(Empty::new());
            *req.method_mut() = method.clone();
            *req.uri_mut() = url.clone();
            *req.headers_mut() = headers.clone();
            if let Some(value) = authorization {
                req.headers_mut().insert(AUTHORIZATION, value.clone());
            }
            let pause = self.timeouts.retry_backoff.get(attempt).copied();
            let after = self.timeouts.response_headers;
            match tokio::time::timeout(after, self.client.request(req)).await {
                Err(_elapsed) => {
                    return Err(UpstreamError::Timeout {
                        url: redact(url),
                        waiting: Waiting::Headers,
                        after,
                    });
                }
                Ok(Err(source)) => {
                    if let Some(refused) = find_in::<Refused>(&source) {
                        return Err(self.refuse(what, url, refused.clone()));
                    }
                    let proxy = find_in::<ProxyError>(&source).cloned();
                    let retry = match &proxy {
                        Some(e) => e.retryable(),
                        None => !is_tls_rejection(&source),
                    };
                    let Some(pause) = pause.filter(|_| retry) else {
                        return Err(match proxy {
                            Some(error) => UpstreamError::Proxy {
                                url: redact(url),
                                error,
                            },
                            None => UpstreamError::Request {
                                url: redact(url),
                                source,
                            },
                        });
                    };
                    tracing::debug!(
                        site = %self.site,
                        url = %redact(url),
                        error = %source,
                        attempt,
                        "upstream request failed before a response; retrying"
                    );
                    tokio::time::sleep(pause).await;
                }
                Ok(Ok(resp)) => {
                    let transient = matches!(resp.status().as_u16(), 502..=504);
                    let Some(pause) = pause.filter(|_| transient) else {
                        return Ok(resp);
                    };
                    tracing::debug!(
                        site = %self.site,
                        url = %redact(url),
                        status = resp.status().as_u16(),
                        attempt,
                        "transient upstream status; retrying"
                    );
                    drop(resp);
                    tokio::time::sleep(pause).await;
                }
            }
            attempt += 1;
        }
    }

    pub(super) fn site(&self) -> &str {
        &self.site
    }

    /// The error for a refused target, logged here with the site (the
    /// caller's audit record carries the message).
    pub(super) fn refuse(&self, what: &'static str, url: &Uri, refused: Refused) -> UpstreamError {
        let url = redact(url);
        tracing::warn!(
            site = %self.site,
            what,
            url = %url,
            host = %refused.host,
            reason = %refused.reason,
            "upstream target refused"
        );
        UpstreamError::RefusedTarget {
            what,
            url,
            host: refused.host,
            reason: refused.reason,
        }
    }
}

fn parse_base(site: &Site) -> Result<(Uri, Origin), UpstreamError> {
    let url = site.upstream_url();
    let parsed = url.parse::<Uri>();
    // Shown redacted: a password pasted into the URL stays out of logs.
    let shown = match &parsed {
        Ok(uri) => redact(uri),
        Err(_) if url.contains('@') => String::from("(a URL with user-info)"),
        Err(_) => url.chars().take(200).collect(),
    };
    let invalid = |reason| UpstreamError::InvalidUpstreamUrl {
        site: site.host.clone(),
        url: shown.clone(),
        reason,
    };
    let base = parsed.map_err(|_| invalid("not a URI"))?;
    if base.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            "user-info in the URL; credentials belong in sites[].credentials",
        ));
    }
    if base.query().is_some() {
        return Err(invalid("a query string"));
    }
    let origin = Origin::of(&base).ok_or_else(|| invalid("not an http(s) URL with a host"))?;
    Ok((base, origin))
}

/// Drops what the caller must not choose: credentials and cookies (the
/// gateway's own are the only ones sent), `Host` (the gateway connects by
/// the configured name) and hop-by-hop headers; adds a `User-Agent`.
fn sanitize(mut headers: HeaderMap) -> HeaderMap {
    for name in [
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    if !headers.contains_key(USER_AGENT) {
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("margo-egress-gateway/", env!("CARGO_PKG_VERSION"))),
        );
    }
    headers
}
