//! The kernel/user ABI of the gateway: map names, keys, values, events and
//! the pure decision helpers that both sides share.
//!
//! Every type here crosses the kernel boundary, so each is `#[repr(C)]` with
//! explicit padding and no `bool` (its bit patterns are not all valid). The
//! `user` feature adds `aya::Pod` impls for the daemon. Changing a layout is an
//! ABI break: bump [`ABI_VERSION`] so that a restarted daemon replaces the
//! pinned program instead of adopting one it cannot read.
#![no_std]

/// Bumped on every change of a type, map or constant in this crate.
///
/// The daemon stores it beside its pins; a daemon that finds pins of another
/// version replaces them rather than adopting them.
pub const ABI_VERSION: u32 = 8;

/// Name of the TC ingress program in the object file.
pub const PROGRAM_NAME: &str = "gateway_ingress";

/// Map names, as declared in `gateway-ebpf` and pinned by the daemon.
pub mod maps {
    /// `Array<Settings>`, one entry.
    pub const SETTINGS: &str = "SETTINGS";
    /// `HashMap<InterceptKey, u32>`: the passthrough services' addresses
    /// (address and port), redirected to the proxy.
    pub const INTERCEPT: &str = "INTERCEPT";
    /// `Array<u64>` of [`crate::PORT_WORDS`] words per [`crate::PortKind`]:
    /// one bit per TCP port.
    pub const PORTS: &str = "PORTS";
    /// `PerCpuHashMap<u32, IfCounters>`: the verdict counters of each
    /// device interface, keyed by its ifindex, plus the
    /// [`crate::COUNTERS_FALLBACK`] entry (see [`crate::IfCounters`]).
    pub const COUNTERS: &str = "COUNTERS";
    /// `LruHashMap<FlowKey, FlowState>`: per-flow event rate limiting.
    pub const FLOWS: &str = "FLOWS";
    /// `RingBuf` of [`crate::DropEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// `SockMap` of the daemon's transparent sockets: the TCP listeners
    /// ([`crate::LISTENER_V4`], [`crate::LISTENER_V6`]) and the UDP sockets
    /// that answer DNS and NTP ([`crate::UDP_V4`], [`crate::UDP_V6`]).
    pub const LISTENERS: &str = "LISTENERS";
    /// `HashMap<AddrKey, u32>`: addresses the program must recognise as
    /// destinations: the gateway's own on the device interfaces
    /// ([`crate::LOCAL_OWN`]) and the configured DHCP servers
    /// ([`crate::LOCAL_DHCP_SERVER`]).
    pub const LOCAL: &str = "LOCAL";
    /// `LpmTrie<[u8; 4], u32>` and `LpmTrie<[u8; 16], u32>`: the v4 and
    /// v6 prefixes devices may send from (`devices.prefixes`, default the
    /// device interfaces' own subnets). One trie per family keeps each
    /// lookup's key small on the program's stack.
    pub const SOURCES4: &str = "SOURCES4";
    pub const SOURCES6: &str = "SOURCES6";
    /// Every map, in a fixed order (pinning, adoption, removal).
    pub const ALL: [&str; 10] = [
        SETTINGS, INTERCEPT, PORTS, COUNTERS, FLOWS, EVENTS, LISTENERS, LOCAL, SOURCES4, SOURCES6,
    ];
}

/// Capacity of the intercept table (passthrough addresses).
pub const INTERCEPT_MAX_ENTRIES: u32 = 1024;
/// Slots of the `LISTENERS` socket map. The daemon puts its listeners
/// there, so a new connection's listener is an array index away instead of
/// a socket-table lookup; the kernel empties a slot when its socket closes.
pub const LISTENER_V4: u32 = 0;
pub const LISTENER_V6: u32 = 1;
/// Slots of the UDP sockets that answer devices' DNS and NTP queries,
/// whatever address they were sent to.
pub const UDP_V4: u32 = 2;
pub const UDP_V6: u32 = 3;
pub const LISTENERS_MAX_ENTRIES: u32 = 4;

/// 64-bit words of one port bitmap (65,536 ports).
pub const PORT_WORDS: u32 = 65_536 / 64;
/// Entries of the `PORTS` array: one bitmap per [`PortKind`].
pub const PORTS_MAX_ENTRIES: u32 = PortKind::COUNT * PORT_WORDS;

