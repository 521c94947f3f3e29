//! TC ingress program for the device-facing interfaces.
//!
//! Thin glue: parse, look up, assign or drop. Every decision that can be
//! made on the host lives in `gateway-common` and is unit-tested there.
//!
//! - TCP to an intercepted port, or to a manager address and port, is
//!   delivered to the gateway whatever the destination address. A SYN is
//!   assigned (`bpf_sk_assign`) to the socket of its 4-tuple if there is one
//!   (a retransmitted SYN, a TIME-WAIT), else to the transparent listener.
//!   Every later segment is only marked: policy routing delivers it locally
//!   and the stack's own lookup finds the connection the SYN created (what
//!   TPROXY does); without one the stack answers with a reset. This keeps
//!   the socket lookup and its reference counting off the per-packet path.
//! - UDP to port 53 (DNS) and 123 (NTP), whatever the destination address,
//!   is assigned to the daemon's transparent UDP socket when those services
//!   are on: the gateway answers devices' names and time itself.
//! - ARP passes. IPv6 neighbour discovery passes only as RFC 4861 allows
//!   it from a host on the link: solicitations and neighbour
//!   advertisements with hop limit 255, to link-local, multicast or the
//!   gateway's own addresses; router advertisements and redirects from
//!   devices are dropped. DHCP passes when configured, only from a client
//!   and only to broadcast, the DHCPv6 groups, the gateway or a configured
//!   server.
//! - Everything else is dropped, counted, and reported to userspace through a
//!   ring buffer, at most once per flow per interval.
//!
//! Any error on the way is a drop: the program fails closed.
#![no_std]
#![no_main]
// Every unsafe block says why it is sound; the crate is linted with the
// workspace lints by `cargo xtask test` (nightly, bpfel target).
#![deny(clippy::undocumented_unsafe_blocks)]
// Map keys and values go by reference on purpose: passed by value (as this
// lint asks) they are copied into aya's map functions, which then stop
// being inlined, and the calls' combined stack (544 bytes) fails the 6.1
// verifier's 512-byte bound.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_NOEXIST, BPF_TCP_LISTEN, TC_ACT_OK, TC_ACT_SHOT, bpf_sock,
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf, SockMap, lpm_trie::Key},
    programs::TcContext,
};
use gateway_common::{
    AddrKey, COUNTERS_FALLBACK, COUNTERS_MAX_ENTRIES, Counter, DropEvent, DropReason, EVENTS_BYTES,
    FAMILY_ANY, FAMILY_V4, FAMILY_V6, FLAG_ALLOW_DHCP, FLAG_CONFIGURED, FLOWS_MAX_ENTRIES, FlowKey,
    FlowState, INTERCEPT_MANAGER, INTERCEPT_MAX_ENTRIES, IfCounters, InterceptKey, LISTENER_V4,
    LISTENER_V6, LISTENERS_MAX_ENTRIES, LOCAL_MAX_ENTRIES, PORTS_MAX_ENTRIES, PortKind,
    SOURCES_MAX_ENTRIES, Settings, UDP_V4, UDP_V6, dhcp_destination_allowed, is_dhcp,
    is_icmp4_error, is_icmp6_error, is_link_local_v6, is_neighbor_discovery, is_unspecified,
    neighbor_discovery_allowed, opens_connection, udp_service, unspecified_source_allowed,
};

#[map(name = "SETTINGS")]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "INTERCEPT")]
static INTERCEPT: HashMap<InterceptKey, u32> = HashMap::with_max_entries(INTERCEPT_MAX_ENTRIES, 0);

#[map(name = "PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORTS_MAX_ENTRIES, 0);

#[map(name = "LISTENERS")]
static LISTENERS: SockMap = SockMap::with_max_entries(LISTENERS_MAX_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::with_max_entries(COUNTERS_MAX_ENTRIES, 0);

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "LOCAL")]
static LOCAL: HashMap<AddrKey, u32> = HashMap::with_max_entries(LOCAL_MAX_ENTRIES, 0);

