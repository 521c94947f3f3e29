//! Real DNS and NTP clients in the device namespace: `dig` (bind9-dnsutils)
//! over UDP and TCP, a raw DNS query for floods and garbage, `chronyd -Q`
//! (chrony) as an NTP client, and a raw NTP request for field-level checks.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{netns::in_ns, registry::cmd, site::Site};

/// Bound on one `dig` or `chronyd` run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What `dig` printed, parsed.
#[derive(Clone, Debug)]
pub struct Dig {
    /// `NOERROR`, `NXDOMAIN`, `FORMERR`…
    pub status: String,
    /// The header flags (`qr aa rd ra`).
    pub flags: Vec<String>,
    /// `(type, data)` of each answer record: `("A", "10.77.1.1")`.
    pub answers: Vec<(String, String)>,
    /// The `;; SERVER:` line: who answered, as dig saw it.
    pub server: String,
    pub raw: String,
}

impl Dig {
    /// The data of the answers of type `t`.
    pub fn data(&self, t: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter(|(ty, _)| ty == t)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

/// `dig @server name type` from the device namespace, over TCP when `tcp`.
/// One try with a short timeout: a lost answer is a failure, not a retry.
pub fn dig(site: &Site, server: IpAddr, name: &str, qtype: &str, tcp: bool) -> Result<Dig> {
    dig_from(site, None, server, name, qtype, tcp)
}

/// [`dig`] from a given source address of the device namespace (`-b`),
/// as a second device on the same link would ask.
pub fn dig_from(
    site: &Site,
    source: Option<IpAddr>,
    server: IpAddr,
    name: &str,
    qtype: &str,
    tcp: bool,
) -> Result<Dig> {
    let mut c = crate::netns::exec_in(&site.dev_ns, "dig");
    if let Some(source) = source {
        c.arg("-b").arg(source.to_string());
    }
    c.arg(format!("@{server}"))
        .args([name, qtype, "+time=3", "+tries=1", "+nocookie"]);
    if tcp {
        c.arg("+tcp");
    }
    let out = cmd::output(&mut c, CLIENT_TIMEOUT)?;
    let raw = out.stdout_text();
    if !out.success() {
        bail!(
            "dig @{server} {name} {qtype} failed ({}): {}{}",
            out.status,
            raw,
            out.stderr
        );
    }
    parse_dig(&raw).with_context(|| format!("dig printed no answer header:\n{raw}"))
}

fn parse_dig(raw: &str) -> Option<Dig> {
    let status = raw
        .lines()
        .find_map(|l| l.split_once("status: "))
        .map(|(_, rest)| rest.split(',').next().unwrap_or("").trim().to_owned())?;
    let flags = raw
        .lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .map(|rest| {
            rest.split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in raw.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                in_answer = false;
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 5 {
                answers.push((fields[3].to_owned(), fields[4..].join(" ")));
            }
        }
    }
    let server = raw
        .lines()
        .find_map(|l| l.strip_prefix(";; SERVER: "))
        .unwrap_or("")
        .to_owned();
    Some(Dig {
        status,
        flags,
        answers,
        server,
        raw: raw.to_owned(),
    })
}

/// A DNS query for `name` (type `qtype`, class IN) with id `id`, built by
/// hand so that tests can send floods and garbage without a DNS library.
pub fn query_bytes(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// The response code in a DNS message's header.
pub fn rcode(message: &[u8]) -> Option<u8> {
    message.get(3).map(|b| b & 0x0f)
}

/// Sends `payload` from the device to `dst` over UDP and returns the
/// answer with the address it came from (`None` if none came in `wait`).
pub fn udp_exchange(
    site: &Site,
    dst: SocketAddr,
    payload: &[u8],
    wait: Duration,
) -> Result<Option<(Vec<u8>, SocketAddr)>> {
    let local = crate::device::device_ip(dst);
    let sock = in_ns(&site.dev_ns, || UdpSocket::bind(SocketAddr::new(local, 0)))?
        .with_context(|| format!("binding a device UDP socket on {local}"))?;
    sock.send_to(payload, dst)
        .with_context(|| format!("sending to {dst}"))?;
    sock.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; 4096];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Ok(Some((buf[..n].to_vec(), from))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => bail!("receiving from {dst}: {e}"),
    }
}

/// An NTP client-mode request (version 4) whose transmit timestamp is
/// `transmit`.
pub fn ntp_request(transmit: u64) -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0] = (4 << 3) | 3;
    r[2] = 6;
    r[40..48].copy_from_slice(&transmit.to_be_bytes());
    r
}

/// Whether the kernel says the host clock is synchronised (what the
/// gateway reads to decide its NTP answers), read with `adjtimex`.
pub fn host_clock_synchronised() -> bool {
    // SAFETY: plain integers; modes 0 only reads the clock's state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, writable timex.
    let state = unsafe { libc::adjtimex(&mut tx) };
    state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

/// What `chronyd -Q` (measure, never set the clock) made of a server.
#[derive(Debug)]
pub struct ChronyQuery {
    pub success: bool,
    /// Everything chronyd printed.
    pub output: String,
    /// "System clock wrong by X seconds": the offset it measured.
    pub offset_secs: Option<f64>,
}

/// Runs `chronyd -Q` in the device namespace against `server`, with its
/// own config, pid and state files in `dir`: it measures the offset once
/// and exits without touching the clock.
pub fn chrony_query(site: &Site, server: IpAddr, dir: &Path) -> Result<ChronyQuery> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "server {server} iburst maxsamples 4\npidfile {}\n",
            dir.join("chronyd.pid").display()
        ),
    )?;
    let mut c = crate::netns::exec_in(&site.dev_ns, "chronyd");
    c.args(["-Q", "-u", "root"])
        .args(["-t", "15", "-f"])
        .arg(&conf);
    let out = cmd::output(&mut c, CLIENT_TIMEOUT)?;
    let output = format!("{}{}", out.stdout_text(), out.stderr);
    let offset_secs = output.lines().find_map(|l| {
        let rest = l.split("System clock wrong by ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    });
    Ok(ChronyQuery {
        success: out.success(),
        output,
        offset_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dig_output() {
        let raw = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242\n;; flags: qr aa rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 0\n\n;; QUESTION SECTION:\n;registry.example.test.\t\tIN\tA\n\n;; ANSWER SECTION:\nregistry.example.test.\t60\tIN\tA\t10.77.1.1\n\n;; Query time: 0 msec\n;; SERVER: 10.77.9.9#53(10.77.9.9) (UDP)\n";
        let d = parse_dig(raw).expect("parses");
        assert_eq!(d.status, "NOERROR");
        assert_eq!(d.flags, ["qr", "aa", "rd", "ra"]);
        assert_eq!(d.data("A"), ["10.77.1.1"]);
        assert!(d.server.starts_with("10.77.9.9#53"));
        assert!(parse_dig("nothing").is_none());
    }

    #[test]
    fn builds_queries() {
        let q = query_bytes(0x0102, "a.bc", 28);
        assert_eq!(&q[..2], &[1, 2]);
        assert_eq!(&q[12..18], &[1, b'a', 2, b'b', b'c', 0]);
        assert_eq!(&q[18..], &[0, 28, 0, 1]);
    }
}
