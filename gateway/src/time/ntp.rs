//! The NTP packet (RFC 5905 section 7.3) and the server-mode reply.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ClockStatus;

/// Header length; extension fields and MACs that may follow are ignored.
pub const PACKET_LEN: usize = 48;
/// Seconds from the NTP era 0 (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;
/// "Not synchronised": leap indicator 3 with stratum 16.
const LEAP_UNSYNC: u8 = 3;
const STRATUM_UNSYNC: u8 = 16;
/// The stratum of a synchronised host clock whose own source the gateway
/// cannot know: one below a typical site server.
const STRATUM_SYNCED: u8 = 3;
/// log2 seconds: about a microsecond, what a Linux clock reads to.
const PRECISION: i8 = -20;
/// Reference id of a synchronised answer: 127.127.1.0, the traditional
/// "local clock" id (the real upstream is the host's business).
const REFID_LOCAL: [u8; 4] = [127, 127, 1, 0];
/// Reference id while unsynchronised (RFC 5905 "INIT" kiss code style).
const REFID_INIT: [u8; 4] = *b"INIT";

/// How the gateway describes itself in replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    pub leap: u8,
    pub stratum: u8,
    pub refid: [u8; 4],
    /// Root dispersion, seconds in 16.16 fixed point.
    pub root_dispersion: u32,
}

impl Server {
    /// From the host clock's state and `time.local_stratum`.
    pub fn from_clock(clock: ClockStatus, local_stratum: Option<u8>) -> Self {
        let leap = match clock.leap {
            1 => 1,
            -1 => 2,
            _ => 0,
        };
        match (clock.synchronised, local_stratum) {
            (true, _) => Self {
                leap,
                stratum: STRATUM_SYNCED,
                refid: REFID_LOCAL,
                root_dispersion: short_format(Duration::from_micros(clock.max_error_us)),
            },
            (false, Some(stratum)) => Self {
                leap: 0,
                stratum,
                refid: REFID_LOCAL,
                root_dispersion: 0,
            },
            (false, None) => Self {
                leap: LEAP_UNSYNC,
                stratum: STRATUM_UNSYNC,
                refid: REFID_INIT,
                root_dispersion: 0,
            },
        }
    }

    pub fn synchronised(&self) -> bool {
        self.stratum < STRATUM_UNSYNC
    }
}

/// The server-mode reply to a client-mode `request`, or `None` for
/// anything else (other modes, short packets): a server answers clients
/// only, so it cannot be made to reflect traffic.
pub fn reply(
    request: &[u8],
    received: SystemTime,
    now: SystemTime,
    server: &Server,
) -> Option<[u8; PACKET_LEN]> {
    if request.len() < PACKET_LEN {
        return None;
    }
    let version = (request[0] >> 3) & 0x7;
    let mode = request[0] & 0x7;
    if mode != MODE_CLIENT || !(1..=4).contains(&version) {
        return None;
    }
    let mut out = [0u8; PACKET_LEN];
    out[0] = (server.leap << 6) | (version << 3) | MODE_SERVER;
    out[1] = server.stratum;
    // The client's poll interval, echoed within the protocol's range.
    out[2] = request[2].clamp(4, 17);
    out[3] = PRECISION as u8;
    // Root delay: the host clock's own path is not known; zero.
    out[8..12].copy_from_slice(&server.root_dispersion.to_be_bytes());
    out[12..16].copy_from_slice(&server.refid);
    if server.synchronised() {
        // When the clock was last set is the host's business; "just now"
        // keeps clients' sanity checks (reference not after transmit).
        out[16..24].copy_from_slice(&timestamp(received).to_be_bytes());
    }
    // Origin: the client's transmit timestamp, which it matches replies by.
    out[24..32].copy_from_slice(&request[40..48]);
    out[32..40].copy_from_slice(&timestamp(received).to_be_bytes());
    out[40..48].copy_from_slice(&timestamp(now).to_be_bytes());
    Some(out)
}

