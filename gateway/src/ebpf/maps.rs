//! The program's maps, typed, and the daemon's writes into them.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    os::fd::BorrowedFd,
};

use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, PerCpuHashMap, PerCpuValues, RingBuf, SockMap,
    lpm_trie::Key,
};
use gateway_common::{
    AddrKey, COUNTERS_FALLBACK, DNS_PORT, FAMILY_V4, FAMILY_V6, FLAG_ALLOW_DHCP, FLAG_CONFIGURED,
    FLAG_DNS, FLAG_NTP, FlowKey, FlowState, INTERCEPT_MANAGER, IfCounters, InterceptKey,
    LOCAL_DHCP_SERVER, LOCAL_OWN, PORTS_MAX_ENTRIES, PortKind, Settings, maps as names,
};

use super::{
    EbpfError,
    counters::{KernelCounts, sum_cpus},
    pins::Pins,
    state::Attachment,
};
use crate::config::Config;

pub struct Maps {
    pub settings: Array<MapData, Settings>,
    pub intercept: HashMap<MapData, InterceptKey, u32>,
    pub ports: Array<MapData, u64>,
    /// Keyed by ifindex (see `counters`).
    pub counters: PerCpuHashMap<MapData, u32, IfCounters>,
    /// The device interfaces (ifindex, name) the counters are reported
    /// under: the daemon's attachments.
    interfaces: Vec<(u32, String)>,
    /// An LRU hash map in the kernel; aya types it as a `HashMap`.
    pub flows: HashMap<MapData, FlowKey, FlowState>,
    /// Taken by the event reader.
    pub events: Option<RingBuf<MapData>>,
    pub listeners: SockMap<MapData>,
    pub local: HashMap<MapData, AddrKey, u32>,
    pub sources4: LpmTrie<MapData, [u8; 4], u32>,
    pub sources6: LpmTrie<MapData, [u8; 16], u32>,
}

fn map_err(name: &str) -> impl Fn(aya::maps::MapError) -> EbpfError + '_ {
    move |source| EbpfError::Map {
        name: name.to_owned(),
        source,
    }
}

impl Maps {
    /// Opens the maps pinned under `pin_path` (for `gateway status`).
    pub fn open(pin_path: &std::path::Path) -> Result<Self, EbpfError> {
        Self::from_pins(&Pins::new(pin_path))
    }

