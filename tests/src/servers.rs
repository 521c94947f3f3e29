//! Servers on the upstream host, each counting what reached it.
//!
//! - the manager: TCP 443 (v4 and v6), writes `manager\n` then echoes;
//! - plain services: TCP 8080 and 22 (v4 and v6), answer `open\n`, to prove
//!   that a dropped connection never got there;
//! - a UDP echo on 5353 (v4 and v6).
//!
//! Sockets are bound inside the upstream namespace; the loops run on plain
//! threads that poll a stop flag, so `stop` can close every socket before
//! the namespace is deleted (an open socket keeps a namespace, and the veth
//! inside it, alive).

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    netns::in_ns,
    site::{addr, v4, v6},
};

/// How often blocked loops look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A shared event counter (accepted connections, received datagrams).
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn inc(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The upstream servers and their counters.
#[derive(Default)]
pub struct Servers {
    /// Connections accepted by the manager (443, v4 and v6).
    pub manager: Counter,
    /// Connections accepted by the service on 8080.
    pub service_8080: Counter,
    /// Connections accepted by the service on 22.
    pub service_22: Counter,
    /// Datagrams received by the UDP echo on 5353.
    pub udp_echo: Counter,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The sockets, bound inside the upstream namespace.
struct Bound {
    manager: Vec<TcpListener>,
    s8080: Vec<TcpListener>,
    s22: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

fn bind_tcp(port: u16) -> Result<Vec<TcpListener>> {
    [v4(addr::UP_V4, port), v6(addr::UP_V6, port)]
        .into_iter()
        .map(|a| {
            let l = TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect()
}

impl Servers {
    /// Binds every server inside `ns` and starts its loop.
    pub fn start(ns: &str) -> Result<Self> {
        let bound = in_ns(ns, || -> Result<Bound> {
            let [p8080, p22] = addr::SERVICE_PORTS;
            let udp = [
                v4(addr::UP_V4, addr::UDP_ECHO_PORT),
                v6(addr::UP_V6, addr::UDP_ECHO_PORT),
            ]
            .into_iter()
            .map(|a| {
                let s = UdpSocket::bind(a).with_context(|| format!("binding udp {a}"))?;
                s.set_read_timeout(Some(POLL))?;
                Ok(s)
            })
            .collect::<Result<_>>()?;
            Ok(Bound {
                manager: bind_tcp(addr::MANAGER_PORT)?,
                s8080: bind_tcp(p8080)?,
                s22: bind_tcp(p22)?,
                udp,
            })
        })??;
        let mut servers = Servers::default();
        let stop = servers.stop.clone();
        let spawn_tcp = |name: &str, ls: Vec<TcpListener>, counter: Counter, handler: Handler| {
            let stop = stop.clone();
            thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || accept_loop(ls, &counter, &stop, handler))
                .with_context(|| format!("spawning {name}"))
        };
        let t1 = spawn_tcp(
            "manager",
            bound.manager,
            servers.manager.clone(),
            manager_session,
        )?;
        servers.threads.push(t1);
        let t2 = spawn_tcp(
            "svc-8080",
            bound.s8080,
            servers.service_8080.clone(),
            service_session,
        )?;
        servers.threads.push(t2);
        let t3 = spawn_tcp(
            "svc-22",
            bound.s22,
            servers.service_22.clone(),
            service_session,
        )?;
        servers.threads.push(t3);
        for sock in bound.udp {
            let (stop, counter) = (stop.clone(), servers.udp_echo.clone());
            let t = thread::Builder::new()
                .name("udp-echo".into())
                .spawn(move || udp_echo_loop(&sock, &counter, &stop))
                .context("spawning udp echo")?;
            servers.threads.push(t);
        }
        Ok(servers)
    }

    /// The counter of the plain service on `port` (8080 or 22).
    pub fn service(&self, port: u16) -> &Counter {
        match port {
            22 => &self.service_22,
            8080 => &self.service_8080,
            other => panic!("no upstream service on port {other}"),
        }
    }

    /// Total connections accepted by any TCP server upstream.
    pub fn tcp_accepts(&self) -> usize {
        self.manager.get() + self.service_8080.get() + self.service_22.get()
    }

    /// Stops every loop and closes every socket; waits for the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Handler = fn(TcpStream, &AtomicBool);

fn accept_loop(
    listeners: Vec<TcpListener>,
    counter: &Counter,
    stop: &AtomicBool,
    handler: Handler,
) {
    // Sessions are scoped: the loop returns only once every session ended,
    // so all sockets are closed when `stop` returns.
    thread::scope(|s| {
        while !stop.load(Ordering::SeqCst) {
            let mut idle = true;
            for l in &listeners {
                match l.accept() {
                    Ok((stream, _)) => {
                        idle = false;
                        counter.inc();
                        s.spawn(move || handler(stream, stop));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => eprintln!("upstream accept: {e}"),
                }
            }
            if idle {
                thread::sleep(Duration::from_millis(10));
            }
        }
    });
}

/// Reads with a short timeout so that a session notices `stop`.
fn read_polling(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Some(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn manager_session(mut stream: TcpStream, stop: &AtomicBool) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)));
    if setup.is_err() || stream.write_all(b"manager\n").is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    while let Some(n) = read_polling(&mut stream, &mut buf, stop) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn service_session(mut stream: TcpStream, _stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.write_all(b"open\n");
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn udp_echo_loop(sock: &UdpSocket, counter: &Counter, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                counter.inc();
                let _ = sock.send_to(&buf[..n], from);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => eprintln!("upstream udp echo: {e}"),
        }
    }
}

/// The address each upstream server listens on, for messages.
pub fn describe() -> Vec<(String, SocketAddr)> {
    let mut out = vec![
        ("manager".to_owned(), v4(addr::UP_V4, addr::MANAGER_PORT)),
        ("manager".to_owned(), v6(addr::UP_V6, addr::MANAGER_PORT)),
    ];
    for p in addr::SERVICE_PORTS {
        out.push((format!("service {p}"), v4(addr::UP_V4, p)));
        out.push((format!("service {p}"), v6(addr::UP_V6, p)));
    }
    out.push(("udp echo".to_owned(), v4(addr::UP_V4, addr::UDP_ECHO_PORT)));
    out.push(("udp echo".to_owned(), v6(addr::UP_V6, addr::UDP_ECHO_PORT)));
    out
}
