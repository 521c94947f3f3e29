//! Inspecting the kernel from the test side, independently of the gateway's
//! code: tc filters (netlink attachments), TCX attachments, policy-routing
//! rules and routes in the gateway namespace, BPF program ids, pins.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    programs::{
        ProgramError,
        tc::{SchedClassifier, TcAttachType},
    },
    util::KernelVersion,
};

use crate::{
    netns::{in_ns, ip_in, run},
    site::Site,
};

/// A program attached to an interface's ingress, by either path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub id: u32,
    pub name: String,
    /// `"tcx"` or `"tc"` (netlink `cls_bpf`).
    pub via: &'static str,
}

/// `tc filter show dev <iface> ingress` in the gateway namespace, one entry
/// per line. No clsact qdisc means no filters.
pub fn tc_filter_lines(site: &Site, iface: &str) -> Result<Vec<String>> {
    let out = Command::new("tc")
        .args(["-n", &site.gw_ns, "filter", "show", "dev", iface, "ingress"])
        .output()
        .context("running tc")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Without a clsact/ingress qdisc there is nothing to list.
        if stderr.contains("Cannot find specified qdisc") || stderr.contains("Invalid handle") {
            return Ok(Vec::new());
        }
        bail!(
            "tc filter show dev {iface} ingress failed ({}): {}",
            out.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// BPF programs attached as tc (netlink) filters on `iface` ingress.
pub fn tc_programs(site: &Site, iface: &str) -> Result<Vec<Attached>> {
    let lines = tc_filter_lines(site, iface)?;
    Ok(lines
        .iter()
        .filter(|l| l.contains(" bpf "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
            };
            let id = after("id")?.parse().ok()?;
            let name = after("name").map(|s| s.to_string()).unwrap_or_default();
            Some(Attached {
                id,
                name,
                via: "tc",
            })
        })
        .collect())
}

/// BPF programs attached through TCX on `iface` ingress (kernel 6.6+). A
/// kernel without TCX (before 6.6) answers the query with EINVAL: it can
/// have no TCX attachments, so that is an empty list, not an error.
pub fn tcx_programs(site: &Site, iface: &str) -> Result<Vec<Attached>> {
    let iface = iface.to_owned();
    in_ns(&site.gw_ns, move || -> Result<Vec<Attached>> {
        let (_revision, infos) = match SchedClassifier::query_tcx(&iface, TcAttachType::Ingress) {
            Ok(found) => found,
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) && !kernel_has_tcx() =>
            {
                return Ok(Vec::new());
            }
            Err(e) => {
                return Err(e).with_context(|| format!("querying TCX ingress programs on {iface}"));
            }
        };
        Ok(infos
            .iter()
            .map(|p| Attached {
                id: p.id(),
                name: p.name_as_str().unwrap_or("").to_owned(),
                via: "tcx",
            })
            .collect())
    })?
}

/// Every program attached on `iface` ingress, TCX first.
pub fn attached(site: &Site, iface: &str) -> Result<Vec<Attached>> {
    let mut all = tcx_programs(site, iface)?;
    all.extend(tc_programs(site, iface)?);
    Ok(all)
}

/// `ip [-6] rule show` in the gateway namespace.
pub fn rules(site: &Site, v6: bool) -> Result<String> {
    let fam = if v6 { "-6" } else { "-4" };
    ip_in(&site.gw_ns, &[fam, "rule", "show"])
}

/// Policy-routing rules that match a firewall mark, v4 and v6.
pub fn fwmark_rules(site: &Site) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        out.extend(
            rules(site, v6)?
                .lines()
                .filter(|l| l.contains("fwmark"))
                .map(str::to_owned),
        );
    }
    Ok(out)
}

/// `ip [-6] route show table all` in the gateway namespace.
pub fn routes_all(site: &Site, v6: bool) -> Result<String> {
    let fam = if v6 { "-6" } else { "-4" };
    ip_in(&site.gw_ns, &[fam, "route", "show", "table", "all"])
}

/// Routes of one table, v4 and v6 together.
pub fn table_routes(site: &Site, table: u32) -> Result<Vec<String>> {
    let t = table.to_string();
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let text = ip_in(&site.gw_ns, &[fam, "route", "show", "table", &t])?;
        out.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    Ok(out)
}

/// Whether a BPF program with this id is still loaded
/// (`BPF_PROG_GET_FD_BY_ID`; ENOENT means it is gone).
pub fn prog_exists(id: u32) -> Result<bool> {
    // union bpf_attr for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
    let mut attr = [0u32; 3];
    attr[0] = id;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    // SAFETY: the attr buffer is valid for the size passed and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => Ok(false),
        _ => Err(err).with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}")),
    }
}

/// Waits (bounded) until program `id` is unloaded; unloading is
/// asynchronous (RCU), so a just-released program may linger briefly.
pub fn wait_prog_gone(id: u32, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if !prog_exists(id)? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Every file under `dir` (recursively); empty if it does not exist.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// `bpftool`-free dump of what is attached and routed, for messages.
pub fn describe(site: &Site) -> String {
    let show = |r: Result<String>| r.unwrap_or_else(|e| format!("({e:#})"));
    let attached = match attached(site, &site.gw_dev_if) {
        Ok(a) => format!("{a:?}"),
        Err(e) => format!("({e:#})"),
    };
    let filters = match run(Command::new("tc").args([
        "-n",
        &site.gw_ns,
        "filter",
        "show",
        "dev",
        &site.gw_dev_if,
        "ingress",
    ])) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("({e:#})"),
    };
    format!(
        "attached on {}: {attached}\ntc filters:\n{filters}\nrules v4:\n{}\nrules v6:\n{}\nroutes (all tables) v4:\n{}\nroutes v6:\n{}",
        site.gw_dev_if,
        show(rules(site, false)),
        show(rules(site, true)),
        show(routes_all(site, false)),
        show(routes_all(site, true)),
    )
}

/// Whether the running kernel is 6.6 or later, the first with TCX (the
/// gateway decides with the same aya helper).
pub fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}
