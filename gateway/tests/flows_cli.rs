//! `gateway flows` refuses a bad time window or device prefix as a usage
//! error (exit 64, the flag and value named), as a bad config is, before it
//! reads any log.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::process::Command;

/// Runs `gateway flows` with `args` on an empty log; exit code and stderr.
fn flows(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        "devices:\n  interfaces: [dev0]\nmanager:\n  name: wfm.site.example\n  addresses: [\"10.77.2.2:443\"]\n",
    )
    .unwrap();
    let log = dir.path().join("audit.jsonl");
    std::fs::write(&log, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("flows")
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg(&log)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_window_or_prefix_exits_64_naming_the_flag() {
    for (args, named) in [
        (
            &["--since", "yesterday-ish"][..],
            "--since \"yesterday-ish\"",
        ),
        (&["--until", "2026-13-40"][..], "--until \"2026-13-40\""),
        (
            &["--device", "10.0.300.0/24"][..],
            "--device \"10.0.300.0/24\"",
        ),
        (
            &[
                "--since",
                "2026-11-30T06:00:00Z",
                "--until",
                "2026-11-30T05:00:00Z",
            ][..],
            "the window is empty",
        ),
    ] {
        let (code, stderr) = flows(args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn a_good_window_on_an_empty_log_succeeds() {
    let (code, stderr) = flows(&["--since", "1h", "--device", "10.0.3.0/24"]);
    assert_eq!(code, Some(0), "{stderr}");
}
