//! A global budget for `flow.dropped` records.
//!
//! The kernel reports a flow at most once per interval, but a device that
//! changes its source port (or destination) on every packet makes every
//! packet a new flow, and so a record each: enough to flood the log and
//! push real records out of an auditor's view. Past a burst, per-flow
//! records are limited to a steady rate for all devices together; the
//! flows left out are folded into one summary record per device address,
//! reason and interface, written every [`SUMMARY_EVERY`], whose `suppressed`
//! says how many flows it stands for and `packets` how many packets they
//! had. Packets are never lost from the accounting: the sum of `packets`
//! over all records is what the kernel reported.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use gateway_common::{DropReason, FlowKey};
use time::OffsetDateTime;

use crate::audit::{Event, Record};

/// Per-flow records written at once before the rate applies.
pub const RECORD_BURST: f64 = 200.0;
/// Per-flow records per second, all devices together, past the burst.
pub const RECORDS_PER_SEC: f64 = 20.0;
/// How often summaries of the flows left out are written.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Summaries kept apart (device, reason, interface) per period; flows
/// beyond that go into one summary without a device, so that a flood from
/// many source addresses cannot multiply the summaries.
const MAX_SUMMARIES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SummaryKey {
    device: Option<IpAddr>,
    reason: u8,
    ifindex: u32,
}

struct Summary {
    first_ts: OffsetDateTime,
    flows: u64,
    packets: u64,
}

/// Decides which flows get a record of their own; keeps the rest.
pub struct Budget {
    tokens: f64,
    refilled: Instant,
    summaries: HashMap<SummaryKey, Summary>,
    period_start: Instant,
}

impl Budget {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: RECORD_BURST,
            refilled: now,
            summaries: HashMap::new(),
            period_start: now,
        }
    }

    /// The record of one dropped flow, or `None` when the budget is spent
    /// (the flow is then counted in its summary).
    pub fn admit(
        &mut self,
        flow: &FlowKey,
        ts: OffsetDateTime,
        packets: u64,
        now: Instant,
    ) -> Option<Record> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RECORDS_PER_SEC).min(RECORD_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Some(super::events::record(flow, ts, packets));
        }
        let mut key = SummaryKey {
            device: super::events::source(flow),
            reason: flow.reason,
            ifindex: flow.ifindex,
        };
        if !self.summaries.contains_key(&key) && self.summaries.len() >= MAX_SUMMARIES - 1 {
            key.device = None;
        }
        let s = self.summaries.entry(key).or_insert(Summary {
            first_ts: ts,
            flows: 0,
            packets: 0,
        });
        s.flows += 1;
        s.packets += packets;
        None
    }

    /// The summaries of the period, once it has lasted [`SUMMARY_EVERY`]
    /// (or at once with `force`, when the daemon stops).
    pub fn summaries(&mut self, now: Instant, force: bool) -> Vec<Record> {
        if !force && now.saturating_duration_since(self.period_start) < SUMMARY_EVERY {
            return Vec::new();
        }
        self.period_start = now;
        let mut out: Vec<(SummaryKey, Summary)> = self.summaries.drain().collect();
        // Stable order: by time, then by device.
        out.sort_by_key(|(k, s)| (s.first_ts, k.device, k.reason, k.ifindex));
        out.into_iter()
            .map(|(k, s)| summary_record(&k, &s))
            .collect()
    }
}

fn summary_record(key: &SummaryKey, s: &Summary) -> Record {
    let mut r = Record::at(Event::FlowDropped, s.first_ts);
    r.reason = Some(
        DropReason::from_u8(key.reason)
            .map_or("unknown", DropReason::as_str)
            .into(),
    );
    r.device = key.device.map(|a| a.to_string());
    r.interface = nix::net::if_::if_indextoname(key.ifindex)
        .ok()
        .and_then(|n| n.into_string().ok());
    r.packets = Some(s.packets);
    r.suppressed = Some(s.flows);
    r.detail = Some(format!(
        "{} without a record of their own: the drop record budget \
         ({RECORD_BURST} at once, then {RECORDS_PER_SEC} per second for all devices) was spent",
        if s.flows == 1 {
            "1 flow".to_owned()
        } else {
            format!("{} flows", s.flows)
        }
    ));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::FAMILY_V4;

    fn flow(src: [u8; 4], sport: u16) -> FlowKey {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&src);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 2, 2]);
        FlowKey {
            saddr,
            daddr,
            sport,
            dport: 9,
            family: FAMILY_V4,
            proto: 17,
            reason: DropReason::Protocol as u8,
            _pad: 0,
            ifindex: 0,
        }
    }

    #[test]
    fn past_the_burst_flows_are_summarised_and_no_packet_is_lost() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let ts = OffsetDateTime::UNIX_EPOCH;
        let mut own = 0u64;
        let mut packets = 0u64;
        for port in 0..1000u16 {
            if let Some(r) = b.admit(&flow([10, 0, 1, 2], port), ts, 2, t0) {
                own += 1;
                packets += r.packets.unwrap_or(0);
                assert!(r.suppressed.is_none());
            }
        }
        assert_eq!(own, RECORD_BURST as u64);
        // Not yet the end of the period.
        assert!(b.summaries(t0 + Duration::from_secs(1), false).is_empty());
        let sums = b.summaries(t0 + SUMMARY_EVERY, false);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].device.as_deref(), Some("10.0.1.2"));
        assert_eq!(sums[0].suppressed, Some(1000 - own));
        packets += sums[0].packets.unwrap_or(0);
        assert_eq!(packets, 2000);
        assert!(b.summaries(t0 + SUMMARY_EVERY * 2, false).is_empty());
    }

    #[test]
    fn the_budget_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let ts = OffsetDateTime::UNIX_EPOCH;
        let admitted = |b: &mut Budget, n: u16, now| {
            (0..n)
                .filter(|p| b.admit(&flow([10, 0, 1, 2], *p), ts, 1, now).is_some())
                .count()
        };
        assert_eq!(admitted(&mut b, 300, t0), RECORD_BURST as usize);
        assert_eq!(admitted(&mut b, 300, t0 + Duration::from_secs(2)), 40);
        // Never more than the burst, however long the pause.
        assert_eq!(
            admitted(&mut b, 300, t0 + Duration::from_secs(3600)),
            RECORD_BURST as usize
        );
    }

    #[test]
    fn many_sources_share_a_bounded_number_of_summaries() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let ts = OffsetDateTime::UNIX_EPOCH;
        for i in 0..RECORD_BURST as u16 {
            assert!(b.admit(&flow([10, 0, 0, 1], i), ts, 1, t0).is_some());
        }
        for host in 0..=255u8 {
            for hi in 1..5u8 {
                assert!(b.admit(&flow([10, 0, hi, host], 1), ts, 1, t0).is_none());
            }
        }
        let sums = b.summaries(t0, true);
        assert_eq!(sums.len(), MAX_SUMMARIES);
        let flows: u64 = sums.iter().filter_map(|r| r.suppressed).sum();
        assert_eq!(flows, 4 * 256);
        assert_eq!(sums.iter().filter(|r| r.device.is_none()).count(), 1);
    }
}
