//! The package under a real systemd: the host's own OS booted with
//! `systemd-nspawn --boot` on a copy-on-write overlay of `/` (writes go to
//! a tmpfs; the host's files and package database are untouched), with a
//! private network namespace (only `lo` and the veth pair the test
//! creates inside it) and a bpffs instance of its own at /sys/fs/bpf (the
//! host's pins are neither seen nor touched).
//!
//! nspawn's own `--volatile=overlay` refuses `/` as the directory, and no
//! systemd runs on the host to register the machine with, so the overlay
//! is mounted here and commands enter the container with `nsenter`.
//!
//! Steps: `dpkg -i` (the unit is neither enabled nor started), the test's
//! config in /etc/margo-gateway, `systemctl start` (returns once READY=1
//! came: active, /readyz 200), watchdog pings keep it alive past a short
//! WatchdogSec, `systemctl reload` applies the config (generation 2) in the
//! same process and fails, naming the key, on a config the daemon refuses
//! (which keeps running the old one), `systemctl stop` leaves the kernel path guarding (`gateway
//! status`), the daemon logged no warning or error, `dpkg --purge` removes
//! the files and, through `gateway uninstall` in prerm, the pins and the
//! policy routing.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

use super::UNIT;

/// The device-side interface the gateway guards inside the container.
const DEVICE_IF: &str = "mgdev0";
/// Names every mount and the machine (one test at a time per host).
const NAME: &str = "margo-deb-test";

/// Where the package's unit reads its config.
const CONFIG_PATH: &str = "/etc/margo-gateway/gateway.yaml";
/// The unknown key of the config a reload must refuse.
const BAD_KEY: &str = "not_a_gateway_key";

/// The test's config: the example's defaults but an interface and a
/// passthrough service that exist in the container.
const CONFIG: &str = "\
devices:
  interfaces: [mgdev0]
