//! The machine and the versions a benchmark ran with, for the report.

use std::{path::Path, process::Command};

use serde_json::{Value, json};

/// Facts about the machine, read once at the start.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub load_start: String,
    pub load_end: String,
    /// (name, version) of every program that took part.
    pub versions: Vec<(String, String)>,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let os = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|s| s.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kb / (1024.0 * 1024.0),
            kernel: first_line_of_file("/proc/sys/kernel/osrelease"),
            os,
            load_start: loadavg(),
            load_end: String::new(),
            versions: versions(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpu": self.cpu,
            "cores": self.cores,
            "memory_gib": (self.memory_gib * 10.0).round() / 10.0,
            "kernel": self.kernel,
            "os": self.os,
            "loadavg_start": self.load_start,
            "loadavg_end": self.load_end,
            "versions": self.versions.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    let text = first_line_of_file("/proc/loadavg");
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line_of_file(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// First line of a command's stdout, or of its stderr (nginx -v).
fn command_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        }
        Err(e) => format!("unavailable ({e})"),
    }
}

fn versions() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.to_string_lossy().into_owned();
    let commit = command_line("git", &["-C", &root, "rev-parse", "--short=12", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &root, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let gateway_bin = crate::gateway::binary()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("{e:#}"));
    vec![
        (
            "gateway".to_owned(),
            format!(
                "{commit}{} ({gateway_bin})",
                if dirty {
                    " with uncommitted changes"
                } else {
                    ""
                }
            ),
        ),
        ("rustc".to_owned(), command_line("rustc", &["--version"])),
        ("nginx".to_owned(), command_line("nginx", &["-v"])),
        (
            "distribution".to_owned(),
            command_line("docker-registry", &["--version"]),
        ),
        ("curl".to_owned(), command_line("curl", &["--version"])),
        ("openssl".to_owned(), command_line("openssl", &["version"])),
        ("iperf3".to_owned(), command_line("iperf3", &["--version"])),
    ]
}
