//! A direct link from the device namespace to the upstream namespace, for
//! the hub's self-test only: without a gateway the device cannot reach the
//! hub (its default route points at the gateway namespace, which forwards
//! nothing, and must not be made to). This link exists only between the
//! site's own two namespaces, so traffic over it stays inside the site.
//!
//! ```text
//!  {P}-dev  {P}d8 10.77.4.2/24 ─── {P}u8 10.77.4.1/24  {P}-up
//!           route 10.77.2.0/24 via 10.77.4.1
//! ```
//!
//! Never use it in a test with a gateway: it would let the device around
//! the gateway. Deleting the device end (on drop) deletes the pair, its
//! addresses and the route.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    netns::{ip, ip_in, ip_json},
    site::Site,
};

/// The device's end of the bypass.
pub const BYPASS_DEV_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 4, 2);
/// The upstream end of the bypass.
pub const BYPASS_UP_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 4, 1);

/// The bypass link; removed on drop.
pub struct DeviceBypass {
    dev_ns: String,
    dev_if: Option<String>,
}

impl DeviceBypass {
    /// Creates the link and the device's route to the upstream subnet.
    pub fn add(site: &Site) -> Result<Self> {
        let dev_if = format!("{}d8", site.prefix);
        let up_if = format!("{}u8", site.prefix);
        ip(&[
            "link",
            "add",
            &dev_if,
            "netns",
            &site.dev_ns,
            "type",
            "veth",
            "peer",
            "name",
            &up_if,
            "netns",
            &site.up_ns,
        ])?;
        let me = Self {
            dev_ns: site.dev_ns.clone(),
            dev_if: Some(dev_if.clone()),
        };
        for (ns, dev, a) in [
            (&site.dev_ns, &dev_if, BYPASS_DEV_V4),
            (&site.up_ns, &up_if, BYPASS_UP_V4),
        ] {
            ip_in(ns, &["addr", "add", &format!("{a}/24"), "dev", dev])?;
            ip_in(ns, &["link", "set", dev, "up"])?;
        }
        for (ns, dev) in [(&site.dev_ns, &dev_if), (&site.up_ns, &up_if)] {
            wait_up(ns, dev)?;
        }
        ip_in(
            &site.dev_ns,
            &[
                "route",
                "add",
                "10.77.2.0/24",
                "via",
                &BYPASS_UP_V4.to_string(),
                "dev",
                &dev_if,
            ],
        )?;
        Ok(me)
    }
}

impl Drop for DeviceBypass {
    fn drop(&mut self) {
        if let Some(dev) = self.dev_if.take()
            && let Err(e) = ip_in(&self.dev_ns, &["link", "del", &dev])
        {
            eprintln!("warning: deleting the bypass link {dev}: {e:#}");
        }
    }
}

fn wait_up(ns: &str, dev: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let link = ip_json(ns, &["link", "show", "dev", dev])?;
        if link[0]["operstate"] == "UP" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{dev} in {ns} not up: {link}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}
