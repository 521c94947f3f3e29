//! The kernel half of the gateway: loading, attaching, pinning, adopting
//! and removing the TC ingress program, its maps and the policy routing.
//! This is the only module that uses aya.
//!
//! # Minimum kernel version
//!
//! 5.7, for `bpf_sk_assign` at TC ingress (commit cf7fbe660f2d, "bpf: Add
//! socket assign support"). TCX links need 6.6; older kernels get a
//! netlink `clsact` filter.
//!
//! # Lifecycle
//!
//! - First start: load, pin program and maps, write the configuration into
//!   the maps, attach to every interface, record the attachments.
//! - Restart after a crash: the pins and the record are there; the daemon
//!   adopts them (no second attachment, no gap) and rewrites the
//!   configuration in place.
//! - Stop (SIGTERM, SIGINT): the daemon closes its sockets and exits; the
//!   program stays attached and pinned and drops everything it would hand
//!   to the daemon (fail closed), exactly as after a crash, until a new
//!   daemon adopts it.
//! - Uninstall (`gateway uninstall`): detach, unpin, remove the record and
//!   the routing rules; the interfaces are unguarded afterwards.

mod attach;
mod budget;
pub mod counters;
pub mod events;
#[cfg(test)]
mod frame;
mod maps;
mod pins;
pub mod routing;
mod state;

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier},
    util::KernelVersion,
};
use gateway_common::{ABI_VERSION, COUNTERS_FALLBACK, COUNTERS_MAX_ENTRIES, PROGRAM_NAME};
use std::os::fd::BorrowedFd;

use thiserror::Error;

pub use maps::{Maps, local_entries};
pub use state::{Attachment, Mode, State};

use crate::config::Config;
use pins::Pins;

/// The eBPF object built by `gateway`'s build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

#[derive(Debug, Error)]
pub enum EbpfError {
    #[error(
        "kernel {found} cannot run the gateway: it lacks {feature} (needs Linux {needs} or newer)"
    )]
    KernelTooOld {
        found: String,
        feature: &'static str,
        needs: &'static str,
    },
    #[error(
        "this gateway binary carries no eBPF object (it was built with AYA_BUILD_SKIP); build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(String),
    #[error("eBPF object has no map {name}")]
    MissingMap { name: String },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF program {PROGRAM_NAME}: {0}")]
    Program(String),
    #[error(
        "{path} is not on a bpffs; mount one (`mount -t bpf bpf /sys/fs/bpf`) or set kernel.pin_path"
    )]
    NotBpffs { path: PathBuf },
    #[error("pin path {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning {what}: {source}")]
    PinObject {
        what: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("attaching to {interface}: {message}")]
    Attach { interface: String, message: String },
    #[error("detaching from {interface}: {message}")]
    Detach { interface: String, message: String },
    #[error("state record {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("policy routing: {0}")]
    Routing(String),
    #[error("reading the possible CPUs ({what}): {source}")]
    Cpus {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{count} device interfaces: the kernel program counts at most {max} (devices.interfaces)"
    )]
    TooManyInterfaces { count: usize, max: u32 },
}

/// Refuses kernels that cannot run the gateway at all.
pub fn check_kernel() -> Result<KernelVersion, EbpfError> {
    let v = KernelVersion::current().map_err(|e| EbpfError::KernelTooOld {
        found: format!("(unknown: {e})"),
        feature: "a readable version",
        needs: "5.7",
    })?;
    check_kernel_version(v)?;
    Ok(v)
}

/// [`check_kernel`] for a given version, so the refusal is testable on
/// any kernel.
fn check_kernel_version(v: KernelVersion) -> Result<(), EbpfError> {
    if v < KernelVersion::new(5, 7, 0) {
        return Err(EbpfError::KernelTooOld {
            found: v.to_string(),
            feature: "bpf_sk_assign at TC ingress",
            needs: "5.7",
        });
    }
    Ok(())
}

/// The installed kernel path: maps to configure and read, and the record
/// of attachments.
pub struct KernelPath {
    pins: Pins,
    state_dir: PathBuf,
    state: State,
    pub maps: Maps,
    /// Whether this daemon took over an installation it found.
    pub adopted: bool,
}

