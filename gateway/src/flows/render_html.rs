//! The report as one self-contained HTML page: inline CSS, an inline SVG
//! picture of devices and their destinations, the same tables as the
//! text report. No script, font, image or stylesheet is fetched from
//! anywhere, so the page can be mailed or opened offline.
//!
//! Everything taken from the log goes through [`escape`]: DNS names,
//! paths and SNI are chosen by devices, and a name like `<script>` must
//! show as text, never become markup.

use std::{collections::HashMap, fmt::Write as _};

use super::{
    aggregate::Table,
    json::View,
    record::{Key, Side},
    render_text::{bytes, clean, when},
};

/// Edges per device and side drawn in the picture (the busiest ones);
/// the tables list them all.
const EDGES_PER_DEVICE: usize = 12;
/// Devices drawn in the picture.
const PICTURE_DEVICES: usize = 60;
/// Longest label drawn, in characters (the title has it whole).
const LABEL_WIDTH: usize = 48;
const ROW: f64 = 24.0;
const TOP: f64 = 56.0;

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted
/// attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Log text for the page: control characters as escapes, then escaped.
fn text(s: &str) -> String {
    escape(&clean(s))
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.dest { font-family: ui-monospace, monospace; word-break: break-all; max-width: 40em; }
.note { color: #555; font-size: 0.9em; }
svg { border: 1px solid #ddd; background: #fcfcfc; max-width: 100%; height: auto; }
svg text { font-size: 12px; font-family: ui-monospace, monospace; }
.edge { fill: none; stroke-opacity: 0.8; }
.edge.allowed { stroke: #2e7d32; }
.edge.refused { stroke: #c62828; stroke-dasharray: 6 4; }
.node circle { fill: #fff; stroke: #333; }
.node.device circle { fill: #1565c0; stroke: #1565c0; }
";

/// The page.
pub fn page(view: &View<'_>) -> String {
    let r = view.report;
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    // No script runs on this page, and nothing is fetched, whatever the
    // log held (defence in depth behind the escaping).
    out.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n");
    out.push_str("<title>Gateway flow report</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style></head><body>\n<h1>Gateway flow report</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"note\">Records from {} to {}{}{}{}.</p>",
        when(r.span.first),
        when(r.span.last),
        match (view.filter.since, view.filter.until) {
            (None, None) => String::new(),
            (since, until) => format!(
                "; window {} to {}",
                since.map_or("the start".into(), |t| when(Some(t))),
                until.map_or("the end".into(), |t| when(Some(t))),
            ),
        },
        if view.filter.prefixes.is_empty() {
            String::new()
        } else {
            let p: Vec<String> = view
                .filter
                .prefixes
                .iter()
                .map(|(ip, l)| format!("{ip}/{l}"))
                .collect();
            format!("; devices in {}", escape(&p.join(", ")))
        },
        if view.denied_only {
            "; refusals only"
        } else {
            ""
        },
    );
    summary(&mut out, view);
    picture(&mut out, view);
    for (ip, d) in &r.devices {
        let _ = writeln!(
            out,
            "<section class=\"device\" data-device=\"{ip}\"><h2>Device {ip}</h2>\n<p class=\"note\">first seen {}, last seen {}, up {}, down {}</p>",
            when(d.totals.first),
            when(d.totals.last),
            bytes(d.totals.amount.bytes_up),
            bytes(d.totals.amount.bytes_down),
        );
        if !view.denied_only {
            out.push_str("<h3>Reached</h3>\n");
            table(
                &mut out,
                Side::Reached,
                &d.reached,
                r.limits.keys_per_device,
            );
        }
        out.push_str("<h3>Refused</h3>\n");
        table(
            &mut out,
            Side::Refused,
            &d.refused,
            r.limits.keys_per_device,
        );
        out.push_str("</section>\n");
    }
    footer(&mut out, view);
    out.push_str("</body></html>\n");
    out
}

fn summary(out: &mut String, view: &View<'_>) {
    let r = view.report;
    if r.devices.is_empty() {
        out.push_str("<p>No device records in the window.</p>\n");
        return;
    }
    out.push_str("<table class=\"devices\"><thead><tr><th>Device</th><th>Reached</th><th>Refused</th><th>Up</th><th>Down</th><th>First seen</th><th>Last seen</th></tr></thead><tbody>\n");
    for (ip, d) in &r.devices {
        let reached: u64 = d.reached.rows.values().map(|s| s.amount.count).sum::<u64>()
            + d.reached.other.amount.count;
        let refused: u64 = d.refused.rows.values().map(|s| s.amount.count).sum::<u64>()
            + d.refused.other.amount.count;
        let _ = writeln!(
            out,
            "<tr class=\"device-row\"><td>{ip}</td><td class=\"n\">{reached}</td><td class=\"n\">{refused}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            bytes(d.totals.amount.bytes_up),
            bytes(d.totals.amount.bytes_down),
            when(d.totals.first),
            when(d.totals.last),
        );
    }
    out.push_str("</tbody></table>\n");
}

fn table(out: &mut String, side: Side, t: &Table, limit: usize) {
    if t.rows.is_empty() && t.other.records == 0 {
        out.push_str("<p class=\"note\">nothing</p>\n");
        return;
    }
    let (class, heads) = match side {
        Side::Reached => (
            "reached",
            "<th>Kind</th><th>Destination</th><th>Count</th><th>Up</th><th>Down</th><th>Errors</th><th>First seen</th><th>Last seen</th>",
        ),
        Side::Refused => (
            "refused",
            "<th>Kind</th><th>Destination</th><th>Reason</th><th>Count</th><th>Packets</th><th>First seen</th><th>Last seen</th>",
        ),
    };
    let _ = writeln!(
        out,
        "<table class=\"{class}\"><thead><tr>{heads}</tr></thead><tbody>"
    );
    let rows = t.display_rows(limit, text);
    for (kind, dest, reason, s) in rows {
        let a = &s.amount;
        let middle = match side {
            Side::Reached => format!(
                "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
                a.count,
                bytes(a.bytes_up),
                bytes(a.bytes_down),
                a.errors
            ),
            Side::Refused => format!(
                "<td>{reason}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
                a.count, a.packets
            ),
        };
        let _ = writeln!(
            out,
            "<tr><td>{kind}</td><td class=\"dest\">{dest}</td>{middle}<td>{}</td><td>{}</td></tr>",
            when(s.first),
            when(s.last)
        );
    }
    out.push_str("</tbody></table>\n");
}

/// Devices on the left, destinations on the right; an edge per
/// (device, destination): allowed solid green, refused dashed red, wider
/// for more attempts.
fn picture(out: &mut String, view: &View<'_>) {
    let r = view.report;
    let devices: Vec<_> = r.devices.iter().take(PICTURE_DEVICES).collect();
    if devices.is_empty() {
        return;
    }
    let mut dests: Vec<(String, String)> = Vec::new();
    let mut dest_index: HashMap<String, usize> = HashMap::new();
    // (device index, destination index, side, count)
    let mut edges: Vec<(usize, usize, Side, u64)> = Vec::new();
    for (di, (_, d)) in devices.iter().enumerate() {
        for (side, t) in [(Side::Reached, &d.reached), (Side::Refused, &d.refused)] {
            if view.denied_only && side == Side::Reached {
                continue;
            }
            for (k, s) in t.sorted().into_iter().take(EDGES_PER_DEVICE) {
                let label = node_label(k);
                let next = dests.len();
                let ti = *dest_index.entry(label.clone()).or_insert(next);
                if ti == next {
                    dests.push((label, k.kind.as_str().to_owned()));
                }
                edges.push((di, ti, side, s.amount.count));
            }
        }
    }
    let rows = devices.len().max(dests.len()).max(1) as f64;
    let height = TOP + rows * ROW + 16.0;
    let (xd, xt, width) = (230.0, 640.0, 1100.0);
    let y_of = |i: usize, n: usize| TOP + (i as f64 + 0.5) * rows * ROW / n.max(1) as f64;
    let _ = writeln!(
        out,
        "<h2>Devices and destinations</h2>\n<svg class=\"flows\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height:.0}\" viewBox=\"0 0 {width} {height:.0}\" role=\"img\" aria-label=\"devices and their destinations\">"
    );
    // Legend.
    out.push_str("<g class=\"legend\"><line class=\"edge allowed legend-allowed\" x1=\"10\" y1=\"16\" x2=\"60\" y2=\"16\" stroke-width=\"2\"/><text x=\"66\" y=\"20\">allowed (reached)</text>");
    out.push_str("<line class=\"edge refused legend-refused\" x1=\"220\" y1=\"16\" x2=\"270\" y2=\"16\" stroke-width=\"2\"/><text x=\"276\" y=\"20\">refused</text>");
    out.push_str("<text x=\"400\" y=\"20\">wider: more attempts</text></g>\n");
    for &(di, ti, side, count) in &edges {
        let class = match side {
            Side::Reached => "allowed",
            Side::Refused => "refused",
        };
        let w = 1.0 + (count as f64).log10().clamp(0.0, 4.0);
        let device = devices[di].0;
        let _ = writeln!(
            out,
            "<line class=\"edge {class}\" data-device=\"{device}\" x1=\"{xd}\" y1=\"{:.1}\" x2=\"{xt}\" y2=\"{:.1}\" stroke-width=\"{w:.1}\"><title>{device} → {}: {count} ({class})</title></line>",
            y_of(di, devices.len()),
            y_of(ti, dests.len()),
            text(&dests[ti].0),
        );
    }
    for (di, (ip, _)) in devices.iter().enumerate() {
        let y = y_of(di, devices.len());
        let _ = writeln!(
            out,
            "<g class=\"node device\"><circle cx=\"{xd}\" cy=\"{y:.1}\" r=\"5\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ip}</text></g>",
            xd - 10.0,
            y + 4.0
        );
    }
    for (ti, (label, kind)) in dests.iter().enumerate() {
        let y = y_of(ti, dests.len());
        let short: String = if label.chars().count() > LABEL_WIDTH {
            label.chars().take(LABEL_WIDTH - 1).chain(['…']).collect()
        } else {
            label.clone()
        };
        let _ = writeln!(
            out,
            "<g class=\"node destination {kind}\"><circle cx=\"{xt}\" cy=\"{y:.1}\" r=\"4\"/><text x=\"{}\" y=\"{:.1}\">{}<title>{}</title></text></g>",
            xt + 10.0,
            y + 4.0,
            text(&short),
            text(label),
        );
    }
    out.push_str("</svg>\n");
    if r.devices.len() > PICTURE_DEVICES {
        let _ = writeln!(
            out,
            "<p class=\"note\">The picture shows the first {PICTURE_DEVICES} of {} devices; the tables show them all.</p>",
            r.devices.len()
        );
    }
    let _ = writeln!(
        out,
        "<p class=\"note\">At most {EDGES_PER_DEVICE} destinations per device and side are drawn (the busiest); the tables list them all.</p>"
    );
}

/// A destination node's label (unescaped): its kind and destination.
fn node_label(k: &Key) -> String {
    format!("{}: {}", k.kind.as_str(), k.destination())
}

fn footer(out: &mut String, view: &View<'_>) {
    let r = view.report;
    if r.overflow_devices.records > 0 {
        let _ = writeln!(
            out,
            "<p class=\"note overflow\">{} records of devices past the first {} are summed, not shown: {} attempts, up {}, down {}.</p>",
            r.overflow_devices.records,
            r.limits.devices,
            r.overflow_devices.amount.count,
            bytes(r.overflow_devices.amount.bytes_up),
            bytes(r.overflow_devices.amount.bytes_down),
        );
    }
    let l = &r.lines;
    let _ = writeln!(
        out,
        "<p class=\"note\">{} lines read from {} file(s); {} not understood; {} too long; {} without a device; {} outside the window.</p>",
        l.read,
        r.files.len(),
        l.not_understood,
        l.too_long,
        l.no_device,
        l.outside_window,
    );
    for f in &r.files {
        if let Some(e) = &f.error {
            let _ = writeln!(
                out,
                "<p class=\"note\">{}: {}</p>",
                text(&f.path.display().to_string()),
                text(e)
            );
        }
    }
}
