//! `cargo xtask vm`: the root integration suite on other kernels, in QEMU.
//!
//! For each kernel (the list is [`kernels::KERNELS`]; `cargo xtask setup`
//! unpacks them): boot it with an initramfs of busybox and the kernel's own
//! modules ([`initramfs`]), mount the host's root read-only over virtiofs
//! under a tmpfs overlay, and run the very binaries `cargo test -p
//! gateway-tests` runs on the host, unchanged, with `GATEWAY_BIN` set
//! ([`guest`]). QEMU uses KVM where a probe boot shows it works, TCG
//! otherwise ([`qemu`]). The report gives, per kernel and per test, pass,
//! fail or skip with the reason, and which attach path the gateway took
//! ([`report`]). A kernel panic, oops, soft lockup or hang ends that
//! kernel's run as a failure within a bound; any failure makes the command
//! exit non-zero.
//!
//! The binaries are hard-linked into a stage directory first, so a rebuild
//! during the run (cargo replaces files) cannot change what the VM sees.
//! Logs stay in `target/vm/<kernel>/`: `console.log`, `report.log` (the
//! runner's port, with every test's output) and `report.json`.
pub mod guest;
mod initramfs;
pub mod kernels;
mod plan;
mod qemu;
mod report;
pub mod self_check;
mod share;
mod stage;

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use crate::{build, cmd, setup};
use plan::{Plan, PlannedBinary};
use qemu::{Accel, Ending};
use report::{Collector, Expected, KernelReport};
use stage::Staged;

