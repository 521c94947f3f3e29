//! `GET /v2/<name>/referrers/<digest>` (distribution spec 1.1): the
//! manifests that name `<digest>` as their `subject`, such as the Notary
//! signatures of an image.
//!
//! Devices get the API whatever upstream speaks. A registry without it
//! (the distribution registry 2.x answers 404) holds the same list in the
//! "referrers tag schema": an image index tagged `sha256-<hex>` that the
//! pushing client maintains. The gateway then reads that tag and serves its
//! entries as the API's image index; with neither, the subject has no
//! referrers, and the answer is 200 with an empty list, as a registry with
//! the API gives it.
//!
//! The unfiltered list is what is cached, under `referrers/<digest>`, like
//! a tag (TTL, revalidation, served stale when upstream is down). The
//! `artifactType` filter is applied here when serving, so that a filtered
//! query is answered from that same copy, offline too, and
//! `OCI-Filters-Applied` always tells the truth about what was done.
//! Upstream's pagination (`Link`) is not followed: a subject has a handful
//! of referrers, and the tag schema has no pages.

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::Value;

use super::{
    OciSite,
    document::{self, Doc, Failure, Kind},
};
use crate::{registry::Outcome, upstream::UpstreamRequest};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Tells the client which filters the list it got has been through, so
/// that it does not filter again (or knows it must).
const FILTERS_APPLIED: &str = "oci-filters-applied";

pub async fn referrers(
    site: &OciSite,
    method: &Method,
    name: &str,
    digest: &str,
    query: &str,
) -> Outcome {
    let wanted = artifact_types(query);
    let key = format!("referrers/{digest}");
    let get = fetch(site, name, digest);
    let resolved = match document::resolve(site, name, &key, Kind::Other, None, get).await {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    if wanted.is_empty() {
        return resolved.serve(method, &resolved.doc, Kind::Other);
    }
    match filtered(&resolved.doc, &wanted) {
        Some(doc) => {
            let mut o = resolved.serve(method, &doc, Kind::Other);
            o.response
                .headers_mut()
                .insert(FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
            o
        }
        None => {
            // Only a copy cached before lists were checked can get here;
            // unfiltered and without the header, the client filters.
            tracing::warn!(%digest, "cached referrers list is not an index; served unfiltered");
            resolved.serve(method, &resolved.doc, Kind::Other)
        }
    }
}

/// Upstream's referrers list for `digest`: its API's answer, else its
/// referrers tag schema.
async fn fetch(site: &OciSite, name: &str, digest: &str) -> Result<Doc, Failure> {
    let api = UpstreamRequest::get(format!("/v2/{name}/referrers/{digest}"))
        .with_scope(OciSite::scope(name))
        .with_header(header::ACCEPT, HeaderValue::from_static(MT_INDEX));
    match document::fetch(site, api, Kind::Other).await {
        Ok(doc) => {
            if entries(&doc.bytes).is_none() {
                return Err(Failure::Body(format!(
                    "upstream's referrers answer for {digest} is not an image index"
                )));
            }
            // Whatever type upstream labelled it with, the API's answer
            // is an image index.
            Ok(Doc {
                media_type: MT_INDEX.to_owned(),
                ..doc
            })
        }
        Err(Failure::Status(resp)) if lacks_api(resp.status()) => {
            from_tag_schema(site, name, digest, resp.status()).await
        }
        Err(failure) => Err(failure),
    }
}

/// What a registry without the referrers API answers to it: no route
/// (404), or a route that refuses the method or is not implemented.
pub(super) fn lacks_api(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    )
}

/// The list read from the referrers tag schema's index, as the API's
/// answer (a 404 for the tag: no referrers).
async fn from_tag_schema(
    site: &OciSite,
    name: &str,
    digest: &str,
    api_status: StatusCode,
) -> Result<Doc, Failure> {
    let tag = schema_tag(digest);
    let req = document::accept(
        UpstreamRequest::get(format!("/v2/{name}/manifests/{tag}"))
            .with_scope(OciSite::scope(name)),
    );
    // Kind::Manifest: the tag's bytes are checked against the digest
    // upstream announces, like any manifest's.
    let (list, how) = match document::fetch(site, req, Kind::Manifest).await {
        Ok(index) => {
            let Some(list) = entries(&index.bytes) else {
                return Err(Failure::Body(format!(
                    "upstream has no referrers API ({api_status}) and its referrers tag {tag} is not an image index"
                )));
            };
            // Kept as the manifest it is, so that a client reading the tag
            // schema itself is served it offline too.
            document::store(site, &index).await;
            document::remember(
                site,
                name,
                &format!("manifests/{tag}"),
                &index,
                Kind::Manifest,
            )
            .await;
            (list, format!("listed from its referrers tag {tag}"))
        }
        Err(Failure::Status(resp)) if resp.status() == StatusCode::NOT_FOUND => {
            (Vec::new(), format!("no referrers tag {tag} either: none"))
        }
        Err(failure) => return Err(failure),
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": list,
    });
    let bytes = serde_json::to_vec(&index)
        .map_err(|e| Failure::Body(format!("composing the referrers list: {e}")))?;
    Ok(Doc::composed(
        Bytes::from(bytes),
        MT_INDEX,
        Some(format!(
            "upstream has no referrers API ({api_status}); {how}"
        )),
    ))
}

/// `sha256:<hex>` -> `sha256-<hex>` (the route admits sha256 digests only,
/// whose hex is within the schema's 64 characters).
pub(super) fn schema_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The descriptors of an image index, if `bytes` is one.
pub(super) fn entries(bytes: &[u8]) -> Option<Vec<Value>> {
    let doc: Value = serde_json::from_slice(bytes).ok()?;
    let list = doc.get("manifests")?.as_array()?;
    list.iter().all(Value::is_object).then(|| list.clone())
}

/// `doc` with only the descriptors whose `artifactType` is one of `wanted`.
fn filtered(doc: &Doc, wanted: &[String]) -> Option<Doc> {
    let mut index: Value = serde_json::from_slice(&doc.bytes).ok()?;
    index.get_mut("manifests")?.as_array_mut()?.retain(|d| {
        d.get("artifactType")
            .and_then(Value::as_str)
            .is_some_and(|t| wanted.iter().any(|w| w == t))
    });
    let bytes = serde_json::to_vec(&index).ok()?;
    Some(Doc::composed(
        Bytes::from(bytes),
        &doc.media_type,
        doc.note.clone(),
    ))
}

/// The `artifactType` values of a query (`?artifactType=…`), decoded.
fn artifact_types(query: &str) -> Vec<String> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == "artifactType" && !value.is_empty()).then(|| percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX`; anything else, malformed escapes included, is kept as
/// it came. `+` stays `+`: media types are full of it (`…+json`), and a
/// space, which form encoding writes as `+`, never belongs in one.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = b.get(i + 1..i + 3)
            && hex.iter().all(u8::is_ascii_hexdigit)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests;
