//! What the host asks the guest to run, and the lines the guest reports.
//!
//! The host writes a [`Plan`] as JSON into the run's stage directory, which
//! the guest sees at the same path (the host's root is the guest's). The
//! guest reports on its second serial port: [`Event`] lines, each starting
//! with [`MARK`], between which a test binary's own output is copied
//! through unchanged.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The guest's work, written by `cargo xtask vm`, read by `xtask vm-guest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The kernel's name (`6.1`), for messages.
    pub kernel: String,
    /// `GATEWAY_BIN` for the tests.
    pub gateway_bin: PathBuf,
    /// `GARAGE_BIN` for the tests (the shared-store tests' object store):
    /// the guest's environment is its own, so the tests could not find
    /// cargo's bin dir when `CARGO_HOME` is not `/root/.cargo`.
    #[serde(default)]
    pub garage_bin: Option<PathBuf>,
    /// The tests' package directory: their working directory and
    /// `CARGO_MANIFEST_DIR`, as under `cargo test`.
    pub package_dir: PathBuf,
    /// `--test-threads` for every binary.
    pub test_threads: u32,
    /// How QEMU runs the guest's CPU (`tcg`, `kvm`): the tests see it as
    /// `MARGO_VM_ACCEL`, so that they may size their work for an emulated
    /// CPU (sizes and counts, never which tests run).
    #[serde(default)]
    pub accel: String,
    /// A binary still running after this long is killed and its unfinished
    /// tests fail.
    pub binary_timeout_secs: u64,
    pub binaries: Vec<PlannedBinary>,
    /// Start one gateway on a veth of its own and report the attach mode.
    pub probe_attach: bool,
    /// A failure to cause before the tests, to check that the host sees it.
    #[serde(default)]
    pub inject: Option<Fault>,
}

/// A failure the guest causes on purpose (`cargo xtask vm --inject …`): the
/// host must end the run as failed, within its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// A kernel panic (`echo c > /proc/sysrq-trigger`).
    Panic,
    /// The runner goes silent, as if the kernel hung.
    Silence,
}

/// One libtest binary to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBinary {
    /// Its name in reports: the cargo target's (`passthrough`, `lib`).
    pub name: String,
    pub path: PathBuf,
    /// Tests not to run (exact names, `--exact --skip`).
    pub skip: Vec<String>,
}

/// How a binary's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed by the guest runner after [`Plan::binary_timeout_secs`].
    TimedOut,
    /// Could not be started.
    NotStarted(String),
}

/// A line the guest runner reports (after [`MARK`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The runner started on this kernel release.
    Start {
        release: String,
    },
    /// Sent every few seconds while the runner lives: silence means a hang.
    Alive,
    /// A binary starts; lines until its [`Event::End`] are its output.
    Begin {
        binary: String,
    },
    End {
        binary: String,
        exit: Exit,
        secs: f64,
    },
    /// The attach probe's result: the mode `gateway status` reported.
    Attach {
        interface: String,
        mode: String,
    },
    /// The gateway's own log line about the attachment.
    AttachLog {
        line: String,
    },
    AttachError {
        message: String,
    },
    /// The runner finished everything.
    Done,
}

/// The prefix of every [`Event`] line.
pub const MARK: &str = "@@margo ";

impl Event {
    pub fn render(&self) -> String {
        let body = match self {
            Event::Start { release } => format!("start {release}"),
            Event::Alive => "alive".to_owned(),
            Event::Begin { binary } => format!("begin {binary}"),
            Event::End { binary, exit, secs } => {
                let exit = match exit {
                    Exit::Code(c) => format!("exit={c}"),
                    Exit::Signal(s) => format!("signal={s}"),
                    Exit::TimedOut => "timeout".to_owned(),
                    Exit::NotStarted(why) => format!("not-started={}", one_line(why)),
                };
                format!("end {binary} {secs:.1} {exit}")
            }
            Event::Attach { interface, mode } => format!("attach {interface} {mode}"),
            Event::AttachLog { line } => format!("attach-log {}", one_line(line)),
            Event::AttachError { message } => format!("attach-error {}", one_line(message)),
            Event::Done => "done".to_owned(),
        };
        format!("{MARK}{body}")
    }

