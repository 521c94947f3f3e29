//! The query strings devices may send, validated. Only what the
//! distribution API defines is kept: `n` and `last` (tag list pages) and
//! `artifactType` (referrers filter); containerd's `ns` must name this
//! site. Nothing a device writes in a query goes upstream or into a cache
//! key as it came: the cache keys stay one per document, and a device
//! cannot make the gateway ask upstream for what it did not validate.

use std::fmt::Write as _;

/// Largest page a device may ask for (`n`).
pub const PAGE_MAX: u32 = 10_000;
/// Longest `artifactType` accepted (a media type).
const MEDIA_TYPE_MAX: usize = 255;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Tag list page size.
    pub n: Option<u32>,
    /// Tag list: the tags after this one.
    pub last: Option<String>,
    /// Referrers filter, percent-encoded as it came (validated).
    pub artifact_types: Vec<String>,
}

impl Query {
    /// Parses `query` for site `host`; the error is for the device.
    pub fn parse(query: Option<&str>, host: &str) -> Result<Self, String> {
        let mut q = Query::default();
        let Some(query) = query else {
            return Ok(q);
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "ns" if !value.eq_ignore_ascii_case(host) => {
                    return Err(format!("ns={value} names another registry than {host}"));
                }
                "ns" => {}
                "n" => {
                    let n: u32 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=PAGE_MAX).contains(n))
                        .ok_or_else(|| format!("n={value} is not a page size (1 to {PAGE_MAX})"))?;
                    q.n = Some(n);
                }
                "last" => {
                    if !is_tag(value) {
                        return Err(format!("last={value} is not a tag"));
                    }
                    q.last = Some(value.to_owned());
                }
                "artifactType" => {
                    if value.is_empty()
                        || value.len() > MEDIA_TYPE_MAX
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"%.+-_/".contains(&b))
                    {
                        return Err(format!("artifactType={value} is not a media type"));
                    }
                    q.artifact_types.push(value.to_owned());
                }
                // Anything else is not part of the API: not forwarded.
                _ => {}
            }
        }
        Ok(q)
    }

    /// The referrers filter as a query string (`?artifactType=…`).
    pub fn referrers_query(&self) -> String {
        let mut s = String::new();
        for (i, t) in self.artifact_types.iter().enumerate() {
            let _ = write!(s, "{}artifactType={t}", if i == 0 { '?' } else { '&' });
        }
        s
    }
}

/// A tag per the distribution spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// One page of a tag list (`{"name":…,"tags":[…]}`): the tags after
/// `last`, at most `n`, in the lexical order the spec gives them; with the
/// `last` of the next page when more remain. `None` when the document is
/// not a tag list.
pub fn page(list: &[u8], n: Option<u32>, last: Option<&str>) -> Option<(Vec<u8>, Option<String>)> {
    let mut doc: serde_json::Value = serde_json::from_slice(list).ok()?;
    let tags = doc.get_mut("tags")?;
    let mut all: Vec<String> = match tags {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        serde_json::Value::Null => Vec::new(),
        _ => return None,
    };
    all.sort();
    let after: Vec<String> = all
        .into_iter()
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    let take = n.map_or(after.len(), |n| (n as usize).min(after.len()));
    let next = (take < after.len())
        .then(|| after[take - 1].clone())
        .filter(|_| take > 0);
    *tags = serde_json::Value::from(after[..take].to_vec());
    Some((serde_json::to_vec(&doc).ok()?, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "registry.example.test";

    #[test]
    fn only_the_apis_parameters_are_kept_and_validated() {
        assert_eq!(Query::parse(None, H), Ok(Query::default()));
        let q = Query::parse(Some("ns=Registry.Example.Test&n=2&last=v1.0&x=evil&artifactType=application%2Fvnd.cncf.notary.signature"), H).expect("valid");
        assert_eq!(q.n, Some(2));
        assert_eq!(q.last.as_deref(), Some("v1.0"));
        assert_eq!(
            q.referrers_query(),
            "?artifactType=application%2Fvnd.cncf.notary.signature"
        );
        assert!(Query::parse(Some("ns=docker.io"), H).is_err());
        for bad in [
            "n=0",
            "n=-1",
            "n=99999999",
            "n=abc",
            "last=../x",
            "last=",
            "artifactType=",
            "artifactType=a%0d%0aX:y\"",
            "artifactType=a b",
        ] {
            assert!(Query::parse(Some(bad), H).is_err(), "{bad}");
        }
        // Unknown keys vanish.
        assert_eq!(Query::parse(Some("foo=bar&&baz"), H), Ok(Query::default()));
    }

    #[test]
    fn tags() {
        assert!(is_tag("v1.0_rc-1"));
        assert!(is_tag("_x"));
        assert!(!is_tag(".x"));
        assert!(!is_tag("a/b"));
        assert!(!is_tag(&"a".repeat(129)));
    }

    #[test]
    fn pages_of_a_tag_list() {
        let list = br#"{"name":"app","tags":["v3","v1","v2","latest"]}"#;
        let (all, next) = page(list, None, None).expect("list");
        assert_eq!(
            String::from_utf8_lossy(&all),
            r#"{"name":"app","tags":["latest","v1","v2","v3"]}"#
        );
        assert_eq!(next, None);
        let (p1, next) = page(list, Some(2), None).expect("page");
        assert_eq!(
            String::from_utf8_lossy(&p1),
            r#"{"name":"app","tags":["latest","v1"]}"#
        );
        assert_eq!(next.as_deref(), Some("v1"));
        let (p2, next) = page(list, Some(2), Some("v1")).expect("page");
        assert_eq!(
            String::from_utf8_lossy(&p2),
            r#"{"name":"app","tags":["v2","v3"]}"#
        );
        assert_eq!(next, None);
        let (none, _) = page(list, Some(2), Some("zz")).expect("page");
        assert_eq!(
            String::from_utf8_lossy(&none),
            r#"{"name":"app","tags":[]}"#
        );
        assert!(page(b"not json", None, None).is_none());
        assert!(page(br#"{"tags":3}"#, None, None).is_none());
        let (empty, _) = page(br#"{"name":"a","tags":null}"#, Some(1), None).expect("null");
        assert_eq!(String::from_utf8_lossy(&empty), r#"{"name":"a","tags":[]}"#);
    }
}
