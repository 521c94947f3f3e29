//! Where a redirect or a token realm may send the gateway: the guard
//! against server-side request forgery by a compromised upstream.
//!
//! An upstream names other hosts in `Location` and in its Bearer
//! challenge's `realm`, and the gateway fetches from them. Unless the
//! site's admin named the host (the upstream's own host, or an entry of
//! the site's `redirect_hosts`), the gateway refuses to connect to
//! addresses behind the gateway or on the site: loopback, unspecified,
//! link-local (the cloud metadata service at 169.254.169.254), private,
//! CGNAT, unique local, multicast, broadcast and reserved ranges, their
//! IPv4-mapped forms, and every passthrough service's address.
//!
//! Two places enforce it, because neither alone can:
//! - [`Targets::check`] when a redirect or realm URL is accepted: an IP
//!   literal host never reaches a resolver (hyper's connector connects to
//!   it directly);
//! - [`GuardedResolver`], the connector's resolver: a name is judged by
//!   the addresses it resolves to at connect time, so a name that resolves
//!   to 127.0.0.1 (or is re-pointed there after a first check) is refused
//!   too, and numeric forms the literal check does not parse (`127.1`,
//!   `0x7f000001`, which `getaddrinfo` reads as addresses) are caught
//!   here.
//!
//! Trust is per site and by host, any port: the admin named the host.
//!
//! Through a site's upstream proxy (`proxy.rs`) the gateway resolves no
//! origin name, so only [`Targets::check`] applies there: the proxy
//! resolves, and what it lets through is its own policy.

use std::{
    collections::HashSet,
    error::Error,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use thiserror::Error;
use tower_service::Service;

/// A host the gateway will not connect to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{host} {reason}")]
pub(crate) struct Refused {
    /// As the URL named it (brackets stripped for IPv6).
    pub host: String,
    /// Completes a sentence starting with the host: `is a loopback
    /// address`, `resolves only to refused addresses: …`.
    pub reason: String,
}

/// One site's view: the hosts its admin named and the passthrough
/// addresses that are never fetched from otherwise.
#[derive(Debug, Clone, Default)]
pub(crate) struct Targets {
    /// Lower case, without a trailing dot.
    names: HashSet<String>,
    /// Canonical (IPv4-mapped forms as IPv4).
    addresses: HashSet<IpAddr>,
    /// Canonical; refused whatever the port.
    passthrough: HashSet<IpAddr>,
}

impl Targets {
    /// `upstream_host` is the host of the site's upstream URL;
    /// `redirect_hosts` the site's key of that name (validated names and
    /// IP literals); `passthrough` every passthrough service's address.
    pub(crate) fn new(
        upstream_host: &str,
        redirect_hosts: &[String],
        passthrough: &[SocketAddr],
    ) -> Self {
        let mut me = Self {
            passthrough: passthrough.iter().map(|a| a.ip().to_canonical()).collect(),
            ..Self::default()
        };
        for host in std::iter::once(upstream_host).chain(redirect_hosts.iter().map(String::as_str))
        {
            let host = unbracket(host);
            match host.parse::<IpAddr>() {
                Ok(ip) => {
                    me.addresses.insert(ip.to_canonical());
                }
                Err(_) => {
                    me.names.insert(normalize(host));
                }
            }
        }
        me
    }

    /// Whether the admin named this host name (not an IP literal).
    pub(crate) fn is_named(&self, name: &str) -> bool {
        self.names.contains(&normalize(name))
    }

    /// Why the gateway does not connect to `ip` for this site, if it
    /// does not. Named IP literals are not asked about.
    pub(crate) fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = ip.to_canonical();
        if self.passthrough.contains(&ip) {
            return Some("the address of a passthrough service");
        }
        classify(ip)
    }

    /// Checks a URL a redirect or realm names: an IP literal host must be
    /// named or an address the gateway may reach; a name is left to
    /// [`GuardedResolver`] at connect time.
    pub(crate) fn check(&self, url: &Uri) -> Result<(), Refused> {
        let Some(host) = url.host().map(unbracket) else {
            return Ok(());
        };
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Ok(());
        };
        if self.addresses.contains(&ip.to_canonical()) {
            return Ok(());
        }
        match self.refusal(ip) {
            Some(why) => Err(Refused {
                host: host.to_owned(),
                reason: format!("is {}", with_article(why)),
            }),
            None => Ok(()),
        }
    }

    /// Keeps the addresses `name` may be reached at: all of them when the
    /// admin named it, else those not refused; an error when none is left.
    pub(crate) fn filter(
        &self,
        name: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        if self.is_named(name) {
            return Ok(addrs);
        }
        let (kept, refused): (Vec<_>, Vec<_>) = addrs
            .into_iter()
            .partition(|a| self.refusal(a.ip()).is_none());
        if !refused.is_empty() {
            let shown = describe(&refused, |ip| self.refusal(ip));
            if kept.is_empty() {
                return Err(Refused {
                    host: name.to_owned(),
                    reason: format!("resolves only to refused addresses: {shown}"),
                });
            }
            tracing::warn!(
                host = name,
                refused = %shown,
                "upstream target resolves to refused addresses too; connecting only to the others"
            );
        }
        Ok(kept)
    }
}

