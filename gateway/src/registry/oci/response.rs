//! Responses in the distribution API's shape.

use http::{HeaderValue, Response, StatusCode, header};

use crate::{audit::Fault, proxy::body, registry::Outcome};

/// The media types a pulling agent may get for a manifest; sent upstream so
/// that the richest form (an index) is what the cache holds.
pub const MANIFEST_ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.artifact.manifest.v1+json",
];

/// An error body as the distribution spec defines it.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<body::Body> {
    let json = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    let mut resp = Response::new(body::full(json.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error outcome with its fault side and detail for the audit log.
pub fn failed(status: StatusCode, code: &str, fault: Fault, detail: impl Into<String>) -> Outcome {
    let detail = detail.into();
    let mut o = Outcome::new(error(status, code, &detail));
    o.fault = Some(fault);
    o.detail = Some(detail);
    o
}

pub fn api_version(resp: &mut Response<body::Body>) {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
}
