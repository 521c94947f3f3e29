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

/// The answer to a repository outside the device's group's patterns:
/// the distribution spec's `DENIED` (403), with the group and repository
/// in `detail` and in the audit record.
pub fn denied(group: &str, repository: &str) -> Outcome {
    let message = format!("repository {repository} is not allowed for device group {group}");
    let json = serde_json::json!({ "errors": [{
        "code": "DENIED",
        "message": message,
        "detail": { "group": group, "repository": repository },
    }] });
    let mut resp = Response::new(body::full(json.to_string()));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut o = Outcome::new(resp);
    o.fault = Some(Fault::Device);
    o.detail = Some(message);
    o.reason = Some(crate::policy::DENY_GROUP);
    o
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn denied_is_the_spec_error_with_group_and_repository() {
        let o = super::denied("line3", "line-4/app");
        assert_eq!(o.response.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(o.reason, Some(crate::policy::DENY_GROUP));
        let bytes = http_body_util::BodyExt::collect(o.response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["errors"][0]["code"], "DENIED");
        assert_eq!(v["errors"][0]["detail"]["group"], "line3");
        assert_eq!(v["errors"][0]["detail"]["repository"], "line-4/app");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("line-4/app")),
            "{v}"
        );
    }
}