/// Why an address is never connected to unless named, or `None` for a
/// public unicast address. IPv4-mapped (`::ffff:a.b.c.d`) and NAT64
/// (`64:ff9b::a.b.c.d`) addresses are judged by the IPv4 address inside.
pub(crate) fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (0, _) => "unspecified",
        (127, _) => "loopback",
        (169, 254) => "link-local",
        (10, _) | (192, 168) => "private",
        (172, 16..=31) => "private",
        (100, 64..=127) => "shared (CGNAT)",
        (224..=239, _) => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // 64:ff9b::/96: a NAT64 gateway would carry it to the IPv4 inside.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, hi, lo] = s;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return classify_v4(v4);
    }
    Some(match s[0] {
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xfc00..=0xfdff => "unique local",
        0xff00..=0xffff => "multicast",
        // ::/96 but :: and ::1: the deprecated IPv4-compatible form.
        0 if s[1..6] == [0; 5] => "reserved",
        _ => return None,
    })
}

/// `a loopback address`, `an unspecified address`, or a phrase kept whole.
fn with_article(why: &str) -> String {
    if why.starts_with("the ") {
        return why.to_owned();
    }
    // `unspecified` is the one category spoken with a vowel sound.
    let article = if why == "unspecified" { "an" } else { "a" };
    format!("{article} {why} address")
}

/// `127.0.0.1 (loopback), ::1 (loopback)`.
fn describe(addrs: &[SocketAddr], why: impl Fn(IpAddr) -> Option<&'static str>) -> String {
    let mut seen = Vec::new();
    for a in addrs {
        if !seen.contains(&a.ip()) {
            seen.push(a.ip());
        }
    }
    seen.iter()
        .map(|ip| format!("{ip} ({})", why(*ip).unwrap_or("refused")))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

pub(super) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The upstream client's resolver: `getaddrinfo` (hyper-util's
/// [`GaiResolver`]), then [`Targets::filter`]. Its error is a
/// [`Refused`] (found again by [`refused_in`]) or the lookup's own.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    targets: Arc<Targets>,
    gai: GaiResolver,
}

