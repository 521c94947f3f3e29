use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use super::*;

fn zone() -> Zone {
    Zone::new(
        &Config::parse(
            "devices: {interfaces: [dev0]}
passthrough:
  - name: wfm.site.example
    addresses: [\"10.0.0.5:443\", \"[fd00::5]:443\", \"10.0.0.5:8443\"]
  - name: mis.site.example
    addresses: [\"10.0.0.6:443\"]
sites:
  - {host: Registry-1.Docker.io, kind: oci}
dns: {ttl: 30}
",
        )
        .expect("config"),
    )
}

fn local() -> LocalAddrs {
    LocalAddrs {
        v4: vec!["10.77.1.1".parse().expect("v4")],
        v6: vec!["fd77:1::1".parse().expect("v6")],
    }
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    m.to_vec().expect("encode")
}

fn ask(bytes: &[u8]) -> (Message, Verdict) {
    let out = answer(&zone(), bytes, &local(), Transport::Udp);
    let msg = Message::from_vec(&out.response.expect("a response")).expect("decodes");
    (msg, out.verdict)
}

fn ips(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            other => panic!("unexpected record {other:?}"),
        })
        .collect()
}

#[test]
fn site_host_resolves_to_the_gateway_on_the_devices_interface() {
    let (m, v) = ask(&query("registry-1.docker.io.", RecordType::A));
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert_eq!(ips(&m), ["10.77.1.1"]);
    assert_eq!(m.answers[0].ttl, 30);
    assert_eq!(m.queries.len(), 1, "the question is echoed");
    assert_eq!(
        v,
        Verdict::Answered {
            name: "registry-1.docker.io".into(),
            qtype: "A".into(),
            records: 1
        }
    );
    // Case does not matter, the trailing dot neither.
    let (m, _) = ask(&query("REGISTRY-1.docker.IO", RecordType::AAAA));
    assert_eq!(ips(&m), ["fd77:1::1"]);
}

#[test]
fn configured_answer_replaces_the_interface_addresses() {
    let z = Zone::new(
        &Config::parse(
            "devices: {interfaces: [dev0]}\nmanager: {name: wfm.example, addresses: [\"10.0.0.5:443\"]}\nsites: [{host: reg.example, kind: oci}]\ndns: {answer: [\"192.0.2.7\", \"2001:db8::7\"]}\n",
        )
        .expect("config"),
    );
    let out = answer(
        &z,
        &query("reg.example", RecordType::A),
        &local(),
        Transport::Udp,
    );
    let m = Message::from_vec(&out.response.expect("response")).expect("decodes");
    assert_eq!(ips(&m), ["192.0.2.7"]);
}

#[test]
fn passthrough_names_resolve_to_their_addresses_once_each() {
    let (m, _) = ask(&query("wfm.site.example", RecordType::A));
    assert_eq!(ips(&m), ["10.0.0.5"], "two ports, one address");
    let (m, _) = ask(&query("wfm.site.example", RecordType::AAAA));
    assert_eq!(ips(&m), ["fd00::5"]);
    let (m, _) = ask(&query("mis.site.example", RecordType::AAAA));
    assert!(ips(&m).is_empty(), "no v6 address: empty NOERROR");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn other_types_of_allowed_names_get_an_empty_answer() {
    for t in [
        RecordType::HTTPS,
        RecordType::SVCB,
        RecordType::MX,
        RecordType::TXT,
    ] {
        let (m, v) = ask(&query("registry-1.docker.io", t));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(m.answers.is_empty(), "{t}");
        assert!(matches!(v, Verdict::Answered { records: 0, .. }), "{t}");
    }
}

#[test]
fn other_names_are_nxdomain_and_refused() {
    for name in [
        "example.com",
        "docker.io",
        "sub.registry-1.docker.io",
        "aGVsbG8gdHVubmVs.exfil.example.net",
        "5.0.0.10.in-addr.arpa",
    ] {
        let (m, v) = ask(&query(name, RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty());
        assert_eq!(
            v,
            Verdict::Refused {
                name: name.to_owned(),
                qtype: "A".into()
            }
        );
    }
}

#[test]
fn edns_is_answered_with_edns() {
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii("registry-1.docker.io").expect("name"),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let (m, _) = ask(&q.to_vec().expect("encode"));
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_UDP_MAX));
    assert_eq!(ips(&m), ["10.77.1.1"]);
}

#[test]
fn too_many_addresses_for_udp_set_the_truncation_bit() {
    let many: Vec<String> = (1..=40).map(|i| format!("\"192.0.2.{i}\"")).collect();
    let z = Zone::new(
        &Config::parse(&format!(
            "devices: {{interfaces: [dev0]}}\nmanager: {{name: wfm.example, addresses: [\"10.0.0.5:443\"]}}\nsites: [{{host: reg.example, kind: oci}}]\ndns: {{answer: [{}]}}\n",
            many.join(", ")
        ))
        .expect("config"),
    );
    let q = query("reg.example", RecordType::A);
    let udp = answer(&z, &q, &local(), Transport::Udp);
    let m = Message::from_vec(&udp.response.expect("response")).expect("decodes");
    assert!(m.metadata.truncation && m.answers.is_empty());
    let tcp = answer(&z, &q, &local(), Transport::Tcp);
    let m = Message::from_vec(&tcp.response.expect("response")).expect("decodes");
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
}