passthrough:
  - name: wfm.test
    addresses: [\"10.213.0.5:443\"]
audit:
  path: /var/log/gateway/audit.jsonl
state_dir: /var/lib/gateway
admin:
  listen: 127.0.0.1:9747
kernel:
  pin_path: /sys/fs/bpf/margo-gateway
";

/// A short watchdog: without pings systemd would kill the daemon within
/// seconds, so surviving several periods shows they arrive.
const WATCHDOG_DROP_IN: &str = "[Service]\nWatchdogSec=4s\n";

pub fn run(deb: &Path) -> Result<()> {
    if !cmd::is_root() {
        bail!("the service test needs root (mounts, systemd-nspawn)");
    }
    let started = Instant::now();
    let mut c = Container::boot()?;
    let result = steps(&mut c, deb);
    if result.is_err() {
        // What the service said, for the failure's reader.
        if let Ok(out) = c.inside(&["journalctl", "--no-pager", "-n", "60", "-u", UNIT]) {
            eprintln!(
                "--- journal of {UNIT} in the container ---\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let teardown = c.teardown();
    result?;
    teardown?;
    println!(
        "service test: ok in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn steps(c: &mut Container, deb: &Path) -> Result<()> {
    c.wait_booted()?;
    for args in [
        vec![
            "ip", "link", "add", DEVICE_IF, "type", "veth", "peer", "name", "mgdev1",
        ],
        vec!["ip", "addr", "add", "10.213.1.1/24", "dev", DEVICE_IF],
        vec!["ip", "link", "set", DEVICE_IF, "up"],
        vec!["ip", "link", "set", "mgdev1", "up"],
    ] {
        c.ok(&args)?;
    }

    // Install: files in place, the unit known but neither enabled nor started.
    let in_container = "/var/tmp/margo-gateway.deb";
    fs::copy(deb, c.path(in_container)).context("copying the package into the container")?;
    c.ok(&["dpkg", "-i", in_container])?;
    for f in [
        "/usr/sbin/gateway",
        "/etc/margo-gateway/gateway.yaml",
        "/etc/logrotate.d/margo-gateway",
        "/usr/share/man/man8/gateway.8.gz",
    ] {
        if !c.path(f).exists() {
            bail!("after dpkg -i, {f} is missing");
        }
    }
    expect_output(c, &["systemctl", "is-enabled", UNIT], "disabled")?;
    expect_output(c, &["systemctl", "is-active", UNIT], "inactive")?;

    fs::write(c.path("/etc/margo-gateway/gateway.yaml"), CONFIG)?;
    let drop_in = c.path(&format!("/etc/systemd/system/{UNIT}.d"));
    fs::create_dir_all(&drop_in)?;
    fs::write(drop_in.join("watchdog.conf"), WATCHDOG_DROP_IN)?;
    c.ok(&["systemctl", "daemon-reload"])?;
    c.ok(&[
        "gateway",
        "check-config",
        "--config",
        "/etc/margo-gateway/gateway.yaml",
    ])?;

    // Type=notify: `start` returns once READY=1 came, so the admin
    // listener already answers ready.
    c.ok(&["systemctl", "start", UNIT])?;
    expect_output(c, &["systemctl", "is-active", UNIT], "active")?;
    let status_text = show(c, "StatusText")?;
    if !status_text.contains(DEVICE_IF) {
        bail!("the unit's status text does not name {DEVICE_IF}: {status_text:?}");
    }
    c.ok(&["curl", "-sf", "http://127.0.0.1:9747/readyz"])?;
    let pid = show(c, "MainPID")?;

    // Three watchdog periods: alive, same process, never restarted.
    std::thread::sleep(Duration::from_secs(12));
    expect_output(c, &["systemctl", "is-active", UNIT], "active")?;
    same_process(c, &pid, "after three watchdog periods")?;

    // ExecReload runs `gateway reload`, which returns once the daemon has
    // applied the config: its generation says so at once.
    c.ok(&["systemctl", "reload", UNIT])?;
    let generation = |c: &Container| -> Result<serde_json::Value> {
        Ok(gateway_status(c)?["daemon"]["config_generation"].clone())
    };
    let g = generation(c)?;
    if g != serde_json::json!(2) {
        bail!("after systemctl reload returned, the daemon's config generation is {g}, not 2");
    }
    expect_output(c, &["systemctl", "is-active", UNIT], "active")?;
    same_process(c, &pid, "after systemctl reload")?;

    // A refused config fails `systemctl reload`, names the key, and the
    // daemon keeps running the config it had.
    let good = fs::read_to_string(c.path(CONFIG_PATH))?;
    fs::write(c.path(CONFIG_PATH), format!("{good}{BAD_KEY}: 1\n"))?;
    let out = c.inside(&["systemctl", "reload", UNIT])?;
    if out.status.success() {
        bail!("systemctl reload of a config with an unknown key `{BAD_KEY}` succeeded");
    }
    let journal = c.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", UNIT])?;
    if !String::from_utf8_lossy(&journal.stdout).contains(BAD_KEY) {
        bail!("after a refused systemctl reload the unit's journal does not name `{BAD_KEY}`");
    }
    fs::write(c.path(CONFIG_PATH), good)?;
    expect_output(c, &["systemctl", "is-active", UNIT], "active")?;
    same_process(c, &pid, "after a refused systemctl reload")?;
    let g = generation(c)?;
    if g != serde_json::json!(2) {
        bail!("a refused systemctl reload changed the config generation to {g}");
    }

    // Stop: the kernel path stays guarding.
    c.ok(&["systemctl", "stop", UNIT])?;
    expect_output(c, &["systemctl", "is-active", UNIT], "inactive")?;
    let v = gateway_status(c)?;
    if v["installed"] != serde_json::json!(true) || v["interfaces"].get(DEVICE_IF).is_none() {
        bail!(
            "after systemctl stop the kernel path should stay attached to {DEVICE_IF}; gateway status: {v}"
        );
    }
    if !c.pins().exists() {
        bail!("after systemctl stop the pins are gone");
    }

    // The sandbox refused nothing the daemon needed: it logged no
    // warning or error from start to stop.
    let journal = c.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", UNIT])?;
    let journal = String::from_utf8_lossy(&journal.stdout);
    let complaints: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("error:"))
        // The refused reload above, which `gateway reload` reported.
        .filter(|l| !l.contains(BAD_KEY))
        .collect();
    if !complaints.is_empty() {
        bail!(
            "the daemon complained under the unit's sandbox:\n{}",
            complaints.join("\n")
        );
    }

    // Purge: every file, the state and logs, and (prerm's `gateway
    // uninstall`) the pins and the policy routing.
    c.ok(&["dpkg", "--purge", "margo-gateway"])?;
    for f in [
        "/usr/sbin/gateway",
        "/etc/margo-gateway",
        "/etc/logrotate.d/margo-gateway",
        "/usr/share/man/man8/gateway.8.gz",
        "/usr/lib/systemd/system/margo-gateway.service",
        "/lib/systemd/system/margo-gateway.service",
        "/var/lib/gateway",
        "/var/log/gateway",
    ] {
        if c.path(f).exists() {
            bail!("after dpkg --purge, {f} is still there");
        }
    }
    if c.pins().exists() {
        bail!("after dpkg --purge the pins are still there");
    }
    for family in ["-4", "-6"] {
        let rules = c.ok(&["ip", family, "rule", "list"])?;
        let rules = String::from_utf8_lossy(&rules.stdout);
        if rules.contains("4747") {
            bail!("after dpkg --purge the policy routing rule is still there:\n{rules}");
        }
    }
    let tc = c.ok(&["tc", "filter", "show", "dev", DEVICE_IF, "ingress"])?;
    if !tc.stdout.is_empty() {
        bail!(
            "after dpkg --purge a filter is still on {DEVICE_IF}: {}",
            String::from_utf8_lossy(&tc.stdout)
        );
    }
    Ok(())
}

/// `gateway status --json` in the container.
fn gateway_status(c: &Container) -> Result<serde_json::Value> {
    let out = c.ok(&[
        "gateway",
        "status",
        "--json",
        "--config",
        "/etc/margo-gateway/gateway.yaml",
    ])?;
    serde_json::from_slice(&out.stdout).context("reading gateway status --json")
}

fn show(c: &Container, property: &str) -> Result<String> {
    let out = c.ok(&["systemctl", "show", "--value", "-p", property, UNIT])?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn same_process(c: &Container, pid: &str, when: &str) -> Result<()> {
    let now = show(c, "MainPID")?;
    let restarts = show(c, "NRestarts")?;
    if now != pid || restarts != "0" {
        bail!(
            "{when}: main pid {pid} became {now} (restarts: {restarts}); the daemon did not survive"
        );
    }
    Ok(())
}

fn expect_output(c: &Container, args: &[&str], want: &str) -> Result<()> {
    // `is-active`/`is-enabled` exit non-zero for the answers "inactive"
    // and "disabled": only their output counts.
    let out = c.inside(args)?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if got != want {
        bail!(
            "`{}` in the container: {got:?}, expected {want:?}",
            args.join(" ")
        );
    }
    Ok(())
}

/// The booted container and what was mounted for it.
struct Container {
    base: PathBuf,
    nspawn: Option<Child>,
    leader: Option<u32>,
    /// Mounted, in mount order (unmounted in reverse).
    mounts: Vec<PathBuf>,
}

impl Container {
    fn boot() -> Result<Self> {
        let base = std::env::temp_dir().join(NAME);
        let mut c = Container {
            base: base.clone(),
            nspawn: None,
            leader: None,
            mounts: Vec::new(),
        };
        if let Err(e) = c.mount_and_spawn() {
            let _ = c.teardown();
            return Err(e);
        }
        Ok(c)
    }

    fn mount_and_spawn(&mut self) -> Result<()> {
        let base = self.base.clone();
        if base.exists() {
            bail!(
                "{} exists: another service test runs, or one was interrupted (unmount what is mounted under it and remove it)",
                base.display()
            );
        }
        let (lower, rw, root, bpf) = (
            base.join("lower"),
            base.join("rw"),
            base.join("root"),
            base.join("bpf"),
        );
        for d in [&lower, &rw, &root, &bpf] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // `/` alone (not its submounts): the OS tree to boot.
        self.mount(
            Command::new("mount").args(["--bind", "/"]).arg(&lower),
            &lower,
        )?;
        self.mount(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1G,mode=0755", "tmpfs"])
                .arg(&rw),
            &rw,
        )?;
        fs::create_dir_all(rw.join("upper"))?;
        fs::create_dir_all(rw.join("work"))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            rw.join("upper").display(),
            rw.join("work").display()
        );
        self.mount(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&root),
            &root,
        )?;
        // A new bpffs instance: the container's pins are its own.
        self.mount(
            Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpf),
            &bpf,
        )?;
        let log = fs::File::create(base.join("rw/console.log"))?;
        let mut nspawn = cmd::new("systemd-nspawn");
        nspawn.arg(format!("--directory={}", root.display()));
        nspawn.args(["--boot", "--private-network"]);
        // Without systemd as the host's init there is no machined to
        // register with nor a bus to ask for a scope: nspawn stays in the
        // caller's cgroup. Under systemd, its default (a scope of its own).
        if !host_runs_systemd() {
            nspawn.args(["--register=no", "--keep-unit"]);
        }
        let child = nspawn
            .arg(format!("--machine={NAME}"))
            // CAP_SYS_ADMIN and CAP_NET_ADMIN are in nspawn's default set;
            // the gateway's other two (README) are not.
            .arg("--capability=CAP_BPF,CAP_PERFMON")
            // nspawn's own seccomp filter refuses bpf(2) otherwise.
            .arg("--system-call-filter=bpf perf_event_open")
            .arg(format!("--bind={}:/sys/fs/bpf", bpf.display()))
            // Only what systemctl needs: no site services (nginx, the
            // registry…) of the host's multi-user.target.
            .arg("systemd.unit=basic.target")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting systemd-nspawn (Debian package systemd-container; `cargo xtask setup` installs it)")?;
        self.nspawn = Some(child);
        Ok(())
    }

    fn mount(&mut self, cmd: &mut Command, at: &Path) -> Result<()> {
        cmd::run(cmd).with_context(|| format!("mounting {}", at.display()))?;
        self.mounts.push(at.to_path_buf());
        Ok(())
    }

    /// A path inside the container, from the host (the overlay's top).
    fn path(&self, inside: &str) -> PathBuf {
        self.base.join("root").join(inside.trim_start_matches('/'))
    }

    /// The config's pin path (/sys/fs/bpf/margo-gateway in the container),
    /// seen from the host: the container's bpffs is mounted here.
    fn pins(&self) -> PathBuf {
        self.base.join("bpf/margo-gateway")
    }

    /// Waits (bounded: a boot that does not finish is a failure) for the
    /// container's systemd to finish booting.
    fn wait_booted(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(child) = self.nspawn.as_mut()
                && let Some(st) = child.try_wait()?
            {
                bail!(
                    "systemd-nspawn exited with {st} before the container booted; its console: {}",
                    fs::read_to_string(self.base.join("rw/console.log")).unwrap_or_default()
                );
            }
            if self.leader.is_none() {
                self.leader = self.nspawn.as_ref().and_then(|c| container_init(c.id()));
            }
            if self.leader.is_some()
                && let Ok(out) = self.inside(&["systemctl", "is-system-running"])
            {
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if state == "running" || state == "degraded" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the container did not finish booting in 90 s (console: {})",
                    self.base.join("rw/console.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs a command in the container's namespaces; its output, whatever
    /// its exit status.
    fn inside(&self, args: &[&str]) -> Result<Output> {
        let leader = self
            .leader
            .context("the container has no init process yet")?;
        cmd::output(
            Command::new("nsenter")
                .arg("-t")
                .arg(leader.to_string())
                .args(["-m", "-u", "-i", "-n", "-p", "--"])
                .args(args)
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        )
    }

    /// Like `inside`, failing unless it exits 0.
    fn ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.inside(args)?;
        if !out.status.success() {
            bail!(
                "`{}` in the container exited with {}: {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Powers the container off (nspawn turns SIGTERM into a clean
    /// shutdown), then unmounts everything and removes the directory.
    fn teardown(&mut self) -> Result<()> {
        if let Some(mut child) = self.nspawn.take() {
            // SAFETY: kill(2) on the pid of our own child, which we have
            // not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let mut failed = Vec::new();
        for m in self.mounts.drain(..).rev() {
            if !cmd::new("umount")
                .arg(&m)
                .status()
                .is_ok_and(|s| s.success())
            {
                failed.push(m.display().to_string());
            }
        }
        if !failed.is_empty() {
            bail!(
                "could not unmount {} (unmount by hand, then remove {})",
                failed.join(", "),
                self.base.display()
            );
        }
        // Directory by directory, never recursively: a mount left by
        // mistake (the bind of `/`) makes this fail instead of emptying it.
        for d in ["lower", "rw", "root", "bpf", ""] {
            let dir = self.base.join(d);
            if dir.exists() {
                fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

fn host_runs_systemd() -> bool {
    fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// The container's init: the first `systemd` below nspawn's pid.
fn container_init(nspawn: u32) -> Option<u32> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut comm: HashMap<u32, String> = HashMap::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parens.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
            comm.insert(pid, stat[open + 1..close].to_owned());
        }
    }
    let descends = |mut pid: u32| {
        for _ in 0..4 {
            match parent.get(&pid) {
                Some(&p) if p == nspawn => return true,
                Some(&p) => pid = p,
                None => return false,
            }
        }
        false
    };
    comm.iter()
        .filter(|(pid, c)| c.as_str() == "systemd" && descends(**pid))
        .map(|(pid, _)| *pid)
        .min()
}