    /// Opens the maps pinned by an earlier daemon.
    pub fn from_pins(pins: &Pins) -> Result<Self, EbpfError> {
        let open = |name: &'static str| MapData::from_pin(pins.map(name)).map_err(map_err(name));
        Ok(Self {
            settings: Array::try_from(Map::Array(open(names::SETTINGS)?))
                .map_err(map_err(names::SETTINGS))?,
            intercept: HashMap::try_from(Map::HashMap(open(names::INTERCEPT)?))
                .map_err(map_err(names::INTERCEPT))?,
            ports: Array::try_from(Map::Array(open(names::PORTS)?))
                .map_err(map_err(names::PORTS))?,
            counters: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(names::COUNTERS)?))
                .map_err(map_err(names::COUNTERS))?,
            interfaces: Vec::new(),
            flows: HashMap::try_from(Map::LruHashMap(open(names::FLOWS)?))
                .map_err(map_err(names::FLOWS))?,
            events: Some(
                RingBuf::try_from(Map::RingBuf(open(names::EVENTS)?))
                    .map_err(map_err(names::EVENTS))?,
            ),
            listeners: SockMap::try_from(Map::SockMap(open(names::LISTENERS)?))
                .map_err(map_err(names::LISTENERS))?,
            local: HashMap::try_from(Map::HashMap(open(names::LOCAL)?))
                .map_err(map_err(names::LOCAL))?,
            sources4: LpmTrie::try_from(Map::LpmTrie(open(names::SOURCES4)?))
                .map_err(map_err(names::SOURCES4))?,
            sources6: LpmTrie::try_from(Map::LpmTrie(open(names::SOURCES6)?))
                .map_err(map_err(names::SOURCES6))?,
        })
    }

    /// Takes the maps of a freshly loaded object and pins each.
    pub fn take_and_pin(ebpf: &mut aya::Ebpf, pins: &Pins) -> Result<Self, EbpfError> {
        let mut take = |name: &'static str| -> Result<Map, EbpfError> {
            let map = ebpf.take_map(name).ok_or_else(|| EbpfError::MissingMap {
                name: name.to_owned(),
            })?;
            map.pin(pins.map(name))
                .map_err(|source| EbpfError::PinObject {
                    what: format!("map {name}"),
                    source,
                })?;
            Ok(map)
        };
        Ok(Self {
            settings: Array::try_from(take(names::SETTINGS)?).map_err(map_err(names::SETTINGS))?,
            intercept: HashMap::try_from(take(names::INTERCEPT)?)
                .map_err(map_err(names::INTERCEPT))?,
            ports: Array::try_from(take(names::PORTS)?).map_err(map_err(names::PORTS))?,
            counters: PerCpuHashMap::try_from(take(names::COUNTERS)?)
                .map_err(map_err(names::COUNTERS))?,
            interfaces: Vec::new(),
            flows: HashMap::try_from(take(names::FLOWS)?).map_err(map_err(names::FLOWS))?,
            events: Some(RingBuf::try_from(take(names::EVENTS)?).map_err(map_err(names::EVENTS))?),
            listeners: SockMap::try_from(take(names::LISTENERS)?)
                .map_err(map_err(names::LISTENERS))?,
            local: HashMap::try_from(take(names::LOCAL)?).map_err(map_err(names::LOCAL))?,
            sources4: LpmTrie::try_from(take(names::SOURCES4)?)
                .map_err(map_err(names::SOURCES4))?,
            sources6: LpmTrie::try_from(take(names::SOURCES6)?)
                .map_err(map_err(names::SOURCES6))?,
        })
    }

    /// Writes the configuration: manager entries first (new ones before
    /// stale ones go, so a running program never sees a gap), then the port
    /// bitmaps (a port's word is replaced in one write, so a port kept
    /// across a reload never reads as unset), then the settings that turn
    /// redirection on. The daemon's sockets (TCP listeners, UDP service
    /// sockets: `(slot, fd)`) go into the socket map before that, so the
    /// first redirected packet finds one.
    pub fn configure(
        &mut self,
        config: &Config,
        sockets: &[(u32, BorrowedFd<'_>)],
    ) -> Result<(), EbpfError> {
        let wanted = intercept_entries(config);
        let wanted_keys: HashSet<InterceptKey> = wanted.iter().map(|(k, _)| *k).collect();
        for (key, value) in &wanted {
            self.intercept
                .insert(key, value, 0)
                .map_err(map_err(names::INTERCEPT))?;
        }
        let stale: Vec<InterceptKey> = self
            .intercept
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted_keys.contains(k))
            .collect();
        for key in stale {
            self.intercept
                .remove(&key)
                .map_err(map_err(names::INTERCEPT))?;
        }
        for (index, word) in port_words(config).into_iter().enumerate() {
            let index = index as u32;
            // Only changed words are written: a reload rewrites a handful.
            let current = self.ports.get(&index, 0).map_err(map_err(names::PORTS))?;
            if current != word {
                self.ports
                    .set(index, word, 0)
                    .map_err(map_err(names::PORTS))?;
            }
        }
        for (slot, fd) in sockets {
            // Replaces the socket of a previous daemon, if the kernel has
            // not already emptied the slot when that one closed.
            self.listeners
                .set(*slot, fd, 0)
                .map_err(map_err(names::LISTENERS))?;
        }
        let settings = Settings {
            flags: settings_flags(config),
            mark: config.kernel.mark,
            event_interval_ns: config
                .kernel
                .drop_event_interval_ms
                .saturating_mul(1_000_000),
            _pad: [0; 8],
        };
        self.settings
            .set(0, settings, 0)
            .map_err(map_err(names::SETTINGS))
    }

    /// Makes the `LOCAL` table hold exactly `wanted` (address, flags):
    /// new and changed entries first, then the stale ones go, so an
    /// address kept across a refresh never reads as absent.
    pub fn sync_local(&mut self, wanted: &[(IpAddr, u32)]) -> Result<(), EbpfError> {
        let mut keys = HashSet::new();
        for (ip, flags) in wanted {
            let key = addr_key(*ip);
            keys.insert(key);
            if self.local.get(&key, 0).ok() != Some(*flags) {
                self.local
                    .insert(key, flags, 0)
                    .map_err(map_err(names::LOCAL))?;
            }
        }
        let stale: Vec<AddrKey> = self
            .local
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keys.contains(k))
            .collect();
        for key in stale {
            self.local.remove(&key).map_err(map_err(names::LOCAL))?;
        }
        Ok(())
    }

    /// Makes the `SOURCES4`/`SOURCES6` tries hold exactly the prefixes
    /// `wanted` (network address, prefix length), new ones first.
    pub fn sync_sources(&mut self, wanted: &[(IpAddr, u8)]) -> Result<(), EbpfError> {
        let mut keep4: HashSet<(u32, [u8; 4])> = HashSet::new();
        let mut keep6: HashSet<(u32, [u8; 16])> = HashSet::new();
        for (ip, len) in wanted {
            match ip.to_canonical() {
                IpAddr::V4(v4) => {
                    let k = (u32::from(*len).min(32), v4.octets());
                    if keep4.insert(k) {
                        self.sources4
                            .insert(&Key::new(k.0, k.1), 1, 0)
                            .map_err(map_err(names::SOURCES4))?;
                    }
                }
                IpAddr::V6(v6) => {
                    let k = (u32::from(*len).min(128), v6.octets());
                    if keep6.insert(k) {
                        self.sources6
                            .insert(&Key::new(k.0, k.1), 1, 0)
                            .map_err(map_err(names::SOURCES6))?;
                    }
                }
            }
        }
        let stale4: Vec<Key<[u8; 4]>> = self
            .sources4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep4.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale4 {
            self.sources4
                .remove(&key)
                .map_err(map_err(names::SOURCES4))?;
        }
        let stale6: Vec<Key<[u8; 16]>> = self
            .sources6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep6.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale6 {
            self.sources6
                .remove(&key)
                .map_err(map_err(names::SOURCES6))?;
        }
        Ok(())
    }

    /// Creates the counters entry of `ifindex` (zero) unless it exists,
    /// so that the program counts there from its first packet. Counts an
    /// earlier daemon left (an adopted installation) are kept.
    pub fn ensure_counters(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        if self.counters.get(&ifindex, 0).is_ok() {
            return Ok(());
        }
        let cpus =
            aya::util::nr_cpus().map_err(|(what, source)| EbpfError::Cpus { what, source })?;
        let zero = PerCpuValues::try_from(vec![IfCounters::default(); cpus]).map_err(|source| {
            EbpfError::Cpus {
                what: "one value per possible CPU",
                source,
            }
        })?;
        self.counters
            .insert(ifindex, zero, 0)
            .map_err(map_err(names::COUNTERS))
    }

    /// Makes the counters entries those of `attachments` plus the
    /// fallback (created if missing, entries of other ifindexes removed:
    /// interfaces detached or re-created) and reports under their names.
    pub fn track_interfaces(&mut self, attachments: &[Attachment]) -> Result<(), EbpfError> {
        self.ensure_counters(COUNTERS_FALLBACK)?;
        for a in attachments {
            self.ensure_counters(a.ifindex)?;
        }
        let stale: Vec<u32> = self
            .counters
            .keys()
            .filter_map(Result::ok)
            .filter(|k| *k != COUNTERS_FALLBACK && !attachments.iter().any(|a| a.ifindex == *k))
            .collect();
        for key in stale {
            self.counters
                .remove(&key)
                .map_err(map_err(names::COUNTERS))?;
        }
        self.name_interfaces(attachments);
        Ok(())
    }

    /// Reports the counters under the names of `attachments` (a reader
    /// such as `gateway status`, which changes no entry).
    pub fn name_interfaces(&mut self, attachments: &[Attachment]) {
        self.interfaces = attachments
            .iter()
            .map(|a| (a.ifindex, a.interface.clone()))
            .collect();
    }

    /// Every entry's counters, summed over CPUs, by interface name.
    pub fn counters(&self) -> Result<KernelCounts, EbpfError> {
        let mut raw = Vec::new();
        for entry in self.counters.iter() {
            let (ifindex, per_cpu) = entry.map_err(map_err(names::COUNTERS))?;
            raw.push((ifindex, sum_cpus(per_cpu.iter())));
        }
        Ok(KernelCounts::name(&raw, &self.interfaces))
    }

    /// Takes the packets dropped on `flow` since its last event, so that
    /// they are reported once.
    pub fn take_pending(&mut self, flow: &FlowKey) -> u64 {
        let Ok(state) = self.flows.get(flow, 0) else {
            return 0;
        };
        if state.pending == 0 {
            return 0;
        }
        // The kernel may count one more packet between this read and the
        // write; such a packet goes unreported in the audit but is in the
        // counters. Updating in place would need a spin lock in the value.
        let reset = FlowState {
            pending: 0,
            ..state
        };
        let _ = self.flows.insert(flow, reset, 0);
        state.pending
    }
}

