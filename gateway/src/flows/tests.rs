#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{BufReader, Cursor, Write as _},
    net::IpAddr,
};

use time::macros::datetime;

use super::{
    aggregate::{Limits, Report},
    files::{self, Rotation, rotation_of},
    filter::{Filter, parse_cidr, parse_when},
    json::{self, View},
    read::{self, Line, LineReader},
    record::{self, Kind, Parsed, Side},
    render_html, render_text,
};

fn obs(line: &str) -> record::Observation {
    match record::parse(line.as_bytes()) {
        Parsed::Device(o) => *o,
        other => panic!("not a device record: {other:?} for {line}"),
    }
}

const PASSTHROUGH: &str = r#"{"ts":"2026-11-27T17:33:07.469Z","event":"flow.passthrough","device":"10.77.1.2:42952","dst":"10.77.2.2:443","proto":"tcp","reason":"passthrough","bytes_up":5,"bytes_down":13,"duration_ms":5,"service":"wfm.site.example"}"#;
const DENIED: &str = r#"{"ts":"2026-11-27T17:33:09.481Z","event":"flow.denied","device":"10.77.1.2:35862","dst":"10.77.2.2:80","proto":"tcp","reason":"no_rule_for_destination"}"#;
const DROPPED: &str = r#"{"ts":"2026-11-27T17:33:07.478Z","event":"flow.dropped","device":"10.77.1.2:53472","dst":"10.77.2.2:8080","proto":"tcp","reason":"port_not_intercepted","interface":"dev0","packets":2}"#;
const DROPPED_SUMMARY: &str = r#"{"ts":"2026-11-27T17:33:10Z","event":"flow.dropped","device":"10.77.1.2","proto":"udp","reason":"port_not_intercepted","interface":"dev0","packets":40,"suppressed":19}"#;
const DNS_REFUSED: &str = r#"{"ts":"2026-11-29T23:44:34Z","event":"dns.refused","device":"10.77.1.2:40321","dst":"10.77.2.53:53","proto":"udp","reason":"name_not_allowed","name":"example.com","qtype":"A","suppressed":4}"#;
const DNS_ANSWERED: &str = r#"{"ts":"2026-11-29T23:44:30Z","event":"dns.answered","device":"[fd00:77::2]:40321","dst":"[fd00:77::53]:53","proto":"udp","name":"registry.example.test","qtype":"AAAA","detail":"1 record(s)"}"#;
const TIME: &str = r#"{"ts":"2026-11-29T23:44:35Z","event":"time.served","device":"10.77.1.2:123","dst":"10.77.2.2:123","proto":"udp","reason":"unsynchronised","detail":"stratum 16"}"#;
const REQUEST: &str = r#"{"ts":"2026-11-27T18:09:31.272Z","event":"request","device":"10.77.1.2:35778","host":"registry.example.test","method":"GET","path":"/v2/demo/app/manifests/v1","status":200,"bytes":405,"cache":"miss","upstream_ms":106}"#;
const REQUEST_FAILED: &str = r#"{"ts":"2026-11-27T18:14:00.798Z","event":"request","device":"10.77.1.2:59460","host":"registry.example.test","method":"GET","path":"/v2/demo/app/blobs/sha256:aa?x=1","status":502,"bytes":0,"fault":"upstream"}"#;
const REQUEST_REFUSED: &str = r#"{"ts":"2026-11-27T18:15:00Z","event":"request","device":"10.77.1.2:59461","host":"evil.example","method":"GET","path":"/v2/x/y/tags/list","status":403,"reason":"host_not_allowed","fault":"device"}"#;
const SNI_DENIED: &str = r#"{"ts":"2026-11-27T18:16:00Z","event":"flow.denied","device":"10.77.1.2:4000","dst":"10.77.2.2:443","proto":"tcp","reason":"sni_not_allowed","host":"evil.example"}"#;

