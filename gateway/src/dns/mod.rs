//! The DNS responder for devices.
//!
//! The kernel program hands the gateway every DNS query a device sends, UDP
//! or TCP, to any address; the gateway answers it itself, from its
//! configuration, and never forwards a query anywhere. Site hosts resolve
//! to the gateway (which then terminates TLS for them), passthrough
//! services to their configured addresses, and every other name is
//! NXDOMAIN and audited (`dns.refused`): that is where a device that tries
//! other destinations, or tunnels data through DNS, shows up.
//!
//! The reply's source is the address and port the device asked (see
//! [`crate::udp`]), so stub resolvers accept it.

pub mod answer;
mod fast;
mod limit;
mod local;
pub mod tcp;
mod zones;

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

pub use answer::{LocalAddrs, Transport, Verdict, Zone};
pub use local::{addresses as interface_addresses, network, subnets as interface_subnets};

use crate::{
    audit::{Audit, Event, Fault, Record},
    config::Config,
};
pub(crate) use limit::{Budget, Recent};

/// `dns.refused` records per device before rate limiting starts, and the
/// refill: ten at once, then one every two seconds.
const REFUSED_BURST: u32 = 10;
const REFUSED_EVERY: Duration = Duration::from_secs(2);
/// One `dns.answered` record per device, name and type in this window:
/// enough to show which names a device uses without a line per lookup.
const ANSWERED_WINDOW: Duration = Duration::from_secs(60);

pub struct Responder {
    /// Replaced by a config reload; each query reads the current one.
    zone: crate::reload::Shared<zones::Zones>,
    interfaces: local::Interfaces,
    audit: Audit,
    refused: Mutex<Budget>,
    /// Keyed by a hash of (device, name, type): no strings are copied per
    /// query, and a collision only leaves out one `dns.answered` record.
    answered: Mutex<Recent<u64>>,
    answered_keys: std::hash::RandomState,
    counters: Counters,
}

/// `dns_queries_total` by result and transport, looked up once: a lookup
/// by labels per query cost more than answering it.
struct Counters {
    /// [answered, refused, malformed] × [udp, tcp].
    by: [[prometheus_client::metrics::counter::Counter; 2]; 3],
}

impl Counters {
    fn new() -> Self {
        let m = crate::metrics::global();
        let row = |result| [m.dns_counter(result, "udp"), m.dns_counter(result, "tcp")];
        Self {
            by: [row("answered"), row("refused"), row("malformed")],
        }
    }

    fn count(&self, verdict: &Verdict, transport: Transport) {
        let row = match verdict {
            Verdict::Answered { .. } => 0,
            Verdict::Refused { .. } => 1,
            Verdict::Malformed { .. } => 2,
        };
        let col = match transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        };
        self.by[row][col].inc();
    }
}

/// One query as it arrived.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub bytes: &'a [u8],
    pub device: SocketAddr,
    /// The address the device sent the query to.
    pub dst: SocketAddr,
    /// The interface it came in on, when the transport tells.
    pub ifindex: Option<u32>,
    pub transport: Transport,
}

impl Responder {
    pub fn new(config: &Config, audit: Audit) -> Self {
        Self {
            zone: crate::reload::Shared::new(zones::Zones::new(config)),
            interfaces: local::Interfaces::new(&config.devices.interfaces),
            audit,
            refused: Mutex::new(Budget::new(REFUSED_BURST, REFUSED_EVERY)),
            answered: Mutex::new(Recent::new(ANSWERED_WINDOW)),
            answered_keys: std::hash::RandomState::new(),
            counters: Counters::new(),
        }
    }

    /// The names and answers of a reloaded config (sites, passthrough
    /// services, `dns.answer`, `dns.ttl`). The audit budgets carry over.
    pub fn set_zone(&self, config: &Config) {
        self.zone
            .store(std::sync::Arc::new(zones::Zones::new(config)));
    }

    /// The answer to send back, if any; audits the decision.
    pub async fn handle(&self, q: Query<'_>) -> Option<Vec<u8>> {
        let local = self.interfaces.for_device(q.ifindex, q.device.ip());
        let zones = self.zone.load();
        let (zone, group) = zones.for_device(q.device.ip());
        let outcome = answer::answer(zone, q.bytes, &local, q.transport);
        // Counted here, not from the audit: answers are audited once a
        // minute per device and name, refusals within a budget.
        self.counters.count(&outcome.verdict, q.transport);
        if let Some(mut record) = self.record(&q, &outcome.verdict) {
            if let Some(group) = group {
                record.group = Some(group.to_string());
                if let Verdict::Refused { name, .. } = &outcome.verdict
                    && zones.answers_anyone(&name.to_ascii_lowercase())
                {
                    record.reason = Some(crate::policy::DENY_GROUP.into());
                }
            }
            self.audit.log(record).await;
        }
        outcome.response
    }

    /// The audit record for a verdict, unless rate limiting leaves it out.
    fn record(&self, q: &Query<'_>, verdict: &Verdict) -> Option<Record> {
        let now = Instant::now();
        let device_ip = q.device.ip().to_canonical();
        let base = |event| {
            let r = Record::new(event);
            match q.transport {
                Transport::Udp => r.udp(q.device, q.dst),
                Transport::Tcp => r.tcp(q.device, q.dst),
            }
        };
        match verdict {
            Verdict::Answered {
                name,
                qtype,
                records,
            } => {
                let key = std::hash::BuildHasher::hash_one(
                    &self.answered_keys,
                    (device_ip, name.as_str(), qtype.as_str()),
                );
                let due = self
                    .answered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .first_in_window(key, now);
                due.then(|| {
                    let mut r = base(Event::DnsAnswered).detail(format!("{records} record(s)"));
                    r.name = Some(name.clone());
                    r.qtype = Some(qtype.clone());
                    r
                })
            }
            Verdict::Refused { name, qtype } => {
                let suppressed = self
                    .refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(device_ip, now)?;
                let mut r = base(Event::DnsRefused).reason("name_not_allowed");
                r.name = Some(name.clone());
                r.qtype = Some(qtype.clone());
                r.suppressed = (suppressed > 0).then_some(suppressed);
                Some(r)
            }
            Verdict::Malformed { why } => {
                // Garbage shares the refusal budget: it is the same kind of
                // noise, and must not get a line per packet either.
                let suppressed = self
                    .refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(device_ip, now)?;
                let mut r = base(Event::DnsRefused)
                    .reason("malformed_query")
                    .detail(*why);
                r.fault = Some(Fault::Device);
                r.suppressed = (suppressed > 0).then_some(suppressed);
                Some(r)
            }
        }
    }
}
