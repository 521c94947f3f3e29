//! Running code and commands inside a named network namespace.
//!
//! Code runs on a fresh thread that enters only the network namespace
//! (`setns(CLONE_NEWNET)` is per thread), so the process and every other
//! thread stay where they were. A thread that entered a namespace holds a
//! reference to it: such threads must end before the namespace can really go
//! away, which is why [`in_ns`] joins and servers are stopped on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Output},
    sync::mpsc,
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// Path of the bind mount that `ip netns add` made for `ns`.
pub fn ns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) -> Result<()> {
    let path = ns_path(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into network namespace {ns}"))
}

/// Runs `f` on a new thread inside network namespace `ns` and returns its
/// result. A panic inside `f` (a failed assertion) is propagated to the
/// caller as the same panic.
pub fn in_ns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    thread::scope(|s| {
        let handle = s.spawn(|| -> Result<T> {
            enter(ns)?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Spawns a long-lived thread inside network namespace `ns` (servers).
/// Returns once the thread has entered the namespace, so a failure to enter
/// it is reported here rather than lost in the thread.
pub fn spawn_in_ns<T, F>(ns: &str, name: &str, f: F) -> Result<thread::JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let ns_owned = ns.to_owned();
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let entered = enter(&ns_owned);
            let ok = entered.is_ok();
            // The receiver only disappears if the spawner gave up; nothing to do then.
            let _ = tx.send(entered);
            if !ok {
                // Never run `f` outside the namespace: it would bind in the wrong one.
                panic!(
                    "thread {} could not enter {}",
                    thread::current().name().unwrap_or("?"),
                    ns_owned
                );
            }
            f()
        })
        .with_context(|| format!("spawning thread {name}"))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => bail!("thread {name} died before entering {ns}"),
    }
}

/// Runs a command to completion and returns its output, failing with its
/// stderr if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

/// `ip <args>` (root namespace tool; pass `-n NS` to act inside a namespace).
pub fn ip(args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> <args>`: iproute2 acting inside namespace `ns`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// `ip -n <ns> -batch -`: several commands in one process, in order,
/// stopping at the first that fails (which the error names). A site's
/// set-up is about twenty commands: under TCG each `ip` start costs more
/// than the netlink work it does.
pub fn ip_batch_in(ns: &str, commands: &[&[&str]]) -> Result<()> {
    use std::io::Write as _;
    let script: String = commands.iter().map(|c| c.join(" ") + "\n").collect();
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("ip -batch without stdin")?
        .write_all(script.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} -batch failed ({}): {}\ncommands:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n <ns> -j <args>` parsed as JSON.
pub fn ip_json(ns: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["-n", ns, "-j"];
    full.extend_from_slice(args);
    let text = ip(&full)?;
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&text)
        .with_context(|| format!("parsing `ip {}` output: {text}", full.join(" ")))
}
