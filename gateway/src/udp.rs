//! The gateway's UDP services for devices, DNS (53) and NTP (123), on one
//! transparent socket per address family.
//!
//! The kernel program assigns every device packet to UDP 53 or 123, for any
//! destination address, to these sockets (`bpf_sk_assign`, the TPROXY
//! model). The socket reads the packet's original destination
//! (`IP_RECVORIGDSTADDR`) and the interface it came in on (`IP_PKTINFO`),
//! and the answer goes out *from* that original address and port: stub
//! resolvers drop answers from any other source. A socket bound to a
//! foreign address needs `IP_TRANSPARENT`; one such reply socket per
//! original destination is kept (devices ask one or two resolver addresses,
//! so the set stays small).

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, RawFd},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use gateway_common::{DNS_PORT, NTP_PORT};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{io::Interest, net::UdpSocket, sync::watch};

use crate::{
    dns::{self, Responder, Transport},
    proxy::set_ipv6_transparent,
    time::TimeServer,
};

/// Largest datagram read: DNS over UDP with EDNS stays far below.
const DATAGRAM_MAX: usize = 4096;
/// Reply sockets kept before the set starts over.
const REPLY_SOCKETS_MAX: usize = 256;

/// What answers on the UDP sockets; either may be off.
pub struct Services {
    pub dns: Option<Arc<Responder>>,
    pub time: Option<TimeServer>,
    replies: Mutex<HashMap<SocketAddr, Arc<std::net::UdpSocket>>>,
}

impl Services {
    pub fn new(dns: Option<Arc<Responder>>, time: Option<TimeServer>) -> Self {
        Self {
            dns,
            time,
            replies: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `data` to `device` from `from` (the address it asked).
    fn reply(&self, from: SocketAddr, device: SocketAddr, data: &[u8]) {
        let socket = {
            let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
            match replies.get(&from) {
                Some(s) => s.clone(),
                None => match reply_socket(from) {
                    Ok(s) => {
                        if replies.len() >= REPLY_SOCKETS_MAX {
                            replies.clear();
                        }
                        let s = Arc::new(s);
                        replies.insert(from, s.clone());
                        s
                    }
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "cannot answer from the address the device asked");
                        return;
                    }
                },
            }
        };
        // Non-blocking: a full send buffer drops the answer, as the
        // network could, and the client asks again.
        if let Err(e) = socket.send_to(data, device) {
            tracing::debug!(%from, %device, error = %e, "answer not sent");
        }
    }
}

/// Binds the v4 and v6 service sockets on `port` (the wildcard address;
/// the port is never seen by devices, whose packets are assigned to the
/// socket whatever their destination). IPv6 is optional, as for the TCP
/// listeners.
pub fn bind(port: u16) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = vec![bind_one(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?];
    match bind_one(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(s) => sockets.push(s),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
        Err(e) => return Err(e),
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        set_ipv6_transparent(&socket)?;
        setsockopt(&socket, sockopt::Ipv6OrigDstAddr, &true)?;
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        socket.set_ip_transparent(true)?;
        setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true)?;
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket that sends from `from`, an address that need not be local.
fn reply_socket(from: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(from),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    // The service socket may hold a wildcard binding of the same port
    // family-wide; this one binds one address, so reuse is harmless.
    socket.set_reuse_address(true)?;
    if from.is_ipv6() {
        socket.set_only_v6(true)?;
        set_ipv6_transparent(&socket)?;
    } else {
        socket.set_ip_transparent(true)?;
    }
    socket.bind(&from.into())?;
    Ok(socket.into())
}

/// One datagram with where it was going and where it came in.
struct Datagram {
    len: usize,
    device: SocketAddr,
    dst: SocketAddr,
    ifindex: Option<u32>,
}

/// Reads and answers datagrams on `socket` until `stop` turns true.
pub async fn serve(services: Arc<Services>, socket: UdpSocket, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let ready = tokio::select! {
            r = socket.readable() => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = ready {
            tracing::error!(error = %e, "UDP service socket failed");
            return;
        }
        // Everything queued, up to a batch, per wake-up: under load the
        // wake-up cost more than the answer.
        for _ in 0..BATCH {
            let fd = socket.as_raw_fd();
            let got = socket.try_io(Interest::READABLE, || receive(fd, &mut buf));
            let d = match got {
                Ok(Some(d)) => d,
                // Without an original destination there is no one to answer as.
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "UDP receive failed");
                    break;
                }
            };
            answer(&services, &buf[..d.len], &d).await;
        }
    }
}

/// Datagrams handled per wake-up before the task yields to others.
const BATCH: usize = 64;

async fn answer(services: &Services, data: &[u8], d: &Datagram) {
    let received = SystemTime::now();
    let answer = match d.dst.port() {
        DNS_PORT => match &services.dns {
            Some(dns) => {
                dns.handle(dns::Query {
                    bytes: data,
                    device: d.device,
                    dst: d.dst,
                    ifindex: d.ifindex,
                    transport: Transport::Udp,
                })
                .await
            }
            None => None,
        },
        NTP_PORT => match &services.time {
            Some(t) => t.handle(data, received, d.device, d.dst).await,
            None => None,
        },
        _ => None,
    };
    if let Some(answer) = answer {
        services.reply(d.dst, d.device, &answer);
    }
}

/// One `recvmsg` with the original destination and incoming interface.
fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in6, libc::in6_pktinfo);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let Some(device) = msg.address.as_ref().and_then(to_std) else {
        return Ok(None);
    };
    let mut dst = None;
    let mut ifindex = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv4OrigDstAddr(a) => {
                dst = Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(a) => {
                dst = Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    0,
                    0,
                )));
            }
            ControlMessageOwned::Ipv4PacketInfo(i) => {
                ifindex = u32::try_from(i.ipi_ifindex).ok();
            }
            ControlMessageOwned::Ipv6PacketInfo(i) => ifindex = Some(i.ipi6_ifindex),
            _ => {}
        }
    }
    Ok(dst.map(|dst| Datagram {
        len: msg.bytes,
        device,
        dst,
        ifindex,
    }))
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::new(v6.ip(), v6.port(), 0, 0)))
}
