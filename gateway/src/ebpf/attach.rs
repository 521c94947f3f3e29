//! Attaching the program to an interface's TC ingress, and detaching it.
//!
//! TCX links (kernel 6.6+) are pinned, so they outlive the daemon; netlink
//! `cls_bpf` filters outlive it by nature (they hold the program) and are
//! found again by priority and handle. Either way the program keeps
//! guarding while no daemon runs.

use aya::{
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};

use super::{
    EbpfError, error_chain,
    pins::Pins,
    state::{Attachment, Mode},
};
use crate::config::AttachMode;

/// The mode to use on this kernel.
pub fn choose_mode(wanted: AttachMode) -> Mode {
    match wanted {
        AttachMode::Tcx => Mode::Tcx,
        AttachMode::Netlink => Mode::Netlink,
        AttachMode::Auto => {
            if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
                Mode::Tcx
            } else {
                Mode::Netlink
            }
        }
    }
}

pub fn attach(
    prog: &mut SchedClassifier,
    interface: &str,
    mode: Mode,
    pins: &Pins,
) -> Result<Attachment, EbpfError> {
    let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| EbpfError::Attach {
        interface: interface.to_owned(),
        message: format!("no such interface: {e}"),
    })?;
    let attach_err = |e: aya::programs::ProgramError| EbpfError::Attach {
        interface: interface.to_owned(),
        message: error_chain(&e),
    };
    match mode {
        Mode::Tcx => {
            let id = prog
                .attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(Default::default()),
                )
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let fd_link = FdLink::try_from(link).map_err(|e| EbpfError::Attach {
                interface: interface.to_owned(),
                message: e.to_string(),
            })?;
            fd_link
                .pin(pins.link(interface))
                .map_err(|source| EbpfError::PinObject {
                    what: format!("link of {interface}"),
                    source,
                })?;
            Ok(Attachment {
                interface: interface.to_owned(),
                ifindex,
                mode,
                priority: 0,
                handle: 0,
            })
        }
        Mode::Netlink => {
            // The clsact qdisc may already be there (another tool, or us
            // before a crash); only its absence matters.
            if let Err(e) = tc::qdisc_add_clsact(interface) {
                tracing::debug!(interface, error = %e, "clsact not added (likely present)");
            }
            let id = prog
                .attach_with_options(
                    interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let priority = link.priority().map_err(attach_err)?;
            let handle = u32::from(link.handle().map_err(attach_err)?);
            // Dropping the link would detach the filter; it must outlive
            // this process, so its ownership passes to the state record.
            std::mem::forget(link);
            Ok(Attachment {
                interface: interface.to_owned(),
                ifindex,
                mode,
                priority,
                handle,
            })
        }
    }
}

/// Whether an attachment recorded earlier is still in place.
pub fn is_present(a: &Attachment, pins: &Pins) -> bool {
    let same_ifindex = nix::net::if_::if_nametoindex(a.interface.as_str()).ok() == Some(a.ifindex);
    same_ifindex
        && match a.mode {
            Mode::Tcx => pins.link(&a.interface).exists(),
            // Netlink filters cannot be listed through aya; the interface
            // being the same one is the best evidence short of tc(8).
            Mode::Netlink => true,
        }
}

pub fn detach(a: &Attachment, pins: &Pins) -> Result<(), EbpfError> {
    let detach_err = |message: String| EbpfError::Detach {
        interface: a.interface.clone(),
        message,
    };
    match a.mode {
        Mode::Tcx => {
            let path = pins.link(&a.interface);
            if !path.exists() {
                return Ok(());
            }
            let link = PinnedLink::from_pin(&path).map_err(|e| detach_err(e.to_string()))?;
            // Unpinning drops the last reference once the fd closes, and
            // the kernel detaches the link.
            let fd_link = link.unpin().map_err(|e| detach_err(e.to_string()))?;
            drop(fd_link);
            Ok(())
        }
        Mode::Netlink => {
            if nix::net::if_::if_nametoindex(a.interface.as_str()).ok() != Some(a.ifindex) {
                // The interface is gone, and its qdisc and filters with it.
                return Ok(());
            }
            let link = SchedClassifierLink::attached(
                &a.interface,
                TcAttachType::Ingress,
                a.priority,
                TcHandle::from(a.handle),
                None,
            )
            .map_err(|e| detach_err(e.to_string()))?;
            use aya::programs::links::Link as _;
            link.detach().map_err(|e| detach_err(error_chain(&e)))
        }
    }
}