/// The bitmaps of the `PORTS` array. A bit test in an array costs the
/// program a few nanoseconds where a hash lookup costs tens, so every TCP
/// packet is judged by its ports first and the intercept table is only
/// consulted for ports a manager uses.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Intercepted whatever the destination address (`intercept.tcp_ports`).
    Intercept = 0,
    /// The port of at least one passthrough address (the manager and the
    /// other `passthrough:` services): the intercept table says which
    /// addresses.
    Manager = 1,
}

impl PortKind {
    pub const COUNT: u32 = 2;

    /// The array index and the bit of `port` in this bitmap.
    pub const fn slot(self, port: u16) -> (u32, u64) {
        (
            self as u32 * PORT_WORDS + (port as u32 >> 6),
            1u64 << (port & 63),
        )
    }
}
/// Key of the `COUNTERS` entry that takes counts the program cannot give
/// to an interface's own entry. No interface has ifindex 0.
pub const COUNTERS_FALLBACK: u32 = 0;
/// Capacity of the `COUNTERS` map: the fallback and this many less one
/// device interfaces (the daemon refuses more).
pub const COUNTERS_MAX_ENTRIES: u32 = 256;

/// One interface's verdict counters, indexed by [`Counter`]: the value of
/// the per-CPU `COUNTERS` map. The daemon creates an interface's entry
/// before it attaches the program there and removes it when it detaches,
/// so the program only ever looks entries up (never inserts: an insert
/// per packet would cost a hash-table write and could fill the map). The
/// lookup misses only when the entry is gone while the program still
/// runs on the interface (a pin removed by hand, an interface re-created
/// under an adopted installation until the daemon reconciles it); those
/// counts go to the [`COUNTERS_FALLBACK`] entry, so none is lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub packets: [u64; Counter::COUNT as usize],
}

/// Capacity of the per-flow rate-limit table; least recently used flows are
/// evicted, so a flood of new flows cannot fill it.
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// `Settings::flags` bit: pass DHCP (v4 67/68, v6 546/547).
pub const FLAG_ALLOW_DHCP: u32 = 1;
/// `Settings::flags` bit: the daemon has written the settings. Until it is
/// set the program drops everything it would otherwise redirect.
pub const FLAG_CONFIGURED: u32 = 1 << 1;
/// `Settings::flags` bit: UDP to port 53, any address, goes to the
/// gateway's DNS responder (`dns.enabled`).
pub const FLAG_DNS: u32 = 1 << 2;
/// `Settings::flags` bit: UDP to port 123, any address, goes to the
/// gateway's time server (`time.serve`).
pub const FLAG_NTP: u32 = 1 << 3;

/// The DNS port (UDP and TCP).
pub const DNS_PORT: u16 = 53;
/// The NTP port.
pub const NTP_PORT: u16 = 123;

/// Global settings written by the daemon, read by the program per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `skb->mark` set on redirected packets; the policy-routing rule
    /// matches it to deliver them locally.
    pub mark: u32,
    /// Minimum interval between two drop events of one flow, nanoseconds.
    pub event_interval_ns: u64,
    /// Reserved (the listener's port until ABI 2; the listeners now sit in
    /// the `LISTENERS` socket map).
    pub _pad: [u8; 8],
}

/// Address family tags used in keys and events.
pub const FAMILY_ANY: u8 = 0;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Key of the intercept table: a manager's family, address and port. IPv4
/// addresses sit in the first four bytes. (Ports intercepted for any
/// address live in the `PORTS` bitmap instead.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterceptKey {
    pub family: u8,
    pub _pad: u8,
    /// Destination port, host byte order.
    pub port: u16,
    pub addr: [u8; 16],
}

impl InterceptKey {
    pub const fn addr(family: u8, addr: [u8; 16], port: u16) -> Self {
        Self {
            family,
            _pad: 0,
            port,
            addr,
        }
    }
}

/// Capacity of each `SOURCES` trie.
pub const SOURCES_MAX_ENTRIES: u32 = 256;

/// Whether an unspecified source address (0.0.0.0, ::) may be let on to
/// the protocol checks: a DHCP client before it has an address (v4 UDP to
/// 67) and IPv6 duplicate address detection (ICMPv6). Anything else from
/// no address is a spoof.
pub const fn unspecified_source_allowed(family: u8, proto: u8, dport: u16) -> bool {
    match family {
        FAMILY_V4 => proto == 17 && dport == 67,
        FAMILY_V6 => proto == 58,
        _ => false,
    }
}

