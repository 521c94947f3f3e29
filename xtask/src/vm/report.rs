//! Per kernel, per test: what ran, what passed, what failed or was skipped
//! and why, and which attach path the kernel got.
//!
//! Built from the runner's report lines ([`Event`]s around libtest output)
//! and from the test lists the host read beforehand (`<binary> --list`), so
//! that a test the VM never reached still appears, with the reason.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{
    plan::{Event, Exit},
    qemu::Ending,
};

/// One test's outcome on one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed(String),
    Skipped(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct TestOutcome {
    pub binary: String,
    pub test: String,
    #[serde(flatten)]
    pub status: Status,
}

/// A binary's run in the VM.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryRun {
    pub name: String,
    pub secs: f64,
    pub exit: String,
}

/// What a binary's tests are, and which of them the VM is not to run.
#[derive(Clone)]
pub struct Expected {
    pub binary: String,
    pub tests: Vec<String>,
    /// Tests not run in the VM, each with the reason.
    pub skipped: BTreeMap<String, String>,
}

/// Reads the report port's lines as they come.
#[derive(Default)]
pub struct Collector {
    current: Option<String>,
    /// libtest's verdicts: (binary, test) -> ok / FAILED / ignored[, reason].
    verdicts: BTreeMap<(String, String), String>,
    /// Each binary's output, for failure messages.
    output: BTreeMap<String, Vec<String>>,
    ends: BTreeMap<String, (Exit, f64)>,
    pub release: Option<String>,
    pub attach: Option<(String, String)>,
    pub attach_log: Option<String>,
    pub attach_error: Option<String>,
}

/// `test NAME ... RESULT` from libtest's pretty output.
fn verdict(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.rsplit_once(" ... ")?;
    let result = result.trim();
    let known = result == "ok"
        || result == "FAILED"
        || result == "ignored"
        || result.starts_with("ignored, ");
    known.then_some((name, result))
}

impl Collector {
    pub fn line(&mut self, line: &str) {
        if let Some(event) = Event::parse(line) {
            match event {
                Event::Start { release } => self.release = Some(release),
                Event::Begin { binary } => self.current = Some(binary),
                Event::End { binary, exit, secs } => {
                    self.ends.insert(binary, (exit, secs));
                    self.current = None;
                }
                Event::Attach { interface, mode } => self.attach = Some((interface, mode)),
                Event::AttachLog { line } => self.attach_log = Some(line),
                Event::AttachError { message } => self.attach_error = Some(message),
                Event::Alive | Event::Done => {}
            }
            return;
        }
        let Some(binary) = &self.current else { return };
        if let Some((name, result)) = verdict(line) {
            self.verdicts
                .insert((binary.clone(), name.to_owned()), result.to_owned());
        }
        self.output
            .entry(binary.clone())
            .or_default()
            .push(line.to_owned());
    }

    /// The first lines of a failed test's captured output (`---- NAME stdout ----`).
    fn failure_message(&self, binary: &str, test: &str) -> Option<String> {
        let out = self.output.get(binary)?;
        let header = format!("---- {test} stdout ----");
        let start = out.iter().position(|l| l.trim() == header)? + 1;
        let body: Vec<&str> = out[start..]
            .iter()
            .take_while(|l| !l.starts_with("---- ") && l.trim() != "failures:")
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .take(3)
            .collect();
        (!body.is_empty()).then(|| body.join(" / "))
    }

    /// Every expected test's outcome, given how the VM ended.
    pub fn outcomes(&self, expected: &[Expected], ending: &Ending) -> Vec<TestOutcome> {
        let mut all = Vec::new();
        for e in expected {
            for test in &e.tests {
                let status = self.status(e, test, ending);
                all.push(TestOutcome {
                    binary: e.binary.clone(),
                    test: test.clone(),
                    status,
                });
            }
        }
        all
    }

