//! `cargo xtask test`: the one command that runs every check and test.
//!
//! Steps: setup, fmt, clippy (host crates, then the eBPF crate), unit
//! tests, fuzzing, build the gateway, root-only integration tests (those
//! on a Garage cluster last, after Garage's background build), then any
//! [`extra_suites`]. Every `cargo test` output is
//! streamed through and its libtest `test result:` lines are summed; the run
//! ends with a summary whose last line is `N passed, M failed, K skipped`.
use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    ops::AddAssign,
    process::{Command, ExitCode, ExitStatus, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{bench, build, cmd, disk, setup, vm};

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

/// A suite's counts for the summary: a run that failed without a failed
/// test (it did not build, its harness broke, a binary crashed) counts one
/// failure, so that the totals never read "0 failed" for a failed run.
fn counts_of_run(mut counts: Counts, failed: bool) -> Counts {
    if failed && counts.failed == 0 {
        counts.failed = 1;
    }
    counts
}

/// How many suites may run side by side: one per core.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What a suite's output says, read line by line.
#[derive(Default)]
struct Tally {
    counts: Counts,
    notes: Vec<String>,
    skips: Vec<(String, u64)>,
}

impl Tally {
    fn line(&mut self, line: &str) {
        if let Some(c) = parse_result_line(line) {
            self.counts += c;
        }
        match parse_suite_line(line) {
            Some(SuiteLine::Note(n)) => self.notes.push(n),
            Some(SuiteLine::Skip(n, reason)) => self.skips.push((reason, n)),
            None => {}
        }
    }
}

/// A suite run with its output held back (see
/// [`Runner::suites_side_by_side`]).
struct Held {
    /// Its stdout and stderr, merged.
    lines: Vec<String>,
    result: Result<ExitStatus>,
    secs: f64,
}

fn run_held(mut cmd: Command) -> Held {
    let started = Instant::now();
    let mut lines = Vec::new();
    let result = (|| -> Result<ExitStatus> {
        let (reader, writer) = std::io::pipe().context("creating a pipe")?;
        let writer2 = writer.try_clone().context("duplicating the pipe")?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::describe(&cmd)))?;
        // The write ends `cmd` holds must go, or the reader never sees the end.
        drop(cmd);
        for line in BufReader::new(reader).split(b'\n') {
            let line = line.context("reading the suite's output")?;
            lines.push(
                String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned(),
            );
        }
        child.wait().context("waiting for the suite")
    })();
    Held {
        lines,
        result,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// A suite running in a thread of its own, its output held.
struct Running {
    name: String,
    label: String,
    described: String,
    handle: std::thread::JoinHandle<Held>,
}

/// One suite's line in the summary.
struct SuiteReport {
    label: String,
    counts: Counts,
    note: Option<String>,
    /// How long its step took (for a VM suite: that kernel's whole run).
    secs: Option<f64>,
}

/// `42.0 s`, or `14 min 02 s` from a minute on.
fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let whole = secs.round() as u64;
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
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
    /// The whole run's wall time.
    total_secs: Option<f64>,
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

    fn add_suite(&mut self, label: &str, counts: Counts, note: Option<String>, secs: Option<f64>) {
        self.skip("ignored", counts.ignored);
        self.suites.push(SuiteReport {
            label: label.to_owned(),
            counts,
            note,
            secs,
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
            if let Some(secs) = suite.secs {
                let _ = write!(s, " in {}", duration(secs));
            }
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
        if let Some(secs) = self.total_secs {
            let _ = writeln!(s, "{:<11}{}", "time:", duration(secs));
        }
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

/// A suite beyond the built-in ones (the VM runs); run after the root-only
/// tests, with the release gateway as `GATEWAY_BIN`.
pub struct Suite {
    /// Its label in the summary, e.g. `vm-6.1`.
    pub label: String,
    /// A `cargo test …` (any libtest runner): its stdout is streamed and
    /// parsed, `test result:` lines and [`SuiteLine`]s.
    pub run: Command,
    /// Whether it needs the release gateway binary (step e2); if that did
    /// not build, `list` is run instead.
    pub needs_gateway: bool,
    /// Whether it needs root. When not root, `list` is run instead (a
    /// `… -- --list` command) and its tests count as skipped.
    pub needs_root: bool,
    pub list: Option<Command>,
    /// Whether it may run at the same time as the other such suites next to
    /// it (see [`Runner::suites_side_by_side`]).
    pub side_by_side: bool,
}

/// EXTENSION POINT: suites to run after the root-only tests. One per VM
/// kernel (`cargo xtask vm --kernel NAME`: the root-only tests again inside
/// QEMU on that kernel); the runner announces, streams, counts and
/// summarises them like the built-in suites, with the skip reasons and the
/// note (kernel, accelerator, attach path) each prints. The kernels' runs
/// go side by side: each VM has one vCPU, and under TCG it keeps one host
/// core busy.
fn extra_suites() -> Result<Vec<Suite>> {
    let xtask = std::env::current_exe().context("finding xtask's own binary")?;
    // The harness itself first: a panicking or hung guest must fail the
    // run, and a broken harness is better found before the long runs.
    let mut run = cmd::new(&xtask);
    run.arg("vm-self-check");
    let mut list = cmd::new(&xtask);
    list.args(["vm-self-check", "--list"]);
    let mut suites = vec![Suite {
        label: "vm-harness".to_owned(),
        run,
        needs_gateway: true,
        needs_root: true,
        list: Some(list),
        side_by_side: false,
    }];
    // In `KERNELS` order: the first (6.1, measured the shorter under TCG)
    // streams, and the steps after the VM suites start when it ends while
    // the other goes on (see `run`).
    suites.extend(vm::kernels::KERNELS.iter().map(|k| {
        let mut run = cmd::new(&xtask);
        run.args(["vm", "--kernel", k.name]);
        Suite {
            label: format!("vm-{}", k.name),
            run,
            needs_gateway: true,
            needs_root: true,
            list: Some(cargo_test(&["gateway-tests"], &["--list"])),
            side_by_side: true,
        }
    }));
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
        self.done_after(name, started.elapsed().as_secs_f64(), failure)
    }

    fn done_after(&mut self, name: &str, secs: f64, failure: Option<String>) -> bool {
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
        let mut tally = Tally::default();
        let result = cmd::stream(&mut cmd, |line| tally.line(line));
        let secs = started.elapsed().as_secs_f64();
        self.finish_suite(name, label, &cmd::describe(&cmd), tally, result, note, secs)
    }

    /// Records a suite's run: its skips, its line in the summary, its step.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per way of running a suite"
    )]
    fn finish_suite(
        &mut self,
        name: &str,
        label: &str,
        described: &str,
        tally: Tally,
        result: Result<ExitStatus>,
        note: Option<String>,
        secs: f64,
    ) -> bool {
        let Tally {
            counts,
            notes,
            skips,
        } = tally;
        for (reason, n) in skips {
            self.summary.skip(&reason, n);
        }
        let note = note.or_else(|| (!notes.is_empty()).then(|| notes.join("; ")));
        let failure = match result {
            Ok(st) if st.success() => None,
            Ok(st) if counts.failed > 0 => Some(format!("{} test(s) failed ({st})", counts.failed)),
            Ok(st) => Some(format!(
                "`{described}` exited with {st} but no test failed (a build or harness error); see the output above"
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        self.summary.add_suite(
            label,
            counts_of_run(counts, failure.is_some()),
            note,
            Some(secs),
        );
        self.done_after(name, secs, failure)
    }

    /// Runs suites at the same time, `at_once` of them (as many as the
    /// machine has cores, see [`cores`]): the first of each group streams
    /// its output as it comes; each other one's output is held, then
    /// printed and counted in turn. Each suite's time is its own run's.
    /// The last group's held suites are returned still running, for the
    /// caller to go on with other steps in the core the streamed one freed
    /// and then [`Runner::join_held`] them.
    #[must_use = "the suites still running must be joined"]
    fn suites_side_by_side(
        &mut self,
        suites: Vec<(String, String, Command)>,
        at_once: usize,
    ) -> Vec<Running> {
        let mut suites = suites.into_iter().peekable();
        let mut running = Vec::new();
        while suites.peek().is_some() {
            self.join_held(std::mem::take(&mut running));
            let group: Vec<_> = suites.by_ref().take(at_once.max(1)).collect();
            let mut group = group.into_iter();
            let Some((name, label, first)) = group.next() else {
                break;
            };
            running = group
                .map(|(name, label, cmd)| {
                    let described = cmd::describe(&cmd);
                    Running {
                        name,
                        label,
                        described,
                        handle: std::thread::spawn(move || run_held(cmd)),
                    }
                })
                .collect();
            self.suite(&name, &label, first, None);
        }
        running
    }

    /// Waits for suites [`Runner::suites_side_by_side`] left running, then
    /// prints and counts each one's output in turn.
    fn join_held(&mut self, running: Vec<Running>) {
        for Running {
            name,
            label,
            described,
            handle,
        } in running
        {
            self.announce(
                &name,
                &format!("{described} (ran alongside the steps before it; its output follows)"),
            );
            let held = handle.join().unwrap_or_else(|_| Held {
                lines: Vec::new(),
                result: Err(anyhow::anyhow!("the thread running `{described}` panicked")),
                secs: 0.0,
            });
            let mut tally = Tally::default();
            for line in &held.lines {
                println!("{line}");
                tally.line(line);
            }
            self.finish_suite(
                &name,
                &label,
                &described,
                tally,
                held.result,
                None,
                held.secs,
            );
        }
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
        self.summary.add_suite(
            label,
            Counts::default(),
            Some(note.to_owned()),
            Some(started.elapsed().as_secs_f64()),
        );
        self.done(name, started, failure);
    }
}

/// The root tests that need a Garage cluster are the ones whose name holds
/// this word (tests/src/garage.rs): the others run before Garage's build
/// is waited for.
const GARAGE_FILTER: &str = "garage";

/// Steps f and f1: the gateway-tests suite filtered by `filter` (libtest
/// arguments), as root; else its tests listed and counted as skipped.
fn root_suite(
    r: &mut Runner,
    name: &str,
    label: &str,
    filter: &[&str],
    gateway_bin: Option<&std::path::Path>,
    is_root: bool,
) {
    let list = cargo_test(&["gateway-tests"], &[&["--list"], filter].concat());
    match (gateway_bin, is_root) {
        (Some(bin), true) => {
            let mut run = cargo_test(
                &["gateway-tests"],
                &[&["--test-threads=2"], filter].concat(),
            );
            run.env("GATEWAY_BIN", bin);
            r.summary.root_suites.push(label.into());
            r.suite(name, label, run, Some("ran as root".into()));
        }
        (_, false) => r.list_as_skipped(name, label, list, ROOT_SKIP_REASON, "not run: needs root"),
        (None, true) => r.list_as_skipped(
            name,
            label,
            list,
            "not run: the gateway binary did not build",
            "not run: gateway build failed",
        ),
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
    let run_started = Instant::now();
    let is_root = cmd::is_root();
    let mut r = Runner {
        summary: Summary::default(),
        step: 0,
        steps: 7,
    };

    // a. setup: nothing else can work without it.
    // A fresh run writes several GB: refuse at once on a disk without the
    // room rather than fail half way with linker errors.
    let started = r.announce("setup", "disk space check, then cargo xtask setup");
    let target = build::target_dir().unwrap_or_else(|_| cmd::workspace_root().join("target"));
    let setup_failure = disk::check_for_test(&target)
        .and_then(|()| setup::run_except_garage())
        .err()
        .map(|e| format!("{e:#}"));
    if r.done("setup", started, setup_failure) {
        // Garage (the shared-store tests' object store) builds from here
        // on, at the lowest CPU priority until the root tests: about 8
        // minutes of CPU on a
        // fresh machine, needed only by the root tests on it (step f1).
        let garage_build = start_garage_build();

        // b. formatting.
        let mut fmt = cmd::cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        r.check("fmt", fmt);

        // The release gateway (step e2) builds from here on at the lowest
        // CPU priority, in the time the steps before it leave idle.
        let release_log = build::target_dir()
            .unwrap_or_else(|_| cmd::workspace_root().join("target"))
            .join("xtask-test")
            .join("release-build.log");
        let release_build = build::Background::release_gateway(release_log.clone());
        match &release_build {
            Ok(_) => println!(
                "release gateway: building in the background (nice 19 until the root tests) until step \"build gateway (release)\"; its output: {}",
                release_log.display()
            ),
            Err(e) => println!(
                "release gateway: could not start its build in the background ({e:#}); it builds at its step"
            ),
        }

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

        // c2. clippy on the eBPF crate, with the workspace lints: its own
        // target needs the nightly and build-std, in a target dir of its
        // own so that the host's builds are not redone.
        let mut clippy_ebpf = cmd::cargo();
        clippy_ebpf
            .env("RUSTUP_TOOLCHAIN", "nightly")
            .env(
                "CARGO_TARGET_DIR",
                build::target_dir()
                    .unwrap_or_else(|_| cmd::workspace_root().join("target"))
                    .join("ebpf-clippy"),
            )
            .args([
                "clippy",
                "-p",
                "gateway-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ]);
        r.steps += 1;
        r.check("clippy (eBPF)", clippy_ebpf);

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

        // From here on the background builds are what the rest of the run
        // waits for (Garage's ends in one long chain of crates, minutes of
        // one core): at nice 19 they would get only the scraps of the root
        // tests. Not earlier: at the normal priority beside the fuzz build
        // they took its time as much as they gained (measured: fuzz 254 s
        // became 600 s).
        for build in [garage_build.as_ref(), Some(&release_build)]
            .into_iter()
            .flatten()
            .flatten()
        {
            build.to_normal_priority();
        }

        // f. root-only integration tests, but those that need Garage: they
        // run while Garage and the release gateway go on building, in the
        // CPU they leave idle (most of their time is spent waiting on the
        // network).
        root_suite(
            &mut r,
            "root-only tests",
            "root-only",
            &["--skip", GARAGE_FILTER],
            gateway_bin.as_deref(),
            is_root,
        );

        // e2. Garage, if it was building (a fresh machine).
        if let Some(build) = garage_build {
            r.steps += 1;
            let started = r.announce(
                "build garage",
                "cargo install garage (waiting for the background build)",
            );
            let built = match build {
                Ok(bg) => bg
                    .wait_done("cargo install garage")
                    .and_then(|()| setup::garage::check_built()),
                // It could not start in the background: built here.
                Err(_) => setup::garage::ensure(),
            };
            let failure = built.err().map(|e| format!("{e:#}"));
            r.done("build garage", started, failure);
        }

        // f1. The root tests on a Garage cluster (those named `…garage…`).
        r.steps += 1;
        root_suite(
            &mut r,
            "root-only tests on Garage",
            "root-store",
            &[GARAGE_FILTER],
            gateway_bin.as_deref(),
            is_root,
        );

        // f2. The release gateway, which the VM suites run (waited for
        // only now: it goes on building in what CPU the root-only tests
        // leave idle): it is the
        // binary a site runs, and under TCG the debug build's start alone
        // took 10 s of every test (3 s released), its requests a third
        // longer.
        let started = r.announce(
            "build gateway (release)",
            "cargo build -p gateway --release (waiting for the background build)",
        );
        r.steps += 1;
        let release = match release_build {
            Ok(bg) => bg.wait(),
            Err(_) => build::gateway(true),
        };
        let vm_gateway_bin = match release {
            Ok(bin) => {
                println!("release gateway binary: {}", bin.display());
                r.done("build gateway (release)", started, None);
                Some(bin)
            }
            Err(e) => {
                r.done("build gateway (release)", started, Some(format!("{e:#}")));
                None
            }
        };

        // Extension point: VM runs and other extra suites.
        let mut still_running = Vec::new();
        match extra_suites() {
            Ok(suites) => {
                r.steps += suites.len();
                // Neighbouring suites to run side by side, run when the
                // next suite is not one of them.
                let mut batch = Vec::new();
                for mut suite in suites {
                    if let Some(bin) = &vm_gateway_bin {
                        suite.run.env("GATEWAY_BIN", bin);
                    }
                    let name = format!("{} tests", suite.label);
                    let no_gateway = suite.needs_gateway && vm_gateway_bin.is_none();
                    let runs = (!suite.needs_root || is_root) && !no_gateway;
                    if !(runs && suite.side_by_side) {
                        let running = r.suites_side_by_side(std::mem::take(&mut batch), cores());
                        r.join_held(running);
                    }
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
                            if suite.side_by_side {
                                batch.push((name, suite.label, suite.run));
                            } else {
                                r.suite(&name, &suite.label, suite.run, None);
                            }
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
                                None,
                            );
                        }
                    }
                }
                // The last kernel's run goes on beside steps g and h, in
                // the core the first one's end frees: the kernels' runs
                // differ by minutes under TCG.
                still_running = r.suites_side_by_side(batch, cores());
            }
            Err(e) => r.summary.failed_steps.push(format!("extra suites: {e:#}")),
        }

        // g. The benchmark's smoke run (issue 5).
        bench_smoke(&mut r, gateway_bin.as_deref(), is_root);

        // h. The Debian package (issue 12 item 4).
        package(&mut r, is_root);

        r.join_held(still_running);
    }

    r.summary.total_secs = Some(run_started.elapsed().as_secs_f64());
    println!("\n{}", r.summary.render());
    Ok(if r.summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts Garage's build in the background unless the wanted version is
/// installed: `None` then, else the build (or why it could not start).
fn start_garage_build() -> Option<Result<build::Background>> {
    if setup::garage::is_installed() {
        println!("setup: garage ok");
        return None;
    }
    let log = build::target_dir()
        .unwrap_or_else(|_| cmd::workspace_root().join("target"))
        .join("xtask-test")
        .join("garage-build.log");
    let started = build::Background::garage(log.clone());
    match &started {
        Ok(_) => println!(
            "garage: building {} in the background (nice 19 until the root tests) until step \"build garage\"; its output: {}",
            setup::garage::VERSION,
            log.display()
        ),
        Err(e) => println!("garage: could not start its build in the background ({e:#})"),
    }
    Some(started)
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
            let started = std::time::Instant::now();
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
                Some(started.elapsed().as_secs_f64()),
            );
        }
        (_, false) => skip(r, ROOT_SKIP_REASON),
        (None, true) => skip(r, "not run: the gateway binary did not build"),
    }
}
// ---- end of bench smoke step ---------------------------------------------

// ---- package step (issue 12 item 4) ----------------------------------------

/// Step h: `cargo xtask deb` (release build), then three tests: lintian
/// finds no error, `systemd-analyze verify` accepts the unit, and (as root)
/// the service test installs, starts, reloads, stops and purges it under
/// systemd in a container (xtask/src/deb/service_test.rs).
fn package(r: &mut Runner, is_root: bool) {
    const NAME: &str = "package";
    r.steps += 1;
    let started = r.announce(NAME, "cargo xtask deb --check --service-test");
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    let mut tally = |what: &str, result: Result<()>| match result {
        Ok(()) => counts.passed += 1,
        Err(e) => {
            counts.failed += 1;
            failures.push(format!("{what}: {e:#}"));
        }
    };
    match crate::deb::build() {
        Err(e) => tally("building the package", Err(e)),
        Ok(deb) => {
            tally("lintian", crate::deb::lintian(&deb));
            tally("systemd-analyze verify", crate::deb::verify_unit(&deb));
            if is_root {
                tally("service test", crate::deb::service_test::run(&deb));
            } else {
                r.summary.skip(ROOT_SKIP_REASON, 1);
            }
        }
    }
    if is_root {
        r.summary.root_suites.push(NAME.into());
    }
    r.summary
        .add_suite(NAME, counts, None, Some(started.elapsed().as_secs_f64()));
    let failure = (!failures.is_empty()).then(|| failures.join("; "));
    r.done(NAME, started, failure);
}
// ---- end of package step ---------------------------------------------------

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
            parse_suite_line("xtask-suite: skip 12 vm-6.1: not selected (--only)"),
            Some(SuiteLine::Skip(12, "vm-6.1: not selected (--only)".into()))
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
            Some(42.04),
        );
        s.add_suite(
            "vm-6.1",
            Counts {
                passed: 60,
                failed: 0,
                ignored: 0,
            },
            Some("6.1.0-56-cloud-amd64, TCG, attach netlink".into()),
            Some(842.4),
        );
        s.root_suites.push("root-only".into());
        s.root_suites.push("vm-6.1".into());
        s.total_secs = Some(1801.0);
        assert_eq!(
            s.render(),
            "== test summary ==\n\
             unit:        123 passed, 0 failed\n\
             root-only:    14 passed, 0 failed in 42.0 s (ran as root)\n\
             vm-6.1:       60 passed, 0 failed in 14 min 02 s \
             (6.1.0-56-cloud-amd64, TCG, attach netlink)\n\
             as root:      74  of the tests that ran needed root and ran as root (root-only, vm-6.1)\n\
             time:      30 min 01 s\n\
             skipped:       0\n\
             197 passed, 0 failed, 0 skipped"
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
            None,
        );
        s.skip(ROOT_SKIP_REASON, 14);
        s.add_suite(
            "root-only",
            Counts::default(),
            Some("not run: needs root".into()),
            None,
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
    fn side_by_side_suites_each_count_their_own_output() {
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        let mut r = Runner {
            summary: Summary::default(),
            step: 0,
            steps: 3,
        };
        // The first streams to the real stdout, past libtest's capture,
        // where `cargo xtask test` would count its lines: it prints none.
        let running = r.suites_side_by_side(vec![
            ("a tests".into(), "a".into(), sh("true")),
            (
                "b tests".into(),
                "b".into(),
                // Held output: stderr counts too.
                sh("echo 'xtask-suite: skip 3 b: not selected (--only)'; \
                    echo 'test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out' >&2; \
                    exit 101"),
            ),
            (
                "c tests".into(),
                "c".into(),
                sh("echo 'test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out'; \
                    exit 2"),
            ),
        ], 3);
        r.join_held(running);
        let got: Vec<(&str, Counts)> = r
            .summary
            .suites
            .iter()
            .map(|s| (s.label.as_str(), s.counts))
            .collect();
        let counts = |passed, failed| Counts {
            passed,
            failed,
            ignored: 0,
        };
        assert_eq!(
            got,
            [
                ("a", counts(0, 0)),
                ("b", counts(1, 1)),
                // Its binary failed after its tests passed: one failure.
                ("c", counts(2, 1))
            ]
        );
        assert_eq!(
            r.summary.skipped,
            [("b: not selected (--only)".to_owned(), 3)]
        );
        assert_eq!(
            r.summary.failed_steps.len(),
            2,
            "{:?}",
            r.summary.failed_steps
        );
        assert!(r.summary.suites.iter().all(|s| s.secs.is_some()));
    }

    #[test]
    fn a_failed_run_without_a_failed_test_counts_one_failure() {
        let ran = Counts {
            passed: 5,
            failed: 0,
            ignored: 1,
        };
        assert_eq!(counts_of_run(ran, false), ran);
        assert_eq!(counts_of_run(ran, true).failed, 1);
        assert_eq!(counts_of_run(Counts::default(), true).failed, 1);
        let two = Counts { failed: 2, ..ran };
        assert_eq!(counts_of_run(two, true), two);
    }

    #[test]
    fn durations_read_as_seconds_then_minutes() {
        assert_eq!(duration(0.04), "0.0 s");
        assert_eq!(duration(59.94), "59.9 s");
        assert_eq!(duration(60.0), "1 min 00 s");
        assert_eq!(duration(2701.6), "45 min 02 s");
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
            None,
        );
        s.failed_steps.push("fmt".into());
        assert!(!s.success());
    }
}
