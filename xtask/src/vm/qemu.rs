//! Booting a VM under QEMU (KVM where it boots, else TCG) with the host's
//! root shared read-only ([`super::share`]), and a watch on its console and
//! report port that ends the run on a kernel panic, lockup or hang.
//!
//! Network safety: the VM has no network device at all (`-nic none` and
//! `-nodefaults`); the tests inside build their own namespaces.
use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    os::unix::process::CommandExt as _,
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    guest::HEARTBEAT,
    kernels::Kernel,
    plan::Event,
    share::{ShareDaemon, die_with_parent},
};
use crate::cmd;

/// How the VM's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn label(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }

    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            // `max` under KVM asks for MSRs some hosts refuse; `host` is
            // what KVM can give.
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", TCG_CPU],
        }
    }

    /// Kernel parameters for this accelerator.
    fn kernel_params(self) -> &'static str {
        match self {
            Accel::Kvm => "",
            Accel::Tcg => TCG_KERNEL_PARAMS,
        }
    }
}

/// The guest's CPU under TCG: all TCG emulates (`max`) but what it emulates
/// slowly, so that the guest's kernel and libraries choose the code paths
/// TCG runs fast. TCG runs `rep movs`/`rep stos` one element per pass
/// through a translated block, and with ERMS the kernel and glibc copy and
/// clear memory byte by byte that way; AVX, AVX2 and VAES instructions are
/// helper calls, and AES-GCM (OpenSSL's, ring's) is much slower on them than
/// on AES-NI with SSE. Measured in a 6.12 guest on the 2-core machine,
/// `max` against this: Python copying 8 x 64 MiB 8.3 s against 1.7 s,
/// `openssl speed` AES-128-GCM 6 MB/s against 46 MB/s, `dd` of 256 MiB into
/// a tmpfs 5.6 s against 3.2 s (with [`TCG_KERNEL_PARAMS`]).
const TCG_CPU: &str = "max,-erms,-avx,-avx2,-vaes,-vpclmulqdq,-fma,-f16c";

/// With `rep_good` (a flag the kernel sets itself on most CPUs) the kernel
/// clears pages with `rep stosq`, eight bytes per pass under TCG; without
/// it, with an unrolled loop of 64 bytes per pass.
///
/// `mitigations=off`: on `max` the guest kernel otherwise turns on
/// retpolines and swapgs barriers, which under TCG make every syscall and
/// process start dearer (10 starts of `true` 1.0 s against 0.45 s, of `ip`
/// 1.6 s against 1.1 s, in a 6.12 guest on the busy 2-core machine). The
/// VM runs only the tests; and the BPF verifier already skips its Spectre
/// hardening for a loader with CAP_PERFMON (root), so what the gateway's
/// programs meet is unchanged.
const TCG_KERNEL_PARAMS: &str = "clearcpuid=rep_good mitigations=off";

const QEMU: &str = "qemu-system-x86_64";

/// How long a KVM boot may take to reach `/init`: under KVM it takes well
/// under a second, so a longer wait means KVM does not boot here (nested
/// KVM on some hosts hangs instead of failing).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// KVM if `/dev/kvm` opens and a probe boot of `kernel` reaches `/init`,
/// else TCG. The probe's answer is remembered per host boot in `cache`.
pub fn detect(kernel: &Kernel, initramfs: &Path, cache: &Path) -> Accel {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot_id = boot_id.trim();
    if let Ok(text) = fs::read_to_string(cache) {
        match text.trim().split_once(' ') {
            Some((id, "kvm")) if id == boot_id => return Accel::Kvm,
            Some((id, "tcg")) if id == boot_id => return Accel::Tcg,
            _ => {}
        }
    }
    println!(
        "vm: probing KVM (a boot of {} that must reach /init within {KVM_PROBE_TIMEOUT:?})",
        kernel.release
    );
    let accel = if probe_kvm(kernel, initramfs) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    println!(
        "vm: KVM {}",
        if accel == Accel::Kvm {
            "boots"
        } else {
            "does not boot here: using TCG"
        }
    );
    let word = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    if let Some(dir) = cache.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::write(cache, format!("{boot_id} {word}\n"));
    accel
}

