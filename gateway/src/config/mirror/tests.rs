//! `mirror:` keys: patterns, windows, rates, and each bad key named.
use super::*;

#[test]
fn tag_patterns() {
    let m = Mirror {
        site: "r".into(),
        repositories: vec!["a".into()],
        tags: vec!["v1.*".into(), "latest".into(), "rc-?".into()],
        platforms: vec![],
        every: Some("6h".into()),
        at: None,
        max_rate: None,
        window: None,
    };
    for t in ["v1.0", "v1.1", "v1.", "latest", "rc-1"] {
        assert!(m.wants_tag(t), "{t}");
    }
    for t in ["v2.0", "v1", "latest2", "xlatest", "rc-10", "rc-"] {
        assert!(!m.wants_tag(t), "{t}");
    }
    assert!(tag_match("*", "anything"));
    assert!(tag_match("*-amd64", "v1-amd64"));
}

#[test]
fn windows_wrap_midnight() {
    let w = parse_window("22:00-02:00").expect("window");
    let h = |h: u32, m: u32| h * 3600 + m * 60;
    assert!(w.contains(h(22, 0)));
    assert!(w.contains(h(23, 59)));
    assert!(w.contains(h(0, 0)));
    assert!(w.contains(h(1, 59)));
    assert!(!w.contains(h(2, 0)));
    assert!(!w.contains(h(21, 59)));
    assert_eq!(w.until_open(h(21, 0)), 3600);
    assert_eq!(w.until_open(h(3, 0)), h(19, 0));
    assert_eq!(w.until_open(h(23, 0)), 0);
    assert_eq!(w.until_close(h(23, 0)), h(3, 0));
    assert_eq!(w.until_close(h(1, 30)), 1800);
    let day = parse_window("01:00-05:00").expect("window");
    assert!(day.contains(h(1, 0)) && day.contains(h(4, 59)));
    assert!(!day.contains(h(5, 0)) && !day.contains(h(0, 59)));
    assert_eq!(day.until_open(h(5, 0)), h(20, 0));
    assert_eq!(day.until_close(h(4, 0)), 3600);
    // A daily `at`: the same time tomorrow when it is now.
    assert_eq!(until(h(2, 30), h(2, 30)), DAY);
    assert_eq!(until(h(2, 0), h(2, 30)), 1800);
    assert_eq!(until(h(3, 0), h(2, 30)), h(23, 30));
}

#[test]
fn rates_clocks_and_windows_parse() {
    assert_eq!(parse_rate("10MiB/s"), Ok(10 * 1024 * 1024));
    assert_eq!(parse_rate("500KB/s"), Ok(500_000));
    assert!(parse_rate("10MiB").is_err());
    assert!(parse_rate("fast/s").is_err());
    assert!(parse_rate("100B/s").is_err());
    assert_eq!(parse_clock("02:30"), Ok(150));
    assert!(parse_clock("24:00").is_err());
    assert!(parse_clock("2:30").is_err());
    assert!(parse_window("01:00-01:00").is_err());
    assert!(parse_window("01:00").is_err());
}

const BASE: &str = "
devices:
  interfaces: [dev0]
manager:
  name: wfm.site.example
  addresses: [\"10.0.0.5:443\"]
sites:
  - host: registry.example.test
    kind: oci
    upstream: https://upstream.example.test
  - host: files.example.test
    kind: files
    upstream: https://files.example.test
    paths: [\"/a/**\"]
mirror:
";

const GOOD: &str = "  - site: registry.example.test
    repositories: [line-3/app]
    tags: [\"v1.*\", latest]
    platforms: [linux/amd64]
    every: 6h
    max_rate: 10MiB/s
    window: \"01:00-05:00\"
";

fn parse(entry: &str) -> Result<crate::config::Config, String> {
    crate::config::Config::parse(&format!("{BASE}{entry}")).map_err(|e| e.to_string())
}

#[test]
fn a_documented_entry_parses() {
    let c = parse(GOOD).expect("good entry");
    let m = &c.mirror[0];
    assert_eq!(m.schedule(), Schedule::Every(Duration::from_secs(6 * 3600)));
    assert_eq!(m.rate(), Some(10 * 1024 * 1024));
    assert_eq!(
        m.window(),
        Some(Window {
            start: 60,
            end: 300
        })
    );
    let at = parse(&GOOD.replace("every: 6h", "at: \"02:30\"")).expect("at");
    assert_eq!(at.mirror[0].schedule(), Schedule::At(150));
}

#[test]
fn each_bad_key_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "site: registry.example.test",
            "site: nowhere.test",
            "mirror[0].site",
        ),
        (
            "site: registry.example.test",
            "site: files.example.test",
            "mirror[0].site",
        ),
        (
            "repositories: [line-3/app]",
            "repositories: []",
            "mirror[0].repositories",
        ),
        (
            "repositories: [line-3/app]",
            "repositories: [Line3]",
            "mirror[0].repositories[0]",
        ),
        ("tags: [\"v1.*\", latest]", "tags: []", "mirror[0].tags"),
        (
            "tags: [\"v1.*\", latest]",
            "tags: [\"v1/x\"]",
            "mirror[0].tags[0]",
        ),
        (
            "platforms: [linux/amd64]",
            "platforms: [amd64]",
            "mirror[0].platforms[0]",
        ),
        ("every: 6h", "every: often", "mirror[0].every"),
        ("every: 6h", "every: 5s", "mirror[0].every"),
        ("every: 6h", "every: 6h\n    at: \"02:00\"", "mirror[0].at"),
        ("every: 6h", "at: \"25:00\"", "mirror[0].at"),
        ("every: 6h", "at: \"06:00\"", "mirror[0].at"),
        ("    every: 6h\n", "", "`mirror[0]`"),
        ("max_rate: 10MiB/s", "max_rate: 10MiB", "mirror[0].max_rate"),
        ("max_rate: 10MiB/s", "max_rate: 10/s", "mirror[0].max_rate"),
        (
            "window: \"01:00-05:00\"",
            "window: \"1-5\"",
            "mirror[0].window",
        ),
        (
            "window: \"01:00-05:00\"",
            "window: \"01:00-01:00\"",
            "mirror[0].window",
        ),
    ];
    for (from, to, key) in cases {
        let entry = GOOD.replace(from, to);
        assert_ne!(entry, GOOD, "{from} not in the entry");
        let e = parse(&entry).expect_err(&entry);
        assert!(e.contains(key), "{key} not named for {to}: {e}");
    }
    let twice = format!(
        "{GOOD}{}",
        GOOD.replace("[line-3/app]", "[other, line-3/app]")
    );
    let e = parse(&twice).expect_err("twice");
    assert!(e.contains("mirror[1].repositories[1]"), "{e}");
    let e = parse(&GOOD.replace("    every: 6h", "    every: 6h\n    color: red"))
        .expect_err("unknown key");
    assert!(e.contains("color"), "{e}");
}
