//! `devices.groups`: which devices (by source prefix) may use which sites,
//! repositories and passthrough services.
//!
//! Without `groups` every device may use everything configured, as before
//! groups existed. With them, a device belongs to the group whose prefix
//! matches its address most specifically, or to `default`; a config
//! without a `default` group gives the devices no prefix matches nothing
//! at all (no site, no passthrough service). The runtime side (matching,
//! enforcement) is `crate::groups`.

use std::{collections::HashMap, net::IpAddr};

use serde::Deserialize;

use super::{Config, ConfigError, SiteKind, glob_match, parse_prefix};

/// The name of the group for devices no other group's prefix matches.
pub const DEFAULT_GROUP: &str = "default";

/// One device group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Unique; `default` is the group of every device no prefix matches.
    pub name: String,
    /// Source prefixes of the group's devices (`10.0.3.0/24`,
    /// `fd00:3::/64`). Required (at least one) except for `default`, which
    /// has none. The longest matching prefix of all groups wins.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// The sites the group may use; any other site is refused to it.
    /// Default none.
    #[serde(default)]
    pub sites: Vec<GroupSite>,
    /// Names of the passthrough services (the manager or `passthrough:`
    /// entries) the group may reach. Default: all of them.
    #[serde(default)]
    pub passthrough: Option<Vec<String>>,
}

/// A site a group may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSite {
    /// A configured site's `host`.
    pub host: String,
    /// `oci` sites only: repository patterns the group may pull (`*` is
    /// any run of characters within one path segment, `**` any number of
    /// whole segments, none included). Default: every repository.
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
}

/// `ip/len` with the host bits cleared, for comparing prefixes.
pub fn network(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// Whether a repository pattern is well formed: a relative path of
/// repository-name characters and `*`, with `**` only as a whole segment.
fn check_pattern(p: &str) -> Result<(), &'static str> {
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains("//") {
        return Err("is not a repository pattern: write library/* or line-3/**");
    }
    if !p.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'.' | b'_' | b'-' | b'/' | b'*')
    }) {
        return Err(
            "may hold only lowercase letters, digits, '.', '_', '-', '/' and '*' (repository names are lowercase)",
        );
    }
    if p.split('/').any(|s| s.contains("**") && s != "**") {
        return Err("may use ** only as a whole segment (line-3/**)");
    }
    Ok(())
}

/// Whether `repository` matches one of `patterns`.
pub fn repository_allowed(patterns: &[String], repository: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, repository))
}