pub use report::SUITE_MARK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelChoice {
    /// KVM if a probe boot works (remembered per host boot), else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Args)]
pub struct Options {
    /// A kernel to boot, by name (repeatable); default: every kernel in
    /// KERNELS (xtask/src/vm/kernels.rs).
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// How QEMU runs the guest's CPUs.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// vCPUs per VM. One: under TCG a second vCPU costs more than it
    /// gives (TLB-shootdown IPIs, RCU grace periods and lock handoffs
    /// between vCPU threads); on the 2-core machine one OCI test took 54 s
    /// with one vCPU against 78 s with two.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Memory per VM, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// `--test-threads` inside the VM. One at a time: under TCG two
    /// concurrent tests each start a gateway more slowly than the tests'
    /// 20 s readiness bound allows.
    #[arg(long, default_value_t = 1)]
    pub test_threads: u32,
    /// Bound on one kernel's whole run, in seconds (boot, tests, probe):
    /// a last resort (a hung kernel is caught by `--silence`, a hung binary
    /// by `--binary-timeout`), well above a run's time under TCG on a busy
    /// 2-core machine (every suite: about 35 minutes per kernel, both
    /// kernels side by side).
    #[arg(long, value_name = "SECS", default_value_t = 4500)]
    pub timeout: u64,
    /// Bound on one test binary inside the VM, in seconds (`oci`, the
    /// longest, takes about four minutes under TCG).
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub binary_timeout: u64,
    /// Only these test binaries (cargo target names, e.g. `passthrough`);
    /// the others are reported as skipped.
    #[arg(long, value_name = "TARGET")]
    pub only: Vec<String>,
    /// Seconds the runner inside may stay silent (it reports every 10 s)
    /// before the kernel counts as hung.
    #[arg(long, value_name = "SECS", default_value_t = 120, hide = true)]
    pub silence: u64,
    /// Checks the harness itself: the guest causes this failure before the
    /// tests, and the run must end as failed (see [`self_check`]).
    #[arg(long, value_enum, hide = true)]
    pub inject: Option<plan::Fault>,
}

pub fn run(opts: &Options) -> Result<ExitCode> {
    if !cmd::is_root() {
        bail!(
            "`cargo xtask vm` needs root: virtiofsd shares the host's root with the VM, \
             and the tests inside run as root; run it as root"
        );
    }
    let specs = if opts.kernels.is_empty() {
        kernels::KERNELS.iter().collect::<Vec<_>>()
    } else {
        opts.kernels
            .iter()
            .map(|n| kernels::spec(n))
            .collect::<Result<Vec<_>>>()?
    };
    setup::run()?;
    let loaded = specs
        .iter()
        .map(|s| kernels::load(s))
        .collect::<Result<Vec<_>>>()?;

    let gateway = match std::env::var_os("GATEWAY_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        // The release build, as `cargo xtask test` passes it: the binary a
        // site runs, and several times faster than the debug build under TCG.
        _ => build::gateway(true)?,
    };
    let binaries = stage::test_binaries()?;
    let target = build::target_dir()?;
    let vm_dir = target.join("vm");
    stage::remove_stale_stages(&vm_dir);
    share::remove_stale_scratch();
    let stage = vm_dir.join(format!("stage-{}", std::process::id()));
    for path in [&stage, &cmd::workspace_root()] {
        if let Some(hidden) = hidden_in_guest(path) {
            bail!(
                "{} is under {hidden}, which the VM mounts afresh, so the VM would not see it: \
                 use a workspace (and target directory) elsewhere",
                path.display()
            );
        }
    }
    let result = (|| -> Result<Vec<KernelReport>> {
        let staged = Staged::new(&stage, &gateway, &binaries)?;
        let expected = staged.expected(opts)?;
        let mut reports = Vec::new();
        let mut accel = None;
        for kernel in &loaded {
            let r = run_kernel(opts, kernel, &staged, &expected, &vm_dir, &mut accel)?;
            println!("\n{}\n", r.render());
            reports.push(r);
        }
        Ok(reports)
    })();
    let _ = fs::remove_dir_all(&stage);
    let reports = result?;

    println!("== vm summary ==");
    for r in &reports {
        let c = r.counts();
        println!(
            "vm {:<6} {:<26} {}  attach {:<8} {:>3} passed, {} failed, {} skipped ({:.0} s){}",
            r.kernel,
            r.release,
            r.accel,
            r.attach_summary(),
            c.passed,
            c.failed,
            c.skipped,
            r.secs,
            r.vm_failure
                .as_ref()
                .map(|w| format!("  VM FAILED: {w}"))
                .unwrap_or_default()
        );
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for r in &reports {
        for line in r.suite_lines() {
            println!("{line}");
        }
        let c = r.counts();
        passed += c.passed;
        failed += c.failed;
        skipped += c.skipped;
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(if reports.iter().all(KernelReport::success) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The binaries the guest is to run: every one with a test left to run
/// (whatever the accelerator: the OCI suites run under TCG too, their
/// client storage on the guest's tmpfs temp dir), each with its skips.
fn planned_binaries(binaries: &[stage::TestBinary], expected: &[Expected]) -> Vec<PlannedBinary> {
    binaries
        .iter()
        .zip(expected)
        .filter(|(_, e)| e.tests.iter().any(|t| !e.skipped.contains_key(t)))
        .map(|(b, e)| PlannedBinary {
            name: b.name.clone(),
            path: b.path.clone(),
            skip: e.skipped.keys().cloned().collect(),
        })
        .collect()
}

/// The garage the tests run (`GARAGE_BIN`, else where setup installs it),
/// if there is one: the host's root is the guest's, so the same path.
fn garage_bin() -> Option<PathBuf> {
    std::env::var_os("GARAGE_BIN")
        .map(PathBuf::from)
        .or_else(|| setup::garage::path().ok())
        .filter(|p| p.is_file() && hidden_in_guest(p).is_none())
}

/// The guest replaces these with filesystems of its own (see the
/// initramfs' `/init`): host files below them are not visible there.
const REPLACED_IN_GUEST: &[&str] = &["/run", "/proc", "/sys", "/dev"];

fn hidden_in_guest(path: &Path) -> Option<&'static str> {
    REPLACED_IN_GUEST
        .iter()
        .copied()
        .find(|dir| path.starts_with(dir))
}

fn run_kernel(
    opts: &Options,
    kernel: &kernels::Kernel,
    staged: &Staged,
    expected: &[Expected],
    vm_dir: &Path,
    accel: &mut Option<Accel>,
) -> Result<KernelReport> {
    let log_dir = vm_dir.join(&kernel.name);
    // Others may run `xtask vm` on the same kernel at the same time (the
    // machine is shared): each run writes its logs into a directory of its
    // own, moved up into `log_dir` when it ends.
    remove_stale_run_dirs(&log_dir);
    let run_dir = log_dir.join(format!("{RUN_DIR_PREFIX}{}", std::process::id()));
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let initrd = staged.dir.join(format!("initramfs-{}.cpio", kernel.name));
    let modules = initramfs::build(
        kernel,
        &staged.dir.join(format!("initramfs-{}", kernel.name)),
        &initrd,
    )?;
    println!(
        "vm {}: {} {} ({}): {}",
        kernel.name,
        kernel.package,
        kernel.version,
        kernel.release,
        kernels::spec(&kernel.name).map_or("", |s| s.why)
    );
    println!(
        "vm {}: initramfs modules: {}",
        kernel.name,
        modules.join(" ")
    );
    let accel = *accel.get_or_insert_with(|| match opts.accel {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => qemu::detect(
            kernel,
            &initrd,
            &cmd::home_dir()
                .unwrap_or_else(|_| PathBuf::from("/root"))
                .join(".cache/margo-gateway/vm/accel"),
        ),
    });
    let plan = Plan {
        kernel: kernel.name.clone(),
        gateway_bin: staged.gateway.clone(),
        garage_bin: garage_bin(),
        package_dir: cmd::workspace_root().join("tests"),
        test_threads: opts.test_threads,
        accel: accel.label().to_ascii_lowercase(),
        binary_timeout_secs: opts.binary_timeout,
        binaries: planned_binaries(&staged.binaries, expected),
        probe_attach: true,
        inject: opts.inject,
    };
    let plan_path = staged.dir.join(format!("plan-{}.json", kernel.name));
    fs::write(&plan_path, serde_json::to_string_pretty(&plan)?)?;
    let scratch = share::scratch_dir(&kernel.name);
    let cfg = qemu::VmConfig {
        kernel,
        initramfs: &initrd,
        accel,
        smp: opts.smp,
        memory_mib: opts.memory,
        params: format!(
            "margo.runner={} margo.plan={}",
            staged.runner.display(),
            plan_path.display()
        ),
        log_dir: &run_dir,
        scratch: &scratch,
        timeout: Duration::from_secs(opts.timeout),
        boot_timeout: Duration::from_secs(300),
        silence: Duration::from_secs(opts.silence.max(2 * guest::HEARTBEAT.as_secs())),
    };
    println!(
        "vm {}: booting under {} ({} vCPUs, {} MiB); logs in {} (moved to {} at the end)",
        kernel.name,
        accel.label(),
        opts.smp,
        opts.memory,
        run_dir.display(),
        log_dir.display()
    );
    let mut collector = Collector::default();
    let name = kernel.name.clone();
    let outcome = qemu::run(
        &cfg,
        |line| println!("[vm {name} console] {line}"),
        |line| {
            if plan::Event::parse(line) != Some(plan::Event::Alive) {
                println!("[vm {name}] {line}");
            }
            collector.line(line);
        },
    );
    share::remove_scratch(&scratch);
    keep_run_logs(&run_dir, &log_dir);
    let outcome = outcome?;
    let tests = collector.outcomes(expected, &outcome.ending);
    let vm_failure = match &outcome.ending {
        Ending::Finished => None,
        other => Some(report::describe(other)),
    };
    let report = KernelReport {
        kernel: kernel.name.clone(),
        package: format!("{} {}", kernel.package, kernel.version),
        release: collector.release.clone().unwrap_or(kernel.release.clone()),
        accel: accel.label().to_owned(),
        smp: opts.smp,
        boot_secs: outcome.boot_secs,
        secs: outcome.secs,
        vm_failure,
        attach_mode: collector.attach.as_ref().map(|(_, m)| m.clone()),
        attach_detail: collector.attach_log.clone(),
        attach_error: collector.attach_error.clone(),
        binaries: collector.binaries(),
        tests,
    };
    let json = log_dir.join("report.json");
    fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(report)
}

/// A run's own log directory inside the kernel's: `run-<pid>`.
const RUN_DIR_PREFIX: &str = "run-";

/// Moves a run's logs up into the kernel's log directory (replacing the
/// previous run's) and removes the run's directory.
fn keep_run_logs(run_dir: &Path, log_dir: &Path) {
    if let Ok(entries) = fs::read_dir(run_dir) {
        for e in entries.flatten() {
            let _ = fs::rename(e.path(), log_dir.join(e.file_name()));
        }
    }
    let _ = fs::remove_dir_all(run_dir);
}

/// Removes the run directories of runs whose process is gone.
fn remove_stale_run_dirs(log_dir: &Path) {
    let Ok(entries) = fs::read_dir(log_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(RUN_DIR_PREFIX)
            && !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh directory for a unit test, which removes it when done.
#[cfg(test)]
pub fn test_dir(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-vm-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn paths_the_guest_replaces() {
        assert_eq!(
            hidden_in_guest(Path::new("/run/user/0/w/target")),
            Some("/run")
        );
        assert_eq!(hidden_in_guest(Path::new("/tmp/ci/main/target/vm")), None);
        assert_eq!(hidden_in_guest(Path::new("/work/main")), None);
        assert_eq!(hidden_in_guest(Path::new("/runner/w")), None);
    }

    #[test]
    fn run_logs_move_up_and_stale_run_dirs_go() -> Result<()> {
        let dir = test_dir("runlogs")?;
        let run = dir.join(format!("{RUN_DIR_PREFIX}{}", std::process::id()));
        fs::create_dir_all(&run)?;
        fs::write(dir.join("report.log"), "older run")?;
        fs::write(run.join("report.log"), "this run")?;
        // A run of a process that is gone (no pid is this large).
        let stale = dir.join(format!("{RUN_DIR_PREFIX}4294967295"));
        fs::create_dir_all(&stale)?;
        remove_stale_run_dirs(&dir);
        assert!(!stale.exists());
        assert!(run.exists(), "a live run's directory stays");
        keep_run_logs(&run, &dir);
        assert_eq!(fs::read_to_string(dir.join("report.log"))?, "this run");
        assert!(!run.exists());
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn every_binary_with_a_test_to_run_is_planned() {
        let names = ["oci", "oci_fill", "dns", "passthrough", "bin-demo"];
        let binaries: Vec<stage::TestBinary> = names
            .iter()
            .map(|n| stage::TestBinary {
                name: (*n).into(),
                path: format!("/stage/test-{n}").into(),
            })
            .collect();
        let expected: Vec<Expected> = names
            .iter()
            .map(|n| Expected {
                binary: (*n).into(),
                // A binary without tests (bin-demo) has nothing to run.
                tests: if *n == "bin-demo" {
                    vec![]
                } else {
                    vec!["a".into(), "b".into()]
                },
                skipped: if *n == "passthrough" {
                    [("a".to_owned(), "not selected (--only)".to_owned())].into()
                } else {
                    BTreeMap::new()
                },
            })
            .collect();
        let planned = planned_binaries(&binaries, &expected);
        let got: Vec<(&str, Vec<String>)> = planned
            .iter()
            .map(|p| (p.name.as_str(), p.skip.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("oci", vec![]),
                ("oci_fill", vec![]),
                ("dns", vec![]),
                ("passthrough", vec!["a".to_owned()]),
            ]
        );
    }
}
