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
    batch(&["-n", ns], commands)
}

/// `ip -batch -` in the root namespace: [`ip_batch_in`] for commands that
/// name their namespaces themselves (`netns add`, `link add … netns …`).
pub fn ip_batch(commands: &[&[&str]]) -> Result<()> {
    batch(&[], commands)
}

fn batch(options: &[&str], commands: &[&[&str]]) -> Result<()> {
    use std::io::Write as _;
    let script: String = commands.iter().map(|c| c.join(" ") + "\n").collect();
    let mut child = Command::new("ip")
        .args(options)
        .args(["-batch", "-"])
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
            "ip {} -batch failed ({}): {}\ncommands:\n{script}",
            options.join(" "),
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

/// A command for `program` that runs as under `ip netns exec <ns>`, set up
/// by this process between fork and exec instead of by an `ip` process:
/// the network namespace, a mount namespace of its own (slave to ours, so
/// nothing it mounts comes back), a sysfs of that network namespace on
/// `/sys`, and every entry of `/etc/netns/<ns>/` bind-mounted over `/etc`.
/// Under TCG an `ip` start costs about as much as a curl; the pid is still
/// the program's.
pub fn exec_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    exec_in_with(ns, program, None)
}

/// An overlay for [`exec_in_with`]: `target` becomes an overlay whose
/// lower dir is itself, its writes landing in `upper` (`work` beside it).
pub struct Overlay<'a> {
    pub target: &'a std::path::Path,
    pub upper: &'a std::path::Path,
    pub work: &'a std::path::Path,
}

/// [`exec_in`], with `overlay` mounted in the program's mount namespace
/// first (skopeo and podman keep state under `/var/lib` whatever their
/// flags say). A name or path holding a NUL makes the spawn fail (EINVAL).
pub fn exec_in_with(
    ns: &str,
    program: impl AsRef<std::ffi::OsStr>,
    overlay: Option<Overlay<'_>>,
) -> Command {
    use std::os::unix::process::CommandExt as _;
    let plan = EnterPlan::new(ns, overlay);
    let mut cmd = Command::new(program);
    // SAFETY: `enter` makes only system calls on memory prepared above (no
    // allocation, no locks), which is what may run between fork and exec.
    unsafe {
        cmd.pre_exec(move || match &plan {
            Some(plan) => plan.enter(),
            None => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        });
    }
    cmd
}

/// What [`exec_in_with`]'s child does before exec, prepared beforehand.
struct EnterPlan {
    net: std::ffi::CString,
    name: std::ffi::CString,
    binds: Vec<(std::ffi::CString, std::ffi::CString)>,
    overlay: Option<(std::ffi::CString, std::ffi::CString)>,
}

impl EnterPlan {
    /// `None` if a name or path holds a NUL.
    fn new(ns: &str, overlay: Option<Overlay<'_>>) -> Option<Self> {
        use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
        let c = |s: &[u8]| CString::new(s).ok();
        let mut binds = Vec::new();
        if let Ok(entries) = std::fs::read_dir(PathBuf::from("/etc/netns").join(ns)) {
            for entry in entries.flatten() {
                let dst = PathBuf::from("/etc").join(entry.file_name());
                binds.push((
                    c(entry.path().as_os_str().as_bytes())?,
                    c(dst.as_os_str().as_bytes())?,
                ));
            }
        }
        let overlay = match overlay {
            Some(o) => {
                let mut opts = b"lowerdir=".to_vec();
                opts.extend_from_slice(o.target.as_os_str().as_bytes());
                opts.extend_from_slice(b",upperdir=");
                opts.extend_from_slice(o.upper.as_os_str().as_bytes());
                opts.extend_from_slice(b",workdir=");
                opts.extend_from_slice(o.work.as_os_str().as_bytes());
                Some((c(o.target.as_os_str().as_bytes())?, c(&opts)?))
            }
            None => None,
        };
        Some(Self {
            net: c(ns_path(ns).as_os_str().as_bytes())?,
            name: c(ns.as_bytes())?,
            binds,
            overlay,
        })
    }

    /// `netns_switch` of iproute2's `ip netns exec`, step for step.
    fn enter(&self) -> std::io::Result<()> {
        use std::{io::Error, ptr::null};
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain system calls on NUL-terminated strings that live
        // as long as `self`; the fd is closed on every path.
        unsafe {
            let fd = libc::open(self.net.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            check(fd)?;
            let r = libc::setns(fd, libc::CLONE_NEWNET);
            let err = Error::last_os_error();
            libc::close(fd);
            if r < 0 {
                return Err(err);
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                c"".as_ptr(),
                c"/".as_ptr(),
                c"none".as_ptr(),
                libc::MS_SLAVE | libc::MS_REC,
                null(),
            ))?;
            if let Some((target, opts)) = &self.overlay {
                check(libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                ))?;
            }
            let mut flags = 0;
            if libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) < 0 {
                // No sysfs to take away: shadow it, read-only if it was.
                let mut st: libc::statvfs = std::mem::zeroed();
                if libc::statvfs(c"/sys".as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0
                {
                    flags = libc::MS_RDONLY;
                }
            }
            check(libc::mount(
                self.name.as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                flags,
                null(),
            ))?;
            for (src, dst) in &self.binds {
                // As `ip netns exec`: an entry that cannot be bound (no
                // such name under /etc) is skipped.
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    null(),
                );
            }
        }
        Ok(())
    }
}