#[map(name = "SOURCES4")]
static SOURCES4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(SOURCES_MAX_ENTRIES, 0);

#[map(name = "SOURCES6")]
static SOURCES6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(SOURCES_MAX_ENTRIES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_HLEN: usize = 40;
/// Without settings we still rate-limit events, at one per second per flow.
const DEFAULT_EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// Bytes of the transport header the verdict reads: the ports, and TCP's
/// flags (byte 13).
const L4_NEEDED: usize = 14;
/// Enough linear bytes for Ethernet, the largest IPv4 header and
/// [`L4_NEEDED`].
const PULL_LEN: u32 = (ETH_HLEN + 60 + L4_NEEDED) as u32;
/// Bytes of an ICMP error the verdict reads: its own header (8), the
/// quoted IPv4 header (only the 20-byte one is read) and the quoted ports.
const ICMP4_NEEDED: usize = 8 + 20 + 4;
/// The same for ICMPv6: the quoted header is the fixed 40 bytes.
const ICMP6_NEEDED: usize = 8 + IPV6_HLEN + 4;

#[classifier]
pub fn gateway_ingress(ctx: TcContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(action) => action,
        Err(()) => {
            // SAFETY: the kernel hands the program a valid `__sk_buff` for its whole run.
            count(unsafe { (*ctx.skb.skb).ifindex }, Counter::DropMalformed);
            TC_ACT_SHOT
        }
    }
}

/// The parsed facts about one TCP segment that the verdict needs.
struct Segment {
    flow: FlowKey,
    flags: u8,
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, ()> {
    // Headers of a non-linear skb may sit outside the directly readable
    // area; pull once so the bounds checks below see them. Only when the
    // headers this packet needs are not linear already: a TCP sender's skb
    // carries them in its head with the payload in fragments, and it is a
    // clone, so a pull of more than the headers would copy the head on
    // every packet (measured: ~2 µs per packet of a passthrough flow).
    let len = ctx.len();
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < len {
        let need = headers_needed(ctx);
        if linear < need {
            let want = if len < need { len } else { need };
            ctx.pull_data(want).map_err(|_| ())?;
        }
    }
    // SAFETY: the kernel hands the program a valid `__sk_buff` for its whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    match ethertype {
        ETH_P_ARP => {
            count(ifindex, Counter::PassArp);
            Ok(TC_ACT_OK)
        }
        ETH_P_IP => ipv4(ctx, ifindex),
        ETH_P_IPV6 => ipv6(ctx, ifindex),
        other => {
            let mut flow = flow_key(FAMILY_ANY, ZERO_ADDR, ZERO_ADDR, 0, ifindex);
            flow.dport = other;
            Ok(drop_packet(&flow, DropReason::Ethertype))
        }
    }
}

const ZERO_ADDR: [u8; 16] = [0; 16];

/// A flow key built in one go from values. Zero-filling a key and then
/// writing into it makes LLVM emit `memset` calls, which the BPF target
/// links as a byte-by-byte loop: that loop was a third of the program's
/// run time.
#[inline(always)]
fn flow_key(family: u8, saddr: [u8; 16], daddr: [u8; 16], proto: u8, ifindex: u32) -> FlowKey {
    FlowKey {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        family,
        proto,
        reason: 0,
        _pad: 0,
        ifindex,
    }
}

/// An IPv4 address in the first four bytes of sixteen, as keys hold it,
/// widened as an integer (two stores, no `memset`).
#[inline(always)]
fn v4_in_16(addr: u32) -> [u8; 16] {
    (addr as u128).to_ne_bytes()
}

