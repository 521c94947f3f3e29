//! Device groups at run time: which group a device address belongs to, and
//! what that group may use (`devices.groups`, config/groups.rs).
//!
//! A device is in the group whose prefix matches its address most
//! specifically, else in `default`. When the config names no `default`
//! group, an implicit one that may use nothing takes its place, so every
//! device has a group to be audited with. Without `groups` there is no
//! [`Groups`] at all and nothing here runs.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use crate::config::{Config, DEFAULT_GROUP, network, parse_prefix, repository_allowed};

/// What one group may use.
#[derive(Debug)]
pub struct Rules {
    pub name: Arc<str>,
    /// Served host (lowercase: a site's host or a helm site's chart host)
    /// → the repository patterns on it (`None`: every repository).
    hosts: HashMap<String, Option<Arc<[String]>>>,
    /// Lowercase passthrough service names; `None`: every service.
    passthrough: Option<HashSet<String>>,
}

impl Rules {
    /// Whether the group may use the served `host`; with the patterns
    /// that apply on it.
    pub fn host(&self, host: &str) -> Option<&Option<Arc<[String]>>> {
        self.hosts.get(host)
    }

    /// Whether the group may use served `host` (lowercase) at all.
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }

    /// Whether the group may reach passthrough service `name`.
    pub fn allows_service(&self, name: &str) -> bool {
        self.passthrough
            .as_ref()
            .is_none_or(|names| names.contains(&name.trim_end_matches('.').to_ascii_lowercase()))
    }
}

/// Every group and the prefixes that select them.
#[derive(Debug)]
pub struct Groups {
    /// (network, length, index into `groups`), longest first: the first
    /// match is the most specific.
    prefixes: Vec<(IpAddr, u8, usize)>,
    groups: Vec<Arc<Rules>>,
    /// The group of a device no prefix matches.
    default: usize,
}

impl Groups {
    /// The groups of a validated config; `None` when it has none.
    pub fn new(config: &Config) -> Option<Arc<Self>> {
        let configured = &config.devices.groups;
        if configured.is_empty() {
            return None;
        }
        let mut groups = Vec::new();
        let mut prefixes = Vec::new();
        for g in configured {
            let mut hosts = HashMap::new();
            for s in &g.sites {
                let Some(site) = config.site(&s.host) else {
                    continue;
                };
                let patterns: Option<Arc<[String]>> =
                    s.repositories.as_ref().map(|r| r.clone().into());
                for served in site.served_hosts() {
                    hosts.insert(served, patterns.clone());
                }
            }
            let passthrough = g.passthrough.as_ref().map(|names| {
                names
                    .iter()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            });
            let index = groups.len();
            for text in &g.prefixes {
                if let Some((ip, len)) = parse_prefix(text) {
                    prefixes.push((network(ip.to_canonical(), len), len, index));
                }
            }
            groups.push(Arc::new(Rules {
                name: Arc::from(g.name.as_str()),
                hosts,
                passthrough,
            }));
        }
        let default = match configured.iter().position(|g| g.name == DEFAULT_GROUP) {
            Some(i) => i,
            None => {
                groups.push(Arc::new(Rules {
                    name: Arc::from(DEFAULT_GROUP),
                    hosts: HashMap::new(),
                    passthrough: Some(HashSet::new()),
                }));
                groups.len() - 1
            }
        };
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.1));
        Some(Arc::new(Self {
            prefixes,
            groups,
            default,
        }))
    }

    /// The index of the group of a device address (IPv4-mapped IPv6
    /// addresses count as IPv4).
    pub fn index_of(&self, device: IpAddr) -> usize {
        let ip = device.to_canonical();
        self.prefixes
            .iter()
            .find(|(net, len, _)| net.is_ipv4() == ip.is_ipv4() && network(ip, *len) == *net)
            .map_or(self.default, |(_, _, i)| *i)
    }

    /// The group of a device address.
    pub fn of(&self, device: IpAddr) -> &Arc<Rules> {
        &self.groups[self.index_of(device)]
    }

    /// Every group, in config order (the implicit `default` last).
    pub fn all(&self) -> &[Arc<Rules>] {
        &self.groups
    }
}

