//! The kernel program's verdict counters, per device interface.
//!
//! The program counts into the entry of the interface a packet arrived on
//! (the `COUNTERS` map, keyed by ifindex, one value per CPU). The daemon
//! creates an interface's entry before attaching there, removes it when
//! it detaches, and names the entries from its record of attachments.
//! Counts the program could not give to an interface (the fallback entry)
//! and entries of an ifindex the record does not name are reported as
//! [`FALLBACK_INTERFACE`], so the label set stays the configured names plus
//! one.

use gateway_common::{COUNTERS_FALLBACK, Counter, IfCounters};

/// The `interface` of counts that belong to no recorded device interface.
pub const FALLBACK_INTERFACE: &str = "other";

const N: usize = Counter::COUNT as usize;

/// One interface's counters, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceCounts {
    /// The device interface's name, or [`FALLBACK_INTERFACE`].
    pub interface: String,
    pub packets: [u64; N],
}

impl InterfaceCounts {
    fn zero(interface: &str) -> Self {
        Self {
            interface: interface.to_owned(),
            packets: [0; N],
        }
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.packets[counter as usize]
    }

    fn add(&mut self, packets: &[u64; N]) {
        for (sum, v) in self.packets.iter_mut().zip(packets) {
            *sum = sum.saturating_add(*v);
        }
    }
}

/// Every interface's counters: the recorded interfaces in their order,
/// then [`FALLBACK_INTERFACE`] (always present, zero when nothing fell
/// back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCounts {
    pub interfaces: Vec<InterfaceCounts>,
}

impl KernelCounts {
    /// Names the map's entries (`raw`: ifindex, counts summed over CPUs)
    /// after `names` (ifindex, interface). A named interface without an
    /// entry reads as zero; an entry no name claims goes to the fallback.
    pub fn name(raw: &[(u32, [u64; N])], names: &[(u32, String)]) -> Self {
        let mut interfaces: Vec<InterfaceCounts> = names
            .iter()
            .map(|(_, name)| InterfaceCounts::zero(name))
            .collect();
        let mut other = InterfaceCounts::zero(FALLBACK_INTERFACE);
        for (ifindex, packets) in raw {
            let slot = if *ifindex == COUNTERS_FALLBACK {
                None
            } else {
                names.iter().position(|(i, _)| i == ifindex)
            };
            match slot {
                Some(i) => interfaces[i].add(packets),
                None => other.add(packets),
            }
        }
        interfaces.push(other);
        Self { interfaces }
    }

    /// Each counter summed over every interface and the fallback: what
    /// `gateway status` shows as `counters`.
    pub fn totals(&self) -> Vec<(Counter, u64)> {
        let mut all = InterfaceCounts::zero("");
        for i in &self.interfaces {
            all.add(&i.packets);
        }
        Counter::ALL.iter().map(|c| (*c, all.get(*c))).collect()
    }
}

/// One entry's per-CPU values, summed.
pub fn sum_cpus<'a>(values: impl IntoIterator<Item = &'a IfCounters>) -> [u64; N] {
    let mut sum = InterfaceCounts::zero("");
    for v in values {
        sum.add(&v.packets);
    }
    sum.packets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(Counter, u64)]) -> [u64; N] {
        let mut p = [0; N];
        for (c, v) in pairs {
            p[*c as usize] = *v;
        }
        p
    }

    #[test]
    fn entries_are_named_by_ifindex_and_the_rest_falls_back() {
        let names = vec![(7, "dev0".to_owned()), (9, "dev1".to_owned())];
        let raw = [
            (9, with(&[(Counter::DropProtocol, 3)])),
            (COUNTERS_FALLBACK, with(&[(Counter::DropMalformed, 1)])),
            (7, with(&[(Counter::DropNotIntercepted, 5)])),
            // An ifindex no attachment records (an interface re-created
            // before the daemon reconciled): not lost, not a new label.
            (42, with(&[(Counter::DropMalformed, 2)])),
        ];
        let k = KernelCounts::name(&raw, &names);
        let names: Vec<&str> = k.interfaces.iter().map(|i| i.interface.as_str()).collect();
        assert_eq!(names, ["dev0", "dev1", FALLBACK_INTERFACE]);
        assert_eq!(k.interfaces[0].get(Counter::DropNotIntercepted), 5);
        assert_eq!(k.interfaces[0].get(Counter::DropProtocol), 0);
        assert_eq!(k.interfaces[1].get(Counter::DropProtocol), 3);
        assert_eq!(k.interfaces[1].get(Counter::DropNotIntercepted), 0);
        assert_eq!(k.interfaces[2].get(Counter::DropMalformed), 3);

        let totals = k.totals();
        assert_eq!(totals.len(), Counter::COUNT as usize);
        let total = |c: Counter| totals.iter().find(|(t, _)| *t == c).map(|(_, v)| *v);
        assert_eq!(total(Counter::DropNotIntercepted), Some(5));
        assert_eq!(total(Counter::DropProtocol), Some(3));
        assert_eq!(total(Counter::DropMalformed), Some(3));
        assert_eq!(total(Counter::PassArp), Some(0));
    }

    #[test]
    fn a_named_interface_without_an_entry_reads_zero_and_other_is_always_there() {
        let k = KernelCounts::name(&[], &[(3, "eth1".to_owned())]);
        assert_eq!(k.interfaces.len(), 2);
        assert_eq!(k.interfaces[0].interface, "eth1");
        assert_eq!(k.interfaces[1].interface, FALLBACK_INTERFACE);
        assert!(k.interfaces.iter().all(|i| i.packets == [0; N]));
        assert!(k.totals().iter().all(|(_, v)| *v == 0));
    }

    #[test]
    fn cpus_are_summed() {
        let a = IfCounters {
            packets: with(&[(Counter::PassArp, 2), (Counter::AssignDns, u64::MAX)]),
        };
        let b = IfCounters {
            packets: with(&[(Counter::PassArp, 5), (Counter::AssignDns, 1)]),
        };
        let sum = sum_cpus([&a, &b]);
        assert_eq!(sum[Counter::PassArp as usize], 7);
        // Saturates rather than wrapping to a small number.
        assert_eq!(sum[Counter::AssignDns as usize], u64::MAX);
    }
}
