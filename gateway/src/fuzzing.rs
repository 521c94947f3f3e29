//! Entry points of the fuzz targets (`fuzz/`, run by `cargo xtask fuzz`)
//! and of the replay of what they found (`fuzz/regressions/`, in the tests
//! below, on stable). Each takes any bytes, runs one parser on them the way
//! the gateway does, and asserts what must hold of the result: a panic here
//! is a finding, whether the parser's own or a broken invariant. Not an
//! API.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, header};

use crate::{
    config::Config,
    dns::{self, LocalAddrs, Transport, Verdict, Zone},
    proxy::{http::framing_problem, http::request_host, peek::looks_like_http},
    tls::sni::{self, Peek},
};

/// One fuzz target: any bytes in, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/fuzz_targets/<name>.rs` calls them.
pub const TARGETS: &[(&str, Target)] = &[
    ("sni", sni),
    ("http", http),
    ("oci", oci),
    ("config", config),
    ("dns", dns),
];

/// The ClientHello peek: a verdict other than `Incomplete` is final (more
/// bytes never change it), and `Incomplete` always asks for more than is
/// there, never more than the peek buffer holds.
pub fn sni(data: &[u8]) {
    let peek = sni::parse_client_hello(data);
    match &peek {
        Peek::Incomplete { need_at_least } => {
            assert!(
                *need_at_least > data.len(),
                "{need_at_least} <= {}",
                data.len()
            );
            assert!(
                *need_at_least <= sni::MAX_PEEK,
                "{need_at_least} > MAX_PEEK"
            );
        }
        Peek::Hello(info) => {
            if let Some(name) = &info.server_name {
                assert!(!name.is_empty() && !name.ends_with('.'), "{name:?}");
                assert_eq!(*name, name.to_ascii_lowercase());
            }
            assert!(info.alpn.iter().all(|p| !p.is_empty()));
        }
        Peek::NotTls | Peek::Invalid(_) => {}
    }
    if let Some((_, shorter)) = data.split_last() {
        match sni::parse_client_hello(shorter) {
            Peek::Incomplete { .. } => {}
            earlier => assert_eq!(earlier, peek, "a final verdict changed with one more byte"),
        }
    }
}

/// The request checks: the HTTP/HTTPS sniff, the smuggling shapes
/// (`framing_problem`) and the host a request names. The input is a
/// request head: a URI line, then `name: value` lines.
pub fn http(data: &[u8]) {
    let _ = looks_like_http(data);
    let mut lines = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let uri = lines
        .next()
        .and_then(|l| Uri::try_from(l).ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let count = |name| headers.get_all(name).iter().count();
    let (te, cl, host) = (
        count(header::TRANSFER_ENCODING),
        count(header::CONTENT_LENGTH),
        count(header::HOST),
    );
    let problem = framing_problem(&headers);
    assert_eq!(
        problem.is_none(),
        te == 0 && cl <= 1 && host <= 1,
        "te={te} cl={cl} host={host}: {problem:?}"
    );
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    if let Some(h) = request_host(&req) {
        assert!(!h.is_empty() && !h.ends_with('.'), "{h:?}");
        assert_eq!(h, h.to_ascii_lowercase());
    }
}

/// OCI paths, queries, digests and documents: see
/// [`crate::registry::oci::fuzzing`].
pub fn oci(data: &[u8]) {
    crate::registry::oci::fuzzing::run(data, "registry.example.test");
}

/// The configuration: YAML parse and validation. What validation lets
/// through must hold up in the code that trusts it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // `Config::load` refuses non-UTF-8 files before parsing
    };
    let config = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let configured = config
        .manager
        .iter()
        .map(|m| m.addresses.len())
        .sum::<usize>()
        + config
            .passthrough
            .iter()
            .map(|p| p.addresses.len())
            .sum::<usize>();
    // `passthrough_services` drops what does not parse, relying on validation.
    assert_eq!(config.passthrough_addresses().len(), configured);
    assert_eq!(
        config.devices.prefix_list().len(),
        config.devices.prefixes.len()
    );
    for site in &config.sites {
        assert!(config.site(&site.host).is_some(), "site {:?}", site.host);
    }
    let _ = Zone::new(&config);
    assert_eq!(
        config.devices.dhcp_server_addresses().len(),
        config.devices.dhcp_servers.len()
    );
}