/// An NTP timestamp: seconds since 1900 in the high 32 bits (era 0 wraps
/// in 2036, as the protocol intends), fraction in the low 32.
pub fn timestamp(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (since.as_secs() + NTP_UNIX_OFFSET) & 0xffff_ffff;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// A duration in NTP's 16.16 "short" format, saturating.
fn short_format(d: Duration) -> u32 {
    let v = (d.as_nanos() << 16) / 1_000_000_000;
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: u8, mode: u8, transmit: u64) -> [u8; PACKET_LEN] {
        let mut r = [0u8; PACKET_LEN];
        r[0] = (version << 3) | mode;
        r[2] = 6;
        r[40..48].copy_from_slice(&transmit.to_be_bytes());
        r
    }

    fn synced() -> ClockStatus {
        ClockStatus {
            synchronised: true,
            leap: 0,
            max_error_us: 250_000,
        }
    }

    fn unsynced() -> ClockStatus {
        ClockStatus {
            synchronised: false,
            leap: 0,
            max_error_us: 16_000_000,
        }
    }

    #[test]
    fn synchronised_reply_carries_the_times_and_the_origin() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t1 = t0 + Duration::from_micros(40);
        let server = Server::from_clock(synced(), None);
        let out = reply(&request(4, 3, 0xdead_beef_0102_0304), t0, t1, &server).expect("reply");
        assert_eq!(out[0] >> 6, 0, "no leap warning");
        assert_eq!((out[0] >> 3) & 7, 4, "the client's version");
        assert_eq!(out[0] & 7, 4, "server mode");
        assert_eq!(out[1], 3);
        assert_eq!(out[2], 6);
        assert_eq!(out[3] as i8, PRECISION);
        assert_eq!(&out[24..32], &0xdead_beef_0102_0304u64.to_be_bytes());
        let rx = u64::from_be_bytes(out[32..40].try_into().expect("8"));
        let tx = u64::from_be_bytes(out[40..48].try_into().expect("8"));
        assert_eq!(rx >> 32, 1_800_000_000 + NTP_UNIX_OFFSET);
        assert!(tx > rx);
        // 0.25 s of maximum error, in 16.16 seconds.
        assert_eq!(
            u32::from_be_bytes(out[8..12].try_into().expect("4")),
            0x4000
        );
        // Version 3 clients get version 3 answers.
        let v3 = reply(&request(3, 3, 1), t0, t1, &server).expect("reply");
        assert_eq!((v3[0] >> 3) & 7, 3);
    }

    #[test]
    fn unsynchronised_clock_says_so() {
        let t = SystemTime::now();
        let server = Server::from_clock(unsynced(), None);
        let out = reply(&request(4, 3, 1), t, t, &server).expect("reply");
        assert_eq!(out[0] >> 6, 3, "leap indicator 3: not synchronised");
        assert_eq!(out[1], 16, "stratum 16");
        assert_eq!(&out[12..16], b"INIT");
        assert!(!server.synchronised());
        // A local stratum makes the host clock a source anyway.
        let local = Server::from_clock(unsynced(), Some(10));
        let out = reply(&request(4, 3, 1), t, t, &local).expect("reply");
        assert_eq!((out[0] >> 6, out[1]), (0, 10));
        assert!(local.synchronised());
    }

    #[test]
    fn leap_seconds_are_announced() {
        let t = SystemTime::now();
        let ins = Server::from_clock(
            ClockStatus {
                leap: 1,
                ..synced()
            },
            None,
        );
        assert_eq!(reply(&request(4, 3, 1), t, t, &ins).expect("r")[0] >> 6, 1);
        let del = Server::from_clock(
            ClockStatus {
                leap: -1,
                ..synced()
            },
            None,
        );
        assert_eq!(reply(&request(4, 3, 1), t, t, &del).expect("r")[0] >> 6, 2);
    }

    #[test]
    fn only_client_requests_are_answered() {
        let t = SystemTime::now();
        let s = Server::from_clock(synced(), None);
        for mode in [0, 1, 2, 4, 5, 6, 7] {
            assert!(
                reply(&request(4, mode, 1), t, t, &s).is_none(),
                "mode {mode}"
            );
        }
        assert!(reply(&request(0, 3, 1), t, t, &s).is_none(), "version 0");
        assert!(reply(&request(5, 3, 1), t, t, &s).is_none(), "version 5");
        assert!(reply(&[0x23; 47], t, t, &s).is_none(), "short");
        assert!(reply(&[], t, t, &s).is_none());
        // Extension fields after the header are ignored, not refused.
        let mut long = request(4, 3, 1).to_vec();
        long.extend_from_slice(&[0; 20]);
        assert!(reply(&long, t, t, &s).is_some());
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), NTP_UNIX_OFFSET << 32);
        let half = UNIX_EPOCH + Duration::from_millis(500);
        assert_eq!(timestamp(half) & 0xffff_ffff, 1 << 31);
        assert_eq!(short_format(Duration::from_secs(1)), 1 << 16);
        assert_eq!(short_format(Duration::from_secs(1 << 20)), u32::MAX);
    }
}
