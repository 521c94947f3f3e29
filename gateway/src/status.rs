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
    if let Some(counters) = v["counters"].as_object() {
        for (name, n) in counters {
            out.push_str(&format!("{name:>26} {n}\n"));
        }
    }
    out
}