/// Linear bytes the verdict reads: Ethernet, the IP header, the start of
/// the transport header.
/// [`PULL_LEN`] when the linear area is too short to tell.
#[inline(always)]
fn headers_needed(ctx: &TcContext) -> u32 {
    let Ok(ethertype) = read::<u16>(ctx, 12) else {
        return PULL_LEN;
    };
    // ICMP errors need their quote; everything else only the start of
    // its transport header (a TCP segment's payload is never pulled).
    match u16::from_be(ethertype) {
        ETH_P_IP => match (read::<u8>(ctx, ETH_HLEN), read::<u8>(ctx, ETH_HLEN + 9)) {
            (Ok(vihl), Ok(proto)) => {
                let l4 = if proto == IPPROTO_ICMP {
                    ICMP4_NEEDED
                } else {
                    L4_NEEDED
                };
                (ETH_HLEN + ((vihl & 0x0f) as usize) * 4 + l4) as u32
            }
            _ => (ETH_HLEN + 60 + ICMP4_NEEDED) as u32,
        },
        // The fixed header, then the ports and flags or the ICMPv6 type.
        ETH_P_IPV6 => match read::<u8>(ctx, ETH_HLEN + 6) {
            Ok(IPPROTO_ICMPV6) => (ETH_HLEN + IPV6_HLEN + ICMP6_NEEDED) as u32,
            Ok(_) => (ETH_HLEN + IPV6_HLEN + L4_NEEDED) as u32,
            Err(()) => (ETH_HLEN + IPV6_HLEN + ICMP6_NEEDED) as u32,
        },
        _ => ETH_HLEN as u32,
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, ifindex: u32) -> Result<i32, ()> {
    let vihl: u8 = read(ctx, ETH_HLEN)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    // Addresses stay in network byte order, as `bpf_sock_tuple` takes them.
    let saddr: u32 = read(ctx, ETH_HLEN + 12)?;
    let daddr: u32 = read(ctx, ETH_HLEN + 16)?;
    let proto: u8 = read(ctx, ETH_HLEN + 9)?;
    let mut flow = flow_key(FAMILY_V4, v4_in_16(saddr), v4_in_16(daddr), proto, ifindex);
    if !(20..=60).contains(&ihl) {
        return Ok(drop_packet(&flow, DropReason::Malformed));
    }
    // More-fragments flag or a fragment offset: a fragment. Ports are not
    // in every fragment, so no fragment can be judged; all are dropped.
    let frag = u16::from_be(read::<u16>(ctx, ETH_HLEN + 6)?);
    if frag & 0x3fff != 0 {
        return Ok(drop_packet(&flow, DropReason::Fragment));
    }
    let l4 = ETH_HLEN + ihl;
    match proto {
        IPPROTO_TCP => {
            ports(ctx, l4, &mut flow)?;
            let flags = read(ctx, l4 + 13)?;
            Ok(tcp(ctx, Segment { flow, flags }))
        }
        IPPROTO_UDP => udp(ctx, l4, flow),
        // One drop site for every ICMP verdict: each inlined drop costs
        // stack, which the verifier bounds at 512 bytes.
        IPPROTO_ICMP => match icmp4(ctx, ihl, &mut flow) {
            Ok(()) => Ok(TC_ACT_OK),
            Err(reason) => Ok(drop_packet(&flow, reason)),
        },
        _ => Ok(drop_packet(&flow, DropReason::Protocol)),
    }
}

#[inline(always)]
fn ipv6(ctx: &TcContext, ifindex: u32) -> Result<i32, ()> {
    let saddr = read(ctx, ETH_HLEN + 8)?;
    let daddr = read(ctx, ETH_HLEN + 24)?;
    let proto: u8 = read(ctx, ETH_HLEN + 6)?;
    let mut flow = flow_key(FAMILY_V6, saddr, daddr, proto, ifindex);
    let l4 = ETH_HLEN + IPV6_HLEN;
    match proto {
        IPPROTO_TCP => {
            ports(ctx, l4, &mut flow)?;
            let flags = read(ctx, l4 + 13)?;
            Ok(tcp(ctx, Segment { flow, flags }))
        }
        IPPROTO_UDP => udp(ctx, l4, flow),
        IPPROTO_ICMPV6 => {
            let icmp_type: u8 = read(ctx, l4)?;
            flow.dport = icmp_type as u16;
            if is_icmp6_error(icmp_type) {
                return match icmp6_error(ctx, l4, &flow) {
                    Ok(()) => Ok(TC_ACT_OK),
                    Err(reason) => Ok(drop_packet(&flow, reason)),
                };
            }
            if !is_neighbor_discovery(icmp_type) {
                return Ok(drop_packet(&flow, DropReason::Protocol));
            }
            // No source check here: neighbour discovery is link-scoped
            // (hop limit 255, checked below) and speaks from whatever
            // address the host has, link-local, global or none at all.
            let hop_limit: u8 = read(ctx, ETH_HLEN + 7)?;
            // The table is read only for unicast destinations that are not
            // link-local: solicitations to multicast groups, the common
            // case, need no lookup.
            let local = if is_link_local_v6(&flow.daddr) || flow.daddr[0] == 0xff {
                0
            } else {
                local_flags(FAMILY_V6, &flow.daddr)
            };
            if neighbor_discovery_allowed(icmp_type, hop_limit, &flow.daddr, local) {
                count(ifindex, Counter::PassNeighbor);
                Ok(TC_ACT_OK)
            } else {
                Ok(drop_packet(&flow, DropReason::NeighborDiscovery))
            }
        }
        // Extension headers are not walked: the fragment header is
        // reported as such, every other chain as a protocol drop.
        IPV6_FRAGMENT => Ok(drop_packet(&flow, DropReason::Fragment)),
        _ => Ok(drop_packet(&flow, DropReason::Protocol)),
    }
}

#[inline(always)]
fn udp(ctx: &TcContext, l4: usize, mut flow: FlowKey) -> Result<i32, ()> {
    ports(ctx, l4, &mut flow)?;
    if !source_allowed(&flow) {
        return Ok(drop_packet(&flow, DropReason::SourceNotAllowed));
    }
    let settings = settings();
    if let Some(s) = settings
        && let Some(service) = udp_service(s.flags, flow.dport)
    {
        // The daemon's one UDP socket of this family takes every DNS and
        // NTP packet, whatever its destination; it reads the original
        // destination from the packet and answers from that address.
        let slot = if flow.family == FAMILY_V4 {
            UDP_V4
        } else {
            UDP_V6
        };
        let sk = socket_in_slot(slot);
        if sk.is_null() {
            return Ok(drop_packet(&flow, DropReason::NoListener));
        }
        return Ok(assign(ctx, sk, &flow, s, service.counter()));
    }
    if is_dhcp(flow.family, flow.sport, flow.dport)
        && settings.is_some_and(|s| s.flags & FLAG_ALLOW_DHCP != 0)
    {
        let local = local_flags(flow.family, &flow.daddr);
        if !dhcp_destination_allowed(flow.family, &flow.daddr, local) {
            return Ok(drop_packet(&flow, DropReason::DhcpDestination));
        }
        count(flow.ifindex, Counter::PassDhcp);
        return Ok(TC_ACT_OK);
    }
    Ok(drop_packet(&flow, DropReason::Protocol))
}

#[inline(always)]
fn tcp(ctx: &TcContext, seg: Segment) -> i32 {
    let Some(settings) = settings().filter(|s| s.flags & FLAG_CONFIGURED != 0) else {
        return drop_packet(&seg.flow, DropReason::NotConfigured);
    };
    let flow = &seg.flow;
    let intercepted = intercepted(flow.family, &flow.daddr, flow.dport);
    // Return traffic of the gateway's own connection to a manager that sits
    // on the device side: matched by its source, never redirected.
    let from_manager = !intercepted && is_manager(flow.family, &flow.saddr, flow.sport);
    if !intercepted && !from_manager {
        return drop_packet(flow, DropReason::NotIntercepted);
    }
    let opens = opens_connection(seg.flags);
    if !opens && intercepted {
        // A later segment of an intercepted flow is only marked: it reaches
        // a socket only if the stack has the connection its SYN opened
        // (whose source was checked then), else it gets a reset.
        ctx.set_mark(settings.mark);
        count(flow.ifindex, Counter::MarkSegment);
        return TC_ACT_OK;
    }
    if opens && !source_allowed(flow) {
        return drop_packet(flow, DropReason::SourceNotAllowed);
    }

    // A socket for this exact 4-tuple: for a SYN, a request socket
    // (retransmitted SYN) or a TIME-WAIT one, which the stack's rules then
    // handle; for a segment claiming a passthrough service's address, the
    // gateway's own connection to it. (One lookup site: each inlined copy
    // costs the program stack, which old verifiers bound tightly.)
    let sk = lookup(ctx, flow);
    if !opens {
        // "From a passthrough service's address" is a claim anyone on the
        // device side can make: only segments of the gateway's own
        // connection to that service are let in.
        if sk.is_null() {
            return drop_packet(flow, DropReason::SourceNotAllowed);
        }
        // SAFETY: `sk` is non-null (checked above) and referenced until released below.
        let listening = unsafe { (*sk).state } == BPF_TCP_LISTEN;
        // SAFETY: releases the reference `lookup` took, exactly once.
        unsafe { bpf_sk_release(sk as *mut _) };
        if listening {
            return drop_packet(flow, DropReason::SourceNotAllowed);
        }
        ctx.set_mark(settings.mark);
        count(flow.ifindex, Counter::MarkSegment);
        return TC_ACT_OK;
    }
    if !sk.is_null() {
        // SAFETY: `sk` is non-null and referenced until released.
        if unsafe { (*sk).state } != BPF_TCP_LISTEN {
            return assign(ctx, sk, flow, settings, Counter::AssignEstablished);
        }
        // A listener of the host's own on the original port is not ours.
        // SAFETY: releases the reference `lookup` took, exactly once (the listener case).
        unsafe { bpf_sk_release(sk as *mut _) };
    }
    if !intercepted {
        return drop_packet(flow, DropReason::NotIntercepted);
    }

    // A new connection: the transparent listener of its family. It is
    // bound to the wildcard address, so any original destination matches.
    let slot = if flow.family == FAMILY_V4 {
        LISTENER_V4
    } else {
        LISTENER_V6
    };
    let sk = socket_in_slot(slot);
    if sk.is_null() {
        return drop_packet(flow, DropReason::NoListener);
    }
    // SAFETY: `sk` is non-null (checked above) and referenced until released.
    if unsafe { (*sk).state } != BPF_TCP_LISTEN {
        // SAFETY: releases the reference `socket_in_slot` took, exactly once.
        unsafe { bpf_sk_release(sk as *mut _) };
        return drop_packet(flow, DropReason::NoListener);
    }
    assign(ctx, sk, flow, settings, Counter::AssignListener)
}

/// ICMP (v4) from the device side: only errors about a TCP segment of
/// the gateway's own pass (see [`icmp_error`]).
#[inline(always)]
fn icmp4(ctx: &TcContext, ihl: usize, flow: &mut FlowKey) -> Result<(), DropReason> {
    // Constant offsets only: the verifier loses the packet range of reads
    // at a variable offset this deep. ICMP errors carry no IP options in
    // practice (RFC 1812 routers send none); one that does is dropped.
    const L4: usize = ETH_HLEN + 20;
    let malformed = |()| DropReason::Malformed;
    let icmp_type: u8 = read(ctx, L4).map_err(malformed)?;
    flow.dport = icmp_type as u16;
    if !is_icmp4_error(icmp_type) || ihl != 20 {
        return Err(DropReason::Protocol);
    }
    let quote = L4 + 8;
    let vihl: u8 = read(ctx, quote).map_err(malformed)?;
    let quoted_proto: u8 = read(ctx, quote + 9).map_err(malformed)?;
    if vihl != 0x45 || quoted_proto != IPPROTO_TCP {
        return Err(DropReason::Protocol);
    }
    let quoted_src: u32 = read(ctx, quote + 12).map_err(malformed)?;
    let quoted_dst: u32 = read(ctx, quote + 16).map_err(malformed)?;
    let sport = u16::from_be(read::<u16>(ctx, quote + 20).map_err(malformed)?);
    let dport = u16::from_be(read::<u16>(ctx, quote + 22).map_err(malformed)?);
    icmp_error(
        ctx,
        flow,
        (&v4_in_16(quoted_src), sport),
        (&v4_in_16(quoted_dst), dport),
    )
}

/// An ICMPv6 error from the device side: as [`icmp4`].
#[inline(always)]
fn icmp6_error(ctx: &TcContext, l4: usize, flow: &FlowKey) -> Result<(), DropReason> {
    let malformed = |()| DropReason::Malformed;
    let quote = l4 + 8;
    let quoted_proto: u8 = read(ctx, quote + 6).map_err(malformed)?;
    if quoted_proto != IPPROTO_TCP {
        return Err(DropReason::Protocol);
    }
    let quoted_src: [u8; 16] = read(ctx, quote + 8).map_err(malformed)?;
    let quoted_dst: [u8; 16] = read(ctx, quote + 24).map_err(malformed)?;
    let sport = u16::from_be(read::<u16>(ctx, quote + IPV6_HLEN).map_err(malformed)?);
    let dport = u16::from_be(read::<u16>(ctx, quote + IPV6_HLEN + 2).map_err(malformed)?);
    icmp_error(ctx, flow, (&quoted_src, sport), (&quoted_dst, dport))
}

/// An ICMP error from the device side (`flow`: its own addresses, the
/// type in `dport`) passes when the TCP segment it quotes is one the
/// gateway may have sent: from an intercepted port or a passthrough
/// service's address (a connection a device opened, which the gateway
/// holds), or to a passthrough service on the device side (the gateway's
/// own connection to it). Path-MTU discovery then works
/// for the gateway's flows, and nothing else gets through dressed as an
/// error. The stack does the rest as for any error: it finds the
/// connection from the quote and checks the quoted sequence number is in
/// its window, so a guess cannot reach a connection it does not know. A
/// socket lookup here would check the connection twice, and a second
/// lookup site costs more stack than the verifier allows. Marked like a
/// segment: its destination is the address the device asked for, which
/// only the policy-routing rule delivers locally.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    flow: &FlowKey,
    (quoted_src, quoted_sport): (&[u8; 16], u16),
    (quoted_dst, quoted_dport): (&[u8; 16], u16),
) -> Result<(), DropReason> {
    let Some(settings) = settings().filter(|s| s.flags & FLAG_CONFIGURED != 0) else {
        return Err(DropReason::NotConfigured);
    };
    if !source_allowed(flow) {
        return Err(DropReason::SourceNotAllowed);
    }
    if !port_in(PortKind::Intercept, quoted_sport)
        && !is_manager(flow.family, quoted_src, quoted_sport)
        && !is_manager(flow.family, quoted_dst, quoted_dport)
    {
        return Err(DropReason::Protocol);
    }
    ctx.set_mark(settings.mark);
    count(flow.ifindex, Counter::PassIcmpError);
    Ok(())
}

