//! One zone per device group (`devices.groups`): a group's zone holds only
//! the site hosts and passthrough names the group may use, so a device
//! outside a site's groups gets NXDOMAIN for it from the very same fast
//! and general paths. Without groups there is one zone and the lookup per
//! query is a branch on `None`.

use std::{net::IpAddr, sync::Arc};

use super::Zone;
use crate::{
    config::Config,
    policy::groups::{Groups, Rules},
};

pub struct Zones {
    /// Every name the config answers (the zone when there are no groups).
    all: Zone,
    /// The groups and each one's zone, by group index.
    groups: Option<(Arc<Groups>, Vec<Zone>)>,
}

impl Zones {
    pub fn new(config: &Config) -> Self {
        let all = Zone::new(config);
        let groups = Groups::new(config).map(|g| {
            let zones = g.all().iter().map(|rules| for_group(&all, rules)).collect();
            (g, zones)
        });
        Self { all, groups }
    }

    /// The zone a device's queries are answered from, and its group's
    /// name when groups are configured.
    pub fn for_device(&self, device: IpAddr) -> (&Zone, Option<&Arc<str>>) {
        match &self.groups {
            None => (&self.all, None),
            Some((groups, zones)) => {
                let i = groups.index_of(device);
                (&zones[i], Some(&groups.all()[i].name))
            }
        }
    }

    /// Whether any group's zone answers `name` (lowercase, no trailing
    /// dot): a refusal of such a name is the group's doing.
    pub fn answers_anyone(&self, name: &str) -> bool {
        self.all.sites.iter().any(|s| s == name) || self.all.services.contains_key(name)
    }
}

/// `all` with only the names `rules` allows.
fn for_group(all: &Zone, rules: &Rules) -> Zone {
    Zone {
        sites: all
            .sites
            .iter()
            .filter(|h| rules.allows_host(h))
            .cloned()
            .collect(),
        services: all
            .services
            .iter()
            .filter(|(name, _)| rules.allows_service(name))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect(),
        answer: all.answer.clone(),
        ttl: all.ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{LocalAddrs, Transport, Verdict, answer};

    fn query(name: &str) -> Vec<u8> {
        use hickory_proto::{
            op::{Message, MessageType, OpCode, Query},
            rr::{Name, RecordType},
        };
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        m.to_vec().expect("encode")
    }

    #[test]
    fn each_group_resolves_only_its_names_on_both_paths() {
        let config = Config::parse(
            "devices:
  interfaces: [dev0]
  groups:
    - name: line3
      prefixes: [\"10.0.3.0/24\"]
      sites: [{host: registry.example.test}]
      passthrough: []
    - name: default
      sites: [{host: other.example.test}]
passthrough: [{name: wfm.example.test, addresses: [\"10.0.0.5:443\"]}]
dns: {answer: [\"10.0.0.1\"]}
sites:
  - {host: registry.example.test, kind: oci}
  - {host: other.example.test, kind: oci}
",
        )
        .expect("config");
        let zones = Zones::new(&config);
        let local = LocalAddrs::default();
        let ask = |device: &str, name: &str| {
            let (zone, group) = zones.for_device(device.parse().expect("ip"));
            let q = query(name);
            let fast = answer::answer(zone, &q, &local, Transport::Udp);
            let general = answer::general(zone, &q, &local, Transport::Udp);
            assert_eq!(fast.response, general.response, "{device} {name}");
            (
                matches!(fast.verdict, Verdict::Answered { .. }),
                group.map(|g| g.to_string()),
            )
        };
        let line3 = Some("line3".to_owned());
        let default = Some("default".to_owned());
        assert_eq!(
            ask("10.0.3.9", "registry.example.test."),
            (true, line3.clone())
        );
        assert_eq!(
            ask("10.0.3.9", "other.example.test."),
            (false, line3.clone())
        );
        assert_eq!(ask("10.0.3.9", "wfm.example.test."), (false, line3));
        assert_eq!(
            ask("10.0.4.9", "registry.example.test."),
            (false, default.clone())
        );
        assert_eq!(
            ask("10.0.4.9", "other.example.test."),
            (true, default.clone())
        );
        assert_eq!(ask("10.0.4.9", "wfm.example.test."), (true, default));
        assert!(zones.answers_anyone("registry.example.test"));
        assert!(!zones.answers_anyone("evil.example.test"));
        // Without groups: one zone, no group.
        let plain = Zones::new(&Config::parse("devices: {interfaces: [dev0]}\nmanager: {name: wfm.example.test, addresses: [\"10.0.0.5:443\"]}\n").expect("config"));
        assert!(
            plain
                .for_device("10.0.3.9".parse().expect("ip"))
                .1
                .is_none()
        );
    }
}
