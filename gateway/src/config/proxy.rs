//! `upstream_proxy:`: the HTTP proxy every upstream connection goes
//! through (a CONNECT tunnel; TLS to the origin inside it), for all sites
//! and per site (`sites[].upstream_proxy`, a mapping of its own or
//! `direct`).
//!
//! Only `http://host:port` proxies: the proxy sees the origin's name and
//! port in the CONNECT line and nothing else, TLS to the origin runs
//! inside the tunnel either way. The password is never in the config:
//! `password_file` names a file only the gateway may read (checked by
//! `check-config` and whenever the sites are built, [`Config::check_host`]
//! and `upstream::proxy`).

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Deserializer};

use super::{Config, ConfigError, validate::is_dns_name};

/// A proxy, as `upstream_proxy:` or a site's `upstream_proxy:` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamProxy {
    /// `http://host:port`: no path, query or user-info.
    pub url: String,
    /// Basic credentials' user name; with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (one trailing newline ignored), mode
    /// 0600 or stricter; with `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Upstream hosts reached directly, not through the proxy: a name
    /// (`registry.site.internal`, that name only), `.suffix` (the
    /// suffix's own name and every name under it) or an IP address (as
    /// the upstream URL writes it). No wildcards or CIDR ranges.
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

/// A site's `upstream_proxy`: a proxy of its own, or `direct` (none, even
/// when a global `upstream_proxy` is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteProxy {
    Direct,
    Via(UpstreamProxy),
}

impl<'de> Deserialize<'de> for SiteProxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // A word or a mapping: decided on the parsed value, so a mapping's
        // own error (an unknown key) reaches the admin as it is, which an
        // untagged enum would replace with "did not match any variant".
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(word) if word == "direct" => Ok(Self::Direct),
            serde_yaml::Value::String(word) => Err(D::Error::custom(format!(
                "`{word}` is neither `direct` nor a proxy (a mapping with url, username, \
                 password_file, no_proxy)"
            ))),
            other => serde_yaml::from_value(other)
                .map(Self::Via)
                .map_err(D::Error::custom),
        }
    }
}

/// The host and port of an `http://host:port` proxy URL, or why the URL
/// is not one. The host is a DNS name, an IPv4 address or a bracketed
/// IPv6 address (returned without brackets). One trailing `/` is allowed.
pub fn parse_proxy_url(url: &str) -> Result<(String, u16), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "`{url}`: a proxy reached over TLS (https://) is not supported; write \
             http://host:port (the tunnel carries TLS to the origin either way)"
        ));
    }
    let Some(rest) = lower
        .strip_prefix("http://")
        .map(|_| &url["http://".len()..])
    else {
        return Err(format!("`{url}` is not an http://host:port URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(
            "user-info in the URL is not allowed: the proxy's credentials come from \
             username and password_file"
                .to_owned(),
        );
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "`{url}` has a path, query or fragment; write http://host:port only"
        ));
    }
    let bad = || format!("`{url}` is not http://host:port (the port is required, e.g. :3128)");
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            v6
        }
        None if host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host) => host,
        None => return Err(bad()),
    };
    Ok((host.to_owned(), port))
}

/// Why a `no_proxy` entry is refused, if it is.
fn no_proxy_problem(entry: &str) -> Option<String> {
    if entry == "*" {
        return Some(
            "`*` is not supported: to reach a site directly, write `upstream_proxy: direct` \
             on the site"
                .to_owned(),
        );
    }
    let looks_cidr = entry
        .split_once('/')
        .is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok());
    if looks_cidr {
        return Some(format!(
            "`{entry}`: CIDR ranges are not supported; list host names, `.suffix` or IP \
             addresses"
        ));
    }
    let unbracketed = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return None;
    }
    let name = entry.strip_prefix('.').unwrap_or(entry);
    if is_dns_name(name) {
        return None;
    }
    Some(format!(
        "`{entry}` is not a host name, `.suffix` or IP address (no scheme, port or wildcard)"
    ))
}

