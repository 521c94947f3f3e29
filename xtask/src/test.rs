//! `cargo xtask test`: the one command that runs every check and test.
//!
//! Steps: setup, fmt, clippy, unit tests, build the gateway, root-only
//! integration tests, then any [`extra_suites`]. Every `cargo test` output is
//! streamed through and its libtest `test result:` lines are summed; the run
//! ends with a summary whose last line is `N passed, M failed, K skipped`.
use std::{
    fmt::Write as _,
    ops::AddAssign,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{bench, build, cmd, setup, vm};

/// Why root-only tests are skipped when not running as root.
const ROOT_SKIP_REASON: &str = "needs root (CAP_NET_ADMIN, CAP_BPF); run as root";

/// Counts from libtest `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }
}

/// Removes ANSI escape sequences (in case a runner colours its output).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, up to the final byte (@..~).
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Parses `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`
/// (also `FAILED.`); any other line gives `None`.
fn parse_result_line(line: &str) -> Option<Counts> {
    let line = strip_ansi(line);
    let rest = line.trim().strip_prefix("test result: ")?;
    let (status, rest) = rest.split_once('.')?;
    if status != "ok" && status != "FAILED" {
        return None;
    }
    let mut counts = Counts::default();
    let mut seen = false;
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => continue,
        }
        seen = true;
    }
    seen.then_some(counts)
}

/// What an extra suite may print besides libtest's `test result:` lines
/// (each line starting with [`vm::SUITE_MARK`]).
#[derive(Debug, PartialEq, Eq)]
enum SuiteLine {
    /// `note TEXT`: shown beside the suite's counts in the summary.
    Note(String),
    /// `skip N REASON`: N tests not run, for REASON.
    Skip(u64, String),
}

fn parse_suite_line(line: &str) -> Option<SuiteLine> {
    let line = strip_ansi(line);
    let rest = line.trim().strip_prefix(vm::SUITE_MARK)?;
    if let Some(note) = rest.strip_prefix("note ") {
        return Some(SuiteLine::Note(note.trim().to_owned()));
    }
    let (n, reason) = rest.strip_prefix("skip ")?.split_once(' ')?;
    Some(SuiteLine::Skip(n.parse().ok()?, reason.trim().to_owned()))
}

/// Counts the tests in `cargo test -- --list` output (lines ending in `: test`).
fn count_listed(output: &str) -> u64 {
    output
        .lines()
        .filter(|l| strip_ansi(l).trim_end().ends_with(": test"))
        .count() as u64
}

/// One suite's line in the summary.
struct SuiteReport {
    label: String,
    counts: Counts,
    note: Option<String>,
}

#[derive(Default)]
struct Summary {
    suites: Vec<SuiteReport>,
    /// Skip reasons with their counts, in first-seen order.
    skipped: Vec<(String, u64)>,
    /// Steps that failed, each with why.
    failed_steps: Vec<String>,
    /// Labels of the suites that needed root and ran as root.
    root_suites: Vec<String>,
}

impl Summary {
    fn skip(&mut self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.skipped.iter_mut().find(|(r, _)| r == reason) {
            Some((_, count)) => *count += n,
            None => self.skipped.push((reason.to_owned(), n)),
        }
    }

    fn add_suite(&mut self, label: &str, counts: Counts, note: Option<String>) {
        self.skip("ignored", counts.ignored);
        self.suites.push(SuiteReport {
            label: label.to_owned(),
            counts,
            note,
        });
    }

    fn totals(&self) -> (u64, u64, u64) {
        let passed = self.suites.iter().map(|s| s.counts.passed).sum();
        let failed = self.suites.iter().map(|s| s.counts.failed).sum();
        let skipped = self.skipped.iter().map(|(_, n)| n).sum();
        (passed, failed, skipped)
    }

    fn success(&self) -> bool {
        let (_, failed, _) = self.totals();
        failed == 0 && self.failed_steps.is_empty()
    }

