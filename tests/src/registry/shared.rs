//! A second site whose gateway reaches the first site's registry: two
//! gateways (or a site gateway and a regional one) in front of one origin,
//! so that the origin's access log counts the fetches of both.
//!
//! ```text
//!  {B}-gw 10.77.N.1 ──── {A}-up 10.77.N.2   (Site::link, named after A)
//!  {B}-gw: route 10.77.2.3/32 via 10.77.N.2 (over B's own 10.77.2.0/24)
//!  /etc/netns/{B}-gw/hosts, /etc/netns/{B}-dev/hosts: registry.example.test -> 10.77.2.3
//! ```
//!
//! The registry sees B's requests from 10.77.N.1 ([`SharedUpstream::remote`]).
//! [`SharedUpstream::cut`] takes B's end down (B's route to the registry
//! goes with it: connects fail at once, as on a site whose WAN is down);
//! [`SharedUpstream::restore`] brings both back.

use std::net::Ipv4Addr;

use anyhow::Result;

use super::{
    ADDR_V4, AccessLine, HOST, Registry,
    netns_etc::{NetnsEtc, RESOLV_CONF, hosts_file},
};
use crate::{
    netns::ip_in,
    site::{Link, Site},
};

/// `other`'s way to the registry; its `/etc/netns` files go on drop (the
/// link goes with either site's namespaces).
pub struct SharedUpstream {
    pub link: Link,
    _etc: Vec<NetnsEtc>,
}

impl Registry<'_> {
    /// Links `other`'s gateway namespace to this registry's upstream
    /// namespace on `10.77.{net}.0/24` (unique among the registry's site's
    /// links) and names the registry for `other`'s gateway and device.
    pub fn share_with(&self, other: &Site, net: u8) -> Result<SharedUpstream> {
        let link = self.site().link(&other.gw_ns, &self.site().up_ns, net)?;
        let shared = SharedUpstream {
            link,
            _etc: Vec::new(),
        };
        shared.route()?;
        let hosts = hosts_file(&[(HOST, ADDR_V4.to_string())]);
        let mut etc = Vec::new();
        for ns in [&other.gw_ns, &other.dev_ns] {
            etc.push(NetnsEtc::create(
                ns,
                &[
                    ("hosts", hosts.clone()),
                    ("resolv.conf", RESOLV_CONF.to_owned()),
                ],
            )?);
        }
        Ok(SharedUpstream {
            _etc: etc,
            ..shared
        })
    }
}

impl SharedUpstream {
    fn route(&self) -> Result<()> {
        ip_in(
            &self.link.a_ns,
            &[
                "route",
                "replace",
                &format!("{ADDR_V4}/32"),
                "via",
                &self.link.b_v4.to_string(),
            ],
        )
        .map(drop)
    }

    /// The address the registry sees the other gateway's requests from.
    pub fn remote(&self) -> Ipv4Addr {
        self.link.a_v4
    }

    /// Cuts the other gateway off the registry.
    pub fn cut(&self) -> Result<()> {
        self.link.cut()
    }

    /// Brings the link and the route back.
    pub fn restore(&self) -> Result<()> {
        self.link.restore()?;
        self.route()
    }

    /// The access log lines of `method` on `path` from the other gateway.
    pub fn requests(
        &self,
        registry: &Registry<'_>,
        method: &str,
        path: &str,
    ) -> Result<Vec<AccessLine>> {
        let remote = self.remote().to_string();
        Ok(registry
            .access_log()?
            .into_iter()
            .filter(|l| l.remote == remote && l.method == method && l.path == path)
            .collect())
    }
}
