//! Processes the benchmark starts (peers, servers, clients) and what it
//! reads about processes from `/proc`: resident memory and CPU time.
//!
//! Every peer runs through `ip netns exec`, which execs in place, so the
//! child's pid is the peer's. Stopping sends SIGTERM to that pid, waits,
//! then SIGKILLs the pid and the descendants it still has (nginx workers):
//! only processes this benchmark started, by pid.

use std::{
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A child process stopped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL of the process and of
    /// the descendants it still has.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = child.id();
        let descendants = descendants(pid);
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
        // Orphaned workers are re-parented away from us: kill exactly the
        // pids seen as descendants above, if each still runs the same
        // program (pids are not reused within a benchmark's lifetime in
        // practice, and the start-time check below makes sure).
        for (dpid, start) in descendants {
            if start_time(dpid) == Some(start)
                && let Ok(raw) = i32::try_from(dpid)
            {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// `perf record` of one process while a measurement runs (`--perf DIR`):
/// sampled call graphs (DWARF unwinding: release builds keep no frame
/// pointers) written to a file for `perf report`.
pub struct Perf {
    proc: Option<Proc>,
    pub path: std::path::PathBuf,
}

impl Perf {
    pub fn start(pid: u32, path: &Path) -> Result<Self> {
        let pid = pid.to_string();
        Self::record(
            &["-F", "499", "--call-graph", "dwarf,16384", "-p", &pid],
            path,
        )
    }

    /// Every CPU, kernel call graphs (frame pointers): for the TC program,
    /// which runs in whatever task sends the packet.
    pub fn start_system(path: &Path) -> Result<Self> {
        Self::record(&["-a", "-g", "-F", "2999"], path)
    }

    fn record(args: &[&str], path: &Path) -> Result<Self> {
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-q"])
            .args(args)
            .arg("-o")
            .arg(path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let proc = Proc::spawn("perf record", &mut cmd)?;
        // perf needs a moment to attach before the measurement starts.
        thread::sleep(Duration::from_millis(500));
        Ok(Self {
            proc: Some(proc),
            path: path.to_owned(),
        })
    }

    /// SIGINT: perf writes its file and exits.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if let Some(pid) = p.pid().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
            }
            p.stop(Duration::from_secs(60));
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every descendant of `pid` (children, grandchildren…) with its start time.
pub fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if let Some(start) = start_time(c) {
                out.push((c, start));
            }
            todo.push(c);
        }
    }
    out
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Start time (clock ticks since boot): identifies a process beyond its pid.
fn start_time(pid: u32) -> Option<u64> {
    // Field 22 overall; index 19 after the command.
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU seconds of `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let f = stat_fields(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let utime: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    Ok((utime + stime) / clock_ticks())
}

/// CPU seconds of `pid` and all its descendants (nginx master + workers).
pub fn cpu_seconds_tree(pid: u32) -> Result<f64> {
    let mut total = cpu_seconds(pid)?;
    for (d, _) in descendants(pid) {
        total += cpu_seconds(d).unwrap_or(0.0);
    }
    Ok(total)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kb(&text, field).with_context(|| format!("no {field} in {path}"))
}

fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resident memory of `pid` and its descendants, in bytes.
pub fn rss_tree(pid: u32) -> Result<u64> {
    let mut total = status_kb(pid, "VmRSS")?;
    for (d, _) in descendants(pid) {
        total += status_kb(d, "VmRSS").unwrap_or(0);
    }
    Ok(total)
}

/// Waits until `path` exists (a pid file, a socket), bounded.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Open files this process and its children (the gateway, nginx) may
/// hold: the memory benchmark holds 10,000 connections on each side, and
/// the bench gateway is configured for 65,536 (two descriptors each, for
/// passthrough, plus its own).
const NOFILE_WANTED: u64 = 2 * 65_536 + 1024;

/// Raises this process's open-file limit to [`NOFILE_WANTED`], the hard
/// limit too where root may (`CAP_SYS_RESOURCE`; a container may withhold
/// it), else the soft limit to the hard one; the gateway and nginx
/// (children) inherit it. Returns the soft limit set.
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_max < NOFILE_WANTED {
        let raised = libc::rlimit {
            rlim_cur: NOFILE_WANTED,
            rlim_max: NOFILE_WANTED,
        };
        // SAFETY: setrlimit reads a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(NOFILE_WANTED);
        }
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let text = "Name:\tgateway\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(10240 * 1024));
        assert_eq!(parse_status_kb(text, "VmHWM"), Some(20480 * 1024));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(status_kb(me, "VmRSS").expect("rss") > 0);
        assert!(cpu_seconds(me).expect("cpu") >= 0.0);
    }
}
