//! TC ingress program for the device-facing interfaces.
//!
//! Thin glue: parse, look up, assign or drop. Every decision that can be
//! made on the host lives in `gateway-common` and is unit-tested there.
//!
//! - TCP to an intercepted port, or to a manager address and port, is
//!   assigned (`bpf_sk_assign`) to the gateway's socket: the established
//!   connection if there is one, else the transparent listener, whatever the
//!   destination address.
//! - ARP and IPv6 neighbour discovery pass; DHCP passes when configured.
//! - Everything else is dropped, counted, and reported to userspace through a
//!   ring buffer, at most once per flow per interval.
//!
//! Any error on the way is a drop: the program fails closed.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_NOEXIST, BPF_TCP_LISTEN, TC_ACT_OK, TC_ACT_SHOT, bpf_sock,
        bpf_sock_tuple,
    },
    helpers::{bpf_ktime_get_ns, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use gateway_common::{
    Counter, DropEvent, DropReason, EVENTS_BYTES, FAMILY_ANY, FAMILY_V4, FAMILY_V6,
    FLAG_ALLOW_DHCP, FLAG_CONFIGURED, FLOWS_MAX_ENTRIES, FlowKey, FlowState, INTERCEPT_MANAGER,
    INTERCEPT_MAX_ENTRIES, InterceptKey, Settings, is_dhcp, is_neighbor_discovery,
};

#[map(name = "SETTINGS")]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "INTERCEPT")]
static INTERCEPT: HashMap<InterceptKey, u32> = HashMap::with_max_entries(INTERCEPT_MAX_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

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
/// Enough linear bytes for Ethernet, the largest IPv4 header and the ports.
const PULL_LEN: u32 = (ETH_HLEN + 60 + 4) as u32;

#[classifier]
pub fn gateway_ingress(ctx: TcContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(action) => action,
        Err(()) => {
            count(Counter::DropMalformed);
            TC_ACT_SHOT as i32
        }
    }
}

/// The parsed facts about one packet that the verdict needs.
struct Packet {
    flow: FlowKey,
    /// TCP tuple in network byte order, as `bpf_skc_lookup_tcp` takes it.
    tuple: bpf_sock_tuple,
    tuple_len: u32,
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
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut flow = FlowKey {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: FAMILY_ANY,
        proto: 0,
        reason: 0,
        _pad: 0,
        ifindex,
    };
    let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    match ethertype {
        ETH_P_ARP => {
            count(Counter::PassArp);
            Ok(TC_ACT_OK as i32)
        }
        ETH_P_IP => ipv4(ctx, flow),
        ETH_P_IPV6 => ipv6(ctx, flow),
        other => {
            flow.dport = other;
            Ok(drop_packet(&flow, DropReason::Ethertype))
        }
    }
}

/// Linear bytes the verdict reads: Ethernet, the IP header, the ports.
/// [`PULL_LEN`] when the linear area is too short to tell.
#[inline(always)]
fn headers_needed(ctx: &TcContext) -> u32 {
    let Ok(ethertype) = read::<u16>(ctx, 12) else {
        return PULL_LEN;
    };
    match u16::from_be(ethertype) {
        ETH_P_IP => match read::<u8>(ctx, ETH_HLEN) {
            Ok(vihl) => (ETH_HLEN + ((vihl & 0x0f) as usize) * 4 + 4) as u32,
            Err(()) => PULL_LEN,
        },
        // The fixed header, then the ports or the ICMPv6 type.
        ETH_P_IPV6 => (ETH_HLEN + IPV6_HLEN + 4) as u32,
        _ => ETH_HLEN as u32,
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, mut flow: FlowKey) -> Result<i32, ()> {
    flow.family = FAMILY_V4;
    let vihl: u8 = read(ctx, ETH_HLEN)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let saddr: [u8; 4] = read(ctx, ETH_HLEN + 12)?;
    let daddr: [u8; 4] = read(ctx, ETH_HLEN + 16)?;
    flow.saddr[..4].copy_from_slice(&saddr);
    flow.daddr[..4].copy_from_slice(&daddr);
    flow.proto = read(ctx, ETH_HLEN + 9)?;
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
    match flow.proto {
        IPPROTO_TCP => {
            ports(ctx, l4, &mut flow)?;
            let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
            unsafe {
                let t = &mut tuple.__bindgen_anon_1.ipv4;
                t.saddr = u32::from_ne_bytes(saddr);
                t.daddr = u32::from_ne_bytes(daddr);
                t.sport = flow.sport.to_be();
                t.dport = flow.dport.to_be();
            }
            let pkt = Packet {
                flow,
                tuple,
                tuple_len: (size_of::<u32>() * 2 + size_of::<u16>() * 2) as u32,
            };
            Ok(tcp(ctx, pkt))
        }
        IPPROTO_UDP => udp(ctx, l4, flow),
        IPPROTO_ICMP => Ok(drop_packet(&flow, DropReason::Protocol)),
        _ => Ok(drop_packet(&flow, DropReason::Protocol)),
    }
}

#[inline(always)]
fn ipv6(ctx: &TcContext, mut flow: FlowKey) -> Result<i32, ()> {
    flow.family = FAMILY_V6;
    flow.saddr = read(ctx, ETH_HLEN + 8)?;
    flow.daddr = read(ctx, ETH_HLEN + 24)?;
    flow.proto = read(ctx, ETH_HLEN + 6)?;
    let l4 = ETH_HLEN + IPV6_HLEN;
    match flow.proto {
        IPPROTO_TCP => {
            ports(ctx, l4, &mut flow)?;
            let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
            unsafe {
                let t = &mut tuple.__bindgen_anon_1.ipv6;
                t.saddr = core::mem::transmute::<[u8; 16], [u32; 4]>(flow.saddr);
                t.daddr = core::mem::transmute::<[u8; 16], [u32; 4]>(flow.daddr);
                t.sport = flow.sport.to_be();
                t.dport = flow.dport.to_be();
            }
            let pkt = Packet {
                flow,
                tuple,
                tuple_len: (size_of::<[u32; 4]>() * 2 + size_of::<u16>() * 2) as u32,
            };
            Ok(tcp(ctx, pkt))
        }
        IPPROTO_UDP => udp(ctx, l4, flow),
        IPPROTO_ICMPV6 => {
            let icmp_type: u8 = read(ctx, l4)?;
            if is_neighbor_discovery(icmp_type) {
                count(Counter::PassNeighbor);
                Ok(TC_ACT_OK as i32)
            } else {
                flow.dport = icmp_type as u16;
                Ok(drop_packet(&flow, DropReason::Protocol))
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
    if is_dhcp(flow.family, flow.sport, flow.dport)
        && settings().is_some_and(|s| s.flags & FLAG_ALLOW_DHCP != 0)
    {
        count(Counter::PassDhcp);
        return Ok(TC_ACT_OK as i32);
    }
    Ok(drop_packet(&flow, DropReason::Protocol))
}

#[inline(always)]
fn tcp(ctx: &TcContext, mut pkt: Packet) -> i32 {
    let Some(settings) = settings().filter(|s| s.flags & FLAG_CONFIGURED != 0) else {
        return drop_packet(&pkt.flow, DropReason::NotConfigured);
    };
    let flow = &pkt.flow;
    let intercepted = intercepted(flow.family, &flow.daddr, flow.dport);
    // Return traffic of the gateway's own connection to a manager that sits
    // on the device side: matched by its source, never redirected.
    let from_manager = !intercepted
        && unsafe { INTERCEPT.get(InterceptKey::addr(flow.family, flow.saddr, flow.sport)) }
            .is_some_and(|v| *v == INTERCEPT_MANAGER);
    if !intercepted && !from_manager {
        return drop_packet(&pkt.flow, DropReason::NotIntercepted);
    }

    // An existing connection or request socket for this exact 4-tuple.
    let sk = lookup(ctx, &mut pkt);
    if !sk.is_null() {
        if unsafe { (*sk).state } != BPF_TCP_LISTEN {
            return assign(ctx, sk, &pkt.flow, &settings, Counter::AssignEstablished);
        }
        // A listener of the host's own on the original port is not ours.
        unsafe { bpf_sk_release(sk as *mut _) };
    }
    if !intercepted {
        return drop_packet(&pkt.flow, DropReason::NotIntercepted);
    }

    // A new connection: the transparent listener, found by its port. It is
    // bound to the wildcard address, so any original destination matches.
    match pkt.flow.family {
        FAMILY_V4 => pkt.tuple.__bindgen_anon_1.ipv4.dport = settings.proxy_port.to_be(),
        _ => pkt.tuple.__bindgen_anon_1.ipv6.dport = settings.proxy_port.to_be(),
    }
    let sk = lookup(ctx, &mut pkt);
    if sk.is_null() {
        return drop_packet(&pkt.flow, DropReason::NoListener);
    }
    if unsafe { (*sk).state } != BPF_TCP_LISTEN {
        unsafe { bpf_sk_release(sk as *mut _) };
        return drop_packet(&pkt.flow, DropReason::NoListener);
    }
    assign(ctx, sk, &pkt.flow, &settings, Counter::AssignListener)
}

#[inline(always)]
fn intercepted(family: u8, daddr: &[u8; 16], dport: u16) -> bool {
    unsafe {
        INTERCEPT
            .get(InterceptKey::addr(family, *daddr, dport))
            .is_some()
            || INTERCEPT.get(InterceptKey::port(dport)).is_some()
    }
}

#[inline(always)]
fn lookup(ctx: &TcContext, pkt: &mut Packet) -> *mut bpf_sock {
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut _,
            &mut pkt.tuple,
            pkt.tuple_len,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
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
    let ret = unsafe { bpf_sk_assign(ctx.skb.skb as *mut _, sk as *mut _, 0) };
    unsafe { bpf_sk_release(sk as *mut _) };
    if ret != 0 {
        return drop_packet(flow, DropReason::AssignFailed);
    }
    // The policy-routing rule delivers marked packets locally, whatever
    // their destination address.
    ctx.set_mark(settings.mark);
    count(counter);
    TC_ACT_OK as i32
}

#[inline(always)]
fn ports(ctx: &TcContext, l4: usize, flow: &mut FlowKey) -> Result<(), ()> {
    flow.sport = u16::from_be(read::<u16>(ctx, l4)?);
    flow.dport = u16::from_be(read::<u16>(ctx, l4 + 2)?);
    Ok(())
}

#[inline(always)]
fn settings() -> Option<Settings> {
    SETTINGS.get(0).copied()
}

/// Counts the drop, reports it at most once per interval per flow, and
/// returns the drop verdict.
#[inline(always)]
fn drop_packet(flow: &FlowKey, reason: DropReason) -> i32 {
    count(reason.counter());
    let mut key = *flow;
    key.reason = reason as u8;
    let interval = settings().map_or(DEFAULT_EVENT_INTERVAL_NS, |s| s.event_interval_ns);
    let now = unsafe { bpf_ktime_get_ns() };
    match FLOWS.get_ptr_mut(&key) {
        Some(state) => {
            let last = unsafe { (*state).last_event_ns };
            if now.wrapping_sub(last) >= interval {
                // Take the suppressed count and report it with this packet.
                // Plain loads and stores: two CPUs racing on one flow may
                // lose an increment here; the exact totals are in COUNTERS.
                let pending = unsafe { (*state).pending };
                unsafe {
                    (*state).pending = 0;
                    (*state).last_event_ns = now;
                }
                emit(&key, pending + 1, now);
            } else {
                unsafe { (*state).pending += 1 };
            }
        }
        None => {
            let state = FlowState {
                last_event_ns: now,
                pending: 0,
            };
            if FLOWS.insert(&key, &state, BPF_NOEXIST as u64).is_err() {
                count(Counter::FlowTableFull);
            }
            emit(&key, 1, now);
        }
    }
    TC_ACT_SHOT as i32
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
        count(Counter::EventsLost);
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *v += 1 };
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
