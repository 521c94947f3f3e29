//! The common query answered straight from its bytes: one question of
//! class IN with a plain name, at most an OPT record without options
//! beside it. The reply is
//! the query's header and question with the answer records appended, byte
//! for byte what [`super::answer::general`] builds with hickory-proto's
//! messages (a unit test and the `dns` fuzz target compare the two), at a
//! fraction of its allocations: the benchmark's profile had message parsing,
//! encoding and their mallocs as the gateway's largest own cost per query.
//!
//! Anything else (compressed or unusual names, other classes, several
//! records, truncation) returns `None` and takes the general path.

use std::net::IpAddr;

use hickory_proto::rr::RecordType;

use super::answer::{
    CLASSIC_UDP_MAX, EDNS_UDP_MAX, LocalAddrs, Outcome, Transport, Verdict, Zone, cut,
    site_addresses,
};

const HEADER: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
/// Longest name on the wire (RFC 1035 2.3.4).
const NAME_MAX: usize = 255;

/// The reply and verdict for a query of the common shape; `None` for any
/// other, which the general path answers.
pub(super) fn answer(
    zone: &Zone,
    q: &[u8],
    local: &LocalAddrs,
    transport: Transport,
) -> Option<Outcome> {
    // Header: a query (QR 0), opcode QUERY, AA and TC clear; one question,
    // no answers or authority, at most one additional (the OPT).
    if q.len() < HEADER || q[2] & 0xFE != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let (name_end, asked) = plain_name(q)?;
    let question_end = name_end + 4;
    let fixed = q.get(name_end..question_end)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    if u16::from_be_bytes([fixed[2], fixed[3]]) != CLASS_IN {
        return None;
    }
    let edns = match ar {
        0 if q.len() == question_end => None,
        1 => Some(opt_payload(q, question_end)?),
        _ => return None,
    };

    let name = asked.to_ascii_lowercase();
    let addresses = if zone.sites.contains(&name) {
        Some(site_addresses(zone, local))
    } else {
        zone.services.get(&name).cloned()
    };
    let rd = q[2] & 0x01;
    let mut out = Vec::with_capacity(question_end + 64);
    out.extend_from_slice(&q[..2]);
    let verdict = match &addresses {
        None => {
            // NXDOMAIN, not authoritative, RA.
            out.extend_from_slice(&[0x80 | rd, 0x80 | 3]);
            Verdict::Refused {
                name: cut(&asked),
                qtype: RecordType::from(qtype).to_string(),
            }
        }
        Some(_) => {
            out.extend_from_slice(&[0x80 | 0x04 | rd, 0x80]);
            Verdict::Answered {
                name: cut(&asked),
                qtype: RecordType::from(qtype).to_string(),
                records: 0,
            }
        }
    };
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    out.extend_from_slice(&q[HEADER..question_end]);
    let mut records: u16 = 0;
    for ip in addresses.iter().flatten() {
        let (rtype, data): (u16, &[u8]) = match (ip, qtype) {
            (IpAddr::V4(v4), TYPE_A | TYPE_ANY) => (TYPE_A, &v4.octets()[..]),
            (IpAddr::V6(v6), TYPE_AAAA | TYPE_ANY) => (TYPE_AAAA, &v6.octets()[..]),
            _ => continue,
        };
        // The name as a pointer to the question's (offset 12).
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&zone.ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        records += 1;
    }
    out[6..8].copy_from_slice(&records.to_be_bytes());
    if edns.is_some() {
        // OPT: root name, our payload size, rcode/version/flags 0, no data.
        out.extend_from_slice(&[0, 0, TYPE_OPT as u8]);
        out.extend_from_slice(&EDNS_UDP_MAX.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    let limit = match (transport, edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => CLASSIC_UDP_MAX,
        (Transport::Udp, Some(p)) => usize::from(p.clamp(CLASSIC_UDP_MAX as u16, EDNS_UDP_MAX)),
    };
    if out.len() > limit {
        // Truncation is the general path's.
        return None;
    }
    let verdict = match verdict {
        Verdict::Answered { name, qtype, .. } => Verdict::Answered {
            name,
            qtype,
            records: usize::from(records),
        },
        other => other,
    };
    Some(Outcome {
        response: Some(out),
        verdict,
    })
}

/// The question's name when it is uncompressed and every label is letters,
/// digits, `-` or `_` (so its text needs no escapes): where it ends and the
/// name as text without the root's dot.
fn plain_name(q: &[u8]) -> Option<(usize, String)> {
    let mut i = HEADER;
    let mut text = String::new();
    loop {
        let len = usize::from(*q.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        // 0xC0 pointers and the reserved 0x40/0x80 forms are not plain.
        if len > 63 {
            return None;
        }
        let label = q.get(i + 1..i + 1 + len)?;
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        // Checked ASCII above.
        text.extend(label.iter().map(|&b| char::from(b)));
        i += 1 + len;
        if i - HEADER > NAME_MAX {
            return None;
        }
    }
    // The root alone is not plain either (no text to audit).
    (!text.is_empty()).then_some((i, text))
}

/// The UDP payload size of the OPT record at `at`, which must carry no
/// options and end the message.
fn opt_payload(q: &[u8], at: usize) -> Option<u16> {
    let rr = q.get(at..at + 11)?;
    if rr[0] != 0 || u16::from_be_bytes([rr[1], rr[2]]) != TYPE_OPT {
        return None;
    }
    // Options (a cookie, a client subnet) are for the general path, whose
    // parser judges their contents.
    let rdlen = u16::from_be_bytes([rr[9], rr[10]]);
    (rdlen == 0 && q.len() == at + 11).then(|| u16::from_be_bytes([rr[3], rr[4]]))
}
