//! `gateway flows` reads a large audit log in bounded memory: its peak
//! resident size on a 200 MB log is under a fixed bound and about what it
//! is on a 2 MB log with the same flows. A bound, not a timing.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
    process::{Command, Stdio},
};

/// Peak resident set allowed, whatever the log's size.
const BOUND_KIB: i64 = 64 * 1024;
/// How much more the large log may take than the small one: the keys are
/// the same, so only noise (allocator, page cache of the reader).
const GROWTH_KIB: i64 = 8 * 1024;

/// A few hundred distinct (device, destination) pairs of every kind.
fn block() -> Vec<u8> {
    let mut out = String::new();
    for d in 0..20 {
        for k in 0..20 {
            let dev = format!("10.77.{}.{d}", d / 10);
            let line = match k % 5 {
                0 => format!(
                    r#"{{"ts":"2026-11-30T06:{k:02}:07.469Z","event":"flow.passthrough","device":"{dev}:42952","dst":"10.77.2.2:443","proto":"tcp","reason":"passthrough","bytes_up":5120,"bytes_down":13400,"duration_ms":5,"service":"svc{k}.site.example"}}"#
                ),
                1 => format!(
                    r#"{{"ts":"2026-11-30T06:{k:02}:09.481Z","event":"flow.denied","device":"{dev}:35862","dst":"10.77.2.{k}:80","proto":"tcp","reason":"no_rule_for_destination"}}"#
                ),
                2 => format!(
                    r#"{{"ts":"2026-11-30T06:{k:02}:34Z","event":"dns.refused","device":"{dev}:40321","dst":"10.77.2.53:53","proto":"udp","reason":"name_not_allowed","name":"n{k}.example.com","qtype":"A","suppressed":2}}"#
                ),
                3 => format!(
                    r#"{{"ts":"2026-11-30T06:{k:02}:08Z","event":"flow.dropped","device":"{dev}:53472","dst":"10.77.2.2:{k}","proto":"tcp","reason":"port_not_intercepted","interface":"dev0","packets":2}}"#
                ),
                _ => format!(
                    r#"{{"ts":"2026-11-30T06:{k:02}:31.272Z","event":"request","device":"{dev}:35778","host":"registry.example.test","method":"GET","path":"/v2/demo/app{k}/manifests/v1","status":200,"bytes":405,"cache":"hit","upstream_ms":106}}"#
                ),
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Writes `repeats` copies of `block` to `path`.
fn write_log(path: &Path, block: &[u8], repeats: usize) {
    let mut f = BufWriter::new(File::create(path).unwrap());
    for _ in 0..repeats {
        f.write_all(block).unwrap();
    }
    f.flush().unwrap();
}

/// Runs `gateway flows --json` on `log`; its JSON and peak RSS in KiB.
fn run_flows(dir: &Path, log: &Path) -> (serde_json::Value, i64) {
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        "devices:\n  interfaces: [dev0]\nmanager:\n  name: wfm.site.example\n  addresses: [\"10.77.2.2:443\"]\n",
    )
    .unwrap();
    let out_path = dir.join("out.json");
    // Reaped by wait4 below, which also reports the child's peak RSS.
    #[expect(clippy::zombie_processes, reason = "reaped by libc::wait4")]
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("flows")
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg(log)
        .arg("--json")
        .stdout(File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped (the `Child` is never
    // waited on); both pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "gateway flows failed: status {status:#x}"
    );
    let json = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    // Linux: ru_maxrss is in KiB.
    (json, usage.ru_maxrss)
}

#[test]
fn a_large_log_is_read_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let block = block();
    let lines_per_block = block.iter().filter(|&&b| b == b'\n').count();

    let small = dir.path().join("small.jsonl");
    let small_repeats = 2_000_000 / block.len() + 1;
    write_log(&small, &block, small_repeats);
    let (_, small_kib) = run_flows(dir.path(), &small);

    let large = dir.path().join("audit.jsonl");
    let repeats = 200_000_000 / block.len() + 1;
    write_log(&large, &block, repeats);
    let (json, large_kib) = run_flows(dir.path(), &large);
    std::fs::remove_file(&large).unwrap();
    eprintln!(
        "peak RSS: {small_kib} KiB on {} MB, {large_kib} KiB on {} MB",
        small_repeats * block.len() / 1_000_000,
        repeats * block.len() / 1_000_000
    );

    // Everything was read and counted, not skipped.
    assert_eq!(json["lines"]["read"], (repeats * lines_per_block) as u64);
    assert_eq!(json["lines"]["not_understood"], 0);
    let devices = json["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 20);
    let refused_dns = devices[0]["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "dns")
        .unwrap();
    assert_eq!(
        refused_dns["count"],
        (3 * repeats) as u64,
        "one plus two suppressed per record"
    );

    assert!(
        large_kib < BOUND_KIB,
        "peak RSS {large_kib} KiB on a 200 MB log, bound {BOUND_KIB} KiB"
    );
    assert!(
        large_kib < small_kib + GROWTH_KIB,
        "peak RSS grew with the log: {small_kib} KiB on 2 MB, {large_kib} KiB on 200 MB"
    );
}