#[test]
fn each_record_kind_is_read() {
    let o = obs(PASSTHROUGH);
    assert_eq!(o.device, "10.77.1.2".parse::<IpAddr>().unwrap());
    assert_eq!((o.side, o.key.kind), (Side::Reached, Kind::Passthrough));
    assert_eq!(o.key.service.as_deref(), Some("wfm.site.example"));
    assert_eq!(
        (o.amount.bytes_up, o.amount.bytes_down, o.amount.count),
        (5, 13, 1)
    );
    assert_eq!(o.ts, datetime!(2026-11-27 17:33:07.469 UTC));

    let o = obs(DENIED);
    assert_eq!((o.side, o.key.kind), (Side::Refused, Kind::Connection));
    assert_eq!(o.key.address, Some("10.77.2.2".parse().unwrap()));
    assert_eq!(o.key.port, Some(80));
    assert_eq!(o.key.reason.as_deref(), Some("no_rule_for_destination"));
    assert_eq!(o.key.destination(), "10.77.2.2:80/tcp");

    let o = obs(DROPPED);
    assert_eq!((o.side, o.key.kind), (Side::Refused, Kind::Dropped));
    assert_eq!((o.amount.count, o.amount.packets), (1, 2));
    let o = obs(DROPPED_SUMMARY);
    assert_eq!(
        (o.amount.count, o.amount.packets),
        (20, 40),
        "suppressed flows count"
    );
    assert_eq!(o.key.destination(), "(many flows)/udp");

    let o = obs(DNS_REFUSED);
    assert_eq!((o.side, o.key.kind), (Side::Refused, Kind::Dns));
    assert_eq!(o.key.name.as_deref(), Some("example.com"));
    assert_eq!(o.amount.count, 5, "one plus the suppressed queries");
    assert_eq!(o.key.destination(), "example.com A");

    let o = obs(DNS_ANSWERED);
    assert_eq!(o.device, "fd00:77::2".parse::<IpAddr>().unwrap());
    assert_eq!((o.side, o.key.kind), (Side::Reached, Kind::Dns));
    assert_eq!(o.key.reason, None, "reached rows carry no reason");

    let o = obs(TIME);
    assert_eq!((o.side, o.key.kind), (Side::Reached, Kind::Time));

    let o = obs(REQUEST);
    assert_eq!((o.side, o.key.kind), (Side::Reached, Kind::Site));
    assert_eq!(o.key.destination(), "registry.example.test/demo/app");
    assert_eq!((o.amount.bytes_down, o.amount.errors), (405, 0));
    let o = obs(REQUEST_FAILED);
    assert_eq!(o.key.repository.as_deref(), Some("demo/app"));
    assert_eq!(o.amount.errors, 1);
    let o = obs(REQUEST_REFUSED);
    assert_eq!((o.side, o.key.kind), (Side::Refused, Kind::Site));
    assert_eq!(o.key.reason.as_deref(), Some("host_not_allowed"));
    assert_eq!(o.key.destination(), "evil.example/x/y");
    let o = obs(SNI_DENIED);
    assert_eq!(o.key.destination(), "10.77.2.2:443/tcp name evil.example");

    let start = r#"{"ts":"2026-11-27T17:00:00Z","event":"gateway.start","reason":"installed"}"#;
    assert!(matches!(
        record::parse(start.as_bytes()),
        Parsed::Gateway(_)
    ));
}

#[test]
fn repositories_from_paths() {
    assert_eq!(record::repository("/v2/a/b/manifests/latest"), Some("a/b"));
    assert_eq!(record::repository("/v2/a/blobs/sha256:00"), Some("a"));
    assert_eq!(record::repository("/v2/a/blobs/uploads/"), Some("a"));
    assert_eq!(
        record::repository("/v2/lib/x/tags/list?n=10"),
        Some("lib/x")
    );
    assert_eq!(record::repository("/v2/a/referrers/sha256:00"), Some("a"));
    assert_eq!(record::repository("/v2/"), None);
    assert_eq!(record::repository("/index.yaml"), None);
}

