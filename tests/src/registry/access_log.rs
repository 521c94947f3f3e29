//! The registry's access log (distribution writes one combined-format line
//! per request to stdout, which the harness sends to a file):
//!
//! ```text
//! 10.77.2.1 - - [02/Jan/2026:15:04:05 +0000] "GET /v2/app/blobs/sha256:… HTTP/1.1" 200 67108864 "" "ua"
//! ```

/// One request the registry served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLine {
    /// The client's address (the gateway's is 10.77.2.1).
    pub remote: String,
    pub method: String,
    /// The request target without its query.
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

/// Parses every access line of `text`, skipping anything else.
pub fn parse(text: &str) -> Vec<AccessLine> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<AccessLine> {
    let remote = line.split_whitespace().next()?.to_owned();
    let mut quoted = line.split('"');
    let _ = quoted.next()?;
    let request = quoted.next()?;
    let after = quoted.next()?;
    let mut req = request.split_whitespace();
    let method = req.next()?.to_owned();
    let target = req.next()?;
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut nums = after.split_whitespace();
    let status = nums.next()?.parse().ok()?;
    let bytes = nums.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    Some(AccessLine {
        remote,
        method,
        path,
        status,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_lines() {
        let text = "10.77.2.1 - puller [02/Jan/2026:15:04:05 +0000] \"GET /v2/app/blobs/sha256:ab?x=1 HTTP/1.1\" 200 42 \"\" \"curl/7.88\"\n\
                    time=\"2026\" level=info msg=\"response completed\"\n";
        let lines = parse(text);
        assert_eq!(
            lines,
            vec![AccessLine {
                remote: "10.77.2.1".into(),
                method: "GET".into(),
                path: "/v2/app/blobs/sha256:ab".into(),
                status: 200,
                bytes: 42,
            }]
        );
    }
}