    /// The summary block; its last line is `N passed, M failed, K skipped`.
    fn render(&self) -> String {
        let mut s = String::from("== test summary ==\n");
        for suite in &self.suites {
            let _ = write!(
                s,
                "{:<11}{:>5} passed, {} failed",
                format!("{}:", suite.label),
                suite.counts.passed,
                suite.counts.failed
            );
            if let Some(note) = &suite.note {
                let _ = write!(s, " ({note})");
            }
            s.push('\n');
        }
        let (passed, failed, skipped) = self.totals();
        let root: u64 = self
            .suites
            .iter()
            .filter(|r| self.root_suites.contains(&r.label))
            .map(|r| r.counts.passed + r.counts.failed)
            .sum();
        let _ = writeln!(
            s,
            "{:<11}{root:>5}  of the tests that ran needed root and ran as root ({})",
            "as root:",
            if self.root_suites.is_empty() {
                "none".to_owned()
            } else {
                self.root_suites.join(", ")
            }
        );
        let _ = writeln!(s, "{:<11}{skipped:>5}", "skipped:");
        for (reason, n) in &self.skipped {
            let _ = writeln!(s, "{:<11}{n:>5}  {reason}", "");
        }
        for step in &self.failed_steps {
            let _ = writeln!(s, "FAILED step: {step}");
        }
        let _ = write!(s, "{passed} passed, {failed} failed, {skipped} skipped");
        s
    }
}

/// A suite beyond the built-in ones; run after the root-only tests.
pub struct Suite {
    /// Its label in the summary, e.g. `vm-6.1`.
    pub label: String,
    /// A `cargo test …` (any libtest runner): its stdout is streamed and
    /// parsed, `test result:` lines and [`SuiteLine`]s.
    pub run: Command,
    /// Whether it needs the gateway binary of the build step; if that did
    /// not build, `list` is run instead.
    pub needs_gateway: bool,
    /// Whether it needs root. When not root, `list` is run instead (a
    /// `… -- --list` command) and its tests count as skipped.
    pub needs_root: bool,
    pub list: Option<Command>,
}

/// EXTENSION POINT: suites to run after the root-only tests. One per VM
/// kernel (`cargo xtask vm --kernel NAME`: the root-only tests again inside
/// QEMU on that kernel); the runner announces, streams, counts and
/// summarises them like the built-in suites, with the skip reasons and the
/// note (kernel, accelerator, attach path) each prints.
fn extra_suites() -> Result<Vec<Suite>> {
    let xtask = std::env::current_exe().context("finding xtask's own binary")?;
    let mut suites: Vec<Suite> = vm::kernels::KERNELS
        .iter()
        .map(|k| {
            let mut run = cmd::new(&xtask);
            run.args(["vm", "--kernel", k.name]);
            Suite {
                label: format!("vm-{}", k.name),
                run,
                needs_gateway: true,
                needs_root: true,
                list: Some(cargo_test(&["gateway-tests"], &["--list"])),
            }
        })
        .collect();
    // The harness itself: a panicking or hung guest must fail the run.
    let mut run = cmd::new(&xtask);
    run.arg("vm-self-check");
    let mut list = cmd::new(&xtask);
    list.args(["vm-self-check", "--list"]);
    suites.push(Suite {
        label: "vm-harness".to_owned(),
        run,
        needs_gateway: true,
        needs_root: true,
        list: Some(list),
    });
    Ok(suites)
}

struct Runner {
    summary: Summary,
    step: usize,
    steps: usize,
}

impl Runner {
    fn announce(&mut self, name: &str, what: &str) -> Instant {
        self.step += 1;
        println!("\n==> test [{}/{}] {name}: {what}", self.step, self.steps);
        Instant::now()
    }

    fn done(&mut self, name: &str, started: Instant, failure: Option<String>) -> bool {
        let secs = started.elapsed().as_secs_f64();
        match failure {
            None => {
                println!("<== {name}: ok ({secs:.1}s)");
                true
            }
            Some(why) => {
                println!("<== {name}: FAILED ({secs:.1}s): {why}");
                self.summary.failed_steps.push(format!("{name}: {why}"));
                false
            }
        }
    }