/// Whether the packet's source is in the devices' prefixes (the
/// `SOURCES4`/`SOURCES6` tries). An unspecified source passes on only where protocols use one
/// (a DHCP client without an address, duplicate address detection).
#[inline(always)]
fn source_allowed(flow: &FlowKey) -> bool {
    if is_unspecified(flow.family, &flow.saddr) {
        return unspecified_source_allowed(flow.family, flow.proto, flow.dport);
    }
    if flow.family == FAMILY_V4 {
        let a = &flow.saddr;
        SOURCES4
            .get(Key::new(32, [a[0], a[1], a[2], a[3]]))
            .is_some()
    } else {
        SOURCES6.get(Key::new(128, flow.saddr)).is_some()
    }
}

/// The `LOCAL` table's flags for an address (0 when absent).
#[inline(always)]
fn local_flags(family: u8, addr: &[u8; 16]) -> u32 {
    // SAFETY: a plain read of a map value; the program never keeps the reference.
    unsafe { LOCAL.get(&AddrKey::new(family, *addr)) }.map_or(0, |v| *v)
}

/// Whether `port` is set in one of the `PORTS` bitmaps.
#[inline(always)]
fn port_in(kind: PortKind, port: u16) -> bool {
    let (index, bit) = kind.slot(port);
    PORTS.get(index).is_some_and(|w| *w & bit != 0)
}