/// The `Settings::flags` the configuration asks for.
pub fn settings_flags(config: &Config) -> u32 {
    let mut flags = FLAG_CONFIGURED;
    if config.devices.allow_dhcp {
        flags |= FLAG_ALLOW_DHCP;
    }
    if config.dns.enabled {
        flags |= FLAG_DNS;
    }
    if config.time.serve {
        flags |= FLAG_NTP;
    }
    flags
}

/// The intercept table the configuration asks for: every passthrough
/// service's addresses.
pub fn intercept_entries(config: &Config) -> Vec<(InterceptKey, u32)> {
    config
        .passthrough_addresses()
        .into_iter()
        .map(|a| (manager_key(a), INTERCEPT_MANAGER))
        .collect()
}

/// The `PORTS` array the configuration asks for: intercepted ports (and
/// DNS over TCP when the responder is on) in the first bitmap, the
/// passthrough services' ports in the second.
pub fn port_words(config: &Config) -> Vec<u64> {
    let mut words = vec![0u64; PORTS_MAX_ENTRIES as usize];
    let mut set = |kind: PortKind, port: u16| {
        let (index, bit) = kind.slot(port);
        words[index as usize] |= bit;
    };
    for port in &config.intercept.tcp_ports {
        set(PortKind::Intercept, *port);
    }
    if config.dns.enabled {
        set(PortKind::Intercept, DNS_PORT);
    }
    for addr in config.passthrough_addresses() {
        set(PortKind::Manager, addr.port());
    }
    words
}

