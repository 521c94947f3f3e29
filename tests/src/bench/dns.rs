//! (h) DNS: the gateway's resolver beside dnsmasq answering the same names
//! from a hosts file, both asked by `dnsperf` from the device namespace.
//!
//! Two query mixes: an allowed name (the site host, `A`) and refused names
//! (names no site or service has: the gateway answers NXDOMAIN, dnsmasq too
//! with `--local=/#/`). Per run and subject: queries per second, answers per
//! CPU-second of the server process (the figure the target is on:
//! these two cores are shared with dnsperf, so throughput follows the
//! client as much as the server), and the p99 latency dnsperf saw.
//!
//! The device reaches the gateway's resolver as it does on a site: UDP to
//! port 53 of any address is taken by the TC program; dnsmasq listens on
//! the peer link like the other peers.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    Bench,
    proc::{Proc, cpu_seconds},
    progress, rotated,
    stats::{Better, Figure, fmt_num, percentile, ratio},
    world::PEER_DNSMASQ,
};
use crate::{
    dns,
    registry::HOST,
    site::{Site, addr},
};

/// Distinct refused names in the refused mix.
const REFUSED_NAMES: usize = 1000;

/// One dnsperf run's figures.
#[derive(Debug, Default, PartialEq)]
pub struct PerfRun {
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    /// Response codes and their counts (`NOERROR`, `NXDOMAIN`, ...).
    pub rcodes: Vec<(String, u64)>,
    /// Each answered query's latency, seconds (`-v` lines).
    pub latencies: Vec<f64>,
}

pub fn run(b: &mut Bench<'_, '_>) -> Result<()> {
    let secs = if b.opts.smoke { 1 } else { 5 };
    b.report.method(
        "h",
        format!(
            "DNS from the device namespace with dnsperf (UDP, 4 clients, at most 200 \
             queries outstanding, {secs} s per run and mix): the gateway's resolver (UDP \
             to port 53 of the gateway's address, taken by the TC program) vs dnsmasq \
             on the peer link answering the same names from a hosts file (`--no-resolv \
             --local=/#/`: every other name NXDOMAIN, as the gateway). Mixes: the site \
             host (`{HOST} A`, allowed) and {REFUSED_NAMES} names nobody serves \
             (refused: NXDOMAIN). Answers per CPU-second = answered queries / user+system \
             CPU seconds of the server process during the run."
        ),
    );
    let dir = b.dir.join("dns");
    std::fs::create_dir_all(&dir)?;
    // dnsmasq answers what the gateway answers for the site host.
    let answer = dns::dig(b.site, addr::GW_DEV_V4.into(), HOST, "A", false)?;
    let answer = answer
        .data("A")
        .into_iter()
        .next()
        .with_context(|| format!("the gateway gave no A record for {HOST}: {answer:?}"))?;
    std::fs::write(dir.join("hosts"), format!("{answer} {HOST}\n"))?;
    let allowed = dir.join("allowed.txt");
    std::fs::write(&allowed, format!("{HOST} A\n"))?;
    let refused = dir.join("refused.txt");
    let names: String = (0..REFUSED_NAMES)
        .map(|i| format!("q{i}.refused.test A\n"))
        .collect();
    std::fs::write(&refused, names)?;
    let dnsmasq = start_dnsmasq(b.site, &dir)?;
    let dnsmasq_pid = dnsmasq.pid().context("dnsmasq is not running")?;

    let subjects: [(&str, Ipv4Addr); 2] = [("gateway", addr::GW_DEV_V4), ("dnsmasq", PEER_DNSMASQ)];
    let mixes: [(&str, &Path, &str); 2] = [
        ("allowed", &allowed, "NOERROR"),
        ("refused", &refused, "NXDOMAIN"),
    ];
    for (mix, file, rcode) in mixes {
        let figure = |name: &str, subject: &str, unit: &'static str, better: Better| {
            Figure::new("h", format!("DNS {mix}: {name}"), subject, unit, better)
        };
        let mut per_cpu: Vec<Figure> = subjects
            .iter()
            .map(|(s, _)| figure("answers per CPU-second", s, "1/s", Better::Higher))
            .collect();
        let mut qps: Vec<Figure> = subjects
            .iter()
            .map(|(s, _)| figure("queries per second", s, "1/s", Better::Higher))
            .collect();
        let mut p99: Vec<Figure> = subjects
            .iter()
            .map(|(s, _)| figure("latency p99", s, "ms", Better::Lower))
            .collect();
        for run in 0..b.opts.runs {
            for i in rotated(&[0usize, 1], run) {
                let (label, server) = subjects[i];
                let pid = if label == "gateway" {
                    b.gw.pid()?
                } else {
                    dnsmasq_pid
                };
                let perf = if label == "gateway" {
                    b.perf(&format!("dns-{mix}"), run)?
                } else {
                    None
                };
                let cpu_before = cpu_seconds(pid)?;
                let r = dnsperf(&b.site.dev_ns, server, file, secs)?;
                let cpu = cpu_seconds(pid)? - cpu_before;
                drop(perf);
                let wrong: Vec<&(String, u64)> =
                    r.rcodes.iter().filter(|(c, _)| c != rcode).collect();
                ensure!(
                    wrong.is_empty() && r.completed > 0,
                    "{label} ({mix}): expected only {rcode}, got {:?} ({} completed)",
                    r.rcodes,
                    r.completed
                );
                let answers_per_cpu = r.completed as f64 / cpu.max(0.01);
                let tail = percentile(&r.latencies, 99.0) * 1000.0;
                progress(format!(
                    "(h) run {}/{} {label} {mix}: {} q/s, {} answers per CPU-second ({cpu:.2} CPU s), p99 {tail:.3} ms, {} lost",
                    run + 1,
                    b.opts.runs,
                    fmt_num(r.qps),
                    fmt_num(answers_per_cpu),
                    r.lost
                ));
                per_cpu[i].samples.push(answers_per_cpu);
                qps[i].samples.push(r.qps);
                p99[i].samples.push(tail);
            }
        }
        let vs = ratio(
            "h",
            format!("DNS {mix}: answers per CPU-second"),
            &per_cpu[0],
            &per_cpu[1],
            Better::Higher,
        );
        let m = vs.summary();
        b.report.check(
            "h",
            &format!("DNS {mix}: answers per CPU-second ≥ 1.0× dnsmasq"),
            format!("{:.2}× (spread {:.2}–{:.2})", m.median, m.min, m.max),
            m.median >= 1.0,
        );
        for f in per_cpu.into_iter().chain(qps).chain(p99) {
            b.report.add(f);
        }
        b.report.add(vs);
    }
    drop(dnsmasq);
    Ok(())
}

