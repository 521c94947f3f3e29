//! The transparent listeners, one per address family.
//!
//! `IP_TRANSPARENT` lets a socket accept and answer connections whose
//! destination is not a local address: the kernel program assigns device
//! SYNs to this listener whatever they were sent to, and without the option
//! the SYN-ACK from that foreign address is never sent. The accepted
//! socket's local address is the device's original destination.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Pending connections per listener before the kernel refuses more.
const BACKLOG: i32 = 1024;

/// Binds the wildcard v4 and v6 listeners on `port`. IPv6 is optional: a
/// host without it gets only the v4 listener, with a warning.
pub fn bind(port: u16) -> io::Result<Vec<TcpListener>> {
    let v4 = bind_one(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    let mut listeners = vec![v4];
    match bind_one(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(v6) => listeners.push(v6),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            tracing::warn!("IPv6 unavailable on this host; listening on IPv4 only");
        }
        Err(e) => return Err(e),
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // A restarted daemon must bind while the old sockets linger.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Separate families: the v4 listener takes v4, this one v6.
        socket.set_only_v6(true)?;
        set_ipv6_transparent(&socket)?;
    } else {
        socket.set_ip_transparent(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// socket2 0.5 has no setter for `IPV6_TRANSPARENT` (Linux 2.6.37+).
pub(crate) fn set_ipv6_transparent(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a live c_int of the size
    // passed.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