    fn status(&self, e: &Expected, test: &str, ending: &Ending) -> Status {
        if let Some(reason) = e.skipped.get(test) {
            return Status::Skipped(reason.clone());
        }
        match self
            .verdicts
            .get(&(e.binary.clone(), test.to_owned()))
            .map(String::as_str)
        {
            Some("ok") => return Status::Passed,
            Some("FAILED") => {
                return Status::Failed(
                    self.failure_message(&e.binary, test)
                        .unwrap_or_else(|| "failed (see its output above)".to_owned()),
                );
            }
            Some(ignored) => {
                let reason = ignored
                    .strip_prefix("ignored, ")
                    .unwrap_or("#[ignore] without a reason");
                return Status::Skipped(format!("ignored: {reason}"));
            }
            None => {}
        }
        let began = self.output.contains_key(&e.binary) || self.ends.contains_key(&e.binary);
        match self.ends.get(&e.binary) {
            Some((Exit::TimedOut, secs)) => Status::Failed(format!(
                "its binary was killed after {secs:.0} s (time bound)"
            )),
            Some((Exit::NotStarted(why), _)) => {
                Status::Failed(format!("its binary did not start: {why}"))
            }
            Some((Exit::Signal(s), _)) => Status::Failed(format!(
                "its binary died of signal {s} before the test finished"
            )),
            Some((Exit::Code(c), _)) => Status::Failed(format!(
                "no verdict from libtest (its binary exited with {c})"
            )),
            None if began => Status::Failed(format!("interrupted: {}", brief(ending))),
            // The harness failed to run it: a failure of the run, not a
            // choice not to run the test.
            None => Status::Failed(format!("not run: {}", brief(ending))),
        }
    }

    pub fn binaries(&self) -> Vec<BinaryRun> {
        self.ends
            .iter()
            .map(|(name, (exit, secs))| BinaryRun {
                name: name.clone(),
                secs: *secs,
                exit: match exit {
                    Exit::Code(c) => format!("exit {c}"),
                    Exit::Signal(s) => format!("signal {s}"),
                    Exit::TimedOut => "timed out".to_owned(),
                    Exit::NotStarted(w) => format!("not started: {w}"),
                },
            })
            .collect()
    }
}

/// How the VM ended, in full (the report's `VM FAILED` line).
pub fn describe(ending: &Ending) -> String {
    match ending {
        Ending::Finished => "the VM finished".to_owned(),
        Ending::Stopped(why) => format!("the VM stopped early: {why}"),
        Ending::Crashed { what, line } => format!("the VM crashed ({what}): {line}"),
        Ending::Hung(why) => format!("the VM hung: {why}"),
        Ending::OverTime(bound) => format!(
            "the VM was still running the tests when its run's bound ({} s, --timeout) passed",
            bound.as_secs()
        ),
    }
}

/// How the VM ended, in a few words (a reason beside each test it cut short).
fn brief(ending: &Ending) -> String {
    match ending {
        Ending::Finished => "the VM finished".to_owned(),
        Ending::Stopped(_) => "the VM stopped early".to_owned(),
        Ending::Crashed { what, .. } => format!("the VM crashed ({what})"),
        Ending::Hung(_) => "the VM hung".to_owned(),
        Ending::OverTime(_) => "the VM's run passed its time bound".to_owned(),
    }
}

/// Counts of one kernel's outcomes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// One kernel's report.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    pub kernel: String,
    pub package: String,
    pub release: String,
    pub accel: String,
    pub smp: u32,
    pub boot_secs: Option<f64>,
    pub secs: f64,
    /// How the VM ended; `None` when it finished normally.
    pub vm_failure: Option<String>,
    /// The attach path `gateway status` reported, e.g. `netlink`.
    pub attach_mode: Option<String>,
    /// The gateway's own `attached … mode=…` log line.
    pub attach_detail: Option<String>,
    /// Why the attach probe failed, if it did.
    pub attach_error: Option<String>,
    pub binaries: Vec<BinaryRun>,
    pub tests: Vec<TestOutcome>,
}