/// A request extension set when groups are configured: the device's group
/// and the repository patterns it has on the request's site.
#[derive(Clone, Debug)]
pub struct Membership {
    pub group: Arc<str>,
    /// `None`: every repository of the site.
    pub repositories: Option<Arc<[String]>>,
}

impl Membership {
    /// Whether the group may pull `repository` on this site.
    pub fn allows(&self, repository: &str) -> bool {
        self.repositories
            .as_deref()
            .is_none_or(|p| repository_allowed(p, repository))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "devices:
  interfaces: [dev0]
  groups:
    - name: line3
      prefixes: [\"10.0.3.0/24\", \"fd00:3::/64\"]
      sites:
        - host: registry.example.test
          repositories: [\"line-3/**\", \"library/*\"]
      passthrough: [wfm.example.test]
    - name: cell7
      prefixes: [\"10.0.3.128/25\"]
      sites:
        - host: charts.example.test
    - name: default
      sites:
        - host: registry.example.test
          repositories: [\"library/*\"]
passthrough:
  - {name: wfm.example.test, addresses: [\"10.0.0.5:443\"]}
  - {name: mis.example.test, addresses: [\"10.0.0.6:443\"]}
sites:
  - {host: registry.example.test, kind: oci}
  - {host: charts.example.test, kind: helm, chart_hosts: [cdn.example.test]}
";

    fn groups(text: &str) -> Arc<Groups> {
        Groups::new(&Config::parse(text).expect("config")).expect("groups")
    }

    fn name(g: &Groups, ip: &str) -> String {
        g.of(ip.parse().expect("ip")).name.to_string()
    }

    #[test]
    fn the_longest_prefix_wins_and_the_rest_is_default() {
        let g = groups(CONFIG);
        assert_eq!(name(&g, "10.0.3.7"), "line3");
        assert_eq!(name(&g, "10.0.3.200"), "cell7");
        assert_eq!(name(&g, "::ffff:10.0.3.200"), "cell7");
        assert_eq!(name(&g, "fd00:3::42"), "line3");
        assert_eq!(name(&g, "fd00:4::42"), "default");
        assert_eq!(name(&g, "10.0.4.1"), "default");
        // An IPv6 address whose low bits spell 10.0.3.x is not in a v4
        // prefix.
        assert_eq!(name(&g, "::a00:307"), "default");
    }

    #[test]
    fn each_group_sees_its_sites_repositories_and_services() {
        let g = groups(CONFIG);
        let line3 = g.of("10.0.3.7".parse().expect("ip"));
        assert!(line3.allows_host("registry.example.test"));
        assert!(!line3.allows_host("charts.example.test"));
        assert!(line3.allows_service("WFM.example.test."));
        assert!(!line3.allows_service("mis.example.test"));
        let m = Membership {
            group: line3.name.clone(),
            repositories: line3.host("registry.example.test").expect("site").clone(),
        };
        assert!(m.allows("line-3/app"));
        assert!(m.allows("line-3/a/b/c"));
        assert!(m.allows("library/base"));
        assert!(!m.allows("library/base/extra"));
        assert!(!m.allows("line-4/app"));
        // A helm site brings its chart hosts; passthrough defaults to all.
        let cell7 = g.of("10.0.3.200".parse().expect("ip"));
        assert!(cell7.allows_host("cdn.example.test"));
        assert_eq!(cell7.host("charts.example.test"), Some(&None));
        assert!(cell7.allows_service("mis.example.test"));
    }

    #[test]
    fn without_a_default_group_the_rest_may_use_nothing() {
        let g = groups(&CONFIG.replace(
            "    - name: default\n      sites:\n        - host: registry.example.test\n          repositories: [\"library/*\"]\n",
            "",
        ));
        let rest = g.of("192.0.2.1".parse().expect("ip"));
        assert_eq!(&*rest.name, "default");
        assert!(!rest.allows_host("registry.example.test"));
        assert!(!rest.allows_service("wfm.example.test"));
        assert_eq!(g.all().len(), 3);
    }

    #[test]
    fn no_groups_no_table() {
        let c = Config::parse("devices: {interfaces: [dev0]}\nmanager: {name: wfm.example.test, addresses: [\"10.0.0.5:443\"]}\n").expect("config");
        assert!(Groups::new(&c).is_none());
    }
}
