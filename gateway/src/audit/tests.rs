use super::*;

#[test]
fn record_json_shape() {
    let ts = time::macros::datetime!(2026-11-27 10:00:00.5 UTC);
    let r = Record::at(Event::FlowPassthrough, ts).tcp(
        "10.0.1.2:40000".parse().expect("addr"),
        "[fd00::5]:443".parse().expect("addr"),
    );
    let v: serde_json::Value = serde_json::to_value(&r).expect("json");
    assert_eq!(v["ts"], "2026-11-27T10:00:00.5Z");
    assert_eq!(v["event"], "flow.passthrough");
    assert_eq!(v["device"], "10.0.1.2:40000");
    assert_eq!(v["dst"], "[fd00::5]:443");
    assert_eq!(v["proto"], "tcp");
    assert!(v.get("packets").is_none(), "absent fields are omitted: {v}");
}

#[test]
fn mapped_addresses_show_as_ipv4() {
    let a: std::net::SocketAddr = "[::ffff:10.0.0.1]:80".parse().expect("addr");
    assert_eq!(addr_text(a), "10.0.0.1:80");
    assert_eq!(
        ip_port_text("fd00::1".parse().expect("ip"), None),
        "fd00::1"
    );
}

#[tokio::test]
async fn records_are_appended_as_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/audit.jsonl");
    for round in 0..2 {
        let (audit, writer) = Audit::open(&path).await.expect("open");
        for i in 0..3 {
            audit
                .log(Record::new(Event::FlowDenied).reason(format!("r{round}{i}")))
                .await;
        }
        drop(audit);
        writer.close().await;
    }
    let text = std::fs::read_to_string(&path).expect("read");
    let reasons: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("each line is JSON");
            v["reason"].as_str().expect("reason").to_owned()
        })
        .collect();
    assert_eq!(reasons, ["r00", "r01", "r02", "r10", "r11", "r12"]);
}

#[test]
fn long_fields_are_cut_and_marked() {
    let mut r = Record::new(Event::Request);
    r.path = Some(format!("/v2/{}", "a".repeat(64 * 1024)));
    r.name = Some("é".repeat(700)); // 1400 bytes, two per char
    r.host = Some("short".into());
    r.truncate_fields(FIELD_MAX);
    let path = r.path.expect("path");
    assert!(path.len() < FIELD_MAX + 40, "{}", path.len());
    assert!(path.ends_with("bytes cut]"), "{path}");
    assert!(path.contains(&format!("[{} bytes cut]", 64 * 1024 + 4 - FIELD_MAX)));
    let name = r.name.expect("name");
    assert!(name.starts_with("éé") && name.contains("bytes cut]"));
    assert_eq!(r.host.as_deref(), Some("short"));
}

#[tokio::test]
async fn reopen_follows_a_rotated_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let (audit, writer) = Audit::open(&path).await.expect("open");
    audit
        .log(Record::new(Event::FlowDenied).reason("before"))
        .await;
    // What logrotate does: move the file, then signal.
    let wait_for = |p: std::path::PathBuf, what: &'static str| async move {
        for _ in 0..100 {
            if std::fs::read_to_string(&p).is_ok_and(|t| t.contains(what)) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{what} never reached {}", p.display());
    };
    wait_for(path.clone(), "before").await;
    std::fs::rename(&path, &rotated).expect("rotate");
    audit.reopen();
    audit
        .log(Record::new(Event::FlowDenied).reason("after"))
        .await;
    drop(audit);
    writer.close().await;
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    let new = std::fs::read_to_string(&path).expect("new file");
    assert!(old.contains("before") && !old.contains("after"), "{old}");
    assert!(new.contains("after") && !new.contains("before"), "{new}");
}

#[tokio::test]
async fn write_failures_are_counted() {
    // Every write to /dev/full fails with ENOSPC: a full disk.
    let (audit, writer) = Audit::open(std::path::Path::new("/dev/full"))
        .await
        .expect("open");
    let counts = audit.counts.clone();
    for _ in 0..3 {
        audit.log(Record::new(Event::FlowDenied)).await;
    }
    drop(audit);
    writer.close().await;
    assert_eq!(counts.write_failures.load(Ordering::Relaxed), 3);
    assert_eq!(counts.written.load(Ordering::Relaxed), 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let (audit, writer) = Audit::open(&dir.path().join("a.jsonl"))
        .await
        .expect("open");
    let counts = audit.counts.clone();
    audit.log(Record::new(Event::FlowDenied)).await;
    audit.log(Record::new(Event::FlowDenied)).await;
    drop(audit);
    writer.close().await;
    let stats = AuditStats {
        written: counts.written.load(Ordering::Relaxed),
        write_failures: counts.write_failures.load(Ordering::Relaxed),
        lost: counts.lost.load(Ordering::Relaxed),
    };
    assert_eq!(
        stats,
        AuditStats {
            written: 2,
            write_failures: 0,
            lost: 0
        }
    );
}

#[tokio::test]
async fn a_counter_does_not_keep_the_log_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (audit, writer) = Audit::open(&dir.path().join("a.jsonl"))
        .await
        .expect("open");
    let counter = audit.counter();
    audit.log(Record::new(Event::FlowDenied)).await;
    drop(audit);
    // The daemon's control socket holds a counter past the log's close:
    // the writer must end anyway (it once waited forever at SIGTERM).
    tokio::time::timeout(std::time::Duration::from_secs(10), writer.close())
        .await
        .expect("the writer ended while a counter lives");
    assert_eq!(counter.stats().written, 1);
}
