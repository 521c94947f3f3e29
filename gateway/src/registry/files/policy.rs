//! HTTP caching decisions for a files site, as a shared cache (RFC 9111):
//! what may be stored, for how long it is fresh, which variant a request
//! names (`Vary`), and whether a device's own conditional request is
//! answered 304 from the cache.

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

/// The directives of `Cache-Control` this cache acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Every `Cache-Control` header of `headers`, directives
    /// case-insensitive; unknown directives and bad numbers ignored (a
    /// bad `max-age` then gives no lifetime, as if absent).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut cc = Self::default();
        for value in values {
            for directive in split_list(value) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive, None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` only restricts that field; treated
                    // as plain no-cache, the safe side.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "max-age" => cc.max_age = cc.max_age.or(secs()),
                    "s-maxage" => cc.s_maxage = cc.s_maxage.or(secs()),
                    _ => {}
                }
            }
        }
        cc
    }

    pub fn of(headers: &HeaderMap) -> Self {
        Self::parse(
            headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
    }
}

/// The comma-separated members of a header list, trimmed, empty ones
/// dropped.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Whether a response to a GET may be stored: 200 only (206 and errors
/// are passed on), nothing saying no-store or private on either side,
/// and not `Vary: *` (no request could ever match it again).
pub fn storable(request: &HeaderMap, status: StatusCode, response: &HeaderMap) -> bool {
    let req = CacheControl::of(request);
    let resp = CacheControl::of(response);
    status == StatusCode::OK
        && !req.no_store
        && !resp.no_store
        && !resp.private
        && !vary_names(response).iter().any(|n| n == "*")
}

/// How long a stored response stays fresh after it was fetched:
/// `s-maxage`, else `max-age`, else `Expires` minus `Date`, else the
/// site's `ttl` (the heuristic lifetime this cache uses for responses
/// that name none). `no-cache`: zero, revalidated every time.
pub fn lifetime(response: &HeaderMap, ttl: Duration) -> Duration {
    let cc = CacheControl::of(response);
    if cc.no_cache {
        return Duration::ZERO;
    }
    if let Some(secs) = cc.s_maxage.or(cc.max_age) {
        return Duration::from_secs(secs);
    }
    if let Some(expires) = response.get(header::EXPIRES) {
        // An invalid Expires (`0`, say) means already expired.
        let expires = expires.to_str().ok().and_then(parse_http_date);
        let date = response
            .get(header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(parse_http_date);
        return match (expires, date) {
            (Some(e), Some(d)) => Duration::from_secs(e.saturating_sub(d).max(0) as u64),
            _ => Duration::ZERO,
        };
    }
    ttl
}

/// Whether an entry fetched at `fetched_at` with a `lifetime` is still
/// fresh at `now` (seconds since the epoch), and the request does not
/// insist on revalidation (`Cache-Control: no-cache` / `max-age=0`).
pub fn fresh(request: &HeaderMap, fetched_at: i64, lifetime: Duration, now: i64) -> bool {
    let req = CacheControl::of(request);
    let age = now.saturating_sub(fetched_at).max(0) as u64;
    if req.no_cache || req.max_age.is_some_and(|m| age > m) {
        return false;
    }
    age < lifetime.as_secs()
}

/// The lowercase header names `Vary` lists.
pub fn vary_names(response: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .map(str::to_ascii_lowercase)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The part of a cache key a request's variant adds: each named header's
/// values (joined, whitespace normalised) in the order of `names`.
pub fn variant(names: &[String], request: &HeaderMap) -> String {
    let mut out = String::new();
    for name in names {
        let values: Vec<String> = request
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.push('\n');
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
    }
    out
}

/// The validators of a stored response.
pub struct Validators<'a> {
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
}

/// Whether a device's conditional GET/HEAD is answered 304 by a stored
/// response: `If-None-Match` (weak comparison, `*` matches anything)
/// decides when present; else `If-Modified-Since` against
/// `Last-Modified`.
pub fn not_modified(request: &HeaderMap, stored: &Validators<'_>) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.etag else {
            return false;
        };
        let Ok(inm) = inm.to_str() else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return split_list(inm).any(|t| t == "*" || weak(t) == weak(etag));
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let modified = stored.last_modified.and_then(parse_http_date);
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

/// An HTTP date in the preferred IMF-fixdate form (`Sun, 06 Nov 1994
/// 08:49:37 GMT`) as seconds since the epoch; the obsolete forms are not
/// read (the caller then treats the date as absent).
pub fn parse_http_date(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u8 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => time::Month::January,
        "Feb" => time::Month::February,
        "Mar" => time::Month::March,
        "Apr" => time::Month::April,
        "May" => time::Month::May,
        "Jun" => time::Month::June,
        "Jul" => time::Month::July,
        "Aug" => time::Month::August,
        "Sep" => time::Month::September,
        "Oct" => time::Month::October,
        "Nov" => time::Month::November,
        "Dec" => time::Month::December,
        _ => return None,
    };
    let year: i32 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u8>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(h, m, s).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cache_control_directives_are_read_case_insensitively_across_headers() {
        let cc = CacheControl::of(&headers(&[
            ("cache-control", "Public, MAX-AGE=60"),
            ("cache-control", "s-maxage=\"30\", no-cache, x-unknown=1"),
        ]));
        assert_eq!(
            cc,
            CacheControl {
                no_store: false,
                no_cache: true,
                private: false,
                max_age: Some(60),
                s_maxage: Some(30),
            }
        );
        assert!(CacheControl::parse(["no-store"]).no_store);
        assert!(CacheControl::parse(["private=\"x\""]).private);
        assert_eq!(CacheControl::parse(["max-age=soon"]).max_age, None);
    }

    #[test]
    fn only_plain_200s_are_stored() {
        let none = HeaderMap::new();
        assert!(storable(&none, StatusCode::OK, &none));
        assert!(!storable(&none, StatusCode::NOT_FOUND, &none));
        assert!(!storable(&none, StatusCode::PARTIAL_CONTENT, &none));
        for refusing in ["no-store", "private"] {
            let h = headers(&[("cache-control", refusing)]);
            assert!(!storable(&none, StatusCode::OK, &h), "{refusing}");
        }
        assert!(!storable(
            &headers(&[("cache-control", "no-store")]),
            StatusCode::OK,
            &none
        ));
        assert!(!storable(
            &none,
            StatusCode::OK,
            &headers(&[("vary", "Accept, *")])
        ));
        assert!(storable(
            &none,
            StatusCode::OK,
            &headers(&[("cache-control", "no-cache")])
        ));
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires_then_ttl() {
        let ttl = Duration::from_secs(3600);
        let l = |pairs| lifetime(&headers(pairs), ttl).as_secs();
        assert_eq!(l(&[("cache-control", "max-age=60, s-maxage=5")]), 5);
        assert_eq!(l(&[("cache-control", "max-age=60")]), 60);
        assert_eq!(
            l(&[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:51:37 GMT")
            ]),
            120
        );
        assert_eq!(l(&[("expires", "0")]), 0, "an invalid Expires is expired");
        assert_eq!(l(&[("cache-control", "no-cache, max-age=600")]), 0);
        assert_eq!(l(&[]), 3600);
    }

    #[test]
    fn freshness_counts_age_and_honours_request_directives() {
        let none = HeaderMap::new();
        let life = Duration::from_secs(10);
        assert!(fresh(&none, 100, life, 109));
        assert!(!fresh(&none, 100, life, 110));
        assert!(!fresh(
            &headers(&[("cache-control", "no-cache")]),
            100,
            life,
            101
        ));
        assert!(!fresh(
            &headers(&[("cache-control", "max-age=0")]),
            100,
            life,
            101
        ));
        assert!(fresh(
            &headers(&[("cache-control", "max-age=5")]),
            100,
            life,
            104
        ));
    }

    #[test]
    fn variants_key_on_the_named_request_headers() {
        let resp = headers(&[("vary", "Accept-Encoding"), ("vary", "accept, Accept")]);
        let names = vary_names(&resp);
        assert_eq!(names, vec!["accept", "accept-encoding"]);
        let a = variant(&names, &headers(&[("accept-encoding", "gzip,  br")]));
        let b = variant(&names, &headers(&[("accept-encoding", "gzip, br")]));
        let c = variant(&names, &headers(&[("accept-encoding", "identity")]));
        assert_eq!(a, b, "whitespace is not a variant");
        assert_ne!(a, c);
        assert_eq!(variant(&[], &headers(&[("accept", "x")])), "");
    }

    #[test]
    fn conditional_requests_match_etags_weakly_and_dates_inclusively() {
        let v = Validators {
            etag: Some("\"abc\""),
            last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT"),
        };
        assert!(not_modified(
            &headers(&[("if-none-match", "\"x\", W/\"abc\"")]),
            &v
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &v));
        assert!(!not_modified(&headers(&[("if-none-match", "\"x\"")]), &v));
        // If-None-Match decides alone when present.
        assert!(!not_modified(
            &headers(&[
                ("if-none-match", "\"x\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            &v
        ));
        assert!(not_modified(
            &headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &v
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]),
            &v
        ));
        assert!(!not_modified(&HeaderMap::new(), &v));
    }

    #[test]
    fn http_dates_parse_in_imf_fixdate_only() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "0",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
