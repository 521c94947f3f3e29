//! Running a client command (curl, skopeo, podman) with a deadline. The
//! commands run through `ip netns exec`, which execs in place, so the pid
//! is the client's own and a timeout kills exactly it.

use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What a finished command left.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub took: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `cmd` to completion, whatever its exit status; fails only if it
/// cannot be started or is still running after `timeout` (then it is killed
/// by pid).
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Outcome> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait(&mut child, timeout);
    let stdout = out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    match status {
        Some(status) => Ok(Outcome {
            status,
            stdout,
            stderr,
            took: start.elapsed(),
        }),
        None => bail!(
            "{cmd:?} still running after {timeout:?}, killed; stderr: {}",
            stderr.trim()
        ),
    }
}

/// Like [`output`], and fails with its stderr unless it exits 0.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Outcome> {
    let out = output(cmd, timeout)?;
    if !out.success() {
        bail!(
            "{cmd:?} failed ({}) after {:?}: {}",
            out.status,
            out.took,
            out.stderr.trim()
        );
    }
    Ok(out)
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits up to `timeout`; on timeout kills the child (by its pid) and reaps
/// it, returning `None`.
fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
