//! Bounds on DNS and time audit records, so that a device flooding
//! queries (or tunnelling data through names) cannot flood the log.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Entries a table keeps before it starts over: a flood of spoofed
/// sources cannot grow it without bound.
const MAX_ENTRIES: usize = 4096;

/// At most `burst` records per key, refilled at one per `every`; the
/// records left out are counted and reported with the next one written.
pub struct Budget {
    burst: u32,
    every: Duration,
    keys: HashMap<IpAddr, Bucket>,
}

struct Bucket {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

impl Budget {
    pub fn new(burst: u32, every: Duration) -> Self {
        Self {
            burst,
            every,
            keys: HashMap::new(),
        }
    }

    /// `Some(suppressed since the last record)` when a record may be
    /// written now for `key`; `None` when it must be left out.
    pub fn take(&mut self, key: IpAddr, now: Instant) -> Option<u64> {
        if self.keys.len() >= MAX_ENTRIES && !self.keys.contains_key(&key) {
            self.keys.clear();
        }
        let bucket = self.keys.entry(key).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
            suppressed: 0,
        });
        let gained = now.duration_since(bucket.refilled).as_nanos() / self.every.as_nanos().max(1);
        if gained > 0 {
            bucket.tokens = bucket
                .tokens
                .saturating_add(u32::try_from(gained).unwrap_or(u32::MAX))
                .min(self.burst);
            bucket.refilled = now;
        }
        if bucket.tokens == 0 {
            bucket.suppressed += 1;
            return None;
        }
        bucket.tokens -= 1;
        Some(std::mem::take(&mut bucket.suppressed))
    }
}

/// Whether a key was recorded within the last `window`: one record per
/// key per window.
pub struct Recent<K> {
    window: Duration,
    seen: HashMap<K, Instant>,
}

impl<K: Hash + Eq> Recent<K> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
        }
    }

    /// True (and remembered) when `key` is due a record now.
    pub fn first_in_window(&mut self, key: K, now: Instant) -> bool {
        if self.seen.len() >= MAX_ENTRIES && !self.seen.contains_key(&key) {
            let window = self.window;
            self.seen.retain(|_, at| now.duration_since(*at) < window);
            if self.seen.len() >= MAX_ENTRIES {
                self.seen.clear();
            }
        }
        match self.seen.get(&key) {
            Some(at) if now.duration_since(*at) < self.window => false,
            _ => {
                self.seen.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_burst_then_counts_what_it_leaves_out() {
        let mut b = Budget::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let dev: IpAddr = "10.0.0.9".parse().expect("ip");
        let other: IpAddr = "10.0.0.10".parse().expect("ip");
        assert_eq!(b.take(dev, t0), Some(0));
        assert_eq!(b.take(dev, t0), Some(0));
        assert_eq!(b.take(dev, t0), Some(0));
        for _ in 0..10 {
            assert_eq!(b.take(dev, t0), None);
        }
        // Another device has its own budget.
        assert_eq!(b.take(other, t0), Some(0));
        // A second later one more record, carrying the ten left out.
        let t1 = t0 + Duration::from_millis(1001);
        assert_eq!(b.take(dev, t1), Some(10));
        assert_eq!(b.take(dev, t1), None);
        // Refill never exceeds the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(b.take(dev, t2), Some(1));
        assert_eq!(b.take(dev, t2), Some(0));
        assert_eq!(b.take(dev, t2), Some(0));
        assert_eq!(b.take(dev, t2), None);
    }

    #[test]
    fn budget_table_stays_bounded() {
        let mut b = Budget::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 * 3) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(b.take(ip, t0), Some(0));
        }
        assert!(b.keys.len() <= MAX_ENTRIES);
    }

    #[test]
    fn recent_keys_once_per_window() {
        let mut r = Recent::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.first_in_window(("a", 1), t0));
        assert!(!r.first_in_window(("a", 1), t0 + Duration::from_secs(59)));
        assert!(r.first_in_window(("a", 2), t0));
        assert!(r.first_in_window(("a", 1), t0 + Duration::from_secs(61)));
    }
}
