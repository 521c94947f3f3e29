//! `xtask vm-guest`: the runner inside the VM (started by the initramfs'
//! `/init`, chrooted into the host's root).
//!
//! Runs every binary of the [`Plan`] as `cargo test` would (working
//! directory, `CARGO_MANIFEST_DIR`, `GATEWAY_BIN`; `TMPDIR` on a tmpfs of
//! its own, see [`TEST_TMPDIR`]; and [`ACCEL_ENV`]), copies their output to
//! the report port, bounds each binary in time, then starts one gateway of
//! its own to read which attach path the kernel got. Everything it says goes
//! to the second serial port as [`Event`] lines around the binaries' output,
//! with a heartbeat so that the host can tell a hung kernel from a slow test.
use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::plan::{Event, Exit, Fault, MARK, Plan, PlannedBinary};

/// The report port: the VM's second serial port.
const PORT: &str = "/dev/ttyS1";
/// How often the runner says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// `PATH` for everything the runner starts.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The tests' `TMPDIR`: a tmpfs the initramfs' `/init` mounts. The guest's
/// root is an overlay (the host's root under a tmpfs), and an overlay's
/// upper dir cannot be on an overlay; the OCI tests' skopeo and podman run
/// under a `/var/lib` overlay whose upper dir is in the test's temp dir.
pub const TEST_TMPDIR: &str = "/run/margo-tmp";
/// Tells the tests they run in a VM, and how its CPU runs (`tcg`: emulated,
/// some ten times slower than the host's; `kvm`).
pub const ACCEL_ENV: &str = "MARGO_VM_ACCEL";

/// Where report lines go; shared by the heartbeat and the runner.
#[derive(Clone)]
struct Port(Arc<Mutex<File>>);

impl Port {
    fn open() -> Result<Self> {
        // O_NOCTTY: the port must not become the runner's controlling tty.
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(PORT)
            .with_context(|| format!("opening the report port {PORT}"))?;
        Ok(Self(Arc::new(Mutex::new(file))))
    }

    fn line(&self, text: &str) {
        // A poisoned lock only means another writer panicked mid-line.
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing to do if the port fails: the host then sees silence.
        let _ = writeln!(f, "{text}");
        let _ = f.flush();
    }

    fn event(&self, e: &Event) {
        self.line(&e.render());
    }
}

pub fn run(plan_path: &Path) -> Result<ExitCode> {
    let port = Port::open()?;
    let text = fs::read_to_string(plan_path)
        .with_context(|| format!("reading the plan {}", plan_path.display()))?;
    let plan: Plan = serde_json::from_str(&text).context("parsing the plan")?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    port.event(&Event::Start { release });
    match plan.inject {
        Some(Fault::Panic) => {
            port.line("injecting a kernel panic (sysrq c)");
            // SAFETY: sync(2) takes no arguments.
            unsafe { libc::sync() };
            fs::write("/proc/sysrq-trigger", "c").context("writing /proc/sysrq-trigger")?;
        }
        Some(Fault::Silence) => {
            port.line("going silent (no heartbeat, no tests)");
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        None => {}
    }
    {
        let port = port.clone();
        thread::spawn(move || {
            loop {
                port.event(&Event::Alive);
                thread::sleep(HEARTBEAT);
            }
        });
    }
    for binary in &plan.binaries {
        run_binary(&plan, binary, &port);
    }
    if plan.probe_attach {
        match probe_attach(&plan) {
            Ok((interface, mode, log)) => {
                if let Some(line) = log {
                    port.event(&Event::AttachLog { line });
                }
                port.event(&Event::Attach { interface, mode });
            }
            Err(e) => port.event(&Event::AttachError {
                message: format!("{e:#}"),
            }),
        }
    }
    port.event(&Event::Done);
    Ok(ExitCode::SUCCESS)
}

fn test_command(plan: &Plan, binary: &PlannedBinary) -> Command {
    let mut c = Command::new(&binary.path);
    c.arg(format!("--test-threads={}", plan.test_threads))
        .args(["--color", "never"]);
    if !binary.skip.is_empty() {
        c.arg("--exact");
        for name in &binary.skip {
            c.args(["--skip", name]);
        }
    }
    c.current_dir(&plan.package_dir)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .env("CARGO_MANIFEST_DIR", &plan.package_dir)
        .env("GATEWAY_BIN", &plan.gateway_bin)
        .env("TMPDIR", TEST_TMPDIR)
        .env(ACCEL_ENV, &plan.accel)
        .stdin(Stdio::null());
    if let Some(garage) = &plan.garage_bin {
        c.env("GARAGE_BIN", garage);
    }
    c
}

/// Runs one binary, its stdout and stderr copied to the port as they come.
fn run_binary(plan: &Plan, binary: &PlannedBinary, port: &Port) {
    port.event(&Event::Begin {
        binary: binary.name.clone(),
    });
    let started = Instant::now();
    let exit = match spawn_piped(test_command(plan, binary)) {
        Ok((child, reader)) => {
            let port2 = port.clone();
            let copier = thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    // An output line that looks like a report line would
                    // confuse the host: set it apart.
                    if line.starts_with(MARK) {
                        port2.line(&format!(" {line}"));
                    } else {
                        port2.line(&line);
                    }
                }
            });
            let exit = wait_bounded(child, Duration::from_secs(plan.binary_timeout_secs));
            // The pipe closes when the binary and whatever it left running
            // exit; a leftover child holding it must not stall the run.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !copier.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            exit
        }
        Err(e) => Exit::NotStarted(format!("{e:#}")),
    };
    port.event(&Event::End {
        binary: binary.name.clone(),
        exit,
        secs: started.elapsed().as_secs_f64(),
    });
}