impl KernelPath {
    /// Installs the program on every configured interface, or adopts the
    /// installation a previous daemon left, then writes the configuration.
    ///
    /// `sockets` are the daemon's transparent sockets by socket-map slot
    /// (`gateway_common::LISTENER_V4` …, `UDP_V6`).
    pub fn install(config: &Config, sockets: &[(u32, BorrowedFd<'_>)]) -> Result<Self, EbpfError> {
        check_kernel()?;
        raise_memlock();
        let pins = Pins::new(&config.kernel.pin_path);
        pins.prepare()?;
        let mode = attach::choose_mode(config.kernel.attach);
        let previous = State::read(&config.state_dir)?;
        let mut path = match previous {
            Some(state)
                if state.abi_version == ABI_VERSION
                    && state.pin_path == pins.root
                    && pins.prog().exists() =>
            {
                Self::adopt(pins, config, state)?
            }
            stale => {
                if let Some(state) = stale {
                    tracing::warn!(
                        abi = state.abi_version,
                        "replacing an installation of another version"
                    );
                    remove_installation(&Pins::new(&state.pin_path), &state);
                }
                match Self::fresh(pins.clone(), config, sockets) {
                    Ok(path) => path,
                    Err(e) => {
                        // Nothing was attached: leave no half installation.
                        let _ = pins.remove_all();
                        let _ = State::remove(&config.state_dir);
                        return Err(e);
                    }
                }
            }
        };
        path.reconcile_interfaces(config, mode)?;
        path.maps.configure(config, sockets)?;
        Ok(path)
    }

    fn adopt(pins: Pins, config: &Config, state: State) -> Result<Self, EbpfError> {
        let maps = Maps::from_pins(&pins)?;
        tracing::info!(pins = %pins.root.display(), "adopting the pinned kernel path");
        Ok(Self {
            pins,
            state_dir: config.state_dir.clone(),
            state,
            maps,
            adopted: true,
        })
    }

    fn fresh(
        pins: Pins,
        config: &Config,
        sockets: &[(u32, BorrowedFd<'_>)],
    ) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NoObject);
        }
        // Leftovers of a run that never wrote its record.
        pins.remove_all()?;
        pins.prepare()?;
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| EbpfError::Load(error_chain(&e)))?;
        let mut maps = Maps::take_and_pin(&mut ebpf, &pins)?;
        // Configure before attaching, so the first packet meets the policy.
        maps.configure(config, sockets)?;
        let prog = program(&mut ebpf)?;
        prog.load().map_err(program_err)?;
        prog.pin(pins.prog())
            .map_err(|source| EbpfError::PinObject {
                what: "program".into(),
                source,
            })?;
        let state = State {
            abi_version: ABI_VERSION,
            pin_path: pins.root.clone(),
            attachments: Vec::new(),
        };
        state.write(&config.state_dir)?;
        Ok(Self {
            pins,
            state_dir: config.state_dir.clone(),
            state,
            maps,
            adopted: false,
        })
    }

    /// Attaches to configured interfaces that lack the program and detaches
    /// from recorded ones no longer configured. Attaching first keeps every
    /// still-configured interface guarded throughout.
    fn reconcile_interfaces(&mut self, config: &Config, mode: Mode) -> Result<(), EbpfError> {
        // One counters entry per interface plus the fallback.
        let max = COUNTERS_MAX_ENTRIES - 1;
        if config.devices.interfaces.len() > max as usize {
            return Err(EbpfError::TooManyInterfaces {
                count: config.devices.interfaces.len(),
                max,
            });
        }
        // Before any attach: a packet that misses its interface's entry
        // is counted here rather than not at all.
        self.maps.ensure_counters(COUNTERS_FALLBACK)?;
        let mut prog: Option<SchedClassifier> = None;
        for iface in &config.devices.interfaces {
            let present = self
                .state
                .attachments
                .iter()
                .any(|a| &a.interface == iface && attach::is_present(a, &self.pins));
            if present {
                continue;
            }
            // A recorded attachment that is no longer valid (interface
            // re-created) is forgotten before attaching anew.
            self.state.attachments.retain(|a| &a.interface != iface);
            if prog.is_none() {
                prog = Some(SchedClassifier::from_pin(self.pins.prog()).map_err(program_err)?);
            }
            let Some(p) = prog.as_mut() else {
                return Err(EbpfError::Program("pinned program vanished".into()));
            };
            // The interface's counters exist before its first packet; a
            // name that does not resolve fails in `attach`, with its reason.
            if let Ok(ifindex) = nix::net::if_::if_nametoindex(iface.as_str()) {
                self.maps.ensure_counters(ifindex)?;
            }
            let a = attach::attach(p, iface, mode, &self.pins)?;
            tracing::info!(interface = %iface, mode = ?a.mode, "attached");
            self.state.attachments.push(a);
            self.state.write(&self.state_dir)?;
        }
        let (keep, gone): (Vec<Attachment>, Vec<Attachment>) = self
            .state
            .attachments
            .drain(..)
            .partition(|a| config.devices.interfaces.contains(&a.interface));
        self.state.attachments = keep;
        for a in gone {
            attach::detach(&a, &self.pins)?;
            tracing::info!(interface = %a.interface, "detached (no longer configured)");
        }
        self.maps.track_interfaces(&self.state.attachments)?;
        self.state.write(&self.state_dir)
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.state.attachments
    }

