//! The progress floor on upstream bodies: a body must average at least
//! `floor` bytes per second over every window of `window` the gateway
//! spends waiting on it, once the first window has passed (the grace
//! period: a connection's slow start, a CDN's first byte).
//!
//! An idle timeout alone lets a peer that sends one byte every few
//! seconds hold a fill, its temp file and every device following it for
//! as long as the blob takes to crawl in (17 minutes per MiB at 1 KB/s).
//!
//! Time is counted only while the reader waits for upstream, as for the
//! idle timeout: when the gateway's own side is slow (the disk, back-
//! pressure) upstream's bytes wait in the socket buffers and its rate is
//! not what is being measured.
//!
//! The window is kept as [`SLOTS`] counters of `window / SLOTS` each, so
//! memory does not grow with the rate; it is checked each time a slot
//! ends, over the whole window that ends there: the bytes counted are
//! exactly those of that window, never an estimate.

use std::time::Duration;

/// The default floor: 4 KiB/s (32 kbit/s). An edge site on a slow link
/// (a 1 Mbit/s uplink shared by `cache.max_concurrent_fills`, 32, fills
/// at once gives each 4 KiB/s) still fills; a peer trickling at 1 KB/s
/// is cut off after one window instead of holding a fill for the 17
/// minutes a MiB takes at that rate. Below that a 50 MB layer would take
/// over three hours: failing it and letting the device retry is better.
pub const DEFAULT_MIN_BODY_RATE: u64 = 4 * 1024;

/// The default window (and grace period): 30 s, as long as the default
/// idle timeout, so short pauses of a healthy peer (a TCP retransmission
/// timeout, a congested link's bursts) average out.
pub const DEFAULT_BODY_RATE_WINDOW: Duration = Duration::from_secs(30);

/// Counters per window: the check's resolution is `window / SLOTS`.
const SLOTS: usize = 10;

/// The progress floor (`upstream.min_body_rate` over
/// `upstream.min_body_rate_window_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    /// Bytes per second; 0 disables the floor.
    pub floor: u64,
    /// The window averaged over, and the grace before the first check.
    pub window: Duration,
}

impl BodyRate {
    /// No floor: only the idle timeout bounds a body.
    pub const DISABLED: Self = Self {
        floor: 0,
        window: DEFAULT_BODY_RATE_WINDOW,
    };
}

impl Default for BodyRate {
    fn default() -> Self {
        Self {
            floor: DEFAULT_MIN_BODY_RATE,
            window: DEFAULT_BODY_RATE_WINDOW,
        }
    }
}

/// A window that fell below the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooSlow {
    /// Bytes received in the window.
    pub bytes: u64,
    pub window: Duration,
    pub floor: u64,
}

/// Bytes per slot of upstream time (the time spent waiting on upstream,
/// see the module doc).
#[derive(Debug)]
pub(super) struct Meter {
    rate: BodyRate,
    slot: Duration,
    /// Ring of the last [`SLOTS`] slots' bytes, the current one at
    /// `current % SLOTS`.
    counts: [u64; SLOTS],
    /// The index of the slot being filled (slot `i` covers upstream time
    /// `[i * slot, (i + 1) * slot)`).
    current: u64,
}

impl Meter {
    /// `None` when the floor is disabled.
    pub fn new(rate: BodyRate) -> Option<Self> {
        if rate.floor == 0 || rate.window.is_zero() {
            return None;
        }
        let slot = (rate.window / SLOTS as u32).max(Duration::from_nanos(1));
        Some(Self {
            rate,
            slot,
            counts: [0; SLOTS],
            current: 0,
        })
    }

    /// The upstream time at which the next check is due: the end of the
    /// current slot.
    pub fn next_check(&self) -> Duration {
        slot_start(self.slot, self.current.saturating_add(1))
    }