/// dnsmasq in `ns` on [`PEER_DNSMASQ`]:53, answering from `dir/hosts` and
/// NXDOMAIN for everything else; no upstream, no cache of others' answers,
/// no log per query.
fn start_dnsmasq(site: &Site, dir: &Path) -> Result<Proc> {
    let ns = site.gw_ns.as_str();
    let stderr = std::fs::File::create(dir.join("dnsmasq.stderr"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "dnsmasq", "--keep-in-foreground"])
        .args([
            "--no-resolv",
            "--no-hosts",
            "--local=/#/",
            "--bind-interfaces",
        ])
        .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
        .arg(format!("--listen-address={PEER_DNSMASQ}"))
        .args(["--port=53", "--user=root", "--conf-file=/dev/null"])
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut proc = Proc::spawn("dnsmasq (DNS peer)", &mut cmd)?;
    // Ready when it answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // From the device namespace over the peer link (not guarded:
        // the TC program does not take this query).
        if let Ok(d) = dns::dig(site, PEER_DNSMASQ.into(), HOST, "A", false)
            && !d.data("A").is_empty()
        {
            return Ok(proc);
        }
        proc.check_running()
            .with_context(|| format!("dnsmasq exited: {}", read(&dir.join("dnsmasq.stderr"))))?;
        if std::time::Instant::now() > deadline {
            bail!(
                "dnsmasq did not answer within 10 s: {}",
                read(&dir.join("dnsmasq.stderr"))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// One dnsperf run from `ns` against `server`:53.
fn dnsperf(ns: &str, server: Ipv4Addr, queries: &Path, secs: u64) -> Result<PerfRun> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "dnsperf", "-s"])
        .arg(server.to_string())
        .arg("-d")
        .arg(queries)
        .args([
            "-l",
            &secs.to_string(),
            "-c",
            "4",
            "-q",
            "200",
            "-t",
            "2",
            "-v",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf (Debian package dnsperf: `cargo xtask setup`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "dnsperf failed ({}): {}{}",
        out.status,
        text.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_dnsperf(&text)
}

/// dnsperf's `-v` output: `> RCODE name type latency` per query, then its
/// statistics block.
pub fn parse_dnsperf(text: &str) -> Result<PerfRun> {
    let mut r = PerfRun::default();
    let number = |line: &str| -> Option<f64> {
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("> ") {
            if let Some(lat) = rest.split_whitespace().last().and_then(|s| s.parse().ok()) {
                r.latencies.push(lat);
            }
        } else if t.starts_with("Queries completed:") {
            r.completed = number(t).unwrap_or(0.0) as u64;
        } else if t.starts_with("Queries lost:") {
            r.lost = number(t).unwrap_or(0.0) as u64;
        } else if t.starts_with("Queries per second:") {
            r.qps = number(t).unwrap_or(0.0);
        } else if let Some(codes) = t.strip_prefix("Response codes:") {
            // `NOERROR 109019 (50.00%), NXDOMAIN 109019 (50.00%)`
            for part in codes.split(',') {
                let mut w = part.split_whitespace();
                if let (Some(code), Some(n)) = (w.next(), w.next().and_then(|n| n.parse().ok())) {
                    r.rcodes.push((code.to_owned(), n));
                }
            }
        }
    }
    ensure!(
        r.qps > 0.0 || r.completed > 0,
        "no statistics in dnsperf's output:\n{}",
        text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_output_is_parsed() {
        let text = "\
[Status] Sending queries (to 127.0.0.1:53)
> NOERROR registry.example.test A 0.002412
> NXDOMAIN other.example A 0.000411
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         218038
  Queries completed:    218038 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 109019 (50.00%), NXDOMAIN 109019 (50.00%)
  Average packet size:  request 35, response 43
  Run time (s):         2.003979
  Queries per second:   108802.537352
";
        let r = parse_dnsperf(text).expect("parsed");
        assert_eq!(r.completed, 218_038);
        assert_eq!(r.lost, 0);
        assert!((r.qps - 108_802.537_352).abs() < 1e-6);
        assert_eq!(
            r.rcodes,
            vec![("NOERROR".into(), 109_019), ("NXDOMAIN".into(), 109_019)]
        );
        assert_eq!(r.latencies, vec![0.002412, 0.000411]);
        assert!(parse_dnsperf("nothing here").is_err());
    }
}
