//! Helpers for running child commands with clear errors.
//!
//! Every child is created through [`new`] (or [`cargo`]), which puts the cargo
//! bin directory (where `cargo install` put bpf-linker) first on its `PATH`.
use std::{
    env,
    ffi::{OsStr, OsString},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `$CARGO_HOME`, else `$HOME/.cargo`.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    Ok(home_dir()?.join(".cargo"))
}

pub fn home_dir() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set: set HOME (or CARGO_HOME) so setup knows where cargo installs binaries")
}

/// `PATH` for children: the cargo bin directory first, then xtask's own `PATH`.
fn child_path() -> Option<OsString> {
    let bin = cargo_home().ok()?.join("bin");
    let current = env::var_os("PATH").unwrap_or_default();
    let rest: Vec<PathBuf> = env::split_paths(&current).collect();
    if rest.first() == Some(&bin) {
        return Some(current);
    }
    env::join_paths(std::iter::once(bin).chain(rest)).ok()
}

/// A command for `program` whose `PATH` starts with the cargo bin directory.
pub fn new(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(path) = child_path() {
        cmd.env("PATH", path);
    }
    cmd
}

/// `cargo`, run in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// The command line, for messages: `LLVM_PREFIX=/x cargo install bpf-linker`.
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

fn spawn_error(cmd: &Command, err: io::Error) -> anyhow::Error {
    let program = cmd.get_program().to_string_lossy();
    if err.kind() == io::ErrorKind::NotFound {
        anyhow::anyhow!(
            "could not start `{}`: `{program}` is not on PATH (check that it is installed; `cargo xtask setup` installs the project's tools)",
            describe(cmd)
        )
    } else {
        anyhow::Error::new(err).context(format!("could not start `{}`", describe(cmd)))
    }
}

/// Runs `cmd` with inherited stdio; returns its exit status (a failure to start is an error).
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().map_err(|e| spawn_error(cmd, e))
}

/// Runs `cmd` with inherited stdio; an exit status other than 0 is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st}); see its output above", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` capturing its output, whatever its exit status (a failure to start is an error).
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))
}

/// Runs `cmd` and returns its stdout; an exit status other than 0 is an error carrying its stderr.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, copying its stdout to ours line by line and handing each line
/// to `on_line`; stderr goes straight to ours. Returns the exit status.
pub fn stream(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<ExitStatus> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(cmd, e))?;
    let result = (|| -> Result<()> {
        let stdout = child
            .stdout
            .take()
            .context("child stdout was not captured")?;
        let mut reader = BufReader::new(stdout);
        let mut out = io::stdout();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            out.write_all(&buf)?;
            out.flush()?;
            on_line(&String::from_utf8_lossy(&buf));
        }
        Ok(())
    })();
    let st = child
        .wait()
        .with_context(|| format!("waiting for `{}`", describe(cmd)))?;
    result.with_context(|| format!("copying the output of `{}`", describe(cmd)))?;
    Ok(st)
}

/// Whether xtask runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