    /// Moves to upstream time `at`, checking the window that ends at
    /// each slot end passed on the way (from the end of the first whole
    /// window on). Bounded: once [`SLOTS`] empty slots have passed the
    /// window holds no bytes and fails.
    pub fn advance(&mut self, at: Duration) -> Result<(), TooSlow> {
        let target = at.as_nanos() / self.slot.as_nanos();
        while u128::from(self.current) < target {
            if self.current + 1 >= SLOTS as u64 {
                let bytes = self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
                // bytes / window < floor, in integers.
                let need = u128::from(self.rate.floor) * self.rate.window.as_nanos();
                if u128::from(bytes) * 1_000_000_000 < need {
                    return Err(TooSlow {
                        bytes,
                        window: self.rate.window,
                        floor: self.rate.floor,
                    });
                }
            }
            self.current += 1;
            self.counts[slot_index(self.current)] = 0;
        }
        Ok(())
    }

    /// Counts bytes received at the upstream time last advanced to.
    pub fn record(&mut self, bytes: usize) {
        let c = &mut self.counts[slot_index(self.current)];
        *c = c.saturating_add(bytes as u64);
    }
}

fn slot_index(slot: u64) -> usize {
    // The remainder is below SLOTS.
    (slot % SLOTS as u64) as usize
}

fn slot_start(slot: Duration, index: u64) -> Duration {
    let nanos = slot.as_nanos().saturating_mul(u128::from(index));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    fn meter(floor: u64, window_secs: u64) -> Meter {
        Meter::new(BodyRate {
            floor,
            window: Duration::from_secs(window_secs),
        })
        .expect("enabled")
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn zero_disables_the_floor() {
        assert!(Meter::new(BodyRate::DISABLED).is_none());
        assert!(
            Meter::new(BodyRate {
                floor: 10,
                window: Duration::ZERO
            })
            .is_none()
        );
    }

    #[test]
    fn nothing_is_checked_during_the_first_window() {
        let mut m = meter(1000, 10);
        // No bytes at all for 9.9 s: still the grace period.
        assert_eq!(m.advance(secs(9.9)), Ok(()));
        // At 10 s the first window ends with nothing in it.
        let e = m.advance(secs(10.0)).unwrap_err();
        assert_eq!(
            e,
            TooSlow {
                bytes: 0,
                window: Duration::from_secs(10),
                floor: 1000
            }
        );
    }

    #[test]
    fn a_steady_rate_at_the_floor_passes_and_one_below_fails() {
        // 1000 B/s exactly, in 100-byte pieces every 0.1 s, for a minute.
        let mut m = meter(1000, 10);
        for i in 0..600u32 {
            m.advance(secs(f64::from(i) * 0.1 + 0.05)).unwrap();
            m.record(100);
        }
        // 999 B/s (one piece short per window) fails at the first check.
        let mut m = meter(1000, 10);
        let mut failed = None;
        for i in 0..600u32 {
            if let Err(e) = m.advance(secs(f64::from(i) * 0.1 + 0.05)) {
                failed = Some((i, e));
                break;
            }
            m.record(if i % 100 == 0 { 0 } else { 100 });
        }
        let (i, e) = failed.expect("999 B/s passed a 1000 B/s floor");
        assert_eq!(i, 100, "the first check, at 10 s");
        assert_eq!(e.bytes, 9_900);
    }

    #[test]
    fn the_window_slides_a_burst_then_a_trickle_fails() {
        let mut m = meter(1000, 10);
        m.record(1_000_000);
        // The burst carries every window that holds it...
        m.advance(secs(10.5)).unwrap();
        m.record(10);
        // ...until it slides out of the window ending at 11 s.
        let e = m.advance(secs(11.0)).unwrap_err();
        assert_eq!(e.bytes, 10);
    }

    #[test]
    fn a_long_silence_fails_without_walking_every_slot() {
        // Slots of 0.1 s; 2^40 s would be 10^13 of them.
        let mut m = meter(1, 1);
        m.advance(secs(0.5)).unwrap();
        m.record(1);
        // The windows ending at 1.0 to 1.5 s hold the byte; the one
        // ending at 1.6 s does not.
        let e = m.advance(Duration::from_secs(1 << 40)).unwrap_err();
        assert_eq!(e.bytes, 0);
        assert_eq!(m.next_check(), secs(1.6));
    }

    #[test]
    fn next_check_is_the_end_of_the_current_slot() {
        let mut m = meter(1, 10);
        assert_eq!(m.next_check(), Duration::from_secs(1));
        m.advance(secs(3.5)).unwrap();
        assert_eq!(m.next_check(), Duration::from_secs(4));
    }
}