#[test]
fn malformed_lines_are_not_understood_never_a_panic() {
    for bad in [
        "",
        "not json",
        "{",
        "[]",
        "null",
        r#"{"event":"request"}"#,
        r#"{"ts":"yesterday","event":"request","device":"10.0.0.1:1"}"#,
        r#"{"ts":"2026-11-27T17:00:00Z","event":"something.new","device":"10.0.0.1:1"}"#,
        r#"{"ts":"2026-11-27T17:00:00Z","event":"request","device":"10.0.0.1:1","bytes":-1}"#,
        r#"{"ts":"2026-11-27T17:00:00Z","event":"request","device":"10.0.0.1:1","status":"ok"}"#,
        "\u{0}\u{1}\u{ff}",
    ] {
        assert_eq!(
            record::parse(bad.as_bytes()),
            Parsed::NotUnderstood,
            "{bad:?}"
        );
    }
    assert_eq!(record::parse(&[0xff, 0xfe, b'{']), Parsed::NotUnderstood);
    let no_device =
        r#"{"ts":"2026-11-27T17:00:00Z","event":"flow.denied","reason":"too_many_connections"}"#;
    assert_eq!(record::parse(no_device.as_bytes()), Parsed::NoDevice);
    let bad_device = r#"{"ts":"2026-11-27T17:00:00Z","event":"flow.denied","device":"nowhere"}"#;
    assert_eq!(record::parse(bad_device.as_bytes()), Parsed::NoDevice);

    // Folded: counted and skipped, the good lines still read.
    let log = format!("{PASSTHROUGH}\ngarbage\n\n{DENIED}\n{{\"ts\":1}}\n{DENIED}");
    let r = fold_text(&log, &Filter::default());
    assert_eq!(r.lines.read, 6);
    assert_eq!(r.lines.not_understood, 2);
    let d = &r.devices[&"10.77.1.2".parse::<IpAddr>().unwrap()];
    assert_eq!(
        d.refused.rows.values().map(|s| s.amount.count).sum::<u64>(),
        2
    );
    let text = render_text::render(&view(&r, &Filter::default()));
    assert!(text.contains("2 lines not understood."), "{text}");
}

fn fold_text(log: &str, filter: &Filter) -> Report {
    let mut r = Report::new(Limits::default());
    let mut lines = LineReader::new(BufReader::new(Cursor::new(log.as_bytes().to_vec())), 4096);
    let mut n = 0;
    read::fold(&mut lines, filter, &mut r, &mut n).unwrap();
    r
}

fn view<'a>(r: &'a Report, f: &'a Filter) -> View<'a> {
    View {
        report: r,
        filter: f,
        denied_only: false,
    }
}

#[test]
fn long_lines_are_skipped_without_being_held() {
    let long = "x".repeat(10_000);
    let text = format!("short\n{long}\nafter\nlast-without-newline");
    let mut lines = LineReader::new(BufReader::with_capacity(64, Cursor::new(text)), 100);
    assert_eq!(lines.next_line().unwrap(), Some(Line::Text(b"short")));
    assert_eq!(lines.next_line().unwrap(), Some(Line::TooLong));
    assert!(lines.capacity() <= 200, "the long line was not kept");
    assert_eq!(lines.next_line().unwrap(), Some(Line::Text(b"after")));
    assert_eq!(
        lines.next_line().unwrap(),
        Some(Line::Text(b"last-without-newline"))
    );
    assert_eq!(lines.next_line().unwrap(), None);
}

#[test]
fn time_window_and_device_prefixes_filter() {
    let now = datetime!(2026-11-30 12:00 UTC);
    assert_eq!(
        parse_when("--since", "1h", now).unwrap(),
        datetime!(2026-11-30 11:00 UTC)
    );
    assert_eq!(
        parse_when("--since", "2days", now).unwrap(),
        datetime!(2026-11-28 12:00 UTC)
    );
    assert_eq!(
        parse_when("--since", "2026-11-27T18:00:00+01:00", now).unwrap(),
        datetime!(2026-11-27 17:00 UTC)
    );
    assert!(
        parse_when("--since", "soon", now)
            .unwrap_err()
            .to_string()
            .contains("RFC 3339")
    );

    let filter = Filter {
        since: Some(datetime!(2026-11-27 17:33:08 UTC)),
        until: Some(datetime!(2026-11-27 18:10 UTC)),
        prefixes: vec![],
    };
    // PASSTHROUGH (17:33:07.469) and DROPPED (17:33:07.478) are before,
    // REQUEST_FAILED (18:14) after; DENIED and REQUEST are in.
    let log = [PASSTHROUGH, DROPPED, DENIED, REQUEST, REQUEST_FAILED].join("\n");
    let r = fold_text(&log, &filter);
    assert_eq!(r.lines.outside_window, 3);
    let d = r.devices.values().next().unwrap();
    assert_eq!(d.totals.records, 2);
    assert_eq!(d.totals.first, Some(datetime!(2026-11-27 17:33:09.481 UTC)));
    assert_eq!(d.totals.last, Some(datetime!(2026-11-27 18:09:31.272 UTC)));

    assert_eq!(
        parse_cidr("10.77.1.9/24"),
        Some(("10.77.1.0".parse().unwrap(), 24))
    );
    assert_eq!(
        parse_cidr("10.77.1.2"),
        Some(("10.77.1.2".parse().unwrap(), 32))
    );
    assert_eq!(
        parse_cidr("::ffff:10.77.0.0/112"),
        Some(("10.77.0.0".parse().unwrap(), 16))
    );
    assert_eq!(
        parse_cidr("fd00:77::1/64"),
        Some(("fd00:77::".parse().unwrap(), 64))
    );
    assert_eq!(parse_cidr("10.0.0.0/33"), None);
    assert_eq!(parse_cidr("host"), None);
    let v4 = Filter {
        prefixes: vec![parse_cidr("10.77.1.0/24").unwrap()],
        ..Filter::default()
    };
    let log = [PASSTHROUGH, DNS_ANSWERED].join("\n");
    let r = fold_text(&log, &v4);
    assert_eq!(
        r.devices
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.77.1.2"]
    );
    assert_eq!(r.lines.other_devices, 1);
    let v6 = Filter {
        prefixes: vec![parse_cidr("fd00:77::/64").unwrap()],
        ..Filter::default()
    };
    let r = fold_text(&log, &v6);
    assert_eq!(
        r.devices
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["fd00:77::2"]
    );
}

