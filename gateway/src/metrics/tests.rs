use std::sync::{Arc, atomic::Ordering};

use http::{Method, StatusCode};
use http_body_util::BodyExt as _;

use super::{Metrics, admin::Admin, collector::Sources};
use crate::audit::{CacheStatus, Event, Fault, Record};

/// A metrics instance of the test's own (the registry wants `'static`).
fn leaked() -> &'static Metrics {
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    m.set_names(&["reg.test".to_owned()], &["wfm.test".to_owned()]);
    m
}

fn request(host: &str, method: &str, status: u16, cache: CacheStatus) -> Record {
    let mut r = Record::new(Event::Request).tcp(
        "10.0.3.7:40000".parse().expect("addr"),
        "192.0.2.1:443".parse().expect("addr"),
    );
    r.host = Some(host.to_owned());
    r.method = Some(method.to_owned());
    r.path = Some("/v2/team/app/blobs/sha256:0123456789abcdef".to_owned());
    r.status = Some(status);
    r.cache = Some(cache);
    r.bytes = Some(1000);
    r.upstream_ms = Some(120);
    r
}

async fn scrape(admin: &Admin) -> (StatusCode, String) {
    let r = admin.respond(&Method::GET, "/metrics");
    let status = r.status();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}

fn exercised() -> &'static Metrics {
    let m = leaked();
    m.observe(&request("reg.test", "GET", 200, CacheStatus::Hit));
    m.observe(&request("REG.test.", "HEAD", 304, CacheStatus::Revalidated));
    m.observe(&request(
        "elsewhere.example",
        "BREW",
        418,
        CacheStatus::Miss,
    ));
    let mut denied = Record::new(Event::FlowDenied)
        .tcp(
            "10.0.3.7:40001".parse().expect("addr"),
            "198.51.100.9:22".parse().expect("addr"),
        )
        .reason("no_rule");
    denied.fault = Some(Fault::Device);
    m.observe(&denied);
    let mut pass = Record::new(Event::FlowPassthrough).tcp(
        "10.0.3.7:40002".parse().expect("addr"),
        "10.0.9.1:443".parse().expect("addr"),
    );
    pass.service = Some("wfm.test".into());
    pass.bytes_up = Some(10);
    pass.bytes_down = Some(20);
    m.observe(&pass);
    let mut mirrored = Record::new(Event::MirrorSynced);
    mirrored.host = Some("reg.test".into());
    mirrored.bytes = Some(4096);
    m.observe(&mirrored);
    m.connection("passthrough", Some("wfm.test"));
    m.connection("denied", None);
    m.tls_handshake("ok");
    m.dns_query("refused", "udp");
    m.leaves_minted.inc();
    m.upstream_bytes.inc_by(5);
    m
}

#[tokio::test]
async fn the_exposition_has_the_documented_names_and_bounded_labels() {
    let m = exercised();
    let limits = crate::proxy::limits::Limits::new(10, 5);
    let _held = limits
        .acquire("10.0.3.7".parse().expect("ip"))
        .expect("slot");
    let registry = m.registry(Sources {
        limits: Some(limits.clone()),
        generation: Arc::new(1.into()),
        ..Sources::default()
    });
    let (status, text) = scrape(&Admin::new(registry)).await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        "margo_gateway_http_requests_total{site=\"reg.test\",method=\"GET\",status=\"2xx\",cache=\"hit\"} 1",
        // The trailing dot and the case are the same site.
        "margo_gateway_http_requests_total{site=\"reg.test\",method=\"HEAD\",status=\"3xx\",cache=\"revalidated\"} 1",
        // Not a configured site, not a known method: `other`.
        "margo_gateway_http_requests_total{site=\"other\",method=\"other\",status=\"4xx\",cache=\"miss\"} 1",
        "margo_gateway_http_served_bytes_total{site=\"reg.test\",cache=\"hit\"} 1000",
        "margo_gateway_upstream_wait_seconds_bucket{site=\"reg.test\",le=\"0.25\"} 2",
        "margo_gateway_refused_connections_total{reason=\"no_rule\"} 1",
        "margo_gateway_errors_total{fault=\"device\",event=\"flow.denied\"} 1",
        "margo_gateway_passthrough_bytes_total{service=\"wfm.test\",direction=\"down\"} 20",
        "margo_gateway_connections_total{decision=\"passthrough\",service=\"wfm.test\"} 1",
        "margo_gateway_tls_handshakes_total{result=\"ok\"} 1",
        "margo_gateway_tls_leaves_minted_total 1",
        "margo_gateway_dns_queries_total{result=\"refused\",transport=\"udp\"} 1",
        "margo_gateway_upstream_received_bytes_total 5",
        "margo_gateway_open_connections 1",
        "margo_gateway_config_generation 1",
        "margo_gateway_build_info{version=",
        "# TYPE margo_gateway_cache_evictions_total counter",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    // No device address, path or digest ever becomes a label.
    for never in [
        "10.0.3.7",
        "198.51.100.9",
        "/v2/",
        "sha256:",
        "elsewhere.example",
        "BREW",
    ] {
        assert!(!text.contains(never), "`{never}` leaked into:\n{text}");
    }
    // Conventions: one prefix, counters end in _total.
    let mut kind = std::collections::HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split(' ').skip(2);
        let (name, t) = (parts.next().expect("name"), parts.next().expect("type"));
        assert!(name.starts_with("margo_gateway_"), "{line}");
        if t == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
        kind.insert(name.to_owned(), t.to_owned());
    }
    assert_eq!(kind["margo_gateway_upstream_wait_seconds"], "histogram");
}

