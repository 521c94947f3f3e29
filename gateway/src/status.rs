//! `gateway status`: what is installed, read from the pins and the state
//! record, so it works whether or not a daemon is running.

use serde_json::{Value, json};

use gateway_common::Counter;

use crate::{config::Config, ebpf};

/// Counters as a JSON object by name.
fn counter_map(counts: impl Iterator<Item = (Counter, u64)>) -> Value {
    Value::Object(
        counts
            .map(|(c, v)| (c.name().to_owned(), json!(v)))
            .collect(),
    )
}

/// Packets the program dropped, from a JSON object of counters.
fn dropped(counters: &Value) -> u64 {
    counters
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.starts_with("drop_"))
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}

pub fn status(config: &Config) -> anyhow::Result<Value> {
    let Some(state) = ebpf::State::read(&config.state_dir)? else {
        return Ok(json!({
            "installed": false,
            "pin_path": config.kernel.pin_path,
            "interfaces": {},
            "counters": {},
        }));
    };
    let mut maps = ebpf::Maps::open(&state.pin_path)?;
    maps.name_interfaces(&state.attachments);
    let kernel = maps.counters()?;
    let by_name = |name: &str| -> Value {
        kernel
            .interfaces
            .iter()
            .find(|i| i.interface == name)
            .map_or(Value::Null, |i| {
                counter_map(Counter::ALL.iter().map(|c| (*c, i.get(*c))))
            })
    };
    let interfaces: serde_json::Map<String, Value> = state
        .attachments
        .iter()
        .map(|a| {
            (
                a.interface.clone(),
                json!({ "ifindex": a.ifindex, "mode": a.mode, "counters": by_name(&a.interface) }),
            )
        })
        .collect();
    Ok(json!({
        "installed": true,
        "abi_version": state.abi_version,
        "pin_path": state.pin_path,
        "interfaces": interfaces,
        // Every interface together, and what the program counted on no
        // recorded interface (see `ebpf::counters`).
        "counters": counter_map(kernel.totals().into_iter()),
        "counters_other": by_name(ebpf::counters::FALLBACK_INTERFACE),
    }))
}

/// Human-readable rendering of [`status`].
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    if v["installed"] != json!(true) {
        out.push_str("not installed (no state record)\n");
        return out;
    }
    out.push_str(&format!(
        "pins: {}\n",
        v["pin_path"].as_str().unwrap_or("?")
    ));
    if let Some(ifaces) = v["interfaces"].as_object() {
        for (name, a) in ifaces {
            out.push_str(&format!(
                "interface {name}: {}, {} packets dropped\n",
                a["mode"].as_str().unwrap_or("?"),
                dropped(&a["counters"]),
            ));
        }
    }
    match v["daemon"]["audit"].as_object() {
        Some(a) => {
            render_daemon(&v["daemon"], &mut out);
            out.push_str(&format!(
                "audit log: {} records written, {} write failures, {} lost (since the daemon started)\n",
                a.get("written").unwrap_or(&json!(0)),
                a.get("write_failures").unwrap_or(&json!(0)),
                a.get("lost").unwrap_or(&json!(0)),
            ));
        }
        None => out.push_str(
            "daemon: not running (no answer on the control socket); the kernel path below keeps guarding\n",
        ),
    }
    if let Some(counters) = v["counters"].as_object() {
        for (name, n) in counters {
            out.push_str(&format!("{name:>26} {n}\n"));
        }
    }
    out
}