    /// Removes an installation found in `state_dir` (no daemon running):
    /// links, pins and the record. `Ok(false)` when nothing was installed.
    pub fn uninstall(config: &Config) -> Result<bool, EbpfError> {
        let Some(state) = State::read(&config.state_dir)? else {
            // No record; pins of a run that never wrote one may remain.
            let pins = Pins::new(&config.kernel.pin_path);
            let had_pins = pins.prog().exists();
            pins.remove_all()?;
            return Ok(had_pins);
        };
        let pins = Pins::new(&state.pin_path);
        let maps = Maps::from_pins(&pins).ok();
        Self {
            pins,
            state_dir: config.state_dir.clone(),
            state,
            maps: match maps {
                Some(m) => m,
                None => {
                    // Maps gone (a half-removed installation): detach what
                    // the record names and remove what is left.
                    let state = State::read(&config.state_dir)?.unwrap_or(State {
                        abi_version: ABI_VERSION,
                        pin_path: config.kernel.pin_path.clone(),
                        attachments: Vec::new(),
                    });
                    let pins = Pins::new(&state.pin_path);
                    remove_installation(&pins, &state);
                    State::remove(&config.state_dir)?;
                    return Ok(true);
                }
            },
            adopted: true,
        }
        .remove()?;
        Ok(true)
    }

    /// Removes everything: links, pins, the record. Devices are no longer
    /// guarded afterwards.
    pub fn remove(self) -> Result<(), EbpfError> {
        let Self {
            pins,
            state_dir,
            state,
            maps,
            ..
        } = self;
        drop(maps);
        let mut first_error = None;
        for a in &state.attachments {
            if let Err(e) = attach::detach(a, &pins) {
                tracing::error!(error = %e, "detach failed");
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = pins.remove_all() {
            first_error.get_or_insert(e);
        }
        if let Err(e) = State::remove(&state_dir) {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Best-effort removal of another version's installation.
fn remove_installation(pins: &Pins, state: &State) {
    for a in &state.attachments {
        if let Err(e) = attach::detach(a, pins) {
            tracing::warn!(error = %e, "could not detach a stale attachment");
        }
    }
    if let Err(e) = pins.remove_all() {
        tracing::warn!(error = %e, "could not remove stale pins");
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, EbpfError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| EbpfError::Program("not in the object".into()))?
        .try_into()
        .map_err(program_err)
}

fn program_err(e: ProgramError) -> EbpfError {
    EbpfError::Program(tail_lines(&error_chain(&e), VERIFIER_LOG_LINES))
}

/// Verifier logs run to thousands of lines; the reason is at the end.
const VERIFIER_LOG_LINES: usize = 40;

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.to_owned();
    }
    format!(
        "{}\n[... {} lines ...]\n{}",
        lines[0],
        lines.len() - n - 1,
        lines[lines.len() - n..].join("\n")
    )
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if ret != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels 5.11+");
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_without_sk_assign_are_refused_by_name() {
        let Err(err) = check_kernel_version(KernelVersion::new(5, 6, 19)) else {
            panic!("5.6 has no bpf_sk_assign at TC ingress and must be refused");
        };
        let msg = err.to_string();
        assert!(msg.contains("bpf_sk_assign"), "{msg}");
        assert!(msg.contains("5.6.19") && msg.contains("Linux 5.7"), "{msg}");
        for ok in [(5, 7, 0), (6, 1, 0), (6, 12, 117)] {
            assert!(check_kernel_version(KernelVersion::new(ok.0, ok.1, ok.2)).is_ok());
        }
    }
}