impl Config {
    pub(super) fn validate_groups(&self) -> Result<(), ConfigError> {
        let mut names = HashMap::new();
        let mut prefixes: HashMap<(IpAddr, u8), String> = HashMap::new();
        let services: Vec<String> = self
            .passthrough_services()
            .into_iter()
            .map(|s| s.name.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        for (i, g) in self.devices.groups.iter().enumerate() {
            let key = format!("devices.groups[{i}]");
            let name_ok = !g.name.is_empty()
                && g.name.len() <= 64
                && g.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!(
                        "`{}` is not a group name (1 to 64 letters, digits, '-', '_' or '.')",
                        g.name
                    ),
                ));
            }
            if let Some(j) = names.insert(g.name.clone(), i) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("`{}` is also the name of devices.groups[{j}]", g.name),
                ));
            }
            let is_default = g.name == DEFAULT_GROUP;
            if is_default && !g.prefixes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.prefixes"),
                    "the `default` group has no prefixes: it holds every device no other group's prefix matches",
                ));
            }
            if !is_default && g.prefixes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.prefixes"),
                    format!(
                        "group `{}` needs at least one prefix (10.0.3.0/24, fd00:3::/64); only `default` has none",
                        g.name
                    ),
                ));
            }
            for (j, text) in g.prefixes.iter().enumerate() {
                let key = format!("{key}.prefixes[{j}]");
                let Some((ip, len)) = parse_prefix(text) else {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{text}` is not a prefix: write 10.0.3.0/24 or fd00:3::/64"),
                    ));
                };
                let net = (network(ip.to_canonical(), len), len);
                if let Some(other) = prefixes.insert(net, g.name.clone()) {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "`{text}` is also a prefix of group `{other}`: a device must belong to one group"
                        ),
                    ));
                }
            }
            let mut hosts = HashMap::new();
            for (j, s) in g.sites.iter().enumerate() {
                let key = format!("{key}.sites[{j}]");
                let Some(site) = self.site(&s.host) else {
                    return Err(ConfigError::invalid(
                        format!("{key}.host"),
                        format!("`{}` is not the host of a configured site", s.host),
                    ));
                };
                if hosts.insert(site.host.to_ascii_lowercase(), j).is_some() {
                    return Err(ConfigError::invalid(
                        format!("{key}.host"),
                        format!("`{}` is listed twice in this group", s.host),
                    ));
                }
                let Some(patterns) = &s.repositories else {
                    continue;
                };
                if site.kind != SiteKind::Oci {
                    return Err(ConfigError::invalid(
                        format!("{key}.repositories"),
                        format!(
                            "`{}` is a {} site: repository patterns apply to oci sites only (a group is given a whole helm or files site)",
                            s.host,
                            site.kind.as_str()
                        ),
                    ));
                }
                for (k, p) in patterns.iter().enumerate() {
                    if let Err(why) = check_pattern(p) {
                        return Err(ConfigError::invalid(
                            format!("{key}.repositories[{k}]"),
                            format!("`{p}` {why}"),
                        ));
                    }
                }
            }
            for (j, name) in g.passthrough.iter().flatten().enumerate() {
                let wanted = name.trim_end_matches('.').to_ascii_lowercase();
                if !services.contains(&wanted) {
                    return Err(ConfigError::invalid(
                        format!("{key}.passthrough[{j}]"),
                        format!(
                            "`{name}` is not a passthrough service (the manager's name or a `passthrough:` entry's)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What `check-config` says about groups: one line per group and a
    /// warning when devices outside every prefix get nothing.
    pub fn group_summary(&self) -> (Vec<String>, Option<String>) {
        let groups = &self.devices.groups;
        let lines = groups
            .iter()
            .map(|g| {
                let sites: Vec<String> = g
                    .sites
                    .iter()
                    .map(|s| match &s.repositories {
                        Some(r) => format!("{} [{}]", s.host, r.join(", ")),
                        None => s.host.clone(),
                    })
                    .collect();
                let prefixes = if g.prefixes.is_empty() {
                    "devices no other group matches".to_owned()
                } else {
                    g.prefixes.join(", ")
                };
                let passthrough = match &g.passthrough {
                    None => "all".to_owned(),
                    Some(p) if p.is_empty() => "none".to_owned(),
                    Some(p) => p.join(", "),
                };
                format!(
                    "group {}: {prefixes}; sites: {}; passthrough: {passthrough}",
                    g.name,
                    if sites.is_empty() {
                        "none".to_owned()
                    } else {
                        sites.join(", ")
                    }
                )
            })
            .collect();
        let warning = (!groups.is_empty() && !groups.iter().any(|g| g.name == DEFAULT_GROUP))
            .then(|| {
                "devices.groups has no `default` group: devices outside every group's prefixes may use no site and no passthrough service".to_owned()
            });
        (lines, warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "devices:
  interfaces: [dev0]
  groups:
    - name: line3
      prefixes: [\"10.0.3.0/24\", \"fd00:3::/64\"]
      sites:
        - host: registry.example.test
          repositories: [\"line-3/**\", \"library/*\"]
      passthrough: [wfm.example.test]
    - name: default
      sites:
        - host: registry.example.test
          repositories: [\"library/*\"]
manager: {name: wfm.example.test, addresses: [\"10.0.0.5:443\"]}
sites:
  - {host: registry.example.test, kind: oci}
  - {host: charts.example.test, kind: helm}
";

    /// The key and message of the error `BASE` with `from` replaced by
    /// `to` gives.
    fn err(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from}");
        match Config::parse(&BASE.replacen(from, to, 1)) {
            Ok(_) => panic!("config should be rejected with {to}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse(BASE).expect("config");
        assert_eq!(c.devices.groups.len(), 2);
        assert_eq!(c.devices.groups[0].prefixes.len(), 2);
        assert_eq!(c.devices.groups[1].passthrough, None);
        let (lines, warning) = c.group_summary();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("line-3/**"), "{}", lines[0]);
        assert!(warning.is_none());
        let without = Config::parse(&BASE.replace(
            "name: default",
            "name: rest\n      prefixes: [\"10.0.9.0/24\"]",
        ))
        .expect("no default");
        assert!(without.group_summary().1.is_some());
        // No groups: nothing to say.
        let none = Config::parse("devices: {interfaces: [dev0]}\nmanager: {name: wfm.example.test, addresses: [\"10.0.0.5:443\"]}\n").expect("config");
        assert_eq!(none.group_summary(), (vec![], None));
    }

    #[test]
    fn the_commented_example_in_gateway_yaml_is_valid() {
        // config/gateway.yaml shows `groups:` commented out (the default is
        // none); uncommented, it must be a config the gateway accepts.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.yaml");
        let text = std::fs::read_to_string(path).expect("example");
        let mut out = Vec::new();
        let mut in_block = false;
        for line in text.lines() {
            if line == "  # groups:" {
                in_block = true;
            } else if in_block && !line.starts_with("  #") {
                in_block = false;
            }
            out.push(if in_block {
                line.replacen("# ", "", 1)
            } else {
                line.to_owned()
            });
        }
        let c = Config::parse(&out.join("\n")).expect("uncommented example parses");
        let names: Vec<&str> = c.devices.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["line3", "default"]);
    }

    #[test]
    fn bad_groups_are_refused_by_key() {
        for (from, to, key, says) in [
            (
                "name: default",
                "name: line3",
                "devices.groups[1].name",
                "also the name",
            ),
            (
                "name: line3",
                "name: \"line 3\"",
                "devices.groups[0].name",
                "not a group name",
            ),
            (
                "    - name: default\n",
                "    - name: default\n      prefixes: [\"10.0.4.0/24\"]\n",
                "devices.groups[1].prefixes",
                "no prefixes",
            ),
            (
                "      prefixes: [\"10.0.3.0/24\", \"fd00:3::/64\"]\n",
                "",
                "devices.groups[0].prefixes",
                "at least one prefix",
            ),
            (
                "fd00:3::/64",
                "fd00:3::/129",
                "devices.groups[0].prefixes[1]",
                "not a prefix",
            ),
            (
                "fd00:3::/64",
                "10.0.3.9/24",
                "devices.groups[0].prefixes[1]",
                "also a prefix",
            ),
            (
                "    - name: default\n",
                "    - name: other\n      prefixes: [\"10.0.3.0/24\"]\n",
                "devices.groups[1].prefixes[0]",
                "group `line3`",
            ),
            (
                "        - host: registry.example.test\n          repositories: [\"library/*\"]",
                "        - host: registry.example.test\n        - host: nope.example.test",
                "devices.groups[1].sites[1].host",
                "not the host of a configured site",
            ),
            (
                "        - host: registry.example.test\n          repositories: [\"library/*\"]",
                "        - host: registry.example.test\n        - host: Registry.Example.Test",
                "devices.groups[1].sites[1].host",
                "listed twice",
            ),
            (
                "        - host: registry.example.test\n          repositories: [\"library/*\"]",
                "        - host: charts.example.test\n          repositories: [\"x\"]",
                "devices.groups[1].sites[0].repositories",
                "oci sites only",
            ),
            (
                "\"library/*\"]\n      passthrough",
                "\"Library/*\"]\n      passthrough",
                "devices.groups[0].sites[0].repositories[1]",
                "lowercase",
            ),
            (
                "\"line-3/**\"",
                "\"line-3/a**\"",
                "devices.groups[0].sites[0].repositories[0]",
                "whole segment",
            ),
            (
                "\"line-3/**\"",
                "\"/line-3\"",
                "devices.groups[0].sites[0].repositories[0]",
                "not a repository pattern",
            ),
            (
                "\"line-3/**\"",
                "\"\"",
                "devices.groups[0].sites[0].repositories[0]",
                "not a repository pattern",
            ),
            (
                "passthrough: [wfm.example.test]",
                "passthrough: [mis.example.test]",
                "devices.groups[0].passthrough[0]",
                "not a passthrough service",
            ),
        ] {
            let e = err(from, to);
            assert!(e.contains(&format!("`{key}`")), "{to}: {e}");
            assert!(e.contains(says), "{to}: {e}");
        }
        // Unknown keys inside a group are refused by the parser, by name.
        let e = err("      passthrough:", "      passthru:");
        assert!(e.contains("passthru"), "{e}");
    }

    #[test]
    fn patterns_match_segments() {
        let p = |pats: &[&str], repo: &str| {
            let pats: Vec<String> = pats.iter().map(|s| (*s).to_owned()).collect();
            repository_allowed(&pats, repo)
        };
        assert!(p(&["library/*"], "library/base"));
        assert!(!p(&["library/*"], "library/base/x"));
        assert!(!p(&["library/*"], "library"));
        assert!(p(&["line-3/**"], "line-3/app"));
        assert!(p(&["line-3/**"], "line-3/a/b/c"));
        assert!(!p(&["line-3/**"], "line-30/app"));
        assert!(p(&["*/app"], "line-3/app"));
        assert!(p(&["line-*/app"], "line-3/app"));
        assert!(!p(&["line-3/app"], "line-3/app2"));
        assert!(p(&["**"], "any/thing"));
        assert!(!p(&[], "library/base"));
    }

    #[test]
    fn networks_clear_host_bits() {
        let n = |s: &str, len| network(s.parse().expect("ip"), len).to_string();
        assert_eq!(n("10.0.3.9", 24), "10.0.3.0");
        assert_eq!(n("10.0.3.9", 0), "0.0.0.0");
        assert_eq!(n("10.0.3.9", 32), "10.0.3.9");
        assert_eq!(n("fd00:3::42", 64), "fd00:3::");
        assert_eq!(n("fd00:3::42", 128), "fd00:3::42");
        assert_eq!(n("fd00:3::42", 0), "::");
    }
}
