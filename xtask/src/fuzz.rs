//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets in `fuzz/`, each
//! run for a bounded time.
//!
//! The targets are built once with the nightly toolchain (AddressSanitizer,
//! debug assertions on, so an overflow is a finding too). Each run starts
//! from the checked-in seeds (`fuzz/corpus/<target>/`, read only) and keeps
//! what it learns in `target/fuzz-runs/corpus/<target>/`, so later runs go
//! on from there. A crash fails the run; its input is minimized and kept in
//! `fuzz/regressions/<target>/`, which `cargo test -p gateway fuzzing`
//! replays on stable from then on. libFuzzer's own output goes to
//! `target/fuzz-runs/logs/<target>.log`; the console gets one line per
//! target. The build is in `target/fuzz/`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, setup, vm};

/// The targets, as named in `fuzz/Cargo.toml` and `gateway::fuzzing`.
pub const TARGETS: &[&str] = &["sni", "http", "oci", "config", "dns"];
/// Seconds per target in `cargo xtask test`: a smoke run (a minute for
/// the five), with the build on top; `cargo xtask fuzz` is for fuzzing.
pub const TEST_SECS: u64 = 10;
/// The largest input tried: a whole ClientHello peek (`MAX_PEEK`, 16 KiB
/// and record headers) fits.
const MAX_LEN: u32 = 20_000;
/// Bound on minimizing a crash input.
const MINIMIZE_SECS: u64 = 30;

#[derive(clap::Args)]
pub struct Options {
    /// Run only this target (sni, http, oci, config, dns).
    #[arg(long = "target", value_name = "NAME")]
    target: Option<String>,
    /// Seconds to run each target.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Build without optimisation (`cargo fuzz --dev`): built in about
    /// half the time, fuzzed several times slower. `cargo xtask test` uses
    /// it: its 10 s a target is a smoke run, and the optimised build was
    /// 8 of its minutes on a fresh 2-core machine.
    #[arg(long)]
    dev: bool,
}

/// The `cargo xtask test` step: every target for [`TEST_SECS`].
pub fn test_command() -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("xtask"));
    let mut c = cmd::new(exe);
    c.current_dir(cmd::workspace_root())
        .args(["fuzz", "--dev", "--secs", &TEST_SECS.to_string()]);
    c
}

fn fuzz_dir() -> PathBuf {
    cmd::workspace_root().join("fuzz")
}

fn target_dir() -> PathBuf {
    build::target_dir().unwrap_or_else(|_| cmd::workspace_root().join("target"))
}

/// Where learned corpora, crash artifacts and logs go.
fn work_dir() -> PathBuf {
    target_dir().join("fuzz-runs")
}

/// `cargo fuzz <sub> …` with the flags that every call must share (a
/// different flag would rebuild everything).
fn cargo_fuzz(sub: &str, dev: bool) -> Command {
    let mut c = cmd::cargo();
    // cargo-fuzz needs nightly (sanitizer and coverage flags); the eBPF
    // object is not needed to fuzz parsers. Each build kind has a target
    // dir of its own, so switching does not rebuild the other.
    let (profile, dir) = if dev {
        ("--dev", "fuzz-dev")
    } else {
        ("--release", "fuzz")
    };
    c.env("RUSTUP_TOOLCHAIN", "nightly")
        .env("AYA_BUILD_SKIP", "1")
        .args(["fuzz", sub, "--debug-assertions", profile])
        .arg("--fuzz-dir")
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(target_dir().join(dir));
    c
}

/// What one target's run came to.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    runs: Option<u64>,
    /// The input libFuzzer wrote when the target crashed or hung.
    artifact: Option<PathBuf>,
}

/// Reads libFuzzer's output: `Done 123 runs in 20 second(s)` and
/// `Test unit written to PATH` (crash, timeout, leak or out-of-memory).
fn parse_log(log: &str) -> Run {
    let mut run = Run {
        runs: None,
        artifact: None,
    };
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Done ")
            && let Some((n, _)) = rest.split_once(" runs")
        {
            run.runs = n.trim().parse().ok();
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            run.artifact = Some(PathBuf::from(path.trim()));
        }
        // While running, `#1234 NEW cov: …` / `#1234 pulse …`: the last
        // count seen stands in when the run ends without its summary.
        if run.runs.is_none()
            && let Some(rest) = line.strip_prefix('#')
            && let Some(n) = rest.split_whitespace().next()
            && let Ok(n) = n.parse()
        {
            run.runs = Some(n);
        }
    }
    run
}

fn runs_text(runs: Option<u64>) -> String {
    runs.map_or_else(|| "? runs".to_owned(), |n| format!("{n} runs"))
}