/// TCP to this destination goes to the gateway: an intercepted port, or a
/// manager's address and port. The hash table is only read for ports that
/// some manager uses.
#[inline(always)]
fn intercepted(family: u8, daddr: &[u8; 16], dport: u16) -> bool {
    port_in(PortKind::Intercept, dport) || is_manager(family, daddr, dport)
}

#[inline(always)]
fn is_manager(family: u8, addr: &[u8; 16], port: u16) -> bool {
    port_in(PortKind::Manager, port)
        // SAFETY: a plain read of a map value; the reference is not kept.
        && unsafe { INTERCEPT.get(InterceptKey::addr(family, *addr, port)) }
            .is_some_and(|v| *v == INTERCEPT_MANAGER)
}

/// The socket of the flow's exact 4-tuple, with a reference the caller
/// releases. Only the tuple's own family is written: the helper reads
/// `tuple_len` bytes, so the rest of the union is never zero-filled.
#[inline(always)]
fn lookup(ctx: &TcContext, flow: &FlowKey) -> *mut bpf_sock {
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    let t = tuple.as_mut_ptr();
    let len = if flow.family == FAMILY_V4 {
        // SAFETY: writes one field of the tuple on the stack (the v4 member);
        // the helper reads only `len` bytes of it.
        unsafe {
            (*t).__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                // The first four bytes: the low half of a little-endian u128.
                saddr: u128::from_ne_bytes(flow.saddr) as u32,
                daddr: u128::from_ne_bytes(flow.daddr) as u32,
                sport: flow.sport.to_be(),
                dport: flow.dport.to_be(),
            };
        }
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        // SAFETY: as above, the v6 member.
        unsafe {
            (*t).__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: core::mem::transmute::<[u8; 16], [u32; 4]>(flow.saddr),
                daddr: core::mem::transmute::<[u8; 16], [u32; 4]>(flow.daddr),
                sport: flow.sport.to_be(),
                dport: flow.dport.to_be(),
            };
        }
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    // SAFETY: `t` points at the tuple on this frame, `len` bytes of it
    // initialised; the returned socket is released by the caller.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut _,
            t,
            len as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// The daemon's socket in `index` of the socket map (a TCP listener or a
