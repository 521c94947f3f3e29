//! systemd's readiness protocol (sd_notify): `READY=1` once the kernel
//! path guards and the listeners accept, `WATCHDOG=1` while the runtime
//! runs, `STOPPING=1` at shutdown. Under `Type=notify` systemd counts the
//! service as started only after `READY=1`, so `systemctl start` (and
//! units ordered after it) wait for a gateway that really serves.
//!
//! Without `NOTIFY_SOCKET` (run by hand, in the tests) every call does
//! nothing. A datagram written by hand, not a crate: the protocol is one
//! `sendto` of `KEY=VALUE` lines to a path or abstract socket.

use std::{
    os::{linux::net::SocketAddrExt as _, unix::net::SocketAddr},
    time::Duration,
};

use std::os::unix::net::UnixDatagram;

/// Where systemd listens for this service's notifications.
#[derive(Clone)]
pub struct Notifier {
    addr: Option<SocketAddr>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a value that names no usable socket is
    /// logged once and ignored (systemd then times the start out, which
    /// names the cause better than a daemon refusing to run).
    pub fn from_env() -> Self {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Self { addr: None };
        };
        let addr = parse_address(&value.to_string_lossy());
        if addr.is_none() {
            tracing::warn!(value = ?value, "NOTIFY_SOCKET is not a unix socket path or abstract name; not notifying systemd");
        }
        Self { addr }
    }

    /// `READY=1` with a status line for `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1`: systemd shows "deactivating" while the daemon closes.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping; the kernel path keeps guarding");
    }

    /// Sends `WATCHDOG=1` at half the interval systemd asked for
    /// (`WATCHDOG_USEC`, for this process per `WATCHDOG_PID`) from a task of
    /// the daemon's runtime: if the runtime stops running tasks, the pings
    /// stop and systemd restarts the service. The task ends with the runtime.
    pub fn spawn_watchdog(&self) {
        let Some(interval) = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        ) else {
            return;
        };
        if self.addr.is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                this.send("WATCHDOG=1");
            }
        });
    }

    fn send(&self, message: &str) {
        let Some(addr) = &self.addr else { return };
        let result = UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), addr));
        if let Err(e) = result {
            tracing::warn!(error = %e, "notifying systemd (NOTIFY_SOCKET)");
        }
    }
}

/// `/run/systemd/notify` or `@abstract-name`.
fn parse_address(value: &str) -> Option<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        return SocketAddr::from_abstract_name(name.as_bytes()).ok();
    }
    if !value.starts_with('/') {
        return None;
    }
    SocketAddr::from_pathname(value).ok()
}

/// Half of `WATCHDOG_USEC`, when it is set, positive and meant for `pid`.
fn watchdog_interval(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if let Some(p) = for_pid
        && p.trim().parse::<u32>().ok() != Some(pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// A status is one line of the protocol.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_what_systemd_asks_for_this_pid() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        // Meant for another process (a parent that exec'd us).
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        for bad in [None, Some(""), Some("0"), Some("-5"), Some("soon")] {
            assert_eq!(watchdog_interval(bad, None, 7), None, "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(parse_address("/run/systemd/notify").is_some());
        let abs = parse_address("@/org/freedesktop/systemd1/notify/1").expect("abstract");
        assert_eq!(
            abs.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/1"[..])
        );
        assert!(parse_address("relative/path").is_none());
        assert!(parse_address("").is_none());
    }

    #[test]
    fn messages_arrive_as_systemd_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            addr: parse_address(&path.to_string_lossy()),
        };
        n.ready("guarding dev0(tcx)\nsecond line");
        n.stopping();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).expect("ready");
        assert_eq!(
            &buf[..len],
            b"READY=1\nSTATUS=guarding dev0(tcx) second line"
        );
        let len = listener.recv(&mut buf).expect("stopping");
        assert!(buf[..len].starts_with(b"STOPPING=1\n"));
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier { addr: None };
        n.ready("x");
        n.stopping();
    }
}