impl GuardedResolver {
    pub(crate) fn new(targets: Arc<Targets>) -> Self {
        Self {
            targets,
            gai: GaiResolver::new(),
        }
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let targets = self.targets.clone();
        let lookup = self.gai.call(name.clone());
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            let kept = targets.filter(name.as_str(), addrs)?;
            Ok(kept.into_iter())
        })
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    fn c(ip: &str) -> Option<&'static str> {
        classify(ip.parse().unwrap())
    }

    #[test]
    fn refused_ranges() {
        for (ip, why) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("fc00::1", "unique local"),
            ("fd77:2::4", "unique local"),
            ("ff02::1", "multicast"),
            ("::7f00:1", "reserved"),
            // IPv4-mapped and NAT64 forms are judged by the IPv4 inside.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.1.2.3", "private"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(c(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(c(ip), None, "{ip}");
        }
    }

    fn targets() -> Targets {
        Targets::new(
            "registry.example",
            &[
                "CDN.example.".to_owned(),
                "10.0.0.7".to_owned(),
                "fd00::7".to_owned(),
            ],
            &[
                "10.9.9.9:443".parse().unwrap(),
                "[fd00::99]:8443".parse().unwrap(),
            ],
        )
    }

    fn url(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn literals_are_checked_where_the_url_is_accepted() {
        let t = targets();
        for ok in [
            "https://10.0.0.7/x",
            "https://[fd00::7]:8443/x",
            "https://[::ffff:10.0.0.7]/x",
            "https://8.8.8.8/x",
            // Names are judged by the resolver.
            "https://localhost/x",
        ] {
            assert_eq!(t.check(&url(ok)), Ok(()), "{ok}");
        }
        let e = t.check(&url("http://127.0.0.1:5000/x")).unwrap_err();
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(e.to_string(), "127.0.0.1 is a loopback address");
        let e = t
            .check(&url("http://[::ffff:169.254.169.254]/"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "::ffff:169.254.169.254 is a link-local address"
        );
        let e = t.check(&url("https://[fd00::8]/")).unwrap_err();
        assert_eq!(e.to_string(), "fd00::8 is a unique local address");
        let e = t.check(&url("https://100.64.1.1/")).unwrap_err();
        assert_eq!(e.to_string(), "100.64.1.1 is a shared (CGNAT) address");
    }

    #[test]
    fn passthrough_addresses_are_refused_on_any_port() {
        let t = Targets::new("registry.example", &[], &["8.8.4.4:443".parse().unwrap()]);
        let e = t.check(&url("https://8.8.4.4:9000/")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "8.8.4.4 is the address of a passthrough service"
        );
        let e = targets().check(&url("https://[fd00::99]/")).unwrap_err();
        assert!(e.reason.contains("passthrough"), "{e}");
    }

    #[test]
    fn resolved_addresses_are_filtered_unless_the_name_is_named() {
        let t = targets();
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let loopback = vec![a("127.0.0.1:443"), a("[::1]:443")];
        let e = t.filter("localhost", loopback.clone()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "localhost resolves only to refused addresses: 127.0.0.1 (loopback), ::1 (loopback)"
        );
        // The names the admin gave, in any case and with a trailing dot.
        assert_eq!(
            t.filter("cdn.EXAMPLE", loopback.clone()),
            Ok(loopback.clone())
        );
        assert_eq!(
            t.filter("Registry.Example.", loopback.clone()),
            Ok(loopback)
        );
        // Mixed answers keep the public addresses only.
        let mixed = vec![a("10.0.0.1:443"), a("8.8.8.8:443"), a("[fd00::1]:443")];
        assert_eq!(t.filter("cdn2.example", mixed), Ok(vec![a("8.8.8.8:443")]));
        let e = t
            .filter("evil.example", vec![a("10.9.9.9:80")])
            .unwrap_err();
        assert!(e.reason.contains("passthrough service"), "{e}");
    }

    #[test]
    fn a_refusal_is_found_through_io_errors_and_sources() {
        let refused = Refused {
            host: "localhost".into(),
            reason: "resolves only to refused addresses".into(),
        };
        let io = std::io::Error::other(refused.clone());
        assert_eq!(
            crate::upstream::error::find_in::<Refused>(&io),
            Some(&refused)
        );
        let other = std::io::Error::other("connection refused");
        assert_eq!(crate::upstream::error::find_in::<Refused>(&other), None);
    }
}
