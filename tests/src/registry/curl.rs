//! `curl` run inside a namespace, its response captured in files (status,
//! the last response's headers, the body), so big bodies are hashed from
//! disk rather than held in memory.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::cmd::{self, Outcome};
use crate::oci::sha256_file;

/// Every call gets its own header and body files.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// What one curl run saw.
#[derive(Debug)]
pub struct CurlResponse {
    /// curl's exit status and stderr (non-zero: TLS failure, reset,
    /// incomplete body, timeout…).
    pub outcome: Outcome,
    /// The HTTP status of the last response, 0 if there was none.
    pub code: u16,
    /// The last response's status line (`HTTP/2 200`, `HTTP/1.1 421 …`).
    pub status_line: String,
    /// The last response's headers, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body_path: PathBuf,
}

impl CurlResponse {
    /// curl exited 0 (the transfer completed).
    pub fn complete(&self) -> bool {
        self.outcome.success()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as received (empty if none was written).
    pub fn body(&self) -> Vec<u8> {
        std::fs::read(&self.body_path).unwrap_or_default()
    }

    pub fn body_digest(&self) -> Result<String> {
        sha256_file(&self.body_path)
    }

    pub fn body_len(&self) -> u64 {
        std::fs::metadata(&self.body_path)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "curl {} in {:?}: {:?} (code {}) headers {:?} body {} bytes; stderr: {}",
            self.outcome.status,
            self.outcome.took,
            self.status_line,
            self.code,
            self.headers,
            self.body_len(),
            self.outcome.stderr.trim()
        )
    }
}

/// `curl -sS <args>` in `ns` (as under `ip netns exec`, see
/// [`crate::netns::exec_in`]) with its response captured under
/// `scratch`. `args` carry the URL and any option (`--cacert`, `-H`, `-X`…).
pub fn curl(ns: &str, scratch: &Path, args: &[String], timeout: Duration) -> Result<CurlResponse> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let header_path = scratch.join(format!("curl-{n}.headers"));
    let body_path = scratch.join(format!("curl-{n}.body"));
    let mut c = crate::netns::exec_in(ns, "curl");
    c.args(["-sS", "--max-time"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-D")
        .arg(&header_path)
        .arg("-o")
        .arg(&body_path)
        .args(["-w", "%{http_code}"])
        .args(args);
    let outcome = cmd::output(&mut c, timeout + Duration::from_secs(5))?;
    let code = String::from_utf8_lossy(&outcome.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let (status_line, headers) =
        last_headers(&std::fs::read_to_string(&header_path).unwrap_or_default());
    Ok(CurlResponse {
        outcome,
        code,
        status_line,
        headers,
        body_path,
    })
}

/// The header lines of the last response in a `-D` dump (which holds every
/// response of the exchange: 100 Continue, redirects, 401s).
type Headers = Vec<(String, String)>;

fn last_headers(dump: &str) -> (String, Headers) {
    let mut blocks: Vec<(String, Headers)> = Vec::new();
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            blocks.push((line.to_owned(), Vec::new()));
        } else if let (Some((_, block)), Some((name, value))) =
            (blocks.last_mut(), line.split_once(':'))
        {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    blocks.pop().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_response() {
        let dump = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nLocation: /v2/x\r\nDocker-Content-Digest: sha256:ab\r\n\r\n";
        let (status, h) = last_headers(dump);
        assert_eq!(status, "HTTP/1.1 201 Created");
        assert_eq!(
            h,
            vec![
                ("location".to_owned(), "/v2/x".to_owned()),
                ("docker-content-digest".to_owned(), "sha256:ab".to_owned())
            ]
        );
    }
}
