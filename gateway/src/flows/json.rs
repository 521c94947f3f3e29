//! The report as one JSON document. The field names are a contract
//! (README, "Flow reports"): add fields, never rename them.

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    aggregate::{Report, Stats, Table},
    filter::Filter,
    record::Key,
};

/// What a renderer needs.
pub struct View<'a> {
    pub report: &'a Report,
    pub filter: &'a Filter,
    pub denied_only: bool,
}

/// RFC 3339, UTC.
pub fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn opt_ts(t: Option<OffsetDateTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(ts(t)))
}

/// The numbers of a row or a total.
pub fn stats(s: &Stats) -> Value {
    json!({
        "count": s.amount.count,
        "records": s.records,
        "packets": s.amount.packets,
        "bytes_up": s.amount.bytes_up,
        "bytes_down": s.amount.bytes_down,
        "errors": s.amount.errors,
        "first_seen": opt_ts(s.first),
        "last_seen": opt_ts(s.last),
    })
}

fn row(k: &Key, s: &Stats) -> Value {
    let mut v = json!({
        "kind": k.kind.as_str(),
        "destination": k.destination(),
        "service": k.service.as_deref(),
        "site": k.site.as_deref(),
        "repository": k.repository.as_deref(),
        "name": k.name.as_deref(),
        "qtype": k.qtype.as_deref(),
        "address": k.address.map(|a| a.to_string()),
        "port": k.port,
        "proto": k.proto.as_deref(),
        "reason": k.reason.as_deref(),
    });
    merge_into(&mut v, stats(s));
    v
}

fn merge_into(v: &mut Value, more: Value) {
    if let (Value::Object(a), Value::Object(b)) = (v, more) {
        a.extend(b);
    }
}

fn table(t: &Table) -> Value {
    Value::Array(t.sorted().into_iter().map(|(k, s)| row(k, s)).collect())
}

/// The whole document.
pub fn document(view: &View<'_>) -> Value {
    let r = view.report;
    let devices: Vec<Value> = r
        .devices
        .iter()
        .map(|(ip, d)| {
            let mut v = json!({ "device": ip.to_string() });
            merge_into(&mut v, stats(&d.totals));
            merge_into(
                &mut v,
                json!({
                    "reached": table(&d.reached),
                    "reached_other": stats(&d.reached.other),
                    "refused": table(&d.refused),
                    "refused_other": stats(&d.refused.other),
                }),
            );
            v
        })
        .collect();
    let files: Vec<Value> = r
        .files
        .iter()
        .map(|f| {
            json!({
                "path": f.path.display().to_string(),
                "gzip": f.gz,
                "lines": f.lines,
                "error": f.error,
            })
        })
        .collect();
    json!({
        "window": {
            "since": opt_ts(view.filter.since),
            "until": opt_ts(view.filter.until),
            "devices": view.filter.prefixes.iter().map(|(ip, len)| format!("{ip}/{len}")).collect::<Vec<_>>(),
            "denied_only": view.denied_only,
        },
        "first_record": opt_ts(r.span.first),
        "last_record": opt_ts(r.span.last),
        "files": files,
        "lines": {
            "read": r.lines.read,
            "not_understood": r.lines.not_understood,
            "too_long": r.lines.too_long,
            "no_device": r.lines.no_device,
            "outside_window": r.lines.outside_window,
            "other_devices": r.lines.other_devices,
            "gateway": r.lines.gateway,
        },
        "limits": {
            "keys_per_device": r.limits.keys_per_device,
            "keys_total": r.limits.keys_total,
            "devices": r.limits.devices,
        },
        "devices": devices,
        "overflow_devices": stats(&r.overflow_devices),
    })
}
