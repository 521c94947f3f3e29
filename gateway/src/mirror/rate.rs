//! `max_rate`: a token bucket over the bytes a mirror run pulls, and the
//! count of them for its progress bar.
//!
//! The bucket allows a debt: a chunk larger than what is in the bucket is
//! let through and the next one waits until the debt is paid, so a
//! chunk's size (a TLS record, a batch) never stalls the stream. Waiting
//! between chunks leaves upstream's bytes in the socket buffers, and TCP
//! slows the sender to the pace the mirror reads at.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// How much the bucket holds, in seconds of the rate: a quarter second
/// (a short burst, so the limit holds over any window of a second or more).
const BURST_SECS: f64 = 0.25;
/// The least burst: one TLS record.
const BURST_MIN: f64 = 16.0 * 1024.0;

/// The arithmetic of the bucket, on a clock given by the caller.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    /// Bytes that may pass now; negative is a debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Duration,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second (at least 1).
    pub fn new(rate: u64, now: Duration) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate * BURST_SECS).max(BURST_MIN);
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes `bytes` at `now` and says how long the taker must wait before
    /// going on (zero while the bucket holds enough).
    pub fn take(&mut self, bytes: u64, now: Duration) -> Duration {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What one mirror run pulls through: the optional limit and the byte
/// count.
#[derive(Debug)]
pub struct Pull {
    bucket: Option<Mutex<Bucket>>,
    start: tokio::time::Instant,
    pulled: AtomicU64,
}

impl Pull {
    /// `rate` bytes per second, or unlimited.
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            bucket: rate.map(|r| Mutex::new(Bucket::new(r, Duration::ZERO))),
            start: tokio::time::Instant::now(),
            pulled: AtomicU64::new(0),
        }
    }

    /// Counts `bytes` and waits as long as the limit asks.
    pub async fn take(&self, bytes: usize) {
        self.pulled.fetch_add(bytes as u64, Ordering::Relaxed);
        let Some(bucket) = &self.bucket else {
            return;
        };
        let wait = bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(bytes as u64, self.start.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Bytes pulled so far.
    pub fn pulled(&self) -> u64 {
        self.pulled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_burst_passes_then_the_rate_holds() {
        // 1 MiB/s: a burst of 256 KiB.
        let mut b = Bucket::new(1 << 20, Duration::ZERO);
        assert_eq!(b.take(256 * 1024, Duration::ZERO), Duration::ZERO);
        // The next 64 KiB owe a sixteenth of a second.
        assert_eq!(b.take(64 * 1024, Duration::ZERO), secs(1.0 / 16.0));
    }

    #[test]
    fn a_steady_taker_gets_the_rate_over_time() {
        // Pull 10 MiB in 16 KiB chunks at 1 MiB/s, waiting as told: the
        // clock ends near 10 s less the burst's quarter second.
        let mut b = Bucket::new(1 << 20, Duration::ZERO);
        let mut now = Duration::ZERO;
        for _ in 0..640 {
            now += b.take(16 * 1024, now);
        }
        let total = now.as_secs_f64();
        assert!((9.7..=9.8).contains(&total), "{total}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let mut b = Bucket::new(1000 * 1024, Duration::ZERO);
        assert_eq!(b.take(256_000, Duration::ZERO), Duration::ZERO);
        // An hour idle refills a quarter second's worth, not an hour's.
        let later = Duration::from_secs(3600);
        assert_eq!(b.take(256_000, later), Duration::ZERO);
        assert!(b.take(1024 * 1000, later) >= secs(0.99));
    }

    #[tokio::test(start_paused = true)]
    async fn pull_counts_and_waits_on_the_tokio_clock() {
        let pull = Pull::new(Some(64 * 1024));
        let start = tokio::time::Instant::now();
        for _ in 0..8 {
            pull.take(16 * 1024).await;
        }
        assert_eq!(pull.pulled(), 128 * 1024);
        // 128 KiB at 64 KiB/s less the 16 KiB burst: 1.75 s.
        let waited = start.elapsed().as_secs_f64();
        assert!((1.74..=1.76).contains(&waited), "{waited}");
        let free = Pull::new(None);
        free.take(1 << 30).await;
        assert_eq!(free.pulled(), 1 << 30);
    }
}
