//! A token bucket bounding how many leaves are minted per second, so that
//! a flood of ClientHellos for allowed-but-cold names cannot burn the CPU.

use std::time::Instant;

#[derive(Debug)]
pub(crate) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full. `per_second` 0 means no refill once the burst is spent.
    pub(crate) fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn refuses_past_the_burst_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        // 100 ms at 10/s is one token, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.try_take(t1));
        assert!(!bucket.try_take(t1));
        // A long idle refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| bucket.try_take(t2)).count(), 3);
        // A clock read out of order never panics or mints tokens.
        assert!(!bucket.try_take(t0));
    }
}
