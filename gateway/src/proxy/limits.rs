//! Caps on the connections the proxy holds: in all, and per device
//! address. A device that opens connections without end gets refused at
//! its cap while every other device keeps being served, and the daemon
//! never runs out of file descriptors for fills, the cache and the
//! manager.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

pub struct Limits {
    total_max: usize,
    per_device_max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    per_device: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Total,
    Device,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Total => "too_many_connections",
            Self::Device => "too_many_connections_from_device",
        }
    }
}

/// A held connection slot; released when dropped.
pub struct Permit {
    limits: Arc<Limits>,
    device: IpAddr,
}

impl Limits {
    pub fn new(total_max: usize, per_device_max: usize) -> Arc<Self> {
        Arc::new(Self {
            total_max,
            per_device_max,
            state: Mutex::new(State::default()),
        })
    }

    /// A slot for a connection from `device`, or why there is none.
    pub fn acquire(self: &Arc<Self>, device: IpAddr) -> Result<Permit, Refusal> {
        let device = device.to_canonical();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.total >= self.total_max {
            return Err(Refusal::Total);
        }
        let n = s.per_device.entry(device).or_insert(0);
        if *n >= self.per_device_max {
            return Err(Refusal::Device);
        }
        *n += 1;
        s.total += 1;
        Ok(Permit {
            limits: self.clone(),
            device,
        })
    }

    /// Connections held now, in all.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_device.get_mut(&self.device) {
            *n -= 1;
            if *n == 0 {
                s.per_device.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_device_and_in_all() {
        let l = Limits::new(5, 3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let held: Vec<Permit> = (0..3).map(|_| l.acquire(a).expect("a")).collect();
        assert_eq!(l.acquire(a).err(), Some(Refusal::Device));
        // A v4-mapped address is the same device.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(l.acquire(mapped).err(), Some(Refusal::Device));
        let b1 = l.acquire(b).expect("b");
        let _b2 = l.acquire(b).expect("b");
        assert_eq!(l.acquire(b).err(), Some(Refusal::Total));
        assert_eq!(l.open(), 5);
        drop(b1);
        assert!(l.acquire(b).is_ok());
        drop(held);
        assert_eq!(l.open(), 1, "the permit of the line above was dropped too");
        let again: Vec<Permit> = (0..3).map(|_| l.acquire(a).expect("a again")).collect();
        assert_eq!(again.len(), 3);
    }
}
