//! The time server for devices: NTP server mode (RFC 5905) from the host's
//! clock, for requests to any address on UDP port 123.
//!
//! The packet is 48 bytes of fixed fields, written here directly: the one
//! well-kept Rust implementation, ntpd-rs's `ntp-proto`, builds server
//! replies only from its own daemon's system and clock state, pulls in its
//! NTS and TLS stack, and marks that API internal.
//!
//! While the host clock is not synchronised (`adjtimex` says `TIME_ERROR`
//! or `STA_UNSYNC`), every answer says so: leap indicator 3 and stratum 16,
//! which clients take as "do not use". `time.local_stratum` overrides that
//! for air-gapped sites, as chrony's `local stratum` does.

mod clock;
pub mod ntp;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

pub use clock::ClockStatus;

use crate::{
    audit::{Audit, Event, Record},
    config::Config,
};

/// One `time.served` record per device in this window.
const SERVED_WINDOW: Duration = Duration::from_secs(600);

pub struct TimeServer {
    local_stratum: Option<u8>,
    audit: Audit,
    served: Mutex<crate::dns::Recent<IpAddr>>,
}

impl TimeServer {
    pub fn new(config: &Config, audit: Audit) -> Self {
        Self {
            local_stratum: config.time.local_stratum,
            audit,
            served: Mutex::new(crate::dns::Recent::new(SERVED_WINDOW)),
        }
    }

    /// The reply to a request received at `received`, or `None` for
    /// anything that is not a client-mode request (no reflection).
    pub async fn handle(
        &self,
        request: &[u8],
        received: SystemTime,
        device: SocketAddr,
        dst: SocketAddr,
    ) -> Option<Vec<u8>> {
        let status = clock::status();
        let server = ntp::Server::from_clock(status, self.local_stratum);
        let reply = ntp::reply(request, received, SystemTime::now(), &server)?;
        let due = self
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_in_window(device.ip().to_canonical(), Instant::now());
        if due {
            let reason = if server.synchronised() {
                "synchronised"
            } else {
                "unsynchronised"
            };
            let record = Record::new(Event::TimeServed)
                .udp(device, dst)
                .reason(reason)
                .detail(format!("stratum {}", server.stratum));
            self.audit.log(record).await;
        }
        Some(reply.to_vec())
    }
}