fn probe_kvm(kernel: &Kernel, initramfs: &Path) -> bool {
    let mut c = cmd::new(QEMU);
    c.args(Accel::Kvm.qemu_args())
        .args(["-smp", "1", "-m", "256M", "-nodefaults", "-display", "none"])
        .args([
            "-no-reboot",
            "-nic",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet margo.probe=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut child) = c.spawn() else {
        return false;
    };
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("@@margo-init probe-ok") {
                    let _ = tx.send(());
                    break;
                }
            }
        });
    }
    let ok = rx.recv_timeout(KVM_PROBE_TIMEOUT).is_ok();
    // By pid: our own child only.
    let _ = child.kill();
    let _ = child.wait();
    ok
}

/// Everything one VM run needs.
pub struct VmConfig<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub accel: Accel,
    pub smp: u32,
    pub memory_mib: u32,
    /// Extra kernel parameters (the runner and plan paths).
    pub params: String,
    /// Where the console and report logs are written.
    pub log_dir: &'a Path,
    /// Scratch space for the virtiofsd socket and share point (short path).
    pub scratch: &'a Path,
    /// The whole run's bound.
    pub timeout: Duration,
    /// How long the kernel may take to start the runner.
    pub boot_timeout: Duration,
    /// How long the runner may stay silent (no heartbeat, no test output)
    /// before the kernel counts as hung.
    pub silence: Duration,
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The guest powered off after the runner said it was done.
    Finished,
    /// The guest powered off early, or `/init` failed.
    Stopped(String),
    /// A kernel panic, oops or soft lockup on the console: what it was,
    /// and the console line that said so.
    Crashed { what: &'static str, line: String },
    /// No report line for too long, or no start of the runner.
    Hung(String),
    /// The guest was still working when the whole run's bound passed:
    /// slow, not hung (it kept reporting).
    OverTime(Duration),
}

/// Console lines that end a run at once, with what they mean.
/// The first match names the line (a soft lockup is reported as a `BUG:`).
const FATAL: &[(&str, &str)] = &[
    ("soft lockup", "soft lockup"),
    ("hard LOCKUP", "hard lockup"),
    ("Kernel panic", "kernel panic"),
    ("Oops:", "kernel oops"),
    ("BUG:", "kernel BUG"),
];

/// The fatal condition a console line reports, if any.
pub fn fatal(line: &str) -> Option<&'static str> {
    FATAL
        .iter()
        .find(|(needle, _)| line.contains(needle))
        .map(|(_, what)| *what)
}

/// What `/init` reports on the console when it, or the runner, failed.
fn init_failure(line: &str) -> Option<String> {
    if let Some(why) = line.split("@@margo-init failed: ").nth(1) {
        return Some(format!("/init failed: {}", why.trim()));
    }
    let code = line
        .split("@@margo-init runner exited with ")
        .nth(1)?
        .trim();
    (code != "0").then(|| {
        format!("the runner (xtask vm-guest) failed with exit code {code}; its error is on the console above")
    })
}

enum Seen {
    Console(String),
    QemuStderr(String),
}

/// The result of one run.
pub struct VmOutcome {
    pub ending: Ending,
    /// Seconds from QEMU's start to the runner's first report line.
    pub boot_secs: Option<f64>,
    pub secs: f64,
}

/// Boots the VM and watches it to the end. `on_console` gets every console
/// line, `on_report` every report-port line, as they come.
pub fn run(
    cfg: &VmConfig,
    mut on_console: impl FnMut(&str),
    mut on_report: impl FnMut(&str),
) -> Result<VmOutcome> {
    fs::create_dir_all(cfg.log_dir)
        .with_context(|| format!("creating {}", cfg.log_dir.display()))?;
    let report_log = cfg.log_dir.join("report.log");
    File::create(&report_log).with_context(|| format!("creating {}", report_log.display()))?;
    let mut fsd = ShareDaemon::start(cfg.scratch, &cfg.log_dir.join("virtiofsd.log"))?;
    let result = boot(
        cfg,
        fsd.socket(),
        &report_log,
        &mut on_console,
        &mut on_report,
    );
    fsd.stop();
    result
}