/// UDP socket), with a reference the caller releases; null while no daemon
/// holds that slot.
#[inline(always)]
fn socket_in_slot(index: u32) -> *mut bpf_sock {
    // The map static is the kernel's map definition (`repr(transparent)`);
    // aya-ebpf's SockMap offers no lookup outside sk_lookup programs.
    // SAFETY: a lookup in the program's own socket map with a key on this
    // frame; a non-null result is a referenced socket the caller releases.
    unsafe {
        bpf_map_lookup_elem(
            core::ptr::from_ref(&LISTENERS).cast_mut().cast(),
            core::ptr::from_ref(&index).cast(),
        )
    }
    .cast()
}

/// Assigns the packet to `sk` and releases the reference either way.
#[inline(always)]
fn assign(
    ctx: &TcContext,
    sk: *mut bpf_sock,
    flow: &FlowKey,
    settings: &Settings,
    counter: Counter,
) -> i32 {
    // SAFETY: `sk` is a referenced socket from a lookup; the skb is this run's.
    let ret = unsafe { bpf_sk_assign(ctx.skb.skb as *mut _, sk as *mut _, 0) };
    // SAFETY: releases that reference, exactly once, whatever the assign did.
    unsafe { bpf_sk_release(sk as *mut _) };
    if ret != 0 {
        return drop_packet(flow, DropReason::AssignFailed);
    }
    // The policy-routing rule delivers marked packets locally, whatever
    // their destination address.
    ctx.set_mark(settings.mark);
    count(flow.ifindex, counter);
    TC_ACT_OK
}

