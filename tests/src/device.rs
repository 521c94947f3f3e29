//! The device's side: sockets created inside the device namespace.
//!
//! A socket belongs to the namespace it was created in, whatever thread uses
//! it later, so only creation runs on a namespace thread; the returned
//! sockets are used from the test's own thread.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    netns::in_ns,
    site::{Site, addr},
};

/// How long a dropped connect is given before it counts as timed out: the
/// kernel's first SYN retransmission comes after 1 s, so 2 s sees two SYNs.
pub const DROP_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous bound for connections that must succeed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `connect` from the device with a timeout. The outer error is a harness
/// failure; the inner one is what the device saw.
pub fn connect(
    site: &Site,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<std::io::Result<TcpStream>> {
    in_ns(&site.dev_ns, || TcpStream::connect_timeout(&dst, timeout))
}

/// Connects and fails unless the connection is established.
pub fn connect_ok(site: &Site, dst: SocketAddr) -> Result<TcpStream> {
    let stream =
        connect(site, dst, CONNECT_TIMEOUT)?.with_context(|| format!("device connect to {dst}"))?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    Ok(stream)
}

/// A connection attempt that the gateway dropped.
#[derive(Debug)]
pub struct Dropped {
    /// The device socket's address (bound before connecting, so known even
    /// though the connection never came up): the audit's `device`.
    pub device: SocketAddr,
    /// How long until the connect timed out.
    pub took: Duration,
}

/// Asserts that a connect from the device to `dst` times out (the SYN was
/// silently dropped: not refused, not unreachable).
pub fn expect_connect_timeout(site: &Site, dst: SocketAddr) -> Result<Dropped> {
    let socket = in_ns(&site.dev_ns, || -> std::io::Result<Socket> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SocketAddr::new(device_ip(dst), 0).into())?;
        Ok(s)
    })?
    .context("creating a device socket")?;
    let device = socket
        .local_addr()?
        .as_socket()
        .context("device socket has no inet address")?;
    let start = Instant::now();
    let outcome = socket.connect_timeout(&dst.into(), DROP_TIMEOUT);
    let took = start.elapsed();
    match outcome {
        Ok(()) => bail!("device connected to {dst} from {device}: the flow was not dropped"),
        Err(e) if e.kind() == ErrorKind::TimedOut => Ok(Dropped { device, took }),
        Err(e) => bail!(
            "connect from {device} to {dst} failed with {e} ({:?}) after {took:?}, expected a silent drop (timeout)",
            e.kind()
        ),
    }
}

/// The device's own address in `dst`'s family.
pub fn device_ip(dst: SocketAddr) -> IpAddr {
    match dst {
        SocketAddr::V4(_) => addr::DEV_V4.into(),
        SocketAddr::V6(_) => addr::DEV_V6.into(),
    }
}

/// A UDP socket of the device bound to its own address of `dst`'s family
/// (so `local_addr` is the address the gateway sees) on `port` (0: any),
/// connected to `dst`.
pub fn udp_socket(site: &Site, port: u16, dst: SocketAddr) -> Result<UdpSocket> {
    let sock = udp_bind(site, port, dst)?;
    sock.connect(dst)
        .with_context(|| format!("udp connect to {dst}"))?;
    Ok(sock)
}

/// Like [`udp_socket`] but not connected: send with `send_to`. An ICMP
/// error for one datagram (the flow passed and nobody listens) then does not
/// fail the next send, as it would on a connected socket.
pub fn udp_bind(site: &Site, port: u16, dst: SocketAddr) -> Result<UdpSocket> {
    let local = device_ip(dst);
    in_ns(&site.dev_ns, || {
        UdpSocket::bind(SocketAddr::new(local, port))
    })?
    .with_context(|| format!("binding device udp {local}:{port}"))
}

/// Whether a reply arrives on `sock` within `wait`.
pub fn udp_reply(sock: &UdpSocket, wait: Duration) -> Result<Option<Vec<u8>>> {
    sock.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
        // ICMP port unreachable surfaces as ECONNREFUSED on a connected socket:
        // an answer all the same, so the datagram was not dropped.
        Err(e) => bail!("udp receive: {e}"),
    }
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r > 0 {
            filled += r as usize;
        } else if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    buf
}

/// What a manager round trip showed.
#[derive(Debug)]
pub struct Echo {
    /// The device socket's local address (the audit's `device`).
    pub device: SocketAddr,
    pub sent: usize,
    pub received: usize,
}

/// Connects to the manager at `dst`, reads the banner `manager\n`, sends
/// `len` random bytes and checks they come back byte for byte; the device
/// then half-closes, so the flow ends and is audited.
pub fn manager_echo(site: &Site, dst: SocketAddr, len: usize) -> Result<Echo> {
    let mut stream = connect_ok(site, dst)?;
    let device = stream.local_addr()?;
    let mut banner = [0u8; 8];
    stream
        .read_exact(&mut banner)
        .with_context(|| format!("reading the manager's banner through {dst}"))?;
    ensure!(
        &banner == b"manager\n",
        "banner was {:?}, not \"manager\\n\"",
        String::from_utf8_lossy(&banner)
    );

    let data = random_bytes(len);
    let mut writer = stream.try_clone()?;
    let echoed = thread::scope(|s| -> Result<Vec<u8>> {
        // Write and read at once: neither side's buffers need to hold it all.
        let w = s.spawn(|| -> std::io::Result<()> {
            writer.write_all(&data)?;
            writer.shutdown(Shutdown::Write)
        });
        let mut echoed = Vec::with_capacity(len);
        let read = stream.read_to_end(&mut echoed);
        w.join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .context("sending to the manager")?;
        read.with_context(|| format!("reading the echo ({} of {len} bytes so far)", echoed.len()))?;
        Ok(echoed)
    })?;
    ensure!(
        echoed.len() == len,
        "echo length {} != {len} sent",
        echoed.len()
    );
    ensure!(echoed == data, "echoed bytes differ from those sent");
    Ok(Echo {
        device,
        sent: len,
        received: echoed.len() + banner.len(),
    })
}

/// Reads until the peer closes (EOF or reset), bounded by `timeout`.
/// Returns the bytes read before the close.
pub fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "connection still open after {timeout:?} (read {} bytes)",
            got.len()
        );
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(got);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading from the gateway"),
        }
    }
}