fn manager_key(addr: SocketAddr) -> InterceptKey {
    let (family, bytes) = family_bytes(addr.ip());
    InterceptKey::addr(family, bytes, addr.port())
}

fn addr_key(ip: IpAddr) -> AddrKey {
    let (family, bytes) = family_bytes(ip);
    AddrKey::new(family, bytes)
}

/// The family tag and sixteen address bytes the program's keys hold
/// (IPv4 in the first four).
fn family_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (FAMILY_V4, bytes)
        }
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    }
}

/// The `LOCAL` entries for the gateway's own addresses and the configured
/// DHCP servers (an address may be both).
pub fn local_entries(own: &[IpAddr], dhcp_servers: &[IpAddr]) -> Vec<(IpAddr, u32)> {
    let mut entries: Vec<(IpAddr, u32)> = Vec::new();
    let mut add = |ip: IpAddr, flag: u32| {
        let ip = ip.to_canonical();
        match entries.iter_mut().find(|(a, _)| *a == ip) {
            Some((_, f)) => *f |= flag,
            None => entries.push((ip, flag)),
        }
    };
    for ip in own {
        add(*ip, LOCAL_OWN);
    }
    for ip in dhcp_servers {
        add(*ip, LOCAL_DHCP_SERVER);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intercept_entries_and_port_bitmaps_cover_ports_and_managers() {
        let config = Config::parse(
            "devices: {interfaces: [dev0]}\nmanager: {name: wfm.example, addresses: [\"10.0.0.5:8443\", \"[fd00::5]:443\"]}\nintercept: {tcp_ports: [80]}\n",
        )
        .expect("config");
        let entries = intercept_entries(&config);
        assert_eq!(entries.len(), 2);
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[10, 0, 0, 5]);
        assert!(entries.contains(&(InterceptKey::addr(FAMILY_V4, v4, 8443), INTERCEPT_MANAGER)));
        let v6: std::net::Ipv6Addr = "fd00::5".parse().expect("v6");
        assert!(entries.contains(&(
            InterceptKey::addr(FAMILY_V6, v6.octets(), 443),
            INTERCEPT_MANAGER
        )));
        let words = port_words(&config);
        let is_set = |kind: PortKind, port: u16| {
            let (index, bit) = kind.slot(port);
            words[index as usize] & bit != 0
        };
        assert!(is_set(PortKind::Intercept, 80));
        assert!(!is_set(PortKind::Intercept, 443));
        assert!(!is_set(PortKind::Intercept, 8443));
        assert!(is_set(PortKind::Manager, 8443));
        assert!(is_set(PortKind::Manager, 443));
        assert!(!is_set(PortKind::Manager, 80));
        // DNS over TCP, on by default.
        assert!(is_set(PortKind::Intercept, 53));
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 4);
        assert_eq!(
            settings_flags(&config),
            FLAG_CONFIGURED | FLAG_DNS | FLAG_NTP
        );
        let off = Config::parse(
            "devices: {interfaces: [dev0], allow_dhcp: true}\nmanager: {name: wfm.example, addresses: [\"10.0.0.5:8443\"]}\ndns: {enabled: false}\ntime: {serve: false}\n",
        )
        .expect("config");
        assert_eq!(settings_flags(&off), FLAG_CONFIGURED | FLAG_ALLOW_DHCP);
        let (index, bit) = PortKind::Intercept.slot(53);
        assert_eq!(port_words(&off)[index as usize] & bit, 0);
    }

    #[test]
    fn local_entries_merge_flags() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let e = local_entries(
            &[ip("10.77.1.1"), ip("fd77:1::1")],
            &[ip("10.77.1.1"), ip("10.0.0.9")],
        );
        assert_eq!(
            e,
            [
                (ip("10.77.1.1"), LOCAL_OWN | LOCAL_DHCP_SERVER),
                (ip("fd77:1::1"), LOCAL_OWN),
                (ip("10.0.0.9"), LOCAL_DHCP_SERVER),
            ]
        );
        assert_eq!(addr_key(ip("10.0.0.9")).addr[..4], [10, 0, 0, 9]);
    }
}