/// Whether an address is all zeros (in its family's bytes).
pub const fn is_unspecified(family: u8, addr: &[u8; 16]) -> bool {
    let n = if family == FAMILY_V4 { 4 } else { 16 };
    let mut i = 0;
    while i < n {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Capacity of the `LOCAL` table.
pub const LOCAL_MAX_ENTRIES: u32 = 1024;
/// `LOCAL` value bit: one of the gateway's own addresses.
pub const LOCAL_OWN: u32 = 1;
/// `LOCAL` value bit: a configured DHCP server (`devices.dhcp_servers`).
pub const LOCAL_DHCP_SERVER: u32 = 1 << 1;

/// Key of the `LOCAL` table: a family and an address (IPv4 in the first
/// four bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

impl AddrKey {
    pub const fn new(family: u8, addr: [u8; 16]) -> Self {
        Self {
            family,
            _pad: [0; 3],
            addr,
        }
    }
}

/// Value of the intercept table's entries: a passthrough address.
pub const INTERCEPT_MANAGER: u32 = 2;

/// A flow as the kernel sees it, for rate limiting and events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports in host byte order; zero for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...); for
    /// non-IP frames, zero.
    pub proto: u8,
    /// A [`DropReason`] as `u8`.
    pub reason: u8,
    pub _pad: u8,
    pub ifindex: u32,
}

/// Per-flow rate-limit state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns()` of the last event sent for this flow.
    pub last_event_ns: u64,
    /// Packets dropped since that event (not yet reported).
    pub pending: u64,
}

/// A dropped flow reported to userspace, at most once per
/// `Settings::event_interval_ns` per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub flow: FlowKey,
    pub _pad: u32,
    /// Packets this event stands for: this one plus those suppressed since
    /// the flow's previous event.
    pub packets: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was sent, so
    /// that events read late (after a daemon restart) keep their time.
    pub ts_ns: u64,
}

/// Why the kernel dropped a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// TCP to a port and address that is not intercepted.
    NotIntercepted = 1,
    /// UDP, ICMP or another IP protocol: devices may only speak TCP.
    Protocol = 2,
    /// An IP fragment (IPv4 offset or more-fragments, IPv6 fragment header).
    Fragment = 3,
    /// A truncated or malformed header.
    Malformed = 4,
    /// An intercepted flow but no listener to take it (daemon down).
    NoListener = 5,
    /// A frame that is neither IPv4, IPv6 nor ARP.
    Ethertype = 6,
    /// `bpf_sk_assign` refused the socket.
    AssignFailed = 7,
    /// The daemon has not configured the program yet.
    NotConfigured = 8,
    /// IPv6 neighbour discovery that is not allowed from a device: a
    /// router advertisement or redirect, a hop limit other than 255 (not
    /// from the link), or to an address that is not the gateway's.
    NeighborDiscovery = 9,
    /// DHCP to a destination other than broadcast, the DHCPv6 groups, the
    /// gateway or a configured server, or in the server's direction.
    DhcpDestination = 10,
    /// A source address outside `devices.prefixes` (spoofed), or a
    /// segment claiming to come from a passthrough service's address that
    /// belongs to no connection of the gateway's.
    SourceNotAllowed = 11,
}

impl DropReason {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::NotIntercepted,
            2 => Self::Protocol,
            3 => Self::Fragment,
            4 => Self::Malformed,
            5 => Self::NoListener,
            6 => Self::Ethertype,
            7 => Self::AssignFailed,
            8 => Self::NotConfigured,
            9 => Self::NeighborDiscovery,
            10 => Self::DhcpDestination,
            11 => Self::SourceNotAllowed,
            _ => return None,
        })
    }

    /// The `reason` written in audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotIntercepted => "port_not_intercepted",
            Self::Protocol => "protocol_not_allowed",
            Self::Fragment => "ip_fragment",
            Self::Malformed => "malformed_header",
            Self::NoListener => "no_listener",
            Self::Ethertype => "ethertype_not_allowed",
            Self::AssignFailed => "socket_assign_failed",
            Self::NotConfigured => "not_configured",
            Self::NeighborDiscovery => "neighbor_discovery_not_allowed",
            Self::DhcpDestination => "dhcp_destination_not_allowed",
            Self::SourceNotAllowed => "source_not_allowed",
        }
    }

    /// The counter that this drop increments.
    pub const fn counter(self) -> Counter {
        match self {
            Self::NotIntercepted => Counter::DropNotIntercepted,
            Self::Protocol => Counter::DropProtocol,
            Self::Fragment => Counter::DropFragment,
            Self::Malformed => Counter::DropMalformed,
            Self::NoListener => Counter::DropNoListener,
            Self::Ethertype => Counter::DropEthertype,
            Self::AssignFailed => Counter::DropAssignFailed,
            Self::NotConfigured => Counter::DropNotConfigured,
            Self::NeighborDiscovery => Counter::DropNeighborDiscovery,
            Self::DhcpDestination => Counter::DropDhcpDestination,
            Self::SourceNotAllowed => Counter::DropSource,
        }
    }
}