impl UpstreamProxy {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        parse_proxy_url(&self.url).map_err(|m| ConfigError::invalid(format!("{key}.url"), m))?;
        match (&self.username, &self.password_file) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    format!("{key}.password_file"),
                    "is required with username (the password is never written in the config)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    format!("{key}.username"),
                    "is required with password_file",
                ));
            }
            (Some(user), Some(file)) => {
                if user.is_empty() || user.contains(':') {
                    return Err(ConfigError::invalid(
                        format!("{key}.username"),
                        "must be non-empty and without `:` (HTTP Basic cannot carry one)",
                    ));
                }
                if !file.is_absolute() {
                    return Err(ConfigError::invalid(
                        format!("{key}.password_file"),
                        "must be an absolute path",
                    ));
                }
            }
            (None, None) => {}
        }
        for (i, entry) in self.no_proxy.iter().enumerate() {
            if let Some(problem) = no_proxy_problem(entry) {
                return Err(ConfigError::invalid(
                    format!("{key}.no_proxy[{i}]"),
                    problem,
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The proxy a site's upstream connections go through: the site's
    /// own, none for `direct`, else the global one.
    pub fn upstream_proxy_for<'a>(&'a self, site: &'a super::Site) -> Option<&'a UpstreamProxy> {
        match &site.upstream_proxy {
            Some(SiteProxy::Direct) => None,
            Some(SiteProxy::Via(p)) => Some(p),
            None => self.upstream_proxy.as_ref(),
        }
    }

    /// Every configured proxy with its config key (`upstream_proxy`,
    /// `sites[2].upstream_proxy`).
    pub(super) fn upstream_proxies(&self) -> Vec<(String, &UpstreamProxy)> {
        let global = self
            .upstream_proxy
            .iter()
            .map(|p| ("upstream_proxy".to_owned(), p));
        let sites = self
            .sites
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.upstream_proxy {
                Some(SiteProxy::Via(p)) => Some((format!("sites[{i}].upstream_proxy"), p)),
                _ => None,
            });
        global.chain(sites).collect()
    }

    pub(super) fn validate_upstream_proxies(&self) -> Result<(), ConfigError> {
        for (key, proxy) in self.upstream_proxies() {
            proxy.validate(&key)?;
        }
        Ok(())
    }

    /// The proxies' password files are readable by the gateway and by no
    /// one else (`check-config`, start and reload).
    pub(super) fn check_upstream_proxy_files(&self) -> Result<(), ConfigError> {
        for (key, proxy) in self.upstream_proxies() {
            if let Some(path) = &proxy.password_file {
                crate::upstream::read_password_file(path).map_err(|e| {
                    ConfigError::invalid(format!("{key}.password_file"), e.to_string())
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let ok = |u: &str| parse_proxy_url(u).unwrap();
        assert_eq!(
            ok("http://proxy.corp.example:3128"),
            ("proxy.corp.example".into(), 3128)
        );
        assert_eq!(ok("HTTP://10.0.0.1:8080/"), ("10.0.0.1".into(), 8080));
        assert_eq!(ok("http://[fd00::1]:3128"), ("fd00::1".into(), 3128));
        for (bad, says) in [
            ("https://proxy:3128", "not supported"),
            ("http://user:pw@proxy:3128", "user-info"),
            ("http://proxy:3128/path", "path"),
            ("http://proxy:3128?x=1", "query"),
            ("http://proxy", "port is required"),
            ("http://proxy:0", "port is required"),
            ("http://proxy:99999", "port is required"),
            ("proxy:3128", "not an http://host:port"),
            ("socks5://proxy:1080", "not an http://host:port"),
            ("http://fd00::1:3128", "not http://host:port"),
            ("http://bad_name:3128", "not http://host:port"),
        ] {
            let e = parse_proxy_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // A password pasted into the URL is not repeated in the message.
        assert!(
            !parse_proxy_url("http://u:hunter2@p:1")
                .unwrap_err()
                .contains("hunter2")
        );
    }

    #[test]
    fn no_proxy_entries() {
        for ok in [
            "registry.site.internal",
            ".site.internal",
            "10.0.0.5",
            "fd00::5",
            "[fd00::5]",
        ] {
            assert_eq!(no_proxy_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("*", "upstream_proxy: direct"),
            ("10.0.0.0/8", "CIDR"),
            ("*.example.com", "not a host name"),
            ("example.com:443", "not a host name"),
            ("https://example.com", "not a host name"),
        ] {
            let e = no_proxy_problem(bad).unwrap();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
