//! The report as aligned text tables, one block per device.
//!
//! Every string from the log is shown through [`clean`]: a device chooses
//! DNS names and paths, and a name carrying terminal escape sequences must
//! not reach the analyst's terminal as such.

use std::fmt::Write as _;

use time::{OffsetDateTime, macros::format_description};

use super::{aggregate::Table, json::View, record::Side};

/// Widest destination shown in a table, in characters; the JSON and HTML
/// reports carry it whole.
const DESTINATION_WIDTH: usize = 64;

/// Control characters shown as escapes (`\x1b`), and the invisible
/// characters that reorder or hide text (bidi overrides, zero-width) as
/// `\u{202e}`, so the text is inert and reads as it is.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else if matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
        {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn shorten(s: String, width: usize) -> String {
    if s.chars().count() <= width {
        return s;
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Seconds, UTC: `2026-11-30 06:00:01Z`.
pub fn when(t: Option<OffsetDateTime>) -> String {
    let f = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    t.and_then(|t| t.format(&f).ok())
        .unwrap_or_else(|| "-".into())
}

pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).to_string()
}

/// Aligned columns; `numeric` columns are right-aligned.
pub struct Columns {
    heads: Vec<&'static str>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Columns {
    pub fn new(heads: &[(&'static str, bool)]) -> Self {
        Self {
            heads: heads.iter().map(|h| h.0).collect(),
            numeric: heads.iter().map(|h| h.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn write(&self, out: &mut String, indent: &str) {
        let mut widths: Vec<usize> = self.heads.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let heads: Vec<String> = self.heads.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&heads).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, cell) in row.iter().enumerate() {
                let w = widths[i];
                let pad = w - cell.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                if self.numeric[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

fn side_table(out: &mut String, side: Side, t: &Table, limit: usize) {
    let mut c = match side {
        Side::Reached => Columns::new(&[
            ("KIND", false),
            ("DESTINATION", false),
            ("COUNT", true),
            ("UP", true),
            ("DOWN", true),
            ("ERRORS", true),
            ("FIRST SEEN", false),
            ("LAST SEEN", false),
        ]),
        Side::Refused => Columns::new(&[
            ("KIND", false),
            ("DESTINATION", false),
            ("REASON", false),
            ("COUNT", true),
            ("PACKETS", true),
            ("FIRST SEEN", false),
            ("LAST SEEN", false),
        ]),
    };
    // The destination is cut to the column; the reason is shown whole.
    let rows = t.display_rows(limit, clean);
    for (kind, dest, reason, s) in rows {
        let dest = shorten(dest, DESTINATION_WIDTH);
        let a = &s.amount;
        c.push(match side {
            Side::Reached => vec![
                kind,
                dest,
                a.count.to_string(),
                bytes(a.bytes_up),
                bytes(a.bytes_down),
                a.errors.to_string(),
                when(s.first),
                when(s.last),
            ],
            Side::Refused => vec![
                kind,
                dest,
                reason,
                a.count.to_string(),
                a.packets.to_string(),
                when(s.first),
                when(s.last),
            ],
        });
    }
    c.write(out, "    ");
}

/// The whole report.
pub fn render(view: &View<'_>) -> String {
    let r = view.report;
    let mut out = String::new();
    if r.devices.is_empty() {
        out.push_str("No device records");
        out.push_str(if view.denied_only {
            " with refusals"
        } else {
            ""
        });
        out.push_str(" in the window.\n");
    }
    for (ip, d) in &r.devices {
        let t = &d.totals;
        let _ = writeln!(
            out,
            "Device {ip}  first seen {}  last seen {}  up {}  down {}",
            when(t.first),
            when(t.last),
            bytes(t.amount.bytes_up),
            bytes(t.amount.bytes_down),
        );
        if !view.denied_only {
            if d.reached.rows.is_empty() && d.reached.other.records == 0 {
                out.push_str("  reached: nothing\n");
            } else {
                out.push_str("  reached:\n");
                side_table(
                    &mut out,
                    Side::Reached,
                    &d.reached,
                    r.limits.keys_per_device,
                );
            }
        }
        if d.refused.rows.is_empty() && d.refused.other.records == 0 {
            out.push_str("  refused: nothing\n");
        } else {
            out.push_str("  refused:\n");
            side_table(
                &mut out,
                Side::Refused,
                &d.refused,
                r.limits.keys_per_device,
            );
        }
        out.push('\n');
    }
    if r.overflow_devices.records > 0 {
        let _ = writeln!(
            out,
            "{} records of devices past the first {} are summed, not shown: {} attempts, up {}, down {}.",
            r.overflow_devices.records,
            r.limits.devices,
            r.overflow_devices.amount.count,
            bytes(r.overflow_devices.amount.bytes_up),
            bytes(r.overflow_devices.amount.bytes_down),
        );
    }
    footer(&mut out, view);
    out
}

fn footer(out: &mut String, view: &View<'_>) {
    let r = view.report;
    let l = &r.lines;
    let _ = writeln!(
        out,
        "{} lines read from {} file(s), records from {} to {}.",
        l.read,
        r.files.len(),
        when(r.span.first),
        when(r.span.last),
    );
    for f in &r.files {
        if let Some(e) = &f.error {
            let _ = writeln!(
                out,
                "{}: {}",
                clean(&f.path.display().to_string()),
                clean(e)
            );
        }
    }
    let notes = [
        (
            l.not_understood,
            "line not understood",
            "lines not understood",
        ),
        (
            l.too_long,
            "line too long to be a record",
            "lines too long to be records",
        ),
        (
            l.no_device,
            "device record without a device address",
            "device records without a device address",
        ),
        (
            l.outside_window,
            "record outside the time window",
            "records outside the time window",
        ),
        (
            l.other_devices,
            "record of a device not asked for",
            "records of devices not asked for",
        ),
    ];
    for (n, one, many) in notes {
        if n > 0 {
            let _ = writeln!(out, "{n} {}.", if n == 1 { one } else { many });
        }
    }
}