/// The verdict counters: indices into [`IfCounters::packets`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    PassArp = 0,
    PassNeighbor = 1,
    PassDhcp = 2,
    /// Assigned to an existing connection (or request) socket.
    AssignEstablished = 3,
    /// Assigned to the proxy listener (a new connection).
    AssignListener = 4,
    DropNotIntercepted = 5,
    DropProtocol = 6,
    DropFragment = 7,
    DropMalformed = 8,
    DropNoListener = 9,
    DropEthertype = 10,
    DropAssignFailed = 11,
    DropNotConfigured = 12,
    /// A drop event could not be queued: the ring buffer was full.
    EventsLost = 13,
    /// The flow table refused an insert; the packet was still dropped.
    FlowTableFull = 14,
    /// A segment other than a SYN of an intercepted or manager flow: marked
    /// for local delivery, where the stack's own lookup finds its socket.
    MarkSegment = 15,
    /// A UDP DNS query assigned to the gateway's DNS responder.
    AssignDns = 16,
    /// A UDP NTP request assigned to the gateway's time server.
    AssignNtp = 17,
    DropNeighborDiscovery = 18,
    DropDhcpDestination = 19,
    DropSource = 20,
    /// An ICMP error (path MTU, unreachable, time exceeded) quoting a TCP
    /// segment of one of the gateway's own connections: passed to the
    /// stack, which finds the connection from the quote.
    PassIcmpError = 21,
}

impl Counter {
    pub const COUNT: u32 = 22;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::PassArp,
        Self::PassNeighbor,
        Self::PassDhcp,
        Self::AssignEstablished,
        Self::AssignListener,
        Self::DropNotIntercepted,
        Self::DropProtocol,
        Self::DropFragment,
        Self::DropMalformed,
        Self::DropNoListener,
        Self::DropEthertype,
        Self::DropAssignFailed,
        Self::DropNotConfigured,
        Self::EventsLost,
        Self::FlowTableFull,
        Self::MarkSegment,
        Self::AssignDns,
        Self::AssignNtp,
        Self::DropNeighborDiscovery,
        Self::DropDhcpDestination,
        Self::DropSource,
        Self::PassIcmpError,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::PassArp => "pass_arp",
            Self::PassNeighbor => "pass_neighbor_discovery",
            Self::PassDhcp => "pass_dhcp",
            Self::AssignEstablished => "assign_established",
            Self::AssignListener => "assign_listener",
            Self::DropNotIntercepted => "drop_not_intercepted",
            Self::DropProtocol => "drop_protocol",
            Self::DropFragment => "drop_fragment",
            Self::DropMalformed => "drop_malformed",
            Self::DropNoListener => "drop_no_listener",
            Self::DropEthertype => "drop_ethertype",
            Self::DropAssignFailed => "drop_assign_failed",
            Self::DropNotConfigured => "drop_not_configured",
            Self::EventsLost => "events_lost",
            Self::FlowTableFull => "flow_table_full",
            Self::MarkSegment => "mark_segment",
            Self::AssignDns => "assign_dns",
            Self::AssignNtp => "assign_ntp",
            Self::DropNeighborDiscovery => "drop_neighbor_discovery",
            Self::DropDhcpDestination => "drop_dhcp_destination",
            Self::DropSource => "drop_source_not_allowed",
            Self::PassIcmpError => "pass_icmp_error",
        }
    }
}