impl KernelReport {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for t in &self.tests {
            match t.status {
                Status::Passed => c.passed += 1,
                Status::Failed(_) => c.failed += 1,
                Status::Skipped(_) => c.skipped += 1,
            }
        }
        // A VM that crashed or hung fails the run even if no test did.
        if self.vm_failure.is_some() {
            c.failed += 1;
        }
        c
    }

    pub fn success(&self) -> bool {
        self.counts().failed == 0 && self.attach_mode.is_some()
    }

    /// Skip reasons with their counts, in first-seen order.
    pub fn skip_reasons(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for t in &self.tests {
            if let Status::Skipped(reason) = &t.status {
                match out.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, n)) => *n += 1,
                    None => out.push((reason.clone(), 1)),
                }
            }
        }
        out
    }

    /// The attach path in a few words, for summaries.
    pub fn attach_summary(&self) -> String {
        match (&self.attach_mode, &self.attach_error) {
            (Some(mode), _) => mode.clone(),
            (None, Some(_)) => "unknown (the probe failed)".to_owned(),
            (None, None) => "unknown (no probe ran)".to_owned(),
        }
    }

    /// The per-test block printed after a kernel's run.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = self.counts();
        let _ = writeln!(
            s,
            "== vm {}: {} ({}), {}, {} vCPU(s)",
            self.kernel, self.package, self.release, self.accel, self.smp
        );
        let boot = self
            .boot_secs
            .map_or_else(|| "-".to_owned(), |b| format!("{b:.1} s"));
        let _ = writeln!(s, "   time: {:.1} s (boot to runner: {boot})", self.secs);
        let _ = writeln!(s, "   attach path: {}", self.attach_summary());
        if let Some(d) = &self.attach_detail {
            let _ = writeln!(s, "     gateway log: {d}");
        }
        if let Some(e) = &self.attach_error {
            let _ = writeln!(s, "     probe FAILED: {e}");
        }
        if let Some(why) = &self.vm_failure {
            let _ = writeln!(s, "   VM FAILED: {why}");
        }
        for b in &self.binaries {
            let _ = writeln!(s, "   binary {:<14} {:>7.1} s  {}", b.name, b.secs, b.exit);
        }
        for t in &self.tests {
            let name = format!("{}::{}", t.binary, t.test);
            let _ = match &t.status {
                Status::Passed => writeln!(s, "   ok       {name}"),
                Status::Failed(why) => writeln!(s, "   FAILED   {name}: {why}"),
                Status::Skipped(why) => writeln!(s, "   skipped  {name}: {why}"),
            };
        }
        let _ = write!(
            s,
            "   vm {}: {} passed, {} failed, {} skipped",
            self.kernel, c.passed, c.failed, c.skipped
        );
        s
    }

    /// Lines for the `cargo xtask test` runner: a note, the skips with their
    /// reasons, and a libtest-style result line it sums.
    pub fn suite_lines(&self) -> Vec<String> {
        let c = self.counts();
        let mut lines = vec![format!(
            "{SUITE_MARK}note {}, {}, attach {}",
            self.release,
            self.accel,
            self.attach_summary()
        )];
        for (reason, n) in self.skip_reasons() {
            lines.push(format!("{SUITE_MARK}skip {n} vm-{}: {reason}", self.kernel));
        }
        let status = if c.failed == 0 { "ok" } else { "FAILED" };
        lines.push(format!(
            "test result: {status}. {} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s",
            c.passed, c.failed, self.secs
        ));
        lines
    }
}

