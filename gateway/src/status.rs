//! `gateway status`: what is installed, read from the pins and the state
//! record, so it works whether or not a daemon is running.

use serde_json::{Value, json};

use crate::{config::Config, ebpf};

pub fn status(config: &Config) -> anyhow::Result<Value> {
    let Some(state) = ebpf::State::read(&config.state_dir)? else {
        return Ok(json!({
            "installed": false,
            "pin_path": config.kernel.pin_path,
            "interfaces": {},
            "counters": {},
        }));
    };
    let maps = ebpf::Maps::open(&state.pin_path)?;
    let counters: serde_json::Map<String, Value> = maps
        .counters()?
        .into_iter()
        .map(|(c, v)| (c.name().to_owned(), json!(v)))
        .collect();
    let interfaces: serde_json::Map<String, Value> = state
        .attachments
        .iter()
        .map(|a| {
            (
                a.interface.clone(),
                json!({ "ifindex": a.ifindex, "mode": a.mode }),
            )
        })
        .collect();
    Ok(json!({
        "installed": true,
        "abi_version": state.abi_version,
        "pin_path": state.pin_path,
        "interfaces": interfaces,
        "counters": counters,
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
                "interface {name}: {}\n",
                a["mode"].as_str().unwrap_or("?")
            ));
        }
    }
    match v["daemon"]["audit"].as_object() {
        Some(a) => out.push_str(&format!(
            "audit log: {} records written, {} write failures, {} lost (since the daemon started)\n",
            a.get("written").unwrap_or(&json!(0)),
            a.get("write_failures").unwrap_or(&json!(0)),
            a.get("lost").unwrap_or(&json!(0)),
        )),
        None => out.push_str("daemon: not answering on the control socket\n"),
    }
    if let Some(counters) = v["counters"].as_object() {
        for (name, n) in counters {
            out.push_str(&format!("{name:>26} {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_audit_counts_are_shown_when_it_answers() {
        let mut v = json!({
            "installed": true,
            "pin_path": "/sys/fs/bpf/margo-gateway",
            "interfaces": { "eth1": { "ifindex": 3, "mode": "tcx" } },
            "counters": { "drop_protocol": 7 },
        });
        v["daemon"] = json!({ "audit": { "written": 12, "write_failures": 3, "lost": 0 } });
        let text = render(&v);
        assert!(
            text.contains("audit log: 12 records written, 3 write failures, 0 lost"),
            "{text}"
        );
        v["daemon"] = serde_json::Value::Null;
        assert!(render(&v).contains("daemon: not answering"));
    }
}
