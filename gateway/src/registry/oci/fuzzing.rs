//! The OCI part of the `oci` fuzz target (see `crate::fuzzing`): here
//! because the route and query parsers are private to this
//! module. Not an API.

use super::{query, route};
use crate::cache::Digest;

/// One fuzz input: its first line is a request path with an optional
/// query (`/v2/<name>/tags/list?n=2&last=v1`), the rest a document
/// (a manifest or a tag list) as upstream would send it.
pub fn run(data: &[u8], host: &str) {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let (path, query_text) = match head.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (head.as_ref(), None),
    };

    check_route(path);
    check_digest(path);
    // The two tag grammars (routes and `last=`) must agree.
    assert_eq!(route::is_tag(path), query::is_tag(path), "is_tag: {path:?}");

    check_descriptors(body);
    if let Ok(q) = query::Query::parse(query_text, host) {
        check_query(&q, host);
        check_page(body, &q);
    }
}

fn check_route(path: &str) {
    use route::{Reference, Route};
    match route::route(path) {
        Route::Manifest { name, reference } => {
            assert!(route::is_name(&name), "manifest name {name:?}");
            match reference {
                Reference::Tag(t) => assert!(route::is_tag(&t), "tag {t:?}"),
                Reference::Digest(d) => assert_digest(&d),
            }
        }
        Route::Blob { name, digest } | Route::Referrers { name, digest } => {
            assert!(route::is_name(&name), "name {name:?}");
            assert_digest(&digest);
        }
        Route::Tags { name } | Route::Upload { name } => {
            assert!(route::is_name(&name), "name {name:?}");
        }
        Route::Base | Route::Invalid(_) | Route::NotFound => {}
    }
}

/// A digest the router accepted: the cache must take it, and print it back
/// as it came (one spelling per digest, one cache key).
fn assert_digest(d: &str) {
    assert!(route::is_sha256_digest(d), "digest {d:?}");
    let parsed = Digest::parse(d).unwrap_or_else(|e| panic!("cache refuses routed {d:?}: {e}"));
    assert_eq!(parsed.to_string(), d);
}

/// The router's digest check and the cache's parser agree on every string.
fn check_digest(s: &str) {
    assert_eq!(
        route::is_sha256_digest(s),
        Digest::parse(s).is_ok(),
        "digest checks disagree on {s:?}"
    );
}

/// The digests a manifest or index names (what `cache seed` walks) go
/// through the same checks as a device's path.
fn check_descriptors(body: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let descriptors = ["manifests", "layers"]
        .iter()
        .filter_map(|k| doc.get(k).and_then(|v| v.as_array()))
        .flatten()
        .chain(doc.get("config"));
    for d in descriptors.filter_map(|d| d.get("digest").and_then(|d| d.as_str())) {
        check_digest(d);
        check_route(&format!("/v2/library/x/blobs/{d}"));
    }
}

fn check_query(q: &query::Query, host: &str) {
    if let Some(n) = q.n {
        assert!((1..=query::PAGE_MAX).contains(&n), "n={n}");
    }
    if let Some(last) = &q.last {
        assert!(query::is_tag(last), "last={last:?}");
    }
    // What goes upstream parses back to the same filter.
    let again = query::Query::parse(Some(q.referrers_query().trim_start_matches('?')), host)
        .unwrap_or_else(|e| panic!("referrers query {:?}: {e}", q.referrers_query()));
    assert_eq!(again.artifact_types, q.artifact_types);
}

/// A page cut from a tag list holds at most `n` tags, all after `last`, in
/// order; `next` is its last tag when more remain.
fn check_page(body: &[u8], q: &query::Query) {
    let Some((bytes, next)) = query::page(body, q.n, q.last.as_deref()) else {
        return;
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("page is not JSON: {e}"));
    let tags: Vec<&str> = doc
        .get("tags")
        .and_then(|t| t.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
        .unwrap_or_else(|| panic!("page has no tag array: {doc}"));
    if let Some(n) = q.n {
        assert!(tags.len() <= n as usize, "{} tags for n={n}", tags.len());
    }
    assert!(tags.windows(2).all(|w| w[0] <= w[1]), "unsorted {tags:?}");
    if let Some(last) = &q.last {
        assert!(
            tags.iter().all(|t| *t > last.as_str()),
            "{tags:?} after {last}"
        );
    }
    if let Some(next) = next {
        assert_eq!(tags.last().copied(), Some(next.as_str()));
    }
}