#[test]
fn rotated_names_are_ordered_oldest_first() {
    assert_eq!(
        rotation_of("audit.jsonl", "audit.jsonl"),
        Some(Rotation::Live)
    );
    assert_eq!(
        rotation_of("audit.jsonl", "audit.jsonl.1"),
        Some(Rotation::Numbered(1))
    );
    assert_eq!(
        rotation_of("audit.jsonl", "audit.jsonl.12.gz"),
        Some(Rotation::Numbered(12))
    );
    assert_eq!(
        rotation_of("audit.jsonl", "audit.jsonl-20261130.gz"),
        Some(Rotation::Dated(vec![20261130]))
    );
    for other in [
        "audit.jsonl.bak",
        "audit.jsonl~",
        "audit.jsonl.1.tmp",
        "other.log",
        "audit.jsonl-x",
    ] {
        assert_eq!(rotation_of("audit.jsonl", other), None, "{other}");
    }

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str, gz: bool| {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        if gz {
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(body.as_bytes()).unwrap();
            e.finish().unwrap();
        } else {
            f.write_all(body.as_bytes()).unwrap();
        }
    };
    // Each file holds one record of its own hour.
    let line = |h: u8| {
        format!(
            r#"{{"ts":"2026-11-30T{h:02}:00:00Z","event":"flow.denied","device":"10.0.0.{h}:1","dst":"10.0.9.9:80","proto":"tcp","reason":"r"}}"#
        )
    };
    write("audit.jsonl", &line(9), false);
    write("audit.jsonl.1", &line(8), false);
    write("audit.jsonl.2.gz", &line(7), true);
    write("audit.jsonl.10.gz", &line(6), true);
    write("audit.jsonl-20261128.gz", &line(4), true);
    write("audit.jsonl-20261129", &line(5), false);
    write("audit.jsonl.bak", "not read", false);
    let live = dir.path().join("audit.jsonl");
    let found = files::discover(&live).unwrap();
    let names: Vec<_> = found
        .iter()
        .map(|s| s.path.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "audit.jsonl-20261128.gz",
            "audit.jsonl-20261129",
            "audit.jsonl.10.gz",
            "audit.jsonl.2.gz",
            "audit.jsonl.1",
            "audit.jsonl"
        ]
    );
    assert_eq!(
        found.iter().map(|s| s.gz).collect::<Vec<_>>(),
        [true, false, true, true, false, false]
    );

    let mut r = Report::new(Limits::default());
    let progress = indicatif::ProgressBar::hidden();
    for s in &found {
        read::read_source(s, &Filter::default(), &mut r, &progress);
    }
    assert!(
        r.files.iter().all(|f| f.error.is_none() && f.lines == 1),
        "{:?}",
        r.files
    );
    assert_eq!(r.devices.len(), 6, "gzipped and plain files all read");
    assert_eq!(r.span.first, Some(datetime!(2026-11-30 04:00 UTC)));
    assert_eq!(r.span.last, Some(datetime!(2026-11-30 09:00 UTC)));

    // A truncated gzip is reported, and what came before it still counts.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(format!("{}\n", line(3)).repeat(2000).as_bytes())
        .unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(dir.path().join("audit.jsonl.11.gz"), &gz[..gz.len() / 2]).unwrap();
    let found = files::discover(&live).unwrap();
    let mut r = Report::new(Limits::default());
    read::read_source(&found[2], &Filter::default(), &mut r, &progress);
    assert!(r.files[0].error.is_some(), "{:?}", r.files);
    assert!(r.files[0].lines > 0);

    let missing = dir.path().join("nothing.jsonl");
    let e = files::discover(&missing).unwrap_err().to_string();
    assert!(
        e.contains("no audit log at") && e.contains("nothing.jsonl"),
        "{e}"
    );
}

