//! Redirects: which statuses are followed, resolving `Location`, origins
//! (credentials go only to the configured one) and redacted URLs for
//! logs and errors.

use http::{StatusCode, Uri};

/// Redirects followed for one request; the next one is an error.
pub const MAX_REDIRECTS: usize = 5;

/// 301, 302, 303, 307 and 308. Only GET and HEAD are sent upstream, so
/// the method never changes (303 turns HEAD into HEAD, RFC 9110 15.4.4).
pub(crate) fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Scheme, host and port, compared case-insensitively with the default
/// port filled in (RFC 6454). A trailing dot in a host makes a different
/// origin: when in doubt, credentials stay home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// `None` unless the URI is absolute http(s) with a host.
    pub(crate) fn of(uri: &Uri) -> Option<Self> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
        Some(Self {
            scheme,
            host,
            port: uri.port_u16().unwrap_or(default_port),
        })
    }

    pub(crate) fn is_https(&self) -> bool {
        self.scheme == "https"
    }
}

/// `Location` resolved against the URL that answered (RFC 3986 section
/// 5.2, without the fragment), rebuilt without user-info. `None` when it
/// is not UTF-8, not a URI, or not http(s).
pub(crate) fn resolve(base: &Uri, location: &[u8]) -> Option<Uri> {
    let location = std::str::from_utf8(location).ok()?.trim();
    let location = location.split_once('#').map_or(location, |(l, _)| l);
    if location.is_empty() {
        return None;
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let absolute = if scheme_of(location).is_some() {
        location.to_owned()
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if location.starts_with('?') {
        format!("{scheme}://{authority}{}{location}", base.path())
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    normalize(&absolute.parse().ok()?)
}

/// `scheme://host[:port]/path` with dot segments removed, no user-info.
fn normalize(uri: &Uri) -> Option<Uri> {
    let origin = Origin::of(uri)?;
    let host = uri.host()?;
    let authority = match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let path = remove_dot_segments(uri.path());
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    Uri::builder()
        .scheme(origin.scheme.as_str())
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .ok()
}

/// The scheme of an absolute reference (`https:`), if it has one.
fn scheme_of(reference: &str) -> Option<&str> {
    let (scheme, _) = reference.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// RFC 3986 section 5.2.4 for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "." | "..");
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = format!("/{}", out.join("/"));
    if trailing_slash && !result.ends_with('/') {
        result.push('/');
    }
    result
}

/// The URL for logs and errors: no user-info and no query, which on CDN
/// redirects carries signatures (`?X-Amz-Signature=…`); `?…` marks that
/// one was there.
pub fn redact(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let host = uri.host().unwrap_or("?");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let query = if uri.query().is_some() { "?…" } else { "" };
    format!("{scheme}://{host}{port}{}{query}", uri.path())
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    fn r(base: &str, location: &str) -> Option<String> {
        resolve(&base.parse().unwrap(), location.as_bytes()).map(|u| u.to_string())
    }

    #[test]
    fn resolves_absolute_and_relative_locations() {
        let base = "https://reg.example/v2/lib/nginx/blobs/sha256:ab?x=1";
        assert_eq!(
            r(base, "https://cdn.example/b?sig=1#frag").as_deref(),
            Some("https://cdn.example/b?sig=1")
        );
        assert_eq!(
            r(base, "//cdn.example:8443/b").as_deref(),
            Some("https://cdn.example:8443/b")
        );
        assert_eq!(
            r(base, "/v2/other").as_deref(),
            Some("https://reg.example/v2/other")
        );
        assert_eq!(
            r(base, "./sha256:cd").as_deref(),
            Some("https://reg.example/v2/lib/nginx/blobs/sha256:cd")
        );
        // RFC 3986 4.2: a colon in the first segment makes it a scheme.
        assert_eq!(r(base, "sha256:cd"), None);
        assert_eq!(
            r(base, "../../x/./y").as_deref(),
            Some("https://reg.example/v2/lib/x/y")
        );
        assert_eq!(
            r(base, "?y=2").as_deref(),
            Some("https://reg.example/v2/lib/nginx/blobs/sha256:ab?y=2")
        );
        assert_eq!(
            r(base, "HTTP://Cdn.Example/a").as_deref(),
            Some("http://Cdn.Example/a")
        );
        assert_eq!(
            r(base, "/../../..").as_deref(),
            Some("https://reg.example/")
        );
    }

    #[test]
    fn rejects_unusable_locations() {
        let base = "https://reg.example/v2/";
        assert_eq!(r(base, ""), None);
        assert_eq!(r(base, "   "), None);
        assert_eq!(r(base, "ftp://cdn.example/b"), None);
        assert_eq!(r(base, "https://"), None);
        assert_eq!(r(base, "https://cdn example/b"), None);
        assert_eq!(resolve(&base.parse().unwrap(), b"/\xff"), None);
    }

    #[test]
    fn drops_userinfo() {
        assert_eq!(
            r("https://reg.example/", "https://u:p@cdn.example/b").as_deref(),
            Some("https://cdn.example/b")
        );
    }

    #[test]
    fn origins() {
        let o = |s: &str| Origin::of(&s.parse().unwrap());
        assert_eq!(o("https://Reg.Example/x"), o("HTTPS://reg.example:443/y"));
        assert_ne!(o("https://reg.example/"), o("http://reg.example/"));
        assert_ne!(o("https://reg.example/"), o("https://reg.example:444/"));
        assert_ne!(o("https://reg.example/"), o("https://cdn.reg.example/"));
        assert_eq!(o("/relative"), None);
        assert!(o("https://a/").unwrap().is_https());
    }

    #[test]
    fn redacts_query_and_userinfo() {
        let u: Uri = "https://u:p@cdn.example:8443/b/c?X-Amz-Signature=abc"
            .parse()
            .unwrap();
        assert_eq!(redact(&u), "https://cdn.example:8443/b/c?…");
    }

    #[test]
    fn statuses() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(StatusCode::from_u16(s).unwrap()));
        }
        for s in [200, 300, 304, 305, 401] {
            assert!(!is_redirect(StatusCode::from_u16(s).unwrap()));
        }
    }
}