/// A DNS zone like a site's: a registry, two passthrough services, and a
/// site host with more addresses than a classic UDP answer holds.
fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let many: Vec<String> = (1..=40).map(|i| format!("\"192.0.2.{i}\"")).collect();
        let text = format!(
            "devices: {{interfaces: [dev0]}}
passthrough:
  - name: wfm.site.example
    addresses: [\"10.0.0.5:443\", \"[fd00::5]:443\"]
  - name: mis.site.example
    addresses: [\"10.0.0.6:443\"]
sites:
  - {{host: Registry-1.Docker.io, kind: oci}}
  - {{host: big.site.example, kind: oci}}
dns: {{ttl: 30, answer: [{}, \"fd00::1\"]}}
",
            many.join(", ")
        );
        Zone::new(&Config::parse(&text).expect("the fuzz zone's config is valid"))
    })
}

/// A DNS query over UDP (first byte even) or TCP: any answer decodes, is a
/// response with the query's id, and fits the UDP limit.
pub fn dns(data: &[u8]) {
    let Some((first, query)) = data.split_first() else {
        return;
    };
    let transport = if first % 2 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let local = LocalAddrs {
        v4: vec![std::net::Ipv4Addr::new(10, 77, 1, 1)],
        v6: vec!["fd77:1::1".parse().expect("v6 literal")],
    };
    let out = dns::answer::answer(zone(), query, &local, transport);
    // The fast path, when it takes a query, answers exactly what the
    // general path does.
    let general = dns::answer::general(zone(), query, &local, transport);
    assert_eq!(
        out.response, general.response,
        "fast and general answers differ"
    );
    assert_eq!(
        out.verdict, general.verdict,
        "fast and general verdicts differ"
    );
    if let Some(bytes) = &out.response {
        let m = hickory_proto::op::Message::from_vec(bytes)
            .unwrap_or_else(|e| panic!("our answer does not decode: {e}"));
        assert_eq!(
            m.metadata.message_type,
            hickory_proto::op::MessageType::Response
        );
        assert_eq!(m.metadata.id, u16::from_be_bytes([query[0], query[1]]));
        if transport == Transport::Udp {
            assert!(bytes.len() <= 1232, "{} byte UDP answer", bytes.len());
        }
    }
    if let Verdict::Answered { name, .. } | Verdict::Refused { name, .. } = &out.verdict {
        assert!(
            name.chars().count() <= 301,
            "audit name of {} bytes",
            name.len()
        );
    }
}

#[cfg(test)]
mod tests {
    //! Every seed and every input a fuzz run kept as a regression, replayed
    //! through its target on the ordinary test toolchain.

    use std::path::{Path, PathBuf};

    use super::*;

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// The files under `fuzz/<kind>/<target>/`, dotfiles aside.
    fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        files
    }

    fn replay(kind: &str) -> usize {
        let mut n = 0;
        for (target, run) in TARGETS {
            for path in inputs(kind, target) {
                let data = std::fs::read(&path).expect("readable input");
                println!("{kind}/{target}: {}", path.display());
                run(&data);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn every_target_has_a_seed_corpus_and_a_fuzz_target() {
        for (target, _) in TARGETS {
            assert!(
                !inputs("corpus", target).is_empty(),
                "no seeds in fuzz/corpus/{target}"
            );
            assert!(
                fuzz_dir()
                    .join("fuzz_targets")
                    .join(format!("{target}.rs"))
                    .is_file(),
                "no fuzz/fuzz_targets/{target}.rs"
            );
        }
    }

    #[test]
    fn seeds_replay_without_a_panic() {
        assert!(replay("corpus") >= TARGETS.len());
    }

    #[test]
    fn regressions_replay_without_a_panic() {
        // None yet is fine: this replays whatever `cargo xtask fuzz` kept.
        replay("regressions");
    }

    /// The seeds are what they claim: a real ClientHello gives its SNI, a
    /// real config validates.
    #[test]
    fn seeds_reach_past_the_first_check() {
        for path in inputs("corpus", "sni") {
            let data = std::fs::read(&path).expect("seed");
            assert!(
                matches!(sni::parse_client_hello(&data), Peek::Hello(ref i) if i.server_name.is_some()),
                "{} is not a ClientHello with SNI",
                path.display()
            );
        }
        let valid = inputs("corpus", "config")
            .iter()
            .filter(|p| {
                let text = std::fs::read_to_string(p).expect("seed");
                Config::parse(&text).is_ok()
            })
            .count();
        assert!(valid > 0, "no config seed validates");
    }
}