#[test]
fn keys_per_device_are_capped_with_an_other_row() {
    let limits = Limits {
        keys_per_device: 10,
        keys_total: 1000,
        devices: 3,
    };
    let mut r = Report::new(limits);
    let mut log = String::new();
    for i in 0..500 {
        log.push_str(&format!(
            r#"{{"ts":"2026-11-30T01:00:00Z","event":"dns.refused","device":"10.0.0.1:5","reason":"name_not_allowed","name":"x{i}.tunnel.example","qtype":"TXT"}}"#
        ));
        log.push('\n');
    }
    for d in 2..10 {
        log.push_str(&format!(
            "{}\n",
            PASSTHROUGH.replace("10.77.1.2", &format!("10.0.0.{d}"))
        ));
    }
    let mut lines = LineReader::new(BufReader::new(Cursor::new(log)), 4096);
    read::fold(&mut lines, &Filter::default(), &mut r, &mut 0).unwrap();
    let d = &r.devices[&"10.0.0.1".parse::<IpAddr>().unwrap()];
    assert_eq!(d.refused.rows.len(), 10);
    assert_eq!(d.refused.other.amount.count, 490);
    assert_eq!(d.totals.amount.count, 500, "nothing lost, only summed");
    assert_eq!(r.devices.len(), 3);
    assert_eq!(r.overflow_devices.records, 6);
    let text = render_text::render(&view(&r, &Filter::default()));
    assert!(text.contains("(past 10 destinations)"), "{text}");
    assert!(
        text.contains("6 records of devices past the first 3"),
        "{text}"
    );
    let page = render_html::page(&view(&r, &Filter::default()));
    assert!(
        page.contains("6 records of devices past the first 3"),
        "{page}"
    );
    let doc = json::document(&view(&r, &Filter::default()));
    assert_eq!(doc["devices"][0]["refused_other"]["count"], 490);

    // The total cap holds across devices.
    let mut r = Report::new(Limits {
        keys_per_device: 10,
        keys_total: 12,
        devices: 100,
    });
    let mut lines = LineReader::new(
        BufReader::new(Cursor::new(
            (0..30)
                .map(|i| {
                    DENIED
                        .replace("10.77.1.2:", &format!("10.0.{}.{}:", i % 2, i))
                        .replace(":80", &format!(":{}", 1000 + i))
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        4096,
    );
    read::fold(&mut lines, &Filter::default(), &mut r, &mut 0).unwrap();
    assert_eq!(r.keys, 12);
    let rows: usize = r.devices.values().map(|d| d.refused.rows.len()).sum();
    assert_eq!(rows, 12);
}

fn full_report() -> Report {
    let log = [
        PASSTHROUGH,
        PASSTHROUGH,
        DENIED,
        DROPPED,
        DNS_REFUSED,
        DNS_ANSWERED,
        TIME,
        REQUEST,
        REQUEST_FAILED,
        REQUEST_REFUSED,
    ]
    .join("\n");
    fold_text(&log, &Filter::default())
}

#[test]
fn text_report_has_aligned_tables_and_totals() {
    let r = full_report();
    let f = Filter::default();
    let text = render_text::render(&view(&r, &f));
    assert!(
        text.contains("Device 10.77.1.2  first seen 2026-11-27 17:33:07Z"),
        "{text}"
    );
    assert!(text.contains("Device fd00:77::2"), "{text}");
    let header = text
        .lines()
        .find(|l| l.contains("DESTINATION") && l.contains("ERRORS"))
        .unwrap();
    let row = text
        .lines()
        .find(|l| l.contains("wfm.site.example"))
        .unwrap();
    // COUNT is right-aligned under its heading.
    let count_end = header.find("COUNT").unwrap() + "COUNT".len();
    assert_eq!(&row[count_end - 1..count_end], "2", "{header}\n{row}");
    assert!(text.contains("registry.example.test/demo/app"), "{text}");
    assert!(text.contains("host_not_allowed"), "{text}");
    assert!(text.contains("example.com A"), "{text}");

    let denied = View {
        report: &r,
        filter: &f,
        denied_only: true,
    };
    let mut only = r.clone();
    only.keep_only_refused();
    let text = render_text::render(&View {
        report: &only,
        ..denied
    });
    assert!(!text.contains("wfm.site.example"), "{text}");
    assert!(
        !text.contains("fd00:77::2"),
        "a device with no refusal is left out: {text}"
    );
    assert!(text.contains("no_rule_for_destination"), "{text}");
    // The span is of refusals: DROPPED first, DNS_REFUSED last (TIME,
    // a second later, is not a refusal).
    assert!(
        text.contains("records from 2026-11-27 17:33:07Z to 2026-11-29 23:44:34Z"),
        "{text}"
    );

    // A name with terminal escapes is shown inert.
    let evil = DNS_REFUSED.replace("example.com", r"\u001b[31mred\u001b[0m");
    let r = fold_text(&evil, &f);
    let text = render_text::render(&view(&r, &f));
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains(r"\x1b[31mred"), "{text}");
    assert_eq!(
        render_text::clean("a\u{202e}b\u{200b}c\td"),
        r"a\u{202e}b\u{200b}c\x09d"
    );
}

#[test]
fn json_document_has_stable_fields() {
    let r = full_report();
    let f = Filter::default();
    let doc = json::document(&view(&r, &f));
    let dev = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "10.77.1.2")
        .unwrap();
    assert_eq!(dev["bytes_up"], 10);
    assert_eq!(dev["first_seen"], "2026-11-27T17:33:07.469Z");
    let pt = &dev["reached"][0];
    assert_eq!(pt["kind"], "passthrough");
    assert_eq!(pt["service"], "wfm.site.example");
    assert_eq!(pt["count"], 2);
    assert_eq!(pt["bytes_down"], 26);
    for key in [
        "destination",
        "site",
        "repository",
        "name",
        "qtype",
        "address",
        "port",
        "proto",
        "reason",
        "packets",
        "errors",
        "records",
        "last_seen",
    ] {
        assert!(pt.get(key).is_some(), "{key} missing from {pt}");
    }
    let refused = dev["refused"].as_array().unwrap();
    let dns = refused.iter().find(|e| e["kind"] == "dns").unwrap();
    assert_eq!(
        (dns["name"].as_str(), dns["count"].as_u64()),
        (Some("example.com"), Some(5))
    );
    let site = dev["reached"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "site")
        .unwrap();
    assert_eq!(site["repository"], "demo/app");
    assert_eq!(site["errors"], 1);
    assert_eq!(doc["lines"]["read"], 10);
}

#[test]
fn html_escapes_everything_from_the_log() {
    let payload = "<script>document.title='pwned'</script>";
    let log = [
        DNS_REFUSED.replace("example.com", payload),
        REQUEST.replace("demo/app", "\\\"><img src=x onerror=alert(1)>"),
        SNI_DENIED.replace("evil.example", "<b>bold</b>&amp;"),
    ]
    .join("\n");
    let f = Filter::default();
    let r = fold_text(&log, &f);
    let page = render_html::page(&view(&r, &f));
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(!page.contains("<b>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("&lt;b&gt;bold&lt;/b&gt;&amp;amp;"), "{page}");
    assert!(page.contains("class=\"edge refused\""), "{page}");
    assert!(page.contains("class=\"edge allowed\""), "{page}");
    for external in [
        "http://", "https://", "<link", "<iframe", "<object", "@import", "url(",
    ] {
        let outside_svg_ns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!outside_svg_ns.contains(external), "{external} in {page}");
    }
    assert_eq!(
        render_html::escape("a&<>\"'b"),
        "a&amp;&lt;&gt;&quot;&#39;b"
    );
}
