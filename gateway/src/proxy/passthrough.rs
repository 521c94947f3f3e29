//! Passthrough: a device connection spliced byte for byte to the manager.
//!
//! The Margo device API is mutual TLS that must not be inspected; the
//! gateway neither reads nor changes a byte, it only counts them. The bytes
//! never enter userspace either: each direction is `splice(2)`d from one
//! socket into a pipe and from the pipe into the other socket, so the
//! kernel moves page references instead of copying through a buffer.

use std::{
    io,
    net::{Shutdown, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{io::Interest, net::TcpStream, time::timeout};

use crate::audit::{Event, Fault, Record};

/// How long a flow waits for the manager's connect, and how long it may
/// stay silent both ways.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub connect: Duration,
    pub idle: Duration,
}

/// Splices `device` to `upstream` and returns the audit record of the
/// finished flow (ended by either side, by silence, or by `stop`).
pub async fn splice(
    device: TcpStream,
    device_addr: SocketAddr,
    original_dst: SocketAddr,
    upstream: SocketAddr,
    service: &str,
    timing: Timing,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Record {
    let Timing {
        connect: connect_timeout,
        idle,
    } = timing;
    let started = Instant::now();
    let mut record = Record::new(Event::FlowPassthrough)
        .tcp(device_addr, original_dst)
        .reason("passthrough");
    record.service = Some(service.to_owned());
    let manager = match timeout(connect_timeout, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return failed(
                record,
                started,
                Fault::Upstream,
                format!("connect {upstream}: {e}"),
            );
        }
        Err(_) => {
            return failed(
                record,
                started,
                Fault::Upstream,
                format!("connect {upstream}: no answer in {connect_timeout:?}"),
            );
        }
    };
    // The device's socket has it already (`proxy::handle`).
    let _ = manager.set_nodelay(true);
    // Keepalive probes find a peer that vanished without a word; the idle
    // watch below ends one that is there but silent.
    for s in [&device, &manager] {
        let _ = socket2::SockRef::from(s).set_tcp_keepalive(&keepalive());
    }
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    // The first error ends both directions: a half that can no longer be
    // delivered must not keep the other open.
    let pumps =
        async { tokio::try_join!(pump(&device, &manager, &up), pump(&manager, &device, &down)) };
    let result = tokio::select! {
        r = pumps => r.err(),
        () = idle_watch(&up, &down, idle) => Some(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no bytes either way for {}s", idle.as_secs()),
        )),
        // Nobody's fault: the flow is closed (both sockets dropped) so
        // that the stop does not wait on it, with its bytes recorded.
        () = super::conns::stopping(&mut stop) => {
            record.detail = Some("closed: the gateway is stopping".to_owned());
            None
        }
    };
    record.bytes_up = Some(up.load(Ordering::Relaxed));
    record.bytes_down = Some(down.load(Ordering::Relaxed));
    record.duration_ms = Some(elapsed_ms(started));
    if let Some(e) = result {
        record.fault = Some(Fault::Device);
        record.detail = Some(format!("splice ended: {e}"));
    }
    record
}

/// Bytes a pipe holds per direction; the kernel's default is 64 KiB.
const PIPE_BYTES: usize = 1 << 20;

/// A pipe's two ends, non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into `fds` on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per system call; the default size stays
        // if the system's pipe-max-size refuses (best effort).
        // SAFETY: F_SETPIPE_SZ / F_GETPIPE_SZ on our own pipe.
        let capacity = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            );
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).unwrap_or(0).max(4096);
        Ok(Self {
            read,
            write,
            capacity,
        })
    }
}

