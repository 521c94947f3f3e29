//! The answer to one DNS query: pure, so every rule is unit-tested.
//!
//! - A site host: A/AAAA records with `dns.answer` or the gateway's own
//!   addresses on the device's interface (the device then connects to the
//!   gateway, which terminates TLS for that host).
//! - A passthrough service's name: its configured addresses.
//! - Any other record type of those names: an empty NOERROR answer, so
//!   clients fall back to A/AAAA (HTTPS/SVCB, MX, TXT …).
//! - Any other name: NXDOMAIN (refused; the caller audits it).
//! - A message that is not one standard query: FORMERR or NOTIMP when its
//!   header can be read, nothing at all otherwise (and never an answer to a
//!   response, which could bounce between two responders).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, RData, Record, RecordType, rdata},
};

use crate::config::Config;

/// Largest UDP answer when the query carries no EDNS option (RFC 1035).
pub(super) const CLASSIC_UDP_MAX: usize = 512;
/// Largest UDP answer the gateway offers with EDNS: the DNS flag day 2020
/// size, which fits any path's MTU without fragments.
pub(super) const EDNS_UDP_MAX: u16 = 1232;
/// Names longer than this in audit records are cut (a DNS name has at most
/// 253 characters; escapes of odd bytes make its text longer).
const NAME_TEXT_MAX: usize = 300;

/// The names the gateway answers for.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// Lowercase site hosts, without a trailing dot.
    pub(super) sites: Vec<String>,
    /// Lowercase passthrough service names and their addresses.
    pub(super) services: HashMap<String, Vec<IpAddr>>,
    /// `dns.answer`: used for site hosts instead of the interface's
    /// addresses when not empty.
    pub(super) answer: Vec<IpAddr>,
    pub(super) ttl: u32,
}

impl Zone {
    pub fn new(config: &Config) -> Self {
        let mut services: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for s in config.passthrough_services() {
            let ips = services.entry(normalize(&s.name)).or_default();
            for a in s.addresses {
                let ip = a.ip().to_canonical();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        Self {
            sites: config.served_hosts().iter().map(|h| normalize(h)).collect(),
            services,
            answer: config.dns.answer_addresses(),
            ttl: config.dns.ttl,
        }
    }
}

/// The gateway's own addresses where the query came in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAddrs {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// How the query arrived: UDP answers are bounded in size, TCP ones not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What became of a query, for the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An allowed name: answered (possibly with no records).
    Answered {
        name: String,
        qtype: String,
        records: usize,
    },
    /// A name the site does not allow: NXDOMAIN.
    Refused { name: String, qtype: String },
    /// Not a standard query (FORMERR, NOTIMP, or no answer at all).
    Malformed { why: &'static str },
}

/// The bytes to send back (none for garbage) and the verdict.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub response: Option<Vec<u8>>,
    pub verdict: Verdict,
}

/// Answers one query: the common shape from its bytes ([`super::fast`]),
/// anything else through hickory-proto's messages.
pub fn answer(zone: &Zone, query: &[u8], local: &LocalAddrs, transport: Transport) -> Outcome {
    super::fast::answer(zone, query, local, transport)
        .unwrap_or_else(|| general(zone, query, local, transport))
}

/// Answers any query by parsing and building messages (public for the
/// `dns` fuzz target, which compares it with the fast path).
pub fn general(zone: &Zone, query: &[u8], local: &LocalAddrs, transport: Transport) -> Outcome {
    let malformed = |response, why| Outcome {
        response,
        verdict: Verdict::Malformed { why },
    };
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        // A readable header that is a query gets FORMERR with its id; a
        // message too short for a header, or a response, gets nothing.
        Err(_) => {
            return match header_id(query) {
                Some(id) => malformed(
                    encode(&Message::error_msg(
                        id,
                        OpCode::Query,
                        ResponseCode::FormErr,
                    )),
                    "undecodable",
                ),
                None => malformed(None, "no header"),
            };
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return malformed(None, "a response");
    }
    let id = request.metadata.id;
    if request.metadata.op_code != OpCode::Query {
        return malformed(
            encode(&Message::error_msg(
                id,
                request.metadata.op_code,
                ResponseCode::NotImp,
            )),
            "not a standard query",
        );
    }
    let [query] = request.queries.as_slice() else {
        return malformed(
            encode(&Message::error_msg(
                id,
                OpCode::Query,
                ResponseCode::FormErr,
            )),
            "not one question",
        );
    };

    let mut response = Message::response(id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    // Stub resolvers expect a recursive server; the gateway answers
    // every name it will ever answer itself.
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_MAX);
        response.set_edns(edns);
    }

    let asked = query.name().to_ascii();
    let name = normalize(&asked);
    // The audit keeps the name as asked: case carries data when a device
    // tunnels through DNS.
    let name_text = cut(asked.trim_end_matches('.'));
    let qtype = query.query_type();
    let qtype_text = qtype.to_string();
    let addresses = if query.query_class() != DNSClass::IN {
        None
    } else if zone.sites.contains(&name) {
        Some(site_addresses(zone, local))
    } else {
        zone.services.get(&name).cloned()
    };
    let Some(addresses) = addresses else {
        response.metadata.response_code = ResponseCode::NXDomain;
        return Outcome {
            response: encode(&response),
            verdict: Verdict::Refused {
                name: name_text,
                qtype: qtype_text,
            },
        };
    };
    response.metadata.authoritative = true;
    for ip in addresses {
        let data = match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(rdata::A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(rdata::AAAA(v6)),
            _ => continue,
        };
        response.add_answer(Record::from_rdata(query.name().clone(), zone.ttl, data));
    }
    let records = response.answers.len();
    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => CLASSIC_UDP_MAX,
        (Transport::Udp, Some(e)) => {
            usize::from(e.max_payload().clamp(CLASSIC_UDP_MAX as u16, EDNS_UDP_MAX))
        }
    };
    let mut bytes = encode(&response);
    if bytes.as_ref().is_some_and(|b| b.len() > limit) {
        // Too many addresses for one datagram: the client retries over
        // TCP (RFC 7766).
        response.answers.clear();
        response.metadata.truncation = true;
        bytes = encode(&response);
    }
    Outcome {
        response: bytes,
        verdict: Verdict::Answered {
            name: name_text,
            qtype: qtype_text,
            records,
        },
    }
}

/// The addresses a site host resolves to here.
pub(super) fn site_addresses(zone: &Zone, local: &LocalAddrs) -> Vec<IpAddr> {
    if !zone.answer.is_empty() {
        return zone.answer.clone();
    }
    local
        .v4
        .iter()
        .copied()
        .map(IpAddr::V4)
        .chain(local.v6.iter().copied().map(IpAddr::V6))
        .collect()
}

/// The id of a message whose 12-byte header is there and says "query".
fn header_id(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return None;
    }
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a DNS answer");
            None
        }
    }
}

/// Lowercase, without the root's trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub(super) fn cut(name: &str) -> String {
    if name.len() <= NAME_TEXT_MAX {
        return name.to_owned();
    }
    let mut end = NAME_TEXT_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

#[cfg(test)]
#[path = "tests/answer.rs"]
mod tests;