/// Spawns `cmd` with stdout and stderr into one pipe; returns the child and
/// the pipe's read end.
fn spawn_piped(mut cmd: Command) -> Result<(Child, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let writer2 = writer.try_clone().context("duplicating the pipe")?;
    let child = cmd
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    // `cmd` (and the write ends it holds) is dropped here, so the reader
    // sees end of file once the child's side closes.
    Ok((child, reader))
}

/// Waits for `child` at most `timeout`, then kills it (by its own pid).
fn wait_bounded(mut child: Child, timeout: Duration) -> Exit {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                return match (st.code(), st.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(s)) => Exit::Signal(s),
                    (None, None) => Exit::Code(-1),
                };
            }
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Exit::TimedOut;
            }
            Err(e) => return Exit::NotStarted(format!("waiting: {e}")),
        }
    }
}

/// Names of the probe's network namespace and veth pair.
const PROBE_NS: &str = "mgvmprobe";
const PROBE_IF: &str = "mgvmp0";
const PROBE_PEER: &str = "mgvmp1";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `nsenter --net=<probe ns> <gateway> <args>`: only the network namespace
/// changes (unlike `ip netns exec`, which remounts /sys and so hides the
/// bpffs the pins live on).
fn gateway_in_probe_ns(plan: &Plan, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{PROBE_NS}"))
        .arg(&plan.gateway_bin)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

/// Starts a gateway on a veth of its own, reads the attach mode from
/// `gateway status --json`, and stops it (SIGTERM: the program stays
/// attached and guarding, as after any routine stop; the namespace and
/// the guest go away with it). Returns the interface, the mode and the gateway's own
/// `attached` log line.
fn probe_attach(plan: &Plan) -> Result<(String, String, Option<String>)> {
    ip(&["netns", "add", PROBE_NS])?;
    let result = probe_in_ns(plan);
    let _ = ip(&["netns", "del", PROBE_NS]);
    result
}

fn probe_in_ns(plan: &Plan) -> Result<(String, String, Option<String>)> {
    ip(&[
        "-n", PROBE_NS, "link", "add", PROBE_IF, "type", "veth", "peer", "name", PROBE_PEER,
    ])?;
    for dev in [PROBE_IF, PROBE_PEER, "lo"] {
        ip(&["-n", PROBE_NS, "link", "set", dev, "up"])?;
    }
    let dir = Path::new(TEST_TMPDIR).join("mgvmprobe");
    fs::create_dir_all(&dir)?;
    let config = dir.join("gateway.yaml");
    let audit = dir.join("audit.jsonl");
    fs::write(
        &config,
        format!(
            "devices:\n  interfaces: [\"{PROBE_IF}\"]\n\
             manager:\n  name: \"wfm.probe.example\"\n  addresses: [\"10.77.2.2:443\"]\n\
             audit:\n  path: \"{}\"\n\
             state_dir: \"{}\"\n\
             kernel:\n  pin_path: \"/sys/fs/bpf/mgvmprobe\"\n",
            audit.display(),
            dir.join("state").display()
        ),
    )?;
    let config_arg = config.to_string_lossy().into_owned();
    let stderr_path = dir.join("gateway.stderr");
    let mut run = gateway_in_probe_ns(plan, &["run", "--config", &config_arg]);
    run.stdout(Stdio::null())
        .stderr(File::create(&stderr_path)?);
    let started = Instant::now();
    let mut child = run.spawn().context("starting `gateway run`")?;
    let ready = wait_ready(&mut child, &audit, Duration::from_secs(180));
    let ready_secs = started.elapsed().as_secs_f64();
    let status = ready.and_then(|()| {
        let out = gateway_in_probe_ns(plan, &["status", "--config", &config_arg, "--json"])
            .output()
            .context("running `gateway status`")?;
        if !out.status.success() {
            bail!(
                "`gateway status --json` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `gateway status --json`")?;
        v["interfaces"][PROBE_IF]["mode"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("status has no interfaces.{PROBE_IF}.mode: {v}"))
    });
    stop(&mut child);
    let log = fs::read_to_string(&stderr_path).unwrap_or_default();
    let attached = log
        .lines()
        .find(|l| l.contains("attached") && l.contains("mode="))
        .map(|l| format!("{} (ready {ready_secs:.1} s after start)", l.trim()));
    match status {
        Ok(mode) => Ok((PROBE_IF.to_owned(), mode, attached)),
        Err(e) => {
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(e.context(format!("gateway stderr (tail): {}", tail.join(" | "))))
        }
    }
}

/// Waits until the audit log holds `gateway.start`, or the gateway exits.
fn wait_ready(child: &mut Child, audit: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if fs::read_to_string(audit).is_ok_and(|t| t.contains("\"gateway.start\"")) {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("the gateway exited before it was ready ({st})");
        }
        if Instant::now() > deadline {
            bail!("the gateway was not ready after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// SIGTERM (the gateway stops serving; its kernel program keeps guarding
/// until `gateway uninstall`), then SIGKILL if it lingers; both by the
/// child's own pid.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id())
        && matches!(child.try_wait(), Ok(None))
    {
        // SAFETY: kill(2) on our own unreaped child's pid has no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(skip: Vec<String>) -> (Plan, PlannedBinary) {
        let binary = PlannedBinary {
            name: "drops".into(),
            path: "/stage/drops-0123".into(),
            skip,
        };
        let plan = Plan {
            kernel: "6.1".into(),
            gateway_bin: "/stage/gateway".into(),
            garage_bin: Some("/root/.cargo/bin/garage".into()),
            package_dir: "/w/tests".into(),
            test_threads: 2,
            accel: "tcg".into(),
            binary_timeout_secs: 5,
            binaries: vec![binary.clone()],
            probe_attach: false,
            inject: None,
        };
        (plan, binary)
    }

    #[test]
    fn tests_run_as_under_cargo() {
        let (plan, binary) = plan(vec!["slow_one".into()]);
        let c = test_command(&plan, &binary);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--test-threads=2",
                "--color",
                "never",
                "--exact",
                "--skip",
                "slow_one"
            ]
        );
        assert_eq!(c.get_current_dir(), Some(Path::new("/w/tests")));
        let env: Vec<(String, String)> = c
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        assert!(env.contains(&("GATEWAY_BIN".into(), "/stage/gateway".into())));
        assert!(env.contains(&("GARAGE_BIN".into(), "/root/.cargo/bin/garage".into())));
        assert!(env.contains(&("CARGO_MANIFEST_DIR".into(), "/w/tests".into())));
        assert!(env.contains(&("TMPDIR".into(), TEST_TMPDIR.into())));
        assert!(env.contains(&(ACCEL_ENV.into(), "tcg".into())));
    }

    #[test]
    fn a_binary_past_its_time_is_killed() -> Result<()> {
        let child = Command::new("sleep").arg("30").spawn()?;
        let started = Instant::now();
        assert_eq!(
            wait_bounded(child, Duration::from_millis(300)),
            Exit::TimedOut
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn()?;
        assert_eq!(wait_bounded(child, Duration::from_secs(10)), Exit::Code(3));
        Ok(())
    }

    #[test]
    fn output_of_both_streams_is_read_to_the_end() -> Result<()> {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; echo out2"]);
        let (child, reader) = spawn_piped(c)?;
        let lines: Vec<String> = BufReader::new(reader).lines().collect::<Result<_, _>>()?;
        assert_eq!(wait_bounded(child, Duration::from_secs(10)), Exit::Code(0));
        assert_eq!(lines, ["out", "err", "out2"]);
        Ok(())
    }
}