/// Whether a UDP packet is a DHCP client's (v4 68→67, v6 546→547): the
/// only direction a device may send. A device answering as a server
/// (67→68) is a rogue server and is dropped.
pub const fn is_dhcp(family: u8, sport: u16, dport: u16) -> bool {
    match family {
        FAMILY_V4 => matches!((sport, dport), (68, 67)),
        FAMILY_V6 => matches!((sport, dport), (546, 547)),
        _ => false,
    }
}

/// Whether a DHCP client's packet may go to `daddr`: the limited
/// broadcast (v4), the All_DHCP_Relay_Agents_and_Servers (ff02::1:2) or
/// All_DHCP_Servers (ff05::1:3) groups (v6), or an address the `LOCAL`
/// table marks (`local`: its value, 0 when absent) as the gateway's own or
/// a configured server.
pub const fn dhcp_destination_allowed(family: u8, daddr: &[u8; 16], local: u32) -> bool {
    if local & (LOCAL_OWN | LOCAL_DHCP_SERVER) != 0 {
        return true;
    }
    match family {
        FAMILY_V4 => daddr[0] == 255 && daddr[1] == 255 && daddr[2] == 255 && daddr[3] == 255,
        FAMILY_V6 => is_v6_group(daddr, 0x02, 2) || is_v6_group(daddr, 0x05, 3),
        _ => false,
    }
}

/// Whether `a` is `ffSS::1:LL` (scope `scope`, last byte `last`).
const fn is_v6_group(a: &[u8; 16], scope: u8, last: u8) -> bool {
    if a[0] != 0xff || a[1] != scope || a[13] != 1 || a[15] != last {
        return false;
    }
    let mut i = 2;
    while i < 15 {
        if i != 13 && a[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether an IPv6 address is link-local unicast (fe80::/10).
pub const fn is_link_local_v6(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

/// Whether a device's neighbour discovery message passes (RFC 4861):
/// router and neighbour solicitations and neighbour advertisements, with
/// hop limit 255 (a packet from the link itself: routers decrement it), to
/// a link-local or multicast address or one of the gateway's own (`local`
/// has [`LOCAL_OWN`]). Router advertisements and redirects from devices
/// never pass: with Linux's defaults (`accept_ra=1`, forwarding off) a
/// device's RA would make it the gateway host's default router.
pub const fn neighbor_discovery_allowed(
    icmp6_type: u8,
    hop_limit: u8,
    daddr: &[u8; 16],
    local: u32,
) -> bool {
    match icmp6_type {
        133 | 135 | 136 => {
            hop_limit == 255
                && (is_link_local_v6(daddr) || daddr[0] == 0xff || local & LOCAL_OWN != 0)
        }
        _ => false,
    }
}

/// A UDP service of the gateway's own, answered whatever address the
/// device sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpService {
    Dns,
    Ntp,
}

impl UdpService {
    /// The counter of packets assigned to this service.
    pub const fn counter(self) -> Counter {
        match self {
            Self::Dns => Counter::AssignDns,
            Self::Ntp => Counter::AssignNtp,
        }
    }
}

/// The gateway's UDP service a packet to `dport` goes to, given the
/// settings' flags; `None` for every other UDP packet.
pub const fn udp_service(flags: u32, dport: u16) -> Option<UdpService> {
    if flags & FLAG_CONFIGURED == 0 {
        return None;
    }
    match dport {
        DNS_PORT if flags & FLAG_DNS != 0 => Some(UdpService::Dns),
        NTP_PORT if flags & FLAG_NTP != 0 => Some(UdpService::Ntp),
        _ => None,
    }
}

/// TCP header flag bits (RFC 9293).
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Whether a TCP segment opens a connection: SYN without ACK. Only these
/// need a socket chosen by the program; every later segment of the flow
/// matches the connection's own 4-tuple in the stack.
pub const fn opens_connection(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
}

/// Whether an ICMPv6 type is neighbour discovery (RFC 4861: router
/// solicitation and advertisement, neighbour solicitation and
/// advertisement, redirect).
pub const fn is_neighbor_discovery(icmp6_type: u8) -> bool {
    matches!(icmp6_type, 133..=137)
}

/// Whether an ICMP (v4) type is an error that quotes the packet it is
/// about: destination unreachable (fragmentation needed among its codes),
/// time exceeded, parameter problem.
pub const fn is_icmp4_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 11 | 12)
}

/// Whether an ICMPv6 type is an error that quotes the packet it is about:
/// destination unreachable, packet too big, time exceeded, parameter
/// problem (RFC 4443).
pub const fn is_icmp6_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4)
}

