//! The last refused attempts, for `gateway status`: a small ring of the
//! audit's refusals (connections denied, packets dropped in the kernel,
//! DNS names refused), so an admin sees what just failed without the log.

use std::{collections::VecDeque, sync::Mutex};

use serde::Serialize;

use crate::audit::{Event, Record};

/// How many refusals are kept.
pub const KEPT: usize = 20;

/// One refusal, as the audit recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub ts: String,
    /// `flow.denied`, `flow.dropped` or `dns.refused`.
    pub event: &'static str,
    pub device: Option<String>,
    /// The destination: `ip:port`, the DNS name asked for, or the SNI.
    pub destination: Option<String>,
    pub proto: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
pub struct Recent(Mutex<VecDeque<Refusal>>);

impl Recent {
    /// Keeps `r` if it is a refusal.
    pub fn observe(&self, r: &Record) {
        let (event, destination) = match r.event {
            Event::FlowDenied => ("flow.denied", r.host.clone().or_else(|| r.dst.clone())),
            Event::FlowDropped => ("flow.dropped", r.dst.clone()),
            Event::DnsRefused => ("dns.refused", r.name.clone()),
            _ => return,
        };
        let cut = |s: Option<String>| {
            s.map(|mut s| {
                // Names and SNIs come from devices: keep the ring small.
                if s.len() > 256 {
                    let mut end = 256;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.truncate(end);
                }
                s
            })
        };
        let refusal = Refusal {
            ts: r.ts.clone(),
            event,
            device: r.device.clone(),
            destination: cut(destination),
            proto: r.proto.clone(),
            reason: cut(r.reason.clone()),
        };
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(refusal);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Refusal> {
        let ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }
}