/// Runs one target for `secs`; `Ok(None)` when it did not crash, else the
/// message saying where its input was kept.
fn run_target(target: &str, secs: u64, dev: bool, total_runs: &mut u64) -> Result<Option<String>> {
    let work = work_dir();
    let learned = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let logs = work.join("logs");
    for d in [&learned, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = fuzz_dir().join("corpus").join(target);
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut c = cargo_fuzz("run", dev);
    // New inputs go to the first directory only: the seeds stay as checked in.
    c.arg(target).arg(&learned).arg(&seeds).arg("--").args([
        format!("-max_total_time={secs}"),
        format!("-max_len={MAX_LEN}"),
        // A single input slower than this is a hang: a finding.
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
        format!("-artifact_prefix={}/", artifacts.display()),
    ]);
    let started = Instant::now();
    let status = c
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting `{}`", cmd::describe(&c)))?;
    let elapsed = started.elapsed().as_secs();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let run = parse_log(&text);
    *total_runs += run.runs.unwrap_or(0);
    if status.success() {
        println!(
            "fuzz {target}: {elapsed} s, {}, no crash",
            runs_text(run.runs)
        );
        return Ok(None);
    }
    let Some(artifact) = run.artifact else {
        bail!(
            "fuzz {target}: `{}` failed ({status}) without a crash input (a build error?); see {}",
            cmd::describe(&c),
            log_path.display()
        );
    };
    println!(
        "fuzz {target}: CRASH after {elapsed} s, {}",
        runs_text(run.runs)
    );
    print_crash(&text);
    let kept = keep(target, &artifact, dev)?;
    Ok(Some(format!(
        "fuzz {target}: crash input kept as {} (replayed by `cargo test -p gateway fuzzing`; \
         commit it with the fix); libFuzzer's log: {}",
        kept.display(),
        log_path.display()
    )))
}

/// The panic message and the first frames of the crash, from the log.
fn print_crash(log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: "))
        .unwrap_or(lines.len().saturating_sub(30));
    for line in lines.iter().skip(start).take(30) {
        println!("    {line}");
    }
}

/// Minimizes a crash input into `fuzz/regressions/<target>/` (the raw
/// input when minimizing fails) and returns where it went.
fn keep(target: &str, artifact: &Path, dev: bool) -> Result<PathBuf> {
    let dir = fuzz_dir().join("regressions").join(target);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = artifact
        .file_name()
        .context("libFuzzer's crash input has no file name")?;
    let dest = dir.join(name);
    println!(
        "fuzz {target}: minimizing {} ({MINIMIZE_SECS} s at most)",
        artifact.display()
    );
    let mut c = cargo_fuzz("run", dev);
    c.arg(target).arg(artifact).arg("--").args([
        "-minimize_crash=1".to_owned(),
        format!("-max_total_time={MINIMIZE_SECS}"),
        format!("-exact_artifact_path={}", dest.display()),
    ]);
    let log = work_dir()
        .join("logs")
        .join(format!("{target}-minimize.log"));
    let minimized = fs::File::create(&log)
        .and_then(|f| {
            c.stdin(Stdio::null())
                .stdout(f.try_clone()?)
                .stderr(f)
                .status()
        })
        .is_ok_and(|_| dest.is_file());
    if !minimized {
        println!(
            "fuzz {target}: minimizing failed (see {}); keeping the input as found",
            log.display()
        );
        fs::copy(artifact, &dest)
            .with_context(|| format!("copying {} to {}", artifact.display(), dest.display()))?;
    }
    Ok(dest)
}

fn selected(only: Option<&str>) -> Result<Vec<&'static str>> {
    match only {
        None => Ok(TARGETS.to_vec()),
        Some(name) => match TARGETS.iter().find(|t| **t == name) {
            Some(t) => Ok(vec![*t]),
            None => bail!(
                "no fuzz target `{name}`; the targets are: {}",
                TARGETS.join(", ")
            ),
        },
    }
}

pub fn run(opts: &Options) -> Result<ExitCode> {
    let started = Instant::now();
    let targets = selected(opts.target.as_deref())?;
    if opts.secs == 0 {
        bail!("--secs must be at least 1");
    }
    setup::fuzz_tools()?;
    let build_started = Instant::now();
    println!("fuzz: building the targets (nightly, AddressSanitizer, debug assertions)");
    let mut b = cargo_fuzz("build", opts.dev);
    if opts.target.is_some() {
        b.args(&targets);
    }
    cmd::run(&mut b).context("building the fuzz targets failed: see cargo's output above")?;
    println!(
        "fuzz: built in {:.0} s",
        build_started.elapsed().as_secs_f64()
    );

    let mut total_runs = 0;
    let mut crashes = Vec::new();
    for target in &targets {
        if let Some(crash) = run_target(target, opts.secs, opts.dev, &mut total_runs)? {
            crashes.push(crash);
        }
    }
    for crash in &crashes {
        println!("{crash}");
    }
    let secs = started.elapsed().as_secs_f64();
    // Counted by `cargo xtask test` like a libtest suite: a target a test.
    println!(
        "{}note {} target(s) x {} s, {total_runs} runs",
        vm::SUITE_MARK,
        targets.len(),
        opts.secs
    );
    println!(
        "test result: {}. {} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs:.2}s",
        if crashes.is_empty() { "ok" } else { "FAILED" },
        targets.len() - crashes.len(),
        crashes.len()
    );
    Ok(if crashes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_summary() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 3/99b exec/s: 0 rss: 40Mb\n\
                   #4096\tpulse  cov: 12\nDone 123456 runs in 21 second(s)\n";
        assert_eq!(
            parse_log(log),
            Run {
                runs: Some(123_456),
                artifact: None
            }
        );
    }

    #[test]
    fn finds_the_crash_input() {
        let log = "#77\tNEW cov: 3\n==12== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='/t/fuzz/artifacts/sni/'; Test unit written to /t/fuzz/artifacts/sni/crash-da39a3ee\n";
        assert_eq!(
            parse_log(log),
            Run {
                runs: Some(77),
                artifact: Some(PathBuf::from("/t/fuzz/artifacts/sni/crash-da39a3ee"))
            }
        );
        assert_eq!(parse_log("").runs, None);
    }

    #[test]
    fn targets_match_the_fuzz_crate() {
        let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} not in fuzz/Cargo.toml"
            );
            assert!(
                fuzz_dir().join("corpus").join(t).is_dir(),
                "no seeds for {t}"
            );
        }
        assert!(selected(Some("nope")).is_err());
        assert_eq!(selected(Some("dns")).expect("dns"), ["dns"]);
    }
}