#[inline(always)]
fn ports(ctx: &TcContext, l4: usize, flow: &mut FlowKey) -> Result<(), ()> {
    flow.sport = u16::from_be(read::<u16>(ctx, l4)?);
    flow.dport = u16::from_be(read::<u16>(ctx, l4 + 2)?);
    Ok(())
}

#[inline(always)]
/// The settings in the map, by reference: a copy on the stack per call
/// site (one in every inlined drop) would push the program past the stack
/// old verifiers allow.
fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// Counts the drop, reports it at most once per interval per flow, and
/// returns the drop verdict.
#[inline(always)]
fn drop_packet(flow: &FlowKey, reason: DropReason) -> i32 {
    count(flow.ifindex, reason.counter());
    let mut key = *flow;
    key.reason = reason as u8;
    let interval = settings().map_or(DEFAULT_EVENT_INTERVAL_NS, |s| s.event_interval_ns);
    // SAFETY: reads the monotonic clock; no memory is touched.
    let now = unsafe { bpf_ktime_get_ns() };
    match FLOWS.get_ptr_mut(&key) {
        Some(state) => {
            // SAFETY: `state` points into the flow table's value for this key,
            // valid for this run (map values outlive the program's run).
            let last = unsafe { (*state).last_event_ns };
            if now.wrapping_sub(last) >= interval {
                // Take the suppressed count and report it with this packet.
                // Plain loads and stores: two CPUs racing on one flow may
                // lose an increment here; the exact counts are in COUNTERS.
                // SAFETY: as above.
                let pending = unsafe { (*state).pending };
                // SAFETY: as above.
                unsafe {
                    (*state).pending = 0;
                    (*state).last_event_ns = now;
                }
                emit(&key, pending + 1, now);
            } else {
                // SAFETY: as above.
                unsafe { (*state).pending += 1 };
            }
        }
        None => {
            let state = FlowState {
                last_event_ns: now,
                pending: 0,
            };
            if FLOWS.insert(&key, &state, BPF_NOEXIST as u64).is_err() {
                count(key.ifindex, Counter::FlowTableFull);
            }
            emit(&key, 1, now);
        }
    }
    TC_ACT_SHOT
}