/// Whether a drop event is due for a flow: its first packet, or the first
/// one after the interval since the flow's previous event.
pub const fn event_due(state: Option<FlowState>, now_ns: u64, interval_ns: u64) -> bool {
    match state {
        None => true,
        Some(s) => now_ns.wrapping_sub(s.last_event_ns) >= interval_ns,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays,
    // with its padding spelled out, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::InterceptKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::IfCounters {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        // The kernel side reads these at fixed offsets: sizes must not drift.
        assert_eq!(size_of::<Settings>(), 24);
        assert_eq!(size_of::<InterceptKey>(), 20);
        assert_eq!(size_of::<FlowKey>(), 44);
        assert_eq!(size_of::<FlowState>(), 16);
        assert_eq!(size_of::<DropEvent>(), 64);
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<IfCounters>(), 8 * Counter::COUNT as usize);
    }

    #[test]
    fn drop_reasons_round_trip() {
        for v in 0..=255u8 {
            if let Some(r) = DropReason::from_u8(v) {
                assert_eq!(r as u8, v);
                assert!(
                    r.as_str()
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_')
                );
            }
        }
        assert_eq!(DropReason::from_u8(0), None);
        assert_eq!(DropReason::from_u8(12), None);
    }

    #[test]
    fn counters_are_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        let mut names: std::vec::Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::COUNT as usize);
    }

    #[test]
    fn dhcp_matches_only_a_clients_ports() {
        assert!(is_dhcp(FAMILY_V4, 68, 67));
        assert!(
            !is_dhcp(FAMILY_V4, 67, 68),
            "a device answering as a server"
        );
        assert!(!is_dhcp(FAMILY_V4, 546, 547));
        assert!(is_dhcp(FAMILY_V6, 546, 547));
        assert!(!is_dhcp(FAMILY_V6, 547, 546));
        assert!(!is_dhcp(FAMILY_V6, 68, 67));
        assert!(!is_dhcp(FAMILY_V4, 53, 67));
    }

    fn v6(text: &str) -> [u8; 16] {
        text.parse::<std::net::Ipv6Addr>().expect("v6").octets()
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn dhcp_destinations() {
        assert!(dhcp_destination_allowed(FAMILY_V4, &v4([255; 4]), 0));
        assert!(!dhcp_destination_allowed(FAMILY_V4, &v4([10, 77, 2, 2]), 0));
        assert!(dhcp_destination_allowed(
            FAMILY_V4,
            &v4([10, 77, 1, 1]),
            LOCAL_OWN
        ));
        assert!(dhcp_destination_allowed(
            FAMILY_V4,
            &v4([10, 0, 0, 9]),
            LOCAL_DHCP_SERVER
        ));
        assert!(dhcp_destination_allowed(FAMILY_V6, &v6("ff02::1:2"), 0));
        assert!(dhcp_destination_allowed(FAMILY_V6, &v6("ff05::1:3"), 0));
        assert!(!dhcp_destination_allowed(FAMILY_V6, &v6("ff02::1:3"), 0));
        assert!(!dhcp_destination_allowed(FAMILY_V6, &v6("ff02::2"), 0));
        assert!(!dhcp_destination_allowed(
            FAMILY_V6,
            &v6("ff02:0:0:0:1::1:2"),
            0
        ));
        assert!(!dhcp_destination_allowed(FAMILY_V6, &v6("fd77:2::2"), 0));
        assert!(dhcp_destination_allowed(
            FAMILY_V6,
            &v6("fd77:1::1"),
            LOCAL_OWN
        ));
    }

    #[test]
    fn source_keys_and_unspecified_sources() {
        assert!(is_unspecified(FAMILY_V4, &v4([0; 4])));
        assert!(!is_unspecified(FAMILY_V4, &v4([0, 0, 0, 1])));
        assert!(is_unspecified(FAMILY_V6, &[0; 16]));
        assert!(!is_unspecified(FAMILY_V6, &v6("::1")));
        assert!(unspecified_source_allowed(FAMILY_V4, 17, 67));
        assert!(!unspecified_source_allowed(FAMILY_V4, 17, 53));
        assert!(!unspecified_source_allowed(FAMILY_V4, 6, 443));
        assert!(unspecified_source_allowed(FAMILY_V6, 58, 135));
        assert!(!unspecified_source_allowed(FAMILY_V6, 6, 443));
    }

    #[test]
    fn neighbor_discovery_rules() {
        let ll = v6("fe80::1");
        let solicited = v6("ff02::1:ff00:1");
        let own = v6("fd77:1::1");
        let other = v6("fd77:2::2");
        for t in [133, 135, 136] {
            assert!(neighbor_discovery_allowed(t, 255, &ll, 0), "{t}");
            assert!(neighbor_discovery_allowed(t, 255, &solicited, 0), "{t}");
            assert!(neighbor_discovery_allowed(t, 255, &own, LOCAL_OWN), "{t}");
            assert!(!neighbor_discovery_allowed(t, 255, &other, 0), "{t}");
            assert!(
                !neighbor_discovery_allowed(t, 255, &other, LOCAL_DHCP_SERVER),
                "{t}"
            );
            // Not from the link: a router on the way decremented it.
            assert!(!neighbor_discovery_allowed(t, 64, &ll, 0), "{t}");
            assert!(!neighbor_discovery_allowed(t, 254, &own, LOCAL_OWN), "{t}");
        }
        // Router advertisements and redirects never pass.
        for t in [134, 137] {
            assert!(
                !neighbor_discovery_allowed(t, 255, &v6("ff02::1"), 0),
                "{t}"
            );
            assert!(!neighbor_discovery_allowed(t, 255, &ll, LOCAL_OWN), "{t}");
        }
        assert!(is_link_local_v6(&v6("fe80::1")));
        assert!(is_link_local_v6(&v6("febf::1")));
        assert!(!is_link_local_v6(&v6("fec0::1")));
    }

    #[test]
    fn only_a_bare_syn_opens_a_connection() {
        assert!(opens_connection(TCP_FLAG_SYN));
        assert!(opens_connection(TCP_FLAG_SYN | 0x08)); // SYN+PSH (fast open data)
        assert!(!opens_connection(TCP_FLAG_SYN | TCP_FLAG_ACK));
        assert!(!opens_connection(TCP_FLAG_ACK));
        assert!(!opens_connection(0x04)); // RST
        assert!(!opens_connection(0x01)); // FIN
    }

    #[test]
    fn port_slots_cover_every_port_once() {
        let mut seen = std::collections::HashSet::new();
        for kind in [PortKind::Intercept, PortKind::Manager] {
            for port in 0..=u16::MAX {
                let (index, bit) = kind.slot(port);
                assert!(index < PORTS_MAX_ENTRIES);
                assert_eq!(bit.count_ones(), 1);
                assert!(seen.insert((index, bit)));
            }
        }
        assert_eq!(PortKind::Intercept.slot(443), (6, 1 << 59));
        assert_eq!(PortKind::Manager.slot(0), (PORT_WORDS, 1));
    }

    #[test]
    fn udp_services_follow_their_flags() {
        let all = FLAG_CONFIGURED | FLAG_DNS | FLAG_NTP;
        assert_eq!(udp_service(all, 53), Some(UdpService::Dns));
        assert_eq!(udp_service(all, 123), Some(UdpService::Ntp));
        assert_eq!(udp_service(all, 853), None); // DNS over TLS/QUIC stays dropped
        assert_eq!(udp_service(all, 443), None);
        assert_eq!(udp_service(FLAG_CONFIGURED | FLAG_NTP, 53), None);
        assert_eq!(udp_service(FLAG_CONFIGURED | FLAG_DNS, 123), None);
        // Until the daemon has configured the program, nothing is assigned.
        assert_eq!(udp_service(FLAG_DNS | FLAG_NTP, 53), None);
        assert_eq!(UdpService::Dns.counter(), Counter::AssignDns);
    }

    #[test]
    fn neighbor_discovery_types() {
        assert!(is_neighbor_discovery(135));
        assert!(is_neighbor_discovery(136));
        assert!(!is_neighbor_discovery(128)); // echo request
        assert!(!is_neighbor_discovery(1));
    }

    #[test]
    fn event_rate_limit() {
        let s = FlowState {
            last_event_ns: 1_000,
            pending: 0,
        };
        assert!(event_due(None, 5, 1_000_000));
        assert!(!event_due(Some(s), 1_500, 1_000));
        assert!(event_due(Some(s), 2_000, 1_000));
    }
}
