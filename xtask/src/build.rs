//! Building the gateway binary (its build script builds the eBPF object).
use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Cargo's target directory for this workspace (honours `CARGO_TARGET_DIR` and config).
pub fn target_dir() -> Result<PathBuf> {
    let json = cmd::stdout_of(cmd::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))
        .context("asking cargo for the target directory (`cargo metadata`): check that the workspace manifests parse")?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
    meta.get("target_directory")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .context("`cargo metadata` output has no target_directory")
}

/// `cargo build -p gateway [--release]`; returns the path of the binary.
pub fn gateway(release: bool) -> Result<PathBuf> {
    println!(
        "build: cargo build -p gateway{}",
        if release { " --release" } else { "" }
    );
    let mut build = cmd::cargo();
    build.args(["build", "-p", "gateway"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build).context(
        "building the gateway failed: check the compiler output above (eBPF build errors: run `cargo xtask setup`)",
    )?;
    built_binary(release)
}

/// The binary a successful `cargo build -p gateway [--release]` left.
fn built_binary(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let bin = target_dir()?.join(profile).join("gateway");
    if !bin.is_file() {
        bail!(
            "cargo build succeeded but {} does not exist: check the gateway's [[bin]] target",
            bin.display()
        );
    }
    Ok(bin)
}

/// A build at the lowest CPU priority while the test run does other work
/// (the release gateway; Garage on a fresh machine, see
/// [`crate::setup::garage`]): each is minutes of CPU on a 2-core machine, and the
/// steps before the VMs (the root tests above all) leave a core idle much
/// of the time. Nice 19 means it takes what they leave: a step that wants
/// both cores gets them back within a scheduler tick, until the run
/// reaches the steps that wait for it ([`Background::to_normal_priority`]).
/// Cargo locks each
/// profile's directory on its own, so the debug builds beside it do not
/// wait for it.
pub struct Background {
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Background {
    /// A run that ends before it waits (an error, a panic) stops the build
    /// it started, by the pid it holds.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Background {
    /// Starts `cargo build -p gateway --release`, its output into `log`.
    pub fn release_gateway(log: PathBuf) -> Result<Self> {
        let mut build = cmd::cargo();
        build.args(["build", "-p", "gateway", "--release"]);
        Self::start(build, log)
    }

    /// Starts `cargo install garage …` (see [`crate::setup::garage`]),
    /// its output into `log`.
    pub fn garage(log: PathBuf) -> Result<Self> {
        Self::start(crate::setup::garage::install_command(), log)
    }

    /// Starts `build` at nice 19, its stdout and stderr into `log`.
    fn start(mut build: std::process::Command, log: PathBuf) -> Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        build.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: setpriority is async-signal-safe and touches only this
        // (forked, not yet exec'd) process; its children inherit the value.
        unsafe {
            build.pre_exec(|| {
                if libc::setpriority(libc::PRIO_PROCESS, 0, 19) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = build
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::describe(&build)))?;
        Ok(Self {
            child: Some(child),
            log,
        })
    }

    /// Gives the build (cargo, and every process and thread under it) the
    /// normal CPU priority, once the run reaches the steps that will wait
    /// for it: at nice 19 it would get only the scraps the steps before
    /// those leave. Only root may lower a nice value; elsewhere this says
    /// why and changes nothing.
    pub fn to_normal_priority(&self) {
        let Some(child) = &self.child else {
            return;
        };
        let mut changed = 0;
        let mut first_error = None;
        for tid in threads_under(child.id()) {
            // SAFETY: setpriority takes plain integers and touches no memory.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 0) } == 0 {
                changed += 1;
            } else if first_error.is_none() {
                first_error = Some(std::io::Error::last_os_error());
            }
        }
        match first_error {
            Some(e) if changed == 0 => {
                println!("build {}: left at nice 19 ({e})", self.log.display())
            }
            _ => println!(
                "build {}: now at normal priority ({changed} threads)",
                self.log.display()
            ),
        }
    }

    /// Waits for the release gateway's build; returns the binary, or an
    /// error with the tail of the build's output.
    pub fn wait(self) -> Result<PathBuf> {
        self.wait_done("cargo build -p gateway --release")?;
        built_binary(true)
    }

    /// Waits for the build; an error with the tail of its output unless
    /// it succeeded.
    pub fn wait_done(mut self, what: &str) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("`{what}` was already waited for");
        };
        let st = child
            .wait()
            .with_context(|| format!("waiting for `{what}`"))?;
        if !st.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            bail!(
                "`{what}` failed ({st}); the end of its output ({}):\n{tail}",
                self.log.display()
            );
        }
        Ok(())
    }
}

/// Every thread of `root` and of the processes under it, from /proc (a
/// process's nice value is per thread on Linux; threads and processes
/// started later inherit it from the one that starts them).
fn threads_under(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((pid, parent_in_stat(&stat)?))
        })
        .collect();
    let mut procs = vec![root];
    let mut i = 0;
    while let Some(&pid) = procs.get(i) {
        procs.extend(parents.iter().filter(|(_, p)| *p == pid).map(|(c, _)| *c));
        i += 1;
    }
    procs
        .into_iter()
        .flat_map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| t.file_name().to_str()?.parse().ok())
        })
        .collect()
}

/// The parent pid in a `/proc/PID/stat` line: the field after the state,
/// which follows the command name's closing parenthesis (the name itself
/// may hold spaces and parentheses).
fn parent_in_stat(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_from_stat() {
        assert_eq!(
            parent_in_stat("4242 (rustc (x) y) S 4100 4242 1 0 -1"),
            Some(4100)
        );
        assert_eq!(parent_in_stat("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn finds_its_own_threads_and_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("starting sleep");
        let me = std::process::id();
        let found = threads_under(me);
        assert!(found.contains(&me), "{found:?}");
        assert!(found.contains(&child.id()), "{found:?}");
        child.kill().expect("killing sleep");
        child.wait().expect("reaping sleep");
    }
}