fn boot(
    cfg: &VmConfig,
    socket: &Path,
    report_log: &Path,
    on_console: &mut impl FnMut(&str),
    on_report: &mut impl FnMut(&str),
) -> Result<VmOutcome> {
    let mem = format!("{}M", cfg.memory_mib);
    let mut c = cmd::new(QEMU);
    c.args(cfg.accel.qemu_args())
        .args(["-smp", &cfg.smp.to_string(), "-m", &mem])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        // No network device at all: nothing in the VM reaches the host's networks.
        .args(["-nic", "none"])
        // vhost-user needs the guest's memory shared with virtiofsd.
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
        .args(["-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=hostroot,path={}", socket.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=hostroot,tag=hostroot"])
        // ttyS0: the console; ttyS1: the runner's report port.
        .args(["-serial", "stdio"])
        .arg("-serial")
        .arg(format!("file:{}", report_log.display()))
        .arg("-kernel")
        .arg(&cfg.kernel.vmlinuz)
        .arg("-initrd")
        .arg(cfg.initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet {} {}",
            cfg.accel.kernel_params(),
            cfg.params
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        c.pre_exec(die_with_parent);
    }
    let started = Instant::now();
    let mut qemu = c
        .spawn()
        .with_context(|| format!("starting `{}`", cmd::describe(&c)))?;
    let (tx, rx) = mpsc::channel::<Seen>();
    let console_log = File::create(cfg.log_dir.join("console.log"))?;
    if let Some(out) = qemu.stdout.take() {
        let tx = tx.clone();
        thread::spawn(move || copy_lines(out, Some(console_log), |l| tx.send(Seen::Console(l))));
    }
    if let Some(err) = qemu.stderr.take() {
        let tx = tx.clone();
        thread::spawn(move || copy_lines(err, None, |l| tx.send(Seen::QemuStderr(l))));
    }
    let mut tail = Tail::new(report_log)?;

    let mut ending: Option<Ending> = None;
    let mut boot_secs = None;
    let mut last_report = Instant::now();
    let mut done = false;
    let mut qemu_stderr = Vec::new();
    let silence = cfg.silence;
    let exited = loop {
        for line in tail.read_lines()? {
            last_report = Instant::now();
            boot_secs.get_or_insert(started.elapsed().as_secs_f64());
            if Event::parse(&line) == Some(Event::Done) {
                done = true;
            }
            on_report(&line);
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Seen::Console(line)) => {
                on_console(&line);
                if ending.is_none() {
                    if let Some(what) = fatal(&line) {
                        ending = Some(Ending::Crashed {
                            what,
                            line: line.trim().to_owned(),
                        });
                        let _ = qemu.kill();
                    } else if let Some(why) = init_failure(&line) {
                        ending = Some(Ending::Stopped(why));
                    }
                }
            }
            Ok(Seen::QemuStderr(line)) => {
                eprintln!("qemu: {line}");
                qemu_stderr.push(line);
            }
            Err(_) => {}
        }
        if let Some(st) = qemu.try_wait()? {
            break st;
        }
        if ending.is_none() {
            let elapsed = started.elapsed();
            let stop = if elapsed > cfg.timeout {
                Some(Ending::OverTime(cfg.timeout))
            } else if boot_secs.is_none() && elapsed > cfg.boot_timeout {
                Some(Ending::Hung(format!(
                    "the runner did not start within {:?} of boot",
                    cfg.boot_timeout
                )))
            } else if boot_secs.is_some() && !done && last_report.elapsed() > silence {
                Some(Ending::Hung(format!(
                    "no word from the runner for {silence:?} (it reports every {HEARTBEAT:?}): the kernel hangs"
                )))
            } else {
                None
            };
            if let Some(stop) = stop {
                ending = Some(stop);
                // By pid: the QEMU this run started.
                let _ = qemu.kill();
            }
        }
    };
    // What the guest wrote last, and the console's last lines.
    for line in tail.read_lines()? {
        if Event::parse(&line) == Some(Event::Done) {
            done = true;
        }
        on_report(&line);
    }
    while let Ok(seen) = rx.recv_timeout(Duration::from_millis(100)) {
        if let Seen::Console(line) = seen {
            on_console(&line);
            if ending.is_none()
                && let Some(what) = fatal(&line)
            {
                ending = Some(Ending::Crashed {
                    what,
                    line: line.trim().to_owned(),
                });
            }
        }
    }
    let ending = ending.unwrap_or_else(|| {
        if done {
            Ending::Finished
        } else if exited.success() {
            Ending::Stopped("the VM powered off before the runner finished".to_owned())
        } else {
            Ending::Stopped(format!(
                "QEMU exited with {exited}: {}",
                qemu_stderr.join(" | ")
            ))
        }
    });
    Ok(VmOutcome {
        ending,
        boot_secs,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Copies `from` line by line to `log` (if any) and `send`, until end of
/// file or until nobody listens.
fn copy_lines<T>(
    from: impl std::io::Read,
    mut log: Option<File>,
    send: impl Fn(String) -> Result<(), T>,
) {
    use std::io::Write as _;
    for line in BufReader::new(from).split(b'\n') {
        let Ok(bytes) = line else { break };
        let text = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\r')
            .to_owned();
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{text}");
        }
        if send(text).is_err() {
            break;
        }
    }
}

/// Reads the lines appended to a file since the last call (QEMU writes the
/// report port to a file).
struct Tail {
    file: File,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: &Path) -> Result<Self> {
        Ok(Self {
            file: File::open(path).with_context(|| format!("opening {}", path.display()))?,
            pos: 0,
            partial: Vec::new(),
        })
    }

    fn read_lines(&mut self) -> Result<Vec<String>> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            lines.push(
                String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            );
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_console_lines() {
        assert_eq!(
            fatal("[   12.1] Kernel panic - not syncing: Attempted to kill init!"),
            Some("kernel panic")
        );
        assert_eq!(
            fatal("[   30.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [ip:123]"),
            Some("soft lockup")
        );
        assert_eq!(
            fatal("[    5.2] BUG: kernel NULL pointer dereference, address: 0000000000000008"),
            Some("kernel BUG")
        );
        assert_eq!(fatal("@@margo-init root ready at 8.1s"), None);
        assert_eq!(
            fatal("[    0.04] ..MP-BIOS bug: 8254 timer not connected to IO-APIC"),
            None
        );
    }

    #[test]
    fn init_failures() {
        assert_eq!(
            init_failure("@@margo-init failed: insmod veth").as_deref(),
            Some("/init failed: insmod veth")
        );
        assert!(
            init_failure("@@margo-init runner exited with 1")
                .is_some_and(|w| w.contains("exit code 1"))
        );
        assert_eq!(init_failure("@@margo-init runner exited with 0"), None);
        assert_eq!(init_failure("@@margo-init root ready at 6.1s"), None);
    }

    #[test]
    fn tail_returns_whole_lines_once() -> Result<()> {
        use std::io::Write as _;
        let dir = crate::vm::test_dir("tail")?;
        let path = dir.join("report.log");
        let mut f = File::create(&path)?;
        let mut tail = Tail::new(&path)?;
        assert!(tail.read_lines()?.is_empty());
        write!(f, "one\r\ntw")?;
        f.flush()?;
        assert_eq!(tail.read_lines()?, ["one"]);
        write!(f, "o\nthree\n")?;
        f.flush()?;
        assert_eq!(tail.read_lines()?, ["two", "three"]);
        assert!(tail.read_lines()?.is_empty());
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
