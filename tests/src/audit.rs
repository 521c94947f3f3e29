//! Reading and checking the gateway's JSON-lines audit log.

use std::{io::ErrorKind, net::SocketAddr, path::Path};

use anyhow::{Context as _, Result};
use serde_json::Value;

/// Parses every complete line of the audit log. A missing file is an empty
/// log; a last line without its newline is still being written and skipped.
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("audit line is not JSON: {l}")))
        .collect()
}

pub fn records_with_event<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

/// Whether `r` is a record of `event` for the flow `device` → `dst`.
pub fn is_flow(r: &Value, event: &str, device: SocketAddr, dst: SocketAddr) -> bool {
    r["event"] == event && r["device"] == device.to_string() && r["dst"] == dst.to_string()
}

/// Whether `r` is a record of `event` to `dst`, from any device port.
pub fn is_to(r: &Value, event: &str, dst: SocketAddr) -> bool {
    r["event"] == event && r["dst"] == dst.to_string()
}

/// RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// Sum of `packets` over drop records.
pub fn packets(records: &[&Value]) -> u64 {
    records.iter().filter_map(|r| r["packets"].as_u64()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert!(is_rfc3339("2026-05-01T12:00:00Z"));
        assert!(is_rfc3339("2026-05-01T12:00:00.123456789Z"));
        assert!(is_rfc3339("2026-05-01T12:00:00+02:00"));
        assert!(!is_rfc3339("2026-05-01 12:00:00"));
        assert!(!is_rfc3339("2026-05-01T12:00:00."));
        assert!(!is_rfc3339("1714564800"));
    }
}