/// The running daemon's part: uptime, services, sites, cache, refusals.
fn render_daemon(d: &Value, out: &mut String) {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    out.push_str(&format!(
        "daemon: up {}, config generation {}, {} open connections\n",
        humantime::format_duration(std::time::Duration::from_secs(n(&d["uptime_secs"]))),
        n(&d["config_generation"]),
        n(&d["open_connections"]),
    ));
    for s in d["passthrough"].as_array().into_iter().flatten() {
        let addrs: Vec<&str> = s["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "passthrough {}: {}\n",
            s["name"].as_str().unwrap_or("?"),
            addrs.join(", ")
        ));
    }
    for s in d["sites"].as_array().into_iter().flatten() {
        let ratio = s["hit_ratio"].as_f64().map_or_else(
            || "no cache lookups yet".to_owned(),
            |r| format!("hit ratio {:.0}%", r * 100.0),
        );
        out.push_str(&format!(
            "site {}: {} requests, {ratio}\n",
            s["host"].as_str().unwrap_or("?"),
            n(&s["requests"]),
        ));
    }
    if let Some(c) = d["cache"].as_object() {
        let size = |k: &str| bytesize::ByteSize(c.get(k).and_then(Value::as_u64).unwrap_or(0));
        out.push_str(&format!(
            "cache: {} of {} ({:.0}% full), {} blobs, {} pinned, {} fills in progress\n",
            size("bytes"),
            size("max_bytes"),
            c.get("fill_ratio").and_then(Value::as_f64).unwrap_or(0.0) * 100.0,
            c.get("blobs").and_then(Value::as_u64).unwrap_or(0),
            size("pinned_bytes"),
            c.get("fills_in_progress")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        ));
    }
    if let Some(st) = d["store"].as_object() {
        let s = |k: &str| st.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let c = |k: &str| st["counts"].get(k).and_then(Value::as_u64).unwrap_or(0);
        let reach = if st.get("reachable").and_then(Value::as_bool) == Some(true) {
            "reachable".to_owned()
        } else {
            format!(
                "UNREACHABLE (serving from the local cache and upstream): {}",
                s("last_error")
            )
        };
        out.push_str(&format!(
            "store {} as {}: {reach}, lease {}, reads {} hit / {} miss / {} error, {} read, {} written\n",
            s("location"),
            s("gateway_id"),
            s("lease"),
            c("reads_hit"),
            c("reads_miss"),
            c("reads_error"),
            bytesize::ByteSize(c("bytes_read")),
            bytesize::ByteSize(c("bytes_written")),
        ));
    }
    // Only when some site's proxy failed: most sites have no proxy.
    for p in d["upstream_proxy_problems"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let s = |k: &str| p[k].as_str().unwrap_or("?").to_owned();
        out.push_str(&format!(
            "upstream proxy {} for site {}: failing since {}: {}\n",
            s("proxy"),
            s("site"),
            s("at"),
            s("error"),
        ));
    }
    let refusals = d["recent_refusals"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if refusals.is_empty() {
        out.push_str("recent refusals: none since the daemon started\n");
    } else {
        out.push_str(&format!(
            "recent refusals (newest first, at most {}):\n",
            crate::metrics::refused::KEPT
        ));
        let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        for r in refusals {
            out.push_str(&format!(
                "  {} {} {} -> {} {}\n",
                s(&r["ts"]),
                s(&r["event"]),
                s(&r["device"]),
                s(&r["destination"]),
                s(&r["reason"]),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_audit_counts_are_shown_when_it_answers() {
        let mut v = json!({
            "installed": true,
            "pin_path": "/sys/fs/bpf/margo-gateway",
            "interfaces": { "eth1": { "ifindex": 3, "mode": "tcx", "counters": { "drop_protocol": 7, "drop_fragment": 2, "pass_arp": 5 } } },
            "counters": { "drop_protocol": 7 },
        });
        assert!(
            render(&v).contains("interface eth1: tcx, 9 packets dropped"),
            "{}",
            render(&v)
        );
        v["daemon"] = json!({ "audit": { "written": 12, "write_failures": 3, "lost": 0 } });
        let text = render(&v);
        assert!(
            text.contains("audit log: 12 records written, 3 write failures, 0 lost"),
            "{text}"
        );
        v["daemon"] = json!({
            "audit": { "written": 1, "write_failures": 0, "lost": 0 },
            "uptime_secs": 61,
            "config_generation": 1,
            "open_connections": 2,
            "passthrough": [{ "name": "wfm.test", "addresses": ["10.0.9.1:443"] }],
            "sites": [
                { "host": "reg.test", "requests": 4, "hit_ratio": 0.75 },
                { "host": "idle.test", "requests": 0, "hit_ratio": null },
            ],
            "cache": { "bytes": 512, "max_bytes": 1024, "fill_ratio": 0.5, "blobs": 3, "pinned_bytes": 0, "fills_in_progress": 1 },
            "store": { "location": "http://garage.test:3900/gateway-cache", "gateway_id": "gw-a", "reachable": false, "last_error": "the shared store did not answer within 5s", "lease": "list", "counts": { "reads_hit": 2, "reads_miss": 1, "reads_error": 1, "bytes_read": 2048, "bytes_written": 0 } },
            "recent_refusals": [{ "ts": "2026-01-01T00:00:00Z", "event": "flow.denied", "device": "10.0.3.2:5000", "destination": "1.2.3.4:443", "reason": "no_rule" }],
            "upstream_proxy_problems": [{ "site": "reg.test", "proxy": "http://proxy.test:3128", "at": "2026-01-01T00:00:01Z", "error": "request to https://reg.test/v2/ failed: the upstream proxy http://proxy.test:3128 refused the gateway's credentials (407 Proxy Authentication Required)" }],
        });
        let text = render(&v);
        for want in [
            "daemon: up 1m 1s, config generation 1, 2 open connections",
            "passthrough wfm.test: 10.0.9.1:443",
            "site reg.test: 4 requests, hit ratio 75%",
            "site idle.test: 0 requests, no cache lookups yet",
            "(50% full), 3 blobs",
            "store http://garage.test:3900/gateway-cache as gw-a: UNREACHABLE (serving from the local cache and upstream): the shared store did not answer within 5s, lease list, reads 2 hit / 1 miss / 1 error, 2.0 KiB read, 0 B written",
            "10.0.3.2:5000 -> 1.2.3.4:443 no_rule",
            "upstream proxy http://proxy.test:3128 for site reg.test: failing since 2026-01-01T00:00:01Z: request to https://reg.test/v2/ failed: the upstream proxy http://proxy.test:3128 refused the gateway's credentials (407 Proxy Authentication Required)",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        v["daemon"] = serde_json::Value::Null;
        assert!(render(&v).contains("daemon: not running"));
    }
}