#[tokio::test]
async fn the_admin_endpoints_answer_health_readiness_and_nothing_else() {
    let admin = Admin::new(leaked().registry(Sources::default()));
    let status = |method: Method, path: &str| admin.respond(&method, path).status();
    assert_eq!(status(Method::GET, "/healthz"), StatusCode::OK);
    assert_eq!(
        status(Method::GET, "/readyz"),
        StatusCode::SERVICE_UNAVAILABLE
    );
    admin.ready.store(true, Ordering::Release);
    assert_eq!(status(Method::GET, "/readyz"), StatusCode::OK);
    assert_eq!(status(Method::HEAD, "/metrics"), StatusCode::OK);
    assert_eq!(status(Method::GET, "/"), StatusCode::NOT_FOUND);
    assert_eq!(status(Method::GET, "/metrics/x"), StatusCode::NOT_FOUND);
    assert_eq!(
        status(Method::POST, "/metrics"),
        StatusCode::METHOD_NOT_ALLOWED
    );
    let ct = admin.respond(&Method::GET, "/metrics");
    assert_eq!(
        ct.headers()[http::header::CONTENT_TYPE],
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    );
}

#[tokio::test]
async fn the_admin_listener_serves_over_tcp_and_stops() {
    let admin = Arc::new(Admin::new(leaked().registry(Sources::default())));
    let listener = super::admin::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(super::admin::serve(admin, listener, stop_rx));
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    // One request per connection: the server closes after answering.
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop_tx.send(true).expect("stop");
    task.await.expect("serve ends");
}

#[test]
fn refusals_are_kept_newest_first_and_bounded() {
    let m = leaked();
    for i in 0..(super::refused::KEPT + 5) {
        let r = Record::new(Event::FlowDenied)
            .tcp(
                "10.0.3.7:40001".parse().expect("addr"),
                format!("198.51.100.9:{}", 1000 + i).parse().expect("addr"),
            )
            .reason("no_rule");
        m.observe(&r);
    }
    m.observe(&request("reg.test", "GET", 200, CacheStatus::Hit));
    let list = m.refused.list();
    assert_eq!(list.len(), super::refused::KEPT);
    assert_eq!(
        list[0].destination.as_deref(),
        Some(format!("198.51.100.9:{}", 1000 + super::refused::KEPT + 4).as_str())
    );
    assert_eq!(list[0].reason.as_deref(), Some("no_rule"));
    let t = m.site_tallies()["reg.test"];
    assert_eq!((t.requests, t.hits, t.lookups), (1, 1, 1));
}

