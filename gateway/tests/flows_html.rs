//! `gateway flows --html` opened in a real browser (headless Chromium):
//! the page shows the devices, draws allowed and refused edges
//! differently, and a device-chosen name that looks like markup stays
//! text. Needs no root; needs Chromium (`cargo xtask setup` installs it).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const CONFIG: &str = "
devices:
  interfaces: [dev0]
manager:
  name: wfm.site.example
  addresses: [\"10.77.2.2:443\"]
audit:
  path: AUDIT
";

/// A device's DNS query for a name that is markup and a script.
const EVIL: &str = "<script>document.body.setAttribute('data-pwned','1')</script>.example";

fn log() -> String {
    let evil = EVIL.replace('\'', "\\u0027");
    [
        r#"{"ts":"2026-11-30T06:00:07.469Z","event":"flow.passthrough","device":"10.77.1.2:42952","dst":"10.77.2.2:443","proto":"tcp","reason":"passthrough","bytes_up":5120,"bytes_down":13400,"service":"wfm.site.example"}"#.to_owned(),
        r#"{"ts":"2026-11-30T06:00:09.481Z","event":"flow.denied","device":"10.77.1.2:35862","dst":"10.77.2.2:80","proto":"tcp","reason":"no_rule_for_destination"}"#.to_owned(),
        r#"{"ts":"2026-11-30T06:03:31.272Z","event":"request","device":"10.77.1.3:35778","host":"registry.example.test","method":"GET","path":"/v2/demo/app/manifests/v1","status":200,"bytes":405,"cache":"miss"}"#.to_owned(),
        format!(r#"{{"ts":"2026-11-30T06:02:34Z","event":"dns.refused","device":"10.77.1.3:40321","dst":"10.77.2.53:53","proto":"udp","reason":"name_not_allowed","name":"{evil}","qtype":"A"}}"#),
        r#"{"ts":"2026-11-30T06:04:00Z","event":"request","device":"10.77.1.3:4001","host":"registry.example.test","method":"GET","path":"/v2/\"><img src=x onerror=\"document.title='pwned'\">/manifests/v1","status":404}"#.to_owned(),
    ]
    .join("\n")
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "Chromium is not installed: this test opens the HTML report in it. Run `cargo xtask setup` (Debian package `chromium`)."
    );
}

/// The DOM Chromium built from `page`, serialised.
fn dump_dom(page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A guard against a browser that never exits, not a timing check.
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_html_report_shows_devices_edges_and_inert_names_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    std::fs::write(&audit, log()).unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        CONFIG.replace("AUDIT", &audit.display().to_string()),
    )
    .unwrap();
    let page = dir.path().join("flows.html");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("flows")
        .arg("--config")
        .arg(&config)
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dom = dump_dom(&page);
    for device in ["10.77.1.2", "10.77.1.3"] {
        assert!(
            dom.contains(&format!("<tr class=\"device-row\"><td>{device}</td>")),
            "no row for {device} in the DOM:\n{dom}"
        );
    }
    let edges = |class: &str| {
        dom.matches(&format!("class=\"edge {class}\" data-device="))
            .count()
    };
    // 10.77.1.2: passthrough; 10.77.1.3: the site (its request and the
    // 404 of another repository).
    assert_eq!(edges("allowed"), 3, "allowed edges in:\n{dom}");
    // 10.77.1.2: port 80; 10.77.1.3: the DNS name.
    assert_eq!(edges("refused"), 2, "refused edges in:\n{dom}");
    assert!(
        dom.contains("legend-refused") && dom.contains("legend-allowed"),
        "{dom}"
    );

    // The name is text, in the table and the picture, and nothing ran.
    let text = "&lt;script&gt;document.body.setAttribute('data-pwned','1')&lt;/script&gt;.example";
    assert!(
        dom.matches(text).count() >= 2,
        "the name as text in:\n{dom}"
    );
    assert!(
        !dom.to_ascii_lowercase().contains("<script"),
        "a script element in:\n{dom}"
    );
    assert!(!dom.contains("data-pwned=\"1\""), "the script ran:\n{dom}");
    assert!(
        !dom.to_ascii_lowercase().contains("<img"),
        "an img element in:\n{dom}"
    );
    assert!(dom.contains("<title>Gateway flow report</title>"), "{dom}");
}
