//! Records folded into per-device tables, with bounded keys.
//!
//! Memory follows the number of distinct (device, destination) pairs,
//! and that is capped ([`Limits`]): past `keys_per_device` destinations
//! on one side of a device, or `keys_total` in all, a record's amounts go
//! to that side's "other" row; past `devices` devices, to the "other
//! devices" totals. The caps are far above what a site's devices reach,
//! and they stop a device that invents a name per DNS query (or a port
//! per packet) from making the report as large as the log.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use time::OffsetDateTime;

use super::record::{Amount, Key, Observation, Side};

/// How many keys a report holds at most.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Distinct destinations per device and side.
    pub keys_per_device: usize,
    /// Distinct destinations over all devices and both sides.
    pub keys_total: usize,
    /// Distinct devices.
    pub devices: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            keys_per_device: 1000,
            keys_total: 100_000,
            devices: 10_000,
        }
    }
}

/// Sums over records, with the first and last time seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records folded in.
    pub records: u64,
    pub amount: Amount,
    pub first: Option<OffsetDateTime>,
    pub last: Option<OffsetDateTime>,
}

impl Stats {
    pub fn add(&mut self, ts: OffsetDateTime, a: &Amount) {
        self.records += 1;
        let s = &mut self.amount;
        s.count = s.count.saturating_add(a.count);
        s.packets = s.packets.saturating_add(a.packets);
        s.bytes_up = s.bytes_up.saturating_add(a.bytes_up);
        s.bytes_down = s.bytes_down.saturating_add(a.bytes_down);
        s.errors = s.errors.saturating_add(a.errors);
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }
}

/// One side (reached or refused) of a device.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub rows: HashMap<Key, Stats>,
    /// Records whose key found no room.
    pub other: Stats,
}

impl Table {
    /// Rows by count (highest first), then by key.
    pub fn sorted(&self) -> Vec<(&Key, &Stats)> {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| {
            b.1.amount
                .count
                .cmp(&a.1.amount.count)
                .then_with(|| a.0.cmp(b.0))
        });
        rows
    }

    /// The rows as a report shows them: kind, destination, reason (both
    /// passed through `show`, the renderer's escaping) and stats, sorted,
    /// with the "other" row last when keys ran out at `limit`.
    pub fn display_rows(
        &self,
        limit: usize,
        show: impl Fn(&str) -> String,
    ) -> Vec<(String, String, String, &Stats)> {
        let mut rows: Vec<_> = self
            .sorted()
            .into_iter()
            .map(|(k, s)| {
                (
                    k.kind.as_str().to_owned(),
                    show(&k.destination()),
                    show(k.reason.as_deref().unwrap_or("-")),
                    s,
                )
            })
            .collect();
        if self.other.records > 0 {
            rows.push((
                "other".into(),
                format!("(past {limit} destinations)"),
                "-".into(),
                &self.other,
            ));
        }
        rows
    }
}

/// Everything about one device address.
#[derive(Clone, Debug, Default)]
pub struct Device {
    pub totals: Stats,
    pub reached: Table,
    pub refused: Table,
}

/// Lines, by what became of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    pub read: u64,
    /// Not JSON, no time or event, or an unknown event.
    pub not_understood: u64,
    /// Longer than the reader takes (`read::LINE_MAX`).
    pub too_long: u64,
    /// About a device but without a device address.
    pub no_device: u64,
    /// Outside `--since`/`--until`.
    pub outside_window: u64,
    /// Devices outside `--device`.
    pub other_devices: u64,
    /// `gateway.start`, `gateway.stop`.
    pub gateway: u64,
}

/// One file read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRead {
    pub path: PathBuf,
    pub gz: bool,
    pub lines: u64,
    /// Why reading stopped early (a truncated gzip, an I/O error).
    pub error: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    pub limits: Limits,
    pub devices: BTreeMap<IpAddr, Device>,
    /// Devices past `limits.devices`, summed.
    pub overflow_devices: Stats,
    pub keys: usize,
    pub lines: Lines,
    pub files: Vec<FileRead>,
    /// First and last record of any kind in the window.
    pub span: Stats,
}

impl Report {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            devices: BTreeMap::new(),
            overflow_devices: Stats::default(),
            keys: 0,
            lines: Lines::default(),
            files: Vec::new(),
            span: Stats::default(),
        }
    }

    /// Folds one record in.
    pub fn add(&mut self, o: Observation) {
        self.span.add(o.ts, &Amount::default());
        if !self.devices.contains_key(&o.device) && self.devices.len() >= self.limits.devices {
            self.overflow_devices.add(o.ts, &o.amount);
            return;
        }
        let device = self.devices.entry(o.device).or_default();
        device.totals.add(o.ts, &o.amount);
        let table = match o.side {
            Side::Reached => &mut device.reached,
            Side::Refused => &mut device.refused,
        };
        if let Some(row) = table.rows.get_mut(&o.key) {
            row.add(o.ts, &o.amount);
        } else if table.rows.len() < self.limits.keys_per_device
            && self.keys < self.limits.keys_total
        {
            self.keys += 1;
            table.rows.entry(o.key).or_default().add(o.ts, &o.amount);
        } else {
            table.other.add(o.ts, &o.amount);
        }
    }

    /// `--denied`: drops what devices reached, and devices with no
    /// refusal.
    pub fn keep_only_refused(&mut self) {
        self.devices
            .retain(|_, d| d.refused.other.records > 0 || !d.refused.rows.is_empty());
        for d in self.devices.values_mut() {
            d.reached = Table::default();
            let mut totals = Stats::default();
            for s in d.refused.rows.values().chain([&d.refused.other]) {
                merge(&mut totals, s);
            }
            d.totals = totals;
        }
        // The span is of what is shown.
        let mut span = Stats::default();
        for d in self.devices.values() {
            merge(&mut span, &d.totals);
        }
        self.span = span;
    }
}

/// Adds `s` into `into`.
pub fn merge(into: &mut Stats, s: &Stats) {
    if s.records == 0 {
        return;
    }
    let records = into.records + s.records;
    if let Some(f) = s.first {
        into.add(f, &s.amount);
    }
    if let Some(l) = s.last {
        into.last = Some(into.last.map_or(l, |x| x.max(l)));
    }
    into.records = records;
}
