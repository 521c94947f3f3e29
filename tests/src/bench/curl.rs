//! Downloads with real curl processes, many at once: each in its own
//! `ip netns exec <ns> curl`, HTTP/1.1 over TLS, the body discarded, and
//! curl's own timing (`time_total`) reported per client.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::registry::{HOST, cmd};

/// Where a client connects for `registry.example.test`.
#[derive(Clone, Debug)]
pub struct Target {
    /// `gateway`, `nginx`, `distribution`, `direct`.
    pub label: &'static str,
    /// The client's namespace.
    pub ns: String,
    /// The address `registry.example.test` resolves to for this client.
    pub addr: Ipv4Addr,
    /// The CA the client trusts.
    pub ca: PathBuf,
}

/// What one curl saw.
#[derive(Clone, Debug)]
pub struct Download {
    pub code: u16,
    pub bytes: u64,
    /// curl's `time_total`, seconds.
    pub secs: f64,
    /// nginx's `X-Cache-Status`, if any.
    pub cache_status: String,
}

/// `n` clients GET `path` at once; returns each client's result and the
/// wall time until the last one finished. Fails if any client did not get
/// `expect_bytes` with status 200.
pub fn parallel_get(
    target: &Target,
    path: &str,
    n: usize,
    expect_bytes: u64,
    timeout: Duration,
) -> Result<(Vec<Download>, f64)> {
    let url = format!("https://{HOST}{path}");
    let started = Instant::now();
    let results: Vec<Result<Download>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(|| one(target, &url, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("curl thread panicked")))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(n);
    for r in results {
        let d = r?;
        if d.code != 200 || d.bytes != expect_bytes {
            bail!(
                "{}: GET {path} gave status {} with {} bytes, expected 200 with {expect_bytes}",
                target.label,
                d.code,
                d.bytes
            );
        }
        out.push(d);
    }
    Ok((out, wall))
}

fn one(target: &Target, url: &str, timeout: Duration) -> Result<Download> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &target.ns, "curl", "-sS", "--http1.1"])
        .arg("--max-time")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("--cacert")
        .arg(&target.ca)
        .arg("--resolve")
        .arg(format!("{HOST}:443:{}", target.addr))
        .args(["-o", "/dev/null", "-w"])
        .arg("%{http_code} %{size_download} %{time_total} %header{x-cache-status}\n")
        .arg(url);
    let out = cmd::output(&mut c, timeout + Duration::from_secs(10))?;
    let text = out.stdout_text();
    if !out.success() {
        bail!(
            "curl to {} ({}) failed ({}): {} {}",
            target.label,
            target.addr,
            out.status,
            out.stderr.trim(),
            text.trim()
        );
    }
    parse_w(&text).with_context(|| format!("parsing curl -w output {text:?}"))
}

fn parse_w(text: &str) -> Option<Download> {
    let mut it = text.split_whitespace();
    Some(Download {
        code: it.next()?.parse().ok()?,
        bytes: it.next()?.parse().ok()?,
        secs: it.next()?.parse().ok()?,
        cache_status: it.next().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_write_out() {
        let d = parse_w("200 1073741824 2.345678 HIT\n").expect("parse");
        assert_eq!((d.code, d.bytes), (200, 1 << 30));
        assert!((d.secs - 2.345678).abs() < 1e-9);
        assert_eq!(d.cache_status, "HIT");
        let d = parse_w("200 5 0.1 \n").expect("parse");
        assert_eq!(d.cache_status, "");
        assert!(parse_w("").is_none());
    }
}