    /// The event on `line`, or `None` for any other line (test output).
    pub fn parse(line: &str) -> Option<Event> {
        let body = line.trim_end_matches(['\r', '\n']).strip_prefix(MARK)?;
        let (verb, rest) = body.split_once(' ').unwrap_or((body, ""));
        Some(match verb {
            "start" => Event::Start {
                release: rest.to_owned(),
            },
            "alive" => Event::Alive,
            "begin" => Event::Begin {
                binary: rest.to_owned(),
            },
            "end" => {
                let mut parts = rest.splitn(3, ' ');
                let binary = parts.next()?.to_owned();
                let secs = parts.next()?.parse().ok()?;
                let exit = parts.next()?;
                let exit = if exit == "timeout" {
                    Exit::TimedOut
                } else if let Some(c) = exit.strip_prefix("exit=") {
                    Exit::Code(c.parse().ok()?)
                } else if let Some(s) = exit.strip_prefix("signal=") {
                    Exit::Signal(s.parse().ok()?)
                } else {
                    Exit::NotStarted(exit.strip_prefix("not-started=")?.to_owned())
                };
                Event::End { binary, exit, secs }
            }
            "attach" => {
                let (interface, mode) = rest.split_once(' ')?;
                Event::Attach {
                    interface: interface.to_owned(),
                    mode: mode.to_owned(),
                }
            }
            "attach-log" => Event::AttachLog {
                line: rest.to_owned(),
            },
            "attach-error" => Event::AttachError {
                message: rest.to_owned(),
            },
            "done" => Event::Done,
            _ => return None,
        })
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let events = [
            Event::Start {
                release: "6.1.0-56-cloud-amd64".into(),
            },
            Event::Alive,
            Event::Begin {
                binary: "passthrough".into(),
            },
            Event::End {
                binary: "passthrough".into(),
                exit: Exit::Code(101),
                secs: 12.5,
            },
            Event::End {
                binary: "drops".into(),
                exit: Exit::Signal(9),
                secs: 1.0,
            },
            Event::End {
                binary: "oci".into(),
                exit: Exit::TimedOut,
                secs: 600.0,
            },
            Event::End {
                binary: "lib".into(),
                exit: Exit::NotStarted("No such file or directory (os error 2)".into()),
                secs: 0.0,
            },
            Event::Attach {
                interface: "mgvm0".into(),
                mode: "netlink".into(),
            },
            Event::AttachLog {
                line: "INFO gateway::ebpf: attached interface=mgvm0 mode=Netlink".into(),
            },
            Event::AttachError {
                message: "gateway exited".into(),
            },
            Event::Done,
        ];
        for e in events {
            let line = format!("{}\r\n", e.render());
            assert_eq!(Event::parse(&line), Some(e), "{line:?}");
        }
    }

    #[test]
    fn other_lines_are_output() {
        for line in [
            "test foo ... ok",
            "@@margo-init root ready",
            "@@margo",
            "@@margo frobnicate",
            "",
        ] {
            assert_eq!(Event::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn plan_is_json() -> anyhow::Result<()> {
        let plan = Plan {
            kernel: "6.1".into(),
            gateway_bin: "/w/target/vm/stage/gateway".into(),
            garage_bin: Some("/root/.cargo/bin/garage".into()),
            package_dir: "/w/tests".into(),
            test_threads: 2,
            accel: "tcg".into(),
            binary_timeout_secs: 600,
            binaries: vec![PlannedBinary {
                name: "passthrough".into(),
                path: "/w/target/vm/stage/passthrough".into(),
                skip: vec!["a".into()],
            }],
            probe_attach: true,
            inject: None,
        };
        let json = serde_json::to_string(&plan)?;
        assert_eq!(serde_json::from_str::<Plan>(&json)?, plan);
        Ok(())
    }
}