/// Every metric the code exports, with its type, from a full exposition
/// (histograms by their base name).
async fn exported() -> std::collections::BTreeMap<String, String> {
    let m = exercised();
    m.errors
        .get_or_create(&vec![
            ("fault", "upstream".to_owned()),
            ("event", "request".to_owned()),
        ])
        .inc();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = crate::cache::Cache::open(&dir.path().join("cache"), 1 << 20)
        .await
        .expect("cache");
    cache.set_shared(Some(crate::store::SharedStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        None,
        "gw-test".to_owned(),
        "memory".to_owned(),
        crate::store::Tuning::new(std::time::Duration::from_secs(1)),
    )));
    let (audit, writer) = crate::audit::Audit::open(&dir.path().join("audit.jsonl"))
        .await
        .expect("audit");
    let counter = audit.counter();
    drop(audit);
    writer.close().await;
    let registry = m.registry(Sources {
        limits: Some(crate::proxy::limits::Limits::new(10, 5)),
        cache: Some(cache),
        kernel: None,
        audit: Some(counter),
        generation: Arc::new(1.into()),
    });
    let (_, text) = scrape(&Admin::new(registry)).await;
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').expect("TYPE line");
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

fn docs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// `margo_gateway_*` names in `text`, histogram series by their base name.
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("margo_gateway_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn docs_list_every_metric_with_its_type_and_the_dashboard_and_alerts_use_only_those() {
    let code = exported().await;
    let doc = std::fs::read_to_string(docs_dir().join("METRICS.md")).expect("docs/METRICS.md");
    let documented: std::collections::BTreeMap<String, String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `margo_gateway_"))
        .map(|l| {
            let (name, rest) = l.split_once('`').expect("name cell");
            let kind = rest.split('|').nth(1).expect("type cell").trim();
            (format!("margo_gateway_{name}"), kind.to_owned())
        })
        .collect();
    // Read from the pinned maps: no kernel in a unit test.
    let kernel_only = ["margo_gateway_kernel_packets_total"];
    for (name, kind) in &code {
        assert_eq!(
            documented.get(name),
            Some(kind),
            "{name} ({kind}) is exported but not documented so in docs/METRICS.md"
        );
    }
    for (name, kind) in &documented {
        assert!(
            code.get(name) == Some(kind) || kernel_only.contains(&name.as_str()),
            "docs/METRICS.md lists {name} ({kind}), which the code does not export so"
        );
    }
    for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(docs_dir().join(file)).expect(file);
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("the dashboard is JSON");
        }
        for name in names_in(&text) {
            assert!(
                documented.contains_key(&name),
                "{file} uses {name}, which is not a metric"
            );
        }
    }
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let promtool = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/prometheus/usr/bin/promtool");
    assert!(
        promtool.is_file(),
        "{} is missing: run `cargo xtask setup` (it unpacks Debian's prometheus package there)",
        promtool.display()
    );
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(docs_dir().join("prometheus-alerts.yml"))
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool check rules docs/prometheus-alerts.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kernel_series_are_per_interface_with_a_fixed_label_set() {
    use gateway_common::{COUNTERS_FALLBACK, Counter};

    use super::collector::kernel_series;
    use crate::ebpf::counters::KernelCounts;

    let mut dev0 = [0u64; Counter::COUNT as usize];
    dev0[Counter::DropNotIntercepted as usize] = 4;
    let mut fallback = [0u64; Counter::COUNT as usize];
    fallback[Counter::EventsLost as usize] = 1;
    let counts = KernelCounts::name(
        &[(5, dev0), (COUNTERS_FALLBACK, fallback)],
        &[(5, "dev0".to_owned()), (6, "dev1".to_owned())],
    );
    let series = kernel_series(&counts);
    // Every counter of both interfaces and of the fallback, zeros too.
    assert_eq!(series.len(), 3 * Counter::COUNT as usize);
    let value = |interface: &str, counter: &str| {
        series
            .iter()
            .find(|(l, _)| l[0].1 == interface && l[2].1 == counter)
            .map(|(l, v)| (l[1].1.clone(), *v))
    };
    assert_eq!(
        value("dev0", "drop_not_intercepted"),
        Some(("drop".to_owned(), 4))
    );
    assert_eq!(
        value("dev1", "drop_not_intercepted"),
        Some(("drop".to_owned(), 0))
    );
    assert_eq!(value("other", "events_lost"), Some(("other".to_owned(), 1)));
    assert_eq!(value("dev0", "events_lost"), Some(("other".to_owned(), 0)));
    assert!(
        series
            .iter()
            .all(|(l, _)| l[0].0 == "interface" && l[1].0 == "verdict" && l[2].0 == "counter")
    );
}
