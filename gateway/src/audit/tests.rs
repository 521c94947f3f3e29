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