/// One `splice(2)` of up to `len` bytes, without blocking.
fn splice_once(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors, no offsets (sockets and pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Moves bytes from `from` to `to` through a pipe until `from` ends, then
/// half-closes `to`. `count` holds the bytes delivered even when it fails.
async fn pump(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    let pipe = Pipe::new()?;
    let mut queued = 0usize;
    let mut ended = false;
    loop {
        if ended && queued == 0 {
            return socket2::SockRef::from(to).shutdown(Shutdown::Write);
        }
        if !ended && queued < pipe.capacity {
            let room = pipe.capacity - queued;
            match from.try_io(Interest::READABLE, || {
                splice_once(from.as_raw_fd(), pipe.write.as_raw_fd(), room)
            }) {
                Ok(0) => ended = true,
                Ok(n) => queued += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if queued == 0 {
                        from.readable().await?;
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if queued > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice_once(pipe.read.as_raw_fd(), to.as_raw_fd(), queued)
            }) {
                Ok(n) => {
                    queued -= n;
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

/// TCP keepalive for passthrough sockets: first probe after a minute of
/// silence, then every 10 s, six unanswered probes end the connection.
fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6)
}

/// Returns once no byte moved either way for a whole `idle` period
/// (checked once per period: a silent connection ends between `idle` and
/// twice that).
async fn idle_watch(up: &AtomicU64, down: &AtomicU64, idle: Duration) {
    let total = || up.load(Ordering::Relaxed) + down.load(Ordering::Relaxed);
    let mut seen = total();
    loop {
        tokio::time::sleep(idle).await;
        let now = total();
        if now == seen {
            return;
        }
        seen = now;
    }
}

fn failed(mut record: Record, started: Instant, fault: Fault, detail: String) -> Record {
    record.bytes_up = Some(0);
    record.bytes_down = Some(0);
    record.duration_ms = Some(elapsed_ms(started));
    record.fault = Some(fault);
    record.detail = Some(detail);
    record
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Both directions, more than a pipe holds, with half-closes: every byte
    /// arrives in order, each side sees the other's end, and the record
    /// counts what was delivered.
    #[tokio::test]
    async fn splices_both_ways_and_counts_bytes() {
        const UP: usize = 8 << 20;
        const DOWN: usize = 3 << 20;
        let manager = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let manager_addr = manager.local_addr().expect("addr");
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");

        let manager_task = tokio::spawn(async move {
            let (mut s, _) = manager.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read up");
            s.write_all(&pattern(DOWN, 7)).await.expect("write down");
            s.shutdown().await.expect("shutdown");
            got
        });
        let device_task = tokio::spawn(async move {
            let mut s = TcpStream::connect(front_addr).await.expect("connect");
            s.write_all(&pattern(UP, 3)).await.expect("write up");
            s.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read down");
            got
        });
        let (device, device_addr) = front.accept().await.expect("accept");
        let record = splice(
            device,
            device_addr,
            front_addr,
            manager_addr,
            "wfm.test",
            Timing {
                connect: Duration::from_secs(5),
                idle: Duration::from_secs(600),
            },
            running(),
        )
        .await;
        assert_eq!(record.service.as_deref(), Some("wfm.test"));
        assert_eq!(manager_task.await.expect("manager"), pattern(UP, 3));
        assert_eq!(device_task.await.expect("device"), pattern(DOWN, 7));
        assert_eq!(record.bytes_up, Some(UP as u64));
        assert_eq!(record.bytes_down, Some(DOWN as u64));
        assert_eq!(record.fault, None, "{:?}", record.detail);
    }

    /// A stop signal that never comes (its sender lives on, leaked).
    fn running() -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    /// An open, idle flow ends when the daemon stops, with its bytes
    /// recorded and no one blamed: the stop does not wait for it.
    #[tokio::test]
    async fn an_open_flow_is_closed_and_recorded_when_the_gateway_stops() {
        let manager = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let manager_addr = manager.local_addr().expect("addr");
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
        let manager_task = tokio::spawn(async move {
            let (mut s, _) = manager.accept().await.expect("accept");
            let mut hello = [0u8; 5];
            s.read_exact(&mut hello).await.expect("read up");
            let _ = arrived_tx.send(hello);
            // Then nothing more, until the gateway closes its side.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.expect("read to the end");
            rest
        });
        let mut client = TcpStream::connect(front_addr).await.expect("connect");
        client.write_all(b"hello").await.expect("write up");
        let (device, device_addr) = front.accept().await.expect("accept");
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let spliced = tokio::spawn(splice(
            device,
            device_addr,
            front_addr,
            manager_addr,
            "wfm.test",
            Timing {
                connect: Duration::from_secs(5),
                idle: Duration::from_secs(600),
            },
            stop,
        ));
        assert_eq!(&arrived.await.expect("bytes spliced"), b"hello");
        assert!(!spliced.is_finished(), "the flow ended before the stop");
        stop_tx.send(true).expect("send stop");
        let record = tokio::time::timeout(Duration::from_secs(5), spliced)
            .await
            .expect("the splice ended at the stop")
            .expect("splice task");
        assert_eq!(record.bytes_up, Some(5));
        assert_eq!(record.fault, None);
        assert_eq!(
            record.detail.as_deref(),
            Some("closed: the gateway is stopping")
        );
        assert!(manager_task.await.expect("manager").is_empty());
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("device side closed");
    }

    /// A manager that refuses is an upstream fault, with nothing spliced.
    #[tokio::test]
    async fn refused_manager_is_an_upstream_fault() {
        let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone_addr = gone.local_addr().expect("addr");
        drop(gone);
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let _client = TcpStream::connect(front_addr).await.expect("connect");
        let (device, device_addr) = front.accept().await.expect("accept");
        let record = splice(
            device,
            device_addr,
            front_addr,
            gone_addr,
            "wfm.test",
            Timing {
                connect: Duration::from_secs(5),
                idle: Duration::from_secs(600),
            },
            running(),
        )
        .await;
        assert_eq!(record.fault, Some(Fault::Upstream));
        assert_eq!((record.bytes_up, record.bytes_down), (Some(0), Some(0)));
    }
}