/// The prefix of the lines `cargo xtask test` reads from an extra suite
/// besides libtest's `test result:` (see `test.rs`).
pub const SUITE_MARK: &str = "xtask-suite: ";

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Vec<Expected> {
        vec![
            Expected {
                binary: "passthrough".into(),
                tests: vec!["v4".into(), "v6".into(), "denied".into()],
                skipped: BTreeMap::new(),
            },
            Expected {
                binary: "oci".into(),
                tests: vec!["pull".into()],
                skipped: [("pull".to_owned(), "not selected (--only)".to_owned())].into(),
            },
            Expected {
                binary: "drops".into(),
                tests: vec!["udp".into()],
                skipped: BTreeMap::new(),
            },
        ]
    }

    fn feed(c: &mut Collector, lines: &[&str]) {
        for l in lines {
            c.line(l);
        }
    }

    #[test]
    fn libtest_verdicts() {
        assert_eq!(verdict("test a::b ... ok"), Some(("a::b", "ok")));
        assert_eq!(verdict("test x ... FAILED"), Some(("x", "FAILED")));
        assert_eq!(
            verdict("test y ... ignored, needs a disk"),
            Some(("y", "ignored, needs a disk"))
        );
        assert_eq!(verdict("test z has been running for over 60 seconds"), None);
        assert_eq!(verdict("test result: ok. 1 passed; 0 failed"), None);
    }

    #[test]
    fn a_finished_run_reports_every_test() {
        let mut c = Collector::default();
        feed(
            &mut c,
            &[
                "@@margo start 6.1.0-56-cloud-amd64",
                "@@margo begin passthrough",
                "running 3 tests",
                "test v4 ... ok",
                "@@margo alive",
                "test denied ... FAILED",
                "test v6 ... ignored, flaky",
                "failures:",
                "---- denied stdout ----",
                "",
                "thread 'denied' panicked at tests/tests/passthrough.rs:80:44:",
                "gateway not ready after 20s",
                "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
                "failures:",
                "@@margo end passthrough 12.0 exit=101",
                "@@margo begin drops",
                "test udp ... ok",
                "@@margo end drops 3.0 exit=0",
                "@@margo attach mgvmp0 netlink",
                "@@margo done",
            ],
        );
        let tests = c.outcomes(&expected(), &Ending::Finished);
        let status: Vec<(&str, &Status)> =
            tests.iter().map(|t| (t.test.as_str(), &t.status)).collect();
        assert_eq!(status[0], ("v4", &Status::Passed));
        assert_eq!(status[1], ("v6", &Status::Skipped("ignored: flaky".into())));
        assert_eq!(
            status[2],
            (
                "denied",
                &Status::Failed(
                    "thread 'denied' panicked at tests/tests/passthrough.rs:80:44: / gateway not ready after 20s"
                        .into()
                )
            )
        );
        assert_eq!(
            status[3],
            ("pull", &Status::Skipped("not selected (--only)".into()))
        );
        assert_eq!(status[4], ("udp", &Status::Passed));
        assert_eq!(c.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(c.attach, Some(("mgvmp0".into(), "netlink".into())));
        let report = KernelReport {
            kernel: "6.1".into(),
            package: "linux-image-6.1.0-56-cloud-amd64 6.1.192-2".into(),
            release: "6.1.0-56-cloud-amd64".into(),
            accel: "TCG".into(),
            smp: 2,
            boot_secs: Some(9.0),
            secs: 60.0,
            vm_failure: None,
            attach_mode: Some("netlink".into()),
            attach_detail: None,
            attach_error: None,
            binaries: c.binaries(),
            tests,
        };
        assert_eq!(
            report.counts(),
            Counts {
                passed: 2,
                failed: 1,
                skipped: 2
            }
        );
        assert!(!report.success());
        let lines = report.suite_lines();
        assert_eq!(
            lines[0],
            "xtask-suite: note 6.1.0-56-cloud-amd64, TCG, attach netlink"
        );
        assert_eq!(lines[1], "xtask-suite: skip 1 vm-6.1: ignored: flaky");
        assert_eq!(
            lines[2],
            "xtask-suite: skip 1 vm-6.1: not selected (--only)"
        );
        assert!(lines[3].starts_with("test result: FAILED. 2 passed; 1 failed; 0 ignored;"));
        let text = report.render();
        assert!(
            text.contains("   FAILED   passthrough::denied: thread 'denied'"),
            "{text}"
        );
        assert!(
            text.ends_with("vm 6.1: 2 passed, 1 failed, 2 skipped"),
            "{text}"
        );
    }

    #[test]
    fn a_crash_fails_the_running_binary_and_the_rest() {
        let mut c = Collector::default();
        feed(
            &mut c,
            &[
                "@@margo begin passthrough",
                "running 3 tests",
                "test v4 ... ok",
            ],
        );
        let ending = Ending::Crashed {
            what: "kernel panic",
            line: "[ 5.4] Kernel panic - not syncing: sysrq triggered crash".into(),
        };
        let tests = c.outcomes(&expected(), &ending);
        assert_eq!(tests[0].status, Status::Passed);
        assert_eq!(
            tests[1].status,
            Status::Failed("interrupted: the VM crashed (kernel panic)".into())
        );
        // `oci::pull` stays skipped for its own reason; `drops::udp`
        // never ran because the VM crashed: that is a failure.
        assert_eq!(
            tests[3].status,
            Status::Skipped("not selected (--only)".into())
        );
        assert_eq!(
            tests[4].status,
            Status::Failed("not run: the VM crashed (kernel panic)".into())
        );
        assert_eq!(
            describe(&ending),
            "the VM crashed (kernel panic): [ 5.4] Kernel panic - not syncing: sysrq triggered crash"
        );
    }

    #[test]
    fn a_killed_binary_fails_its_unfinished_tests() {
        let mut c = Collector::default();
        feed(
            &mut c,
            &["@@margo begin drops", "@@margo end drops 600.0 timeout"],
        );
        let tests = c.outcomes(&expected(), &Ending::Finished);
        assert_eq!(
            tests[4].status,
            Status::Failed("its binary was killed after 600 s (time bound)".into())
        );
    }
}