    /// A step that passes when `cmd` exits 0.
    fn check(&mut self, name: &str, mut cmd: Command) -> bool {
        let started = self.announce(name, &cmd::describe(&cmd));
        let failure = match cmd::status(&mut cmd) {
            Ok(st) if st.success() => None,
            Ok(st) => Some(format!(
                "`{}` exited with {st}; see its output above",
                cmd::describe(&cmd)
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        self.done(name, started, failure)
    }

    /// Runs a libtest suite, streaming and counting its results.
    fn suite(&mut self, name: &str, label: &str, mut cmd: Command, note: Option<String>) -> bool {
        let started = self.announce(name, &cmd::describe(&cmd));
        let mut counts = Counts::default();
        let mut notes = Vec::new();
        let mut skips = Vec::new();
        let result = cmd::stream(&mut cmd, |line| {
            if let Some(c) = parse_result_line(line) {
                counts += c;
            }
            match parse_suite_line(line) {
                Some(SuiteLine::Note(n)) => notes.push(n),
                Some(SuiteLine::Skip(n, reason)) => skips.push((reason, n)),
                None => {}
            }
        });
        for (reason, n) in skips {
            self.summary.skip(&reason, n);
        }
        let note = note.or_else(|| (!notes.is_empty()).then(|| notes.join("; ")));
        self.summary.add_suite(label, counts, note);
        let failure = match result {
            Ok(st) if st.success() => None,
            Ok(st) if counts.failed > 0 => Some(format!("{} test(s) failed ({st})", counts.failed)),
            Ok(st) => Some(format!(
                "`{}` exited with {st} but no test failed: a build error? see the output above",
                cmd::describe(&cmd)
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        self.done(name, started, failure)
    }

    /// Lists a suite's tests without running them; they count as skipped for `reason`.
    fn list_as_skipped(
        &mut self,
        name: &str,
        label: &str,
        mut cmd: Command,
        reason: &str,
        note: &str,
    ) {
        let started = self.announce(
            name,
            &format!("not running ({reason}); listing: {}", cmd::describe(&cmd)),
        );
        let failure = match cmd::output(&mut cmd) {
            Ok(out) if out.status.success() => {
                let n = count_listed(&String::from_utf8_lossy(&out.stdout));
                println!("{n} test(s) listed, skipped: {reason}");
                self.summary.skip(reason, n);
                None
            }
            Ok(out) => Some(format!(
                "listing with `{}` failed ({}): {}",
                cmd::describe(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        self.summary
            .add_suite(label, Counts::default(), Some(note.to_owned()));
        self.done(name, started, failure);
    }
}

fn cargo_test(packages: &[&str], test_args: &[&str]) -> Command {
    let mut cmd = cmd::cargo();
    cmd.args(["test", "--no-fail-fast"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    cmd
}

pub fn run() -> Result<ExitCode> {
    let is_root = cmd::is_root();
    let mut r = Runner {
        summary: Summary::default(),
        step: 0,
        steps: 7,
    };

    // a. setup: nothing else can work without it.
    let started = r.announce("setup", "cargo xtask setup");
    let setup_failure = setup::run().err().map(|e| format!("{e:#}"));
    if r.done("setup", started, setup_failure) {
        // b. formatting.
        let mut fmt = cmd::cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        r.check("fmt", fmt);

        // c. clippy, without building the eBPF object.
        let mut clippy = cmd::cargo();
        clippy.env("AYA_BUILD_SKIP", "1").args([
            "clippy",
            "--workspace",
            "--exclude",
            "gateway-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        r.check("clippy", clippy);

        // d. unit tests (no root needed).
        r.suite(
            "unit tests",
            "unit",
            cargo_test(&["gateway", "gateway-common", "xtask"], &[]),
            None,
        );

        // d2. each fuzz target for a short time (xtask/src/fuzz.rs): a
        // crash fails it and keeps its input in fuzz/regressions/.
        r.steps += 1;
        r.suite("fuzz", "fuzz", crate::fuzz::test_command(), None);

        // e. the gateway binary, with the real eBPF object.
        let started = r.announce("build gateway", "cargo build -p gateway");
        let gateway_bin = match build::gateway(false) {
            Ok(bin) => {
                println!("gateway binary: {}", bin.display());
                r.done("build gateway", started, None);
                Some(bin)
            }
            Err(e) => {
                r.done("build gateway", started, Some(format!("{e:#}")));
                None
            }
        };

        // f. root-only integration tests.
        let list = cargo_test(&["gateway-tests"], &["--list"]);
        match (&gateway_bin, is_root) {
            (Some(bin), true) => {
                let mut run = cargo_test(&["gateway-tests"], &["--test-threads=2"]);
                run.env("GATEWAY_BIN", bin);
                r.summary.root_suites.push("root-only".into());
                r.suite(
                    "root-only tests",
                    "root-only",
                    run,
                    Some("ran as root".into()),
                );
            }
            (_, false) => r.list_as_skipped(
                "root-only tests",
                "root-only",
                list,
                ROOT_SKIP_REASON,
                "not run: needs root",
            ),
            (None, true) => r.list_as_skipped(
                "root-only tests",
                "root-only",
                list,
                "not run: the gateway binary did not build",
                "not run: gateway build failed",
            ),
        }

        // Extension point: VM runs and other extra suites.
        match extra_suites() {
            Ok(suites) => {
                r.steps += suites.len();
                for mut suite in suites {
                    if let Some(bin) = &gateway_bin {
                        suite.run.env("GATEWAY_BIN", bin);
                    }
                    let name = format!("{} tests", suite.label);
                    let no_gateway = suite.needs_gateway && gateway_bin.is_none();
                    match (suite.needs_root && !is_root, suite.list) {
                        (false, Some(list)) if no_gateway => r.list_as_skipped(
                            &name,
                            &suite.label,
                            list,
                            "not run: the gateway binary did not build",
                            "not run: gateway build failed",
                        ),
                        (false, _) => {
                            if suite.needs_root {
                                r.summary.root_suites.push(suite.label.clone());
                            }
                            r.suite(&name, &suite.label, suite.run, None);
                        }
                        (true, Some(list)) => r.list_as_skipped(
                            &name,
                            &suite.label,
                            list,
                            ROOT_SKIP_REASON,
                            "not run: needs root",
                        ),
                        (true, None) => {
                            r.summary.add_suite(
                                &suite.label,
                                Counts::default(),
                                Some("not run: needs root".into()),
                            );
                        }
                    }
                }
            }
            Err(e) => r.summary.failed_steps.push(format!("extra suites: {e:#}")),
        }

        // g. The benchmark's smoke run (issue 5).
        bench_smoke(&mut r, gateway_bin.as_deref(), is_root);
    }

    println!("\n{}", r.summary.render());
    Ok(if r.summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// ---- bench smoke step (issue 5) ------------------------------------------

/// Step g: `cargo xtask bench --smoke` (tiny sizes, one run, output in the
/// target directory), so the benchmark cannot rot. Needs root, like the
/// root-only tests; otherwise it counts as one skip. It counts as one
/// test (`bench-smoke` in the summary).
fn bench_smoke(r: &mut Runner, gateway_bin: Option<&std::path::Path>, is_root: bool) {
    const NAME: &str = "bench smoke";
    let skip = |r: &mut Runner, reason: &str| {
        let started = r.announce(NAME, &format!("not running ({reason})"));
        r.summary.skip(reason, 1);
        r.done(NAME, started, None);
    };
    match (gateway_bin, is_root) {
        (Some(bin), true) => {
            let out = build::target_dir()
                .unwrap_or_else(|_| cmd::workspace_root().join("target"))
                .join("bench-smoke");
            let ok = r.check(NAME, bench::command(bin, true, &out));
            r.summary.root_suites.push("bench-smoke".into());
            r.summary.add_suite(
                "bench-smoke",
                Counts {
                    passed: u64::from(ok),
                    failed: u64::from(!ok),
                    ignored: 0,
                },
                Some(format!("report in {}", out.display())),
            );
        }
        (_, false) => skip(r, ROOT_SKIP_REASON),
        (None, true) => skip(r, "not run: the gateway binary did not build"),
    }
}
// ---- end of bench smoke step ---------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_line() {
        let line = "test result: ok. 12 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.03s\n";
        assert_eq!(
            parse_result_line(line),
            Some(Counts {
                passed: 12,
                failed: 0,
                ignored: 2
            })
        );
    }

    #[test]
    fn parses_failed_line() {
        let line = "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s";
        assert_eq!(
            parse_result_line(line),
            Some(Counts {
                passed: 3,
                failed: 1,
                ignored: 0
            })
        );
    }

    #[test]
    fn parses_doc_test_and_coloured_lines() {
        // Doc-tests print the same line, possibly with "all doctests ran in" after it.
        let doc = "test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.41s";
        assert_eq!(
            parse_result_line(doc),
            Some(Counts {
                passed: 4,
                failed: 0,
                ignored: 1
            })
        );
        let coloured = "test result: \u{1b}[32mok\u{1b}[0m. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(
            parse_result_line(coloured),
            Some(Counts {
                passed: 1,
                failed: 0,
                ignored: 0
            })
        );
        let empty = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(parse_result_line(empty), Some(Counts::default()));
    }

    #[test]
    fn ignores_other_lines() {
        for line in [
            "running 3 tests",
            "test foo::bar ... ok",
            "test result of something else",
            "test tests::result ... FAILED",
            "   Doc-tests gateway",
            "",
        ] {
            assert_eq!(parse_result_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn parses_suite_lines() {
        assert_eq!(
            parse_suite_line("xtask-suite: note 6.1.0-56-cloud-amd64, TCG, attach netlink\n"),
            Some(SuiteLine::Note(
                "6.1.0-56-cloud-amd64, TCG, attach netlink".into()
            ))
        );
        assert_eq!(
            parse_suite_line("xtask-suite: skip 12 vm-6.1: too slow under TCG emulation"),
            Some(SuiteLine::Skip(
                12,
                "vm-6.1: too slow under TCG emulation".into()
            ))
        );
        for other in [
            "[vm 6.1] xtask-suite: skip 1 x",
            "xtask-suite: skip many x",
            "xtask-suite: frob",
            "test result: ok. 1 passed; 0 failed",
        ] {
            assert_eq!(parse_suite_line(other), None, "{other:?}");
        }
    }

    #[test]
    fn counts_listed_tests() {
        let out = "\
tests::alpha: test
tests::beta: test
benches::gamma: benchmark

2 tests, 1 benchmark
src/lib.rs - Config (line 12): test

1 test, 0 benchmarks
";
        assert_eq!(count_listed(out), 3);
        assert_eq!(count_listed("0 tests, 0 benchmarks\n"), 0);
    }

    #[test]
    fn renders_summary_as_root() {
        let mut s = Summary::default();
        s.add_suite(
            "unit",
            Counts {
                passed: 123,
                failed: 0,
                ignored: 0,
            },
            None,
        );
        s.add_suite(
            "root-only",
            Counts {
                passed: 14,
                failed: 0,
                ignored: 0,
            },
            Some("ran as root".into()),
        );
        s.root_suites.push("root-only".into());
        assert_eq!(
            s.render(),
            "== test summary ==\n\
             unit:        123 passed, 0 failed\n\
             root-only:    14 passed, 0 failed (ran as root)\n\
             as root:      14  of the tests that ran needed root and ran as root (root-only)\n\
             skipped:       0\n\
             137 passed, 0 failed, 0 skipped"
        );
        assert!(s.success());
    }

    #[test]
    fn renders_skips_and_failures() {
        let mut s = Summary::default();
        s.add_suite(
            "unit",
            Counts {
                passed: 10,
                failed: 1,
                ignored: 2,
            },
            None,
        );
        s.skip(ROOT_SKIP_REASON, 14);
        s.add_suite(
            "root-only",
            Counts::default(),
            Some("not run: needs root".into()),
        );
        s.skip("ignored", 1);
        s.failed_steps.push("clippy: exited with 101".into());
        let text = s.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[3],
            "as root:       0  of the tests that ran needed root and ran as root (none)"
        );
        assert_eq!(lines[4], "skipped:      17");
        assert_eq!(lines[5], "               3  ignored");
        assert_eq!(lines[6], format!("              14  {ROOT_SKIP_REASON}"));
        assert_eq!(lines[7], "FAILED step: clippy: exited with 101");
        assert_eq!(
            lines.last().copied(),
            Some("10 passed, 1 failed, 17 skipped")
        );
        assert!(!s.success());
        assert_eq!(s.totals(), (10, 1, 17));
    }

    #[test]
    fn failed_step_alone_fails_the_run() {
        let mut s = Summary::default();
        s.add_suite(
            "unit",
            Counts {
                passed: 1,
                failed: 0,
                ignored: 0,
            },
            None,
        );
        s.failed_steps.push("fmt".into());
        assert!(!s.success());
    }
}