#[test]
fn malformed_messages_get_formerr_or_nothing_never_a_panic() {
    // Too short for a header: nothing.
    for bytes in [&b""[..], &[0x12], &[0; 11]] {
        let out = answer(&zone(), bytes, &local(), Transport::Udp);
        assert!(out.response.is_none());
        assert!(matches!(out.verdict, Verdict::Malformed { .. }));
    }
    // A header that promises a question that is not there: FORMERR.
    let bytes = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e'];
    let out = answer(&zone(), &bytes, &local(), Transport::Udp);
    let m = Message::from_vec(&out.response.expect("formerr")).expect("decodes");
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0xabcd, ResponseCode::FormErr)
    );
    // A response is never answered (two responders would bounce forever).
    let mut r = Message::response(9, OpCode::Query);
    r.add_query(Query::query(
        Name::from_ascii("x.test").expect("n"),
        RecordType::A,
    ));
    let out = answer(
        &zone(),
        &r.to_vec().expect("encode"),
        &local(),
        Transport::Udp,
    );
    assert!(out.response.is_none());
    // Two questions: FORMERR. No question: FORMERR.
    let mut two = Message::new(3, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("a.test").expect("n"),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.test").expect("n"),
        RecordType::A,
    ));
    let none = Message::new(4, MessageType::Query, OpCode::Query);
    for m in [two, none] {
        let out = answer(
            &zone(),
            &m.to_vec().expect("encode"),
            &local(),
            Transport::Udp,
        );
        let got = Message::from_vec(&out.response.expect("formerr")).expect("decodes");
        assert_eq!(got.metadata.response_code, ResponseCode::FormErr);
    }
    // Another opcode: NOTIMP.
    let mut status = Message::new(5, MessageType::Query, OpCode::Status);
    status.add_query(Query::query(
        Name::from_ascii("a.test").expect("n"),
        RecordType::A,
    ));
    let out = answer(
        &zone(),
        &status.to_vec().expect("e"),
        &local(),
        Transport::Udp,
    );
    let got = Message::from_vec(&out.response.expect("notimp")).expect("decodes");
    assert_eq!(got.metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn random_bytes_never_panic() {
    // A small deterministic generator: every run tries the same inputs.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let base = query("registry-1.docker.io", RecordType::A);
    for i in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bytes = if i % 2 == 0 {
            base.clone()
        } else {
            vec![0; (x % 64) as usize]
        };
        for (j, b) in bytes.iter_mut().enumerate() {
            if (x >> (j % 61)) & 7 == 0 || i % 2 == 1 {
                *b = (x >> (j % 57)) as u8;
            }
        }
        let _ = answer(&zone(), &bytes, &local(), Transport::Udp);
    }
}

/// The fast path answers byte for byte what the general path does, for
/// every shape it takes (and declines the rest).
#[test]
fn the_fast_path_matches_the_general_path() {
    let zone = zone();
    let mut big = zone.clone();
    big.answer = (1..=40)
        .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i)))
        .collect();
    let with_edns = |name: &str, qtype: RecordType, payload: u16| {
        let mut m = Message::new(0x4321, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        let mut e = Edns::new();
        e.set_max_payload(payload);
        m.set_edns(e);
        m.to_vec().expect("encode")
    };
    let mut taken = 0;
    for name in [
        "registry-1.docker.io.",
        "REGISTRY-1.Docker.IO",
        "wfm.site.example",
        "mis.site.example.",
        "evil.example",
        "a_b.example",
        "x.registry-1.docker.io",
    ] {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::HTTPS,
            RecordType::MX,
            RecordType::Unknown(65280),
        ] {
            for bytes in [
                query(name, qtype),
                with_edns(name, qtype, 4096),
                with_edns(name, qtype, 100),
            ] {
                for z in [&zone, &big] {
                    for transport in [Transport::Udp, Transport::Tcp] {
                        let general = general(z, &bytes, &local(), transport);
                        if let Some(fast) =
                            super::super::fast::answer(z, &bytes, &local(), transport)
                        {
                            taken += 1;
                            assert_eq!(fast.verdict, general.verdict, "{name} {qtype}");
                            assert_eq!(fast.response, general.response, "{name} {qtype}");
                        }
                    }
                }
            }
        }
    }
    // Everything but the truncated (big zone over classic UDP) cases.
    assert!(taken > 7 * 6 * 3 * 2, "fast path taken {taken} times");
    // Declined: a compressed name, two questions, an OPT with an option,
    // an odd class, a response.
    let mut two = Message::new(1, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("a.example").expect("n"),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.example").expect("n"),
        RecordType::A,
    ));
    let mut cookie = with_edns("registry-1.docker.io", RecordType::A, 1232);
    let n = cookie.len();
    cookie[n - 2..].copy_from_slice(&[0, 4]);
    cookie.extend_from_slice(&[0, 10, 0, 0]);
    let mut chaos = query("registry-1.docker.io", RecordType::A);
    let n = chaos.len();
    chaos[n - 1] = 3;
    let mut response = query("registry-1.docker.io", RecordType::A);
    response[2] |= 0x80;
    let mut pointer = query("registry-1.docker.io", RecordType::A);
    pointer.truncate(12);
    pointer.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    for bytes in [two.to_vec().expect("two"), cookie, chaos, response, pointer] {
        assert!(
            super::super::fast::answer(&zone, &bytes, &local(), Transport::Udp).is_none(),
            "{bytes:?}"
        );
    }
}
