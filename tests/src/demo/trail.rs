//! The audit trail as a human reads it: one compact line per record.

use serde_json::Value;

/// Column titles matching [`line`].
pub fn header() -> String {
    format!(
        "{:<12} {:<16} {:<24} {:<22} {:<50} {:>6} {:<11} {:>9}  {}",
        "time", "event", "device", "host/dst", "request", "status", "cache", "bytes", "detail"
    )
}

/// One record: time, event, device, host (or destination), method and
/// path, status, cache, bytes, then whatever else explains it.
pub fn line(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
    let n = |k: &str| {
        r[k].as_u64()
            .map_or_else(|| "-".to_owned(), |v| v.to_string())
    };
    let target = r["host"]
        .as_str()
        .or_else(|| r["dst"].as_str())
        .unwrap_or("-");
    let request = match (r["method"].as_str(), r["path"].as_str()) {
        (Some(m), Some(p)) => format!("{m} {}", short_digests(p)),
        _ => "-".to_owned(),
    };
    let bytes = match r["event"].as_str() {
        Some("flow.passthrough") => format!("{}/{}", n("bytes_up"), n("bytes_down")),
        _ => n("bytes"),
    };
    let mut detail = Vec::new();
    if r["event"] != "request"
        && let Some(p) = r["proto"].as_str()
    {
        detail.push(p.to_owned());
    }
    for key in ["service", "name", "qtype", "reason", "fault"] {
        if let Some(v) = r[key].as_str() {
            detail.push(format!("{key}={v}"));
        }
    }
    for key in ["packets", "upstream_ms", "duration_ms"] {
        if let Some(v) = r[key].as_u64() {
            detail.push(format!("{key}={v}"));
        }
    }
    if let Some(d) = r["detail"].as_str() {
        detail.push(format!("\"{}\"", clip(d, 70)));
    }
    format!(
        "{:<12} {:<16} {:<24} {:<22} {:<50} {:>6} {:<11} {:>9}  {}",
        clock(&s("ts")),
        s("event"),
        s("device"),
        target,
        request,
        n("status"),
        s("cache"),
        bytes,
        detail.join(" ")
    )
}

/// `HH:MM:SS.mmm` of an RFC 3339 time stamp (the log is UTC).
fn clock(ts: &str) -> String {
    match ts.split_once('T') {
        Some((_, t)) => t.trim_end_matches('Z').chars().take(12).collect(),
        None => ts.to_owned(),
    }
}

/// `sha256:<64 hex>` shortened to its first 12 hex digits.
pub fn short_digests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("sha256:") {
        let (head, tail) = rest.split_at(i + "sha256:".len());
        out.push_str(head);
        let hex_len = tail.chars().take_while(char::is_ascii_hexdigit).count();
        if hex_len > 12 {
            out.push_str(&tail[..12]);
            out.push('…');
        } else {
            out.push_str(&tail[..hex_len]);
        }
        rest = &tail[hex_len..];
    }
    out.push_str(rest);
    out
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(max).collect();
        c.push('…');
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_digests() {
        let d = format!("/v2/a/blobs/sha256:{}", "ab".repeat(32));
        assert_eq!(short_digests(&d), "/v2/a/blobs/sha256:abababababab…");
        assert_eq!(short_digests("/v2/"), "/v2/");
    }

    #[test]
    fn one_line_per_record() {
        let r = serde_json::json!({
            "ts": "2026-11-27T18:09:31.272123Z", "event": "request",
            "device": "10.77.1.2:35778", "host": "registry.example.test",
            "method": "GET", "path": "/v2/demo/app/manifests/1.0",
            "status": 200, "bytes": 405, "cache": "miss", "upstream_ms": 106
        });
        let l = line(&r);
        assert!(l.starts_with("18:09:31.272 request"), "{l}");
        assert!(l.contains("GET /v2/demo/app/manifests/1.0"), "{l}");
        assert!(l.contains(" miss "), "{l}");
        assert!(!l.contains('\n'));
    }
}