#[inline(always)]
fn emit(flow: &FlowKey, packets: u64, ts_ns: u64) {
    let event = DropEvent {
        flow: *flow,
        _pad: 0,
        packets,
        ts_ns,
    };
    if EVENTS.output::<DropEvent>(&event, 0).is_err() {
        count(flow.ifindex, Counter::EventsLost);
    }
}

/// Counts a packet on the interface it arrived on (`ifindex`), or on the
/// fallback entry when that interface has none (see `IfCounters`).
///
/// Not inlined: a BPF subprogram of its own, so that its lookup keys sit in
/// its own small frame rather than in the program's, which 6.1's verifier
/// bounds at 448 bytes (512 for the whole call chain, each frame rounded up
/// to 32 bytes, an empty one counted as 32).
#[inline(never)]
fn count(ifindex: u32, counter: Counter) {
    let block = match COUNTERS.get_ptr_mut(&ifindex) {
        Some(block) => block,
        None => match COUNTERS.get_ptr_mut(&COUNTERS_FALLBACK) {
            Some(block) => block,
            None => return,
        },
    };
    // Per-CPU value: no other CPU writes it.
    // SAFETY: this CPU's copy of a map value, valid for this run; the
    // reference lives only for the increment.
    if let Some(v) = unsafe { (*block).packets.get_mut(counter as usize) } {
        *v += 1;
    }
}

/// Reads a `T` at `offset` from the packet, bounds-checked for the verifier.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    // SAFETY: the bounds check above keeps `size_of::<T>()` bytes at
    // `start + offset` inside the packet; `read_unaligned` needs no alignment.
    Ok(unsafe { ((start + offset) as *const T).read_unaligned() })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
