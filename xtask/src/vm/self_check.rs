//! `cargo xtask vm-self-check`: proves that the VM harness turns a broken
//! kernel into a failed run. Each check runs `cargo xtask vm` on one kernel
//! with a fault injected inside the guest (a kernel panic; a runner that
//! goes silent, as a hung kernel would) and passes only when that run exits
//! non-zero, within its bound, and says why. `cargo xtask test` runs it as
//! the `vm-harness` suite; it prints libtest's `test result:` line so the
//! summary counts it.
use std::{
    process::{ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// One injected fault and what the failed run must say about it.
struct Check {
    name: &'static str,
    fault: &'static str,
    extra: &'static [&'static str],
    /// Words the run's output must contain.
    says: &'static str,
}

const CHECKS: &[Check] = &[
    Check {
        name: "a_kernel_panic_ends_the_run_as_failed",
        fault: "panic",
        extra: &[],
        says: "kernel panic",
    },
    Check {
        // A short silence bound keeps this check under a minute; the real
        // runs use the default (two minutes).
        name: "a_silent_guest_ends_the_run_as_failed",
        fault: "silence",
        extra: &["--silence", "30", "--timeout", "300"],
        says: "the kernel hangs",
    },
];

pub fn run(kernel: &str, list: bool) -> Result<ExitCode> {
    if list {
        for check in CHECKS {
            println!("vm_harness::{}: test", check.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let xtask = std::env::current_exe().context("finding xtask's own binary")?;
    let (mut passed, mut failed) = (0, 0);
    let started = Instant::now();
    println!("\nrunning {} tests", CHECKS.len());
    for check in CHECKS {
        let mut c = cmd::new(&xtask);
        c.args(["vm", "--kernel", kernel, "--only", "config"])
            .args(["--inject", check.fault])
            .args(check.extra)
            .stdin(Stdio::null());
        let t = Instant::now();
        let out = cmd::output(&mut c)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let verdict = if out.status.success() {
            Err(format!("the run succeeded ({})", out.status))
        } else if !text.contains(check.says) {
            Err(format!("the run failed without saying {:?}", check.says))
        } else {
            Ok(())
        };
        match verdict {
            Ok(()) => {
                passed += 1;
                println!(
                    "test vm_harness::{} ... ok ({:.0} s)",
                    check.name,
                    t.elapsed().as_secs_f64()
                );
            }
            Err(why) => {
                failed += 1;
                println!("test vm_harness::{} ... FAILED: {why}", check.name);
                println!("--- output of `{}` ---\n{text}", cmd::describe(&c));
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; \
         0 filtered out; finished in {:.2}s",
        if failed == 0 { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
