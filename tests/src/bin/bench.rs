//! `cargo xtask bench` runs this (as root): the gateway measured beside
//! nginx, the distribution registry and a direct transfer. See
//! `gateway_tests::bench` for what each section measures.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use gateway_tests::bench::{self, Opts};

const USAGE: &str =
    "usage: bench [--smoke] [--runs N] [--size BYTES|NMiB|NGiB] [--conns N] [--sections abcdefghi] [--out DIR]

  --smoke        tiny sizes, one run (what `cargo xtask test` runs)
  --runs N       runs per figure (default 5)
  --size S       blob size (default 1GiB)
  --conns N      open connections of (f) (default 10000)
  --sections L   which sections to run, by issue letter (default abcdefghi)
  --out DIR      write BENCHMARKS.md and benchmarks.json into DIR
  --perf DIR     perf record the gateway in the first run of (a) 16 clients,
                 (b) 8 clients, (c) and (h) into DIR/<measurement>.data";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()).and_then(|o| bench::run(o).map(|_| ())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: Vec<String>) -> Result<Opts> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut opts = if smoke { Opts::smoke() } else { Opts::full() };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--smoke" => {}
            "--runs" => opts.runs = value("--runs")?.parse().context("--runs")?,
            "--size" => opts.blob_size = parse_size(&value("--size")?)?,
            "--conns" => opts.conns = value("--conns")?.parse().context("--conns")?,
            "--sections" => opts.sections = value("--sections")?,
            "--out" => opts.out_dir = Some(PathBuf::from(value("--out")?)),
            "--perf" => opts.perf_dir = Some(PathBuf::from(value("--perf")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(opts)
}

fn parse_size(s: &str) -> Result<u64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1u64 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size {s}"))?;
    Ok(n * mult)
}
