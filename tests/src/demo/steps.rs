//! The demo's numbered steps: each prints its title, what it showed, its
//! verdict and how long it took; failed steps are counted.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::Result;

#[derive(Default)]
pub struct Steps {
    n: usize,
    failed: usize,
}

impl Steps {
    /// Steps that did not behave as shown.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// A heading over the steps that follow.
    pub fn section(&self, title: &str) {
        println!("\n==== {title} ====");
        flush();
    }

    /// Runs a step that shows text.
    pub fn run(&mut self, title: &str, f: impl FnOnce() -> Result<String>) -> bool {
        self.run_with(title, || f().map(|shown| ((), shown)))
            .is_some()
    }

    /// Runs a step that shows text and hands a value to later steps.
    pub fn run_with<T>(
        &mut self,
        title: &str,
        f: impl FnOnce() -> Result<(T, String)>,
    ) -> Option<T> {
        self.n += 1;
        println!("\n[{}] {title}", self.n);
        flush();
        let start = Instant::now();
        let result = f();
        let took = secs(start.elapsed());
        match result {
            Ok((value, shown)) => {
                for line in shown.lines() {
                    println!("    {line}");
                }
                println!("    => ok ({took})");
                flush();
                Some(value)
            }
            Err(e) => {
                self.failed += 1;
                let text = format!("{e:#}");
                let mut lines = text.lines();
                println!(
                    "    => FAILED after {took}: {}",
                    lines.next().unwrap_or_default()
                );
                for line in lines {
                    println!("       {line}");
                }
                flush();
                None
            }
        }
    }

    /// A step that cannot run because an earlier one failed (that one is
    /// already counted).
    pub fn skip(&mut self, title: &str, why: &str) {
        self.n += 1;
        println!("\n[{}] {title}\n    => skipped: {why}", self.n);
        flush();
    }
}

/// `1.23 s`.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn flush() {
    let _ = std::io::stdout().flush();
}
