//! Kernel drop events: read from the ring buffer, summed per flow, written
//! to the audit log as `flow.dropped` records with a packet count.
//!
//! The kernel already sends at most one event per flow per interval; here
//! the events of one flow within a flush window become one record, and at
//! flush the packets the kernel counted but did not report yet are taken
//! from its flow table, so a record accounts for the whole burst. Records
//! of their own are limited for all flows together ([`super::budget`]);
//! the flows past it are summed into summary records.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use gateway_common::{DropEvent, DropReason, FAMILY_ANY, FAMILY_V4, FlowKey};
use time::OffsetDateTime;
use tokio::io::{Interest, unix::AsyncFd};

use super::{Maps, budget::Budget};
use crate::audit::{Audit, Event, Record, ip_port_text};

/// Flows held before an early flush: bounds memory under a flood of
/// distinct flows.
const MAX_PENDING_FLOWS: usize = 4096;

struct Pending {
    first_ts: OffsetDateTime,
    first_seen: Instant,
    packets: u64,
}

/// Reads events until the ring buffer fails; flushes every `window`.
pub async fn run(
    ring: RingBuf<MapData>,
    maps: Arc<Mutex<Maps>>,
    audit: Audit,
    window: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the ring buffer.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the event ring buffer; kernel drops will not be audited");
            return;
        }
    };
    let mut pending: HashMap<FlowKey, Pending> = HashMap::new();
    let mut budget = Budget::new(Instant::now());
    let mut tick = tokio::time::interval(window.min(Duration::from_millis(500)));
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "event ring buffer failed");
                        break;
                    }
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Some(event) = parse(&item) {
                        add(&mut pending, &event);
                    }
                }
                guard.clear_ready();
                if pending.len() > MAX_PENDING_FLOWS {
                    flush(&mut pending, &mut budget, &maps, &audit, Duration::ZERO).await;
                }
            }
            _ = tick.tick() => {
                flush(&mut pending, &mut budget, &maps, &audit, window).await;
                for r in budget.summaries(Instant::now(), false) {
                    audit.log(r).await;
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Drain what is queued, then report everything held.
    let ring = fd.get_mut();
    while let Some(item) = ring.next() {
        if let Some(event) = parse(&item) {
            add(&mut pending, &event);
        }
    }
    flush(&mut pending, &mut budget, &maps, &audit, Duration::ZERO).await;
    for r in budget.summaries(Instant::now(), true) {
        audit.log(r).await;
    }
}

fn parse(bytes: &[u8]) -> Option<DropEvent> {
    if bytes.len() < std::mem::size_of::<DropEvent>() {
        tracing::warn!(len = bytes.len(), "short drop event ignored");
        return None;
    }
    // SAFETY: DropEvent is plain old data (every bit pattern valid) and the
    // slice holds at least its size; read_unaligned copes with alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DropEvent>()) })
}

fn add(pending: &mut HashMap<FlowKey, Pending>, event: &DropEvent) {
    pending
        .entry(event.flow)
        .or_insert_with(|| Pending {
            first_ts: wall_clock(event.ts_ns),
            first_seen: Instant::now(),
            packets: 0,
        })
        .packets += event.packets;
}

/// The wall-clock time of a kernel timestamp (CLOCK_MONOTONIC ns).
fn wall_clock(ts_ns: u64) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_ns = u64::try_from(mono.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(mono.tv_nsec()).unwrap_or(0);
    // An event stamped in the future (a bad clock read) counts as now.
    let age = Duration::from_nanos(mono_ns.saturating_sub(ts_ns));
    now - age
}

async fn flush(
    pending: &mut HashMap<FlowKey, Pending>,
    budget: &mut Budget,
    maps: &Arc<Mutex<Maps>>,
    audit: &Audit,
    older_than: Duration,
) {
    let due: Vec<FlowKey> = pending
        .iter()
        .filter(|(_, p)| p.first_seen.elapsed() >= older_than)
        .map(|(k, _)| *k)
        .collect();
    let mut records = Vec::with_capacity(due.len());
    {
        let Ok(mut maps) = maps.lock() else {
            tracing::error!("maps lock poisoned");
            return;
        };
        for key in due {
            if let Some(p) = pending.remove(&key) {
                let tail = maps.take_pending(&key);
                if let Some(r) = budget.admit(&key, p.first_ts, p.packets + tail, Instant::now()) {
                    records.push(r);
                }
            }
        }
    }
    for r in records {
        audit.log(r).await;
    }
}

/// An address of a flow's family, as keys hold it (v4 in the first four
/// bytes of sixteen).
fn ip_of(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// The device address of a flow (`None` for what is not IP).
pub fn source(flow: &FlowKey) -> Option<IpAddr> {
    (flow.family != FAMILY_ANY).then(|| ip_of(flow.family, &flow.saddr))
}

/// The audit record of one dropped flow.
pub fn record(flow: &FlowKey, ts: OffsetDateTime, packets: u64) -> Record {
    let mut r = Record::at(Event::FlowDropped, ts);
    let reason = DropReason::from_u8(flow.reason).map_or("unknown", DropReason::as_str);
    r.reason = Some(reason.into());
    r.packets = Some(packets);
    r.interface = nix::net::if_::if_indextoname(flow.ifindex)
        .ok()
        .and_then(|n| n.into_string().ok());
    if flow.family == FAMILY_ANY {
        // Not IP: the kernel put the ethertype in dport.
        r.proto = Some(format!("ethertype-0x{:04x}", flow.dport));
        return r;
    }
    let (src, dst) = (
        ip_of(flow.family, &flow.saddr),
        ip_of(flow.family, &flow.daddr),
    );
    let (proto, has_ports) = match flow.proto {
        6 => ("tcp".to_owned(), true),
        17 => ("udp".to_owned(), true),
        1 => ("icmp".to_owned(), false),
        58 => ("icmpv6".to_owned(), false),
        n => (format!("ip-{n}"), false),
    };
    let port = |p: u16| has_ports.then_some(p);
    r.device = Some(ip_port_text(src, port(flow.sport)));
    r.dst = Some(ip_port_text(dst, port(flow.dport)));
    r.proto = Some(proto);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::FAMILY_V6;

    fn key(family: u8, proto: u8, reason: DropReason) -> FlowKey {
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == FAMILY_V4 {
            saddr[..4].copy_from_slice(&[10, 0, 1, 2]);
            daddr[..4].copy_from_slice(&[10, 0, 2, 2]);
        } else {
            saddr = "fd00::2".parse::<Ipv6Addr>().expect("v6").octets();
            daddr = "fd00::5".parse::<Ipv6Addr>().expect("v6").octets();
        }
        FlowKey {
            saddr,
            daddr,
            sport: 40000,
            dport: 5353,
            family,
            proto,
            reason: reason as u8,
            _pad: 0,
            ifindex: 0,
        }
    }

    #[test]
    fn udp_v4_record() {
        let r = record(
            &key(FAMILY_V4, 17, DropReason::Protocol),
            OffsetDateTime::UNIX_EPOCH,
            7,
        );
        assert_eq!(r.device.as_deref(), Some("10.0.1.2:40000"));
        assert_eq!(r.dst.as_deref(), Some("10.0.2.2:5353"));
        assert_eq!(r.proto.as_deref(), Some("udp"));
        assert_eq!(r.reason.as_deref(), Some("protocol_not_allowed"));
        assert_eq!(r.packets, Some(7));
    }

    #[test]
    fn icmp_v6_record_has_no_ports() {
        let r = record(
            &key(FAMILY_V6, 58, DropReason::Protocol),
            OffsetDateTime::UNIX_EPOCH,
            1,
        );
        assert_eq!(r.device.as_deref(), Some("fd00::2"));
        assert_eq!(r.dst.as_deref(), Some("fd00::5"));
        assert_eq!(r.proto.as_deref(), Some("icmpv6"));
    }

    #[test]
    fn events_of_one_flow_are_summed() {
        let mut pending = HashMap::new();
        let k = key(FAMILY_V4, 6, DropReason::NotIntercepted);
        for packets in [1, 4, 5] {
            add(
                &mut pending,
                &DropEvent {
                    flow: k,
                    _pad: 0,
                    packets,
                    ts_ns: 0,
                },
            );
        }
        add(
            &mut pending,
            &DropEvent {
                flow: key(FAMILY_V4, 17, DropReason::Protocol),
                _pad: 0,
                packets: 1,
                ts_ns: 0,
            },
        );
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[&k].packets, 10);
    }

    #[test]
    fn kernel_timestamps_become_wall_clock() {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
        let mono_ns = mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64;
        let five_s_ago = wall_clock(mono_ns - 5_000_000_000);
        let age = OffsetDateTime::now_utc() - five_s_ago;
        assert!(
            age >= time::Duration::seconds(5) && age < time::Duration::seconds(6),
            "{age}"
        );
        // Future stamps are clamped to now.
        let future = wall_clock(mono_ns + 60_000_000_000);
        assert!((OffsetDateTime::now_utc() - future).abs() < time::Duration::seconds(1));
    }

    #[test]
    fn short_events_are_ignored() {
        assert!(parse(&[0u8; 8]).is_none());
        let bytes = [0u8; std::mem::size_of::<DropEvent>()];
        assert!(parse(&bytes).is_some());
    }

    #[test]
    fn unknown_reason_and_ethertype() {
        let mut k = key(FAMILY_V4, 6, DropReason::Malformed);
        k.reason = 200;
        assert_eq!(
            record(&k, OffsetDateTime::UNIX_EPOCH, 1).reason.as_deref(),
            Some("unknown")
        );
        let mut k = key(FAMILY_ANY, 0, DropReason::Ethertype);
        k.dport = 0x88cc;
        let r = record(&k, OffsetDateTime::UNIX_EPOCH, 1);
        assert_eq!(r.proto.as_deref(), Some("ethertype-0x88cc"));
        assert!(r.device.is_none());
    }
}
