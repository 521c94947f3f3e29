//! Self-test of the harness, without a gateway: the topology is what the
//! other tests assume, and it leaves nothing behind.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::Path,
    time::Duration,
};

use gateway_tests::{
    Site, device, in_ns,
    netns::{ip, ip_in},
    require_root,
    site::{addr, v4, v6},
};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[test]
fn namespaces_exist_and_are_removed_on_drop() {
    require_root();
    let site = Site::new("harness-lifecycle").unwrap();
    let namespaces = [site.dev_ns.clone(), site.gw_ns.clone(), site.up_ns.clone()];
    let mut inodes = Vec::new();
    for ns in &namespaces {
        let path = Path::new("/run/netns").join(ns);
        inodes.push(std::fs::metadata(&path).unwrap().ino());
        assert!(ns.starts_with(&site.prefix), "{ns} lacks the site prefix");
    }
    assert!(
        site.prefix.starts_with("mg") && site.prefix.len() == 8,
        "prefix {}",
        site.prefix
    );
    // Nothing was created in the root namespace.
    for dev in [&site.dev_if, &site.gw_dev_if, &site.gw_up_if, &site.up_if] {
        assert!(
            ip(&["link", "show", "dev", dev]).is_err(),
            "{dev} exists in the root namespace"
        );
    }
    // The site's bpffs is a real bpffs.
    let fs = nix::sys::statfs::statfs(&site.bpffs_dir).unwrap();
    assert_eq!(
        fs.filesystem_type().0 as i64,
        BPF_FS_MAGIC,
        "{} is not bpffs",
        site.bpffs_dir.display()
    );
    let (bpffs, tmp) = (site.bpffs_dir.clone(), site.tmp_dir().to_owned());

    drop(site);

    for ns in &namespaces {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} still exists"
        );
    }
    assert!(!bpffs.exists(), "{} still exists", bpffs.display());
    assert!(!bpffs.parent().unwrap().exists(), "run dir still exists");
    assert!(!tmp.exists(), "{} still exists", tmp.display());
    // No thread of ours is left inside a deleted namespace (it would keep
    // the namespace and its veths alive).
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let link = std::fs::read_link(task.unwrap().path().join("ns/net")).unwrap();
        for ino in &inodes {
            assert_ne!(
                link.to_string_lossy(),
                format!("net:[{ino}]"),
                "a thread is still in a site namespace"
            );
        }
    }
}

#[test]
fn sites_get_distinct_prefixes() {
    require_root();
    let a = Site::new("harness-a").unwrap();
    let b = Site::new("harness-b").unwrap();
    assert_ne!(a.prefix, b.prefix);
    assert_ne!(a.pin_path(), b.pin_path());
}

#[test]
fn gateway_namespace_reaches_upstream_directly() {
    require_root();
    let site = Site::new("harness-upstream").unwrap();
    for dst in [v4(addr::UP_V4, 8080), v6(addr::UP_V6, 8080)] {
        let answer = in_ns(&site.gw_ns, || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        })
        .unwrap();
        assert_eq!(answer, "open\n", "from {dst}");
    }
    assert_eq!(site.servers.service_8080.get(), 2);
    // The manager greets and echoes.
    let echoed = in_ns(&site.gw_ns, || {
        let mut s =
            TcpStream::connect_timeout(&v4(addr::UP_V4, 443), Duration::from_secs(5)).unwrap();
        s.write_all(b"ping").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    })
    .unwrap();
    assert_eq!(echoed, "manager\nping");
    assert_eq!(site.servers.manager.get(), 1);
    // The unrouted address exists upstream but the gateway has no route.
    let unrouted = in_ns(&site.gw_ns, || {
        TcpStream::connect_timeout(&v4(addr::UNROUTED_V4, 443), Duration::from_secs(1))
    })
    .unwrap();
    assert!(unrouted.is_err(), "gateway namespace reached 10.77.9.9");
}

#[test]
fn device_reaches_only_the_gateway() {
    require_root();
    let site = Site::new("harness-device").unwrap();
    let listeners = in_ns(&site.gw_ns, || {
        [v4(addr::GW_DEV_V4, 7000), v6(addr::GW_DEV_V6, 7000)]
            .map(|a| TcpListener::bind(a).unwrap())
    })
    .unwrap();
    for l in &listeners {
        let dst = l.local_addr().unwrap();
        let s = device::connect_ok(&site, dst).unwrap();
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer, s.local_addr().unwrap());
    }
    // Without a gateway, forwarding is off: upstream is out of reach.
    for dst in [
        v4(addr::UP_V4, 8080),
        v6(addr::UP_V6, 8080),
        v4(addr::UP_V4, 443),
    ] {
        let r = device::connect(&site, dst, Duration::from_secs(2)).unwrap();
        assert!(r.is_err(), "device reached {dst} without a gateway");
    }
    let udp = device::udp_socket(&site, 0, v4(addr::UP_V4, addr::UDP_ECHO_PORT)).unwrap();
    udp.send(b"hello").unwrap();
    let reply = device::udp_reply(&udp, Duration::from_millis(500));
    assert!(
        !matches!(reply, Ok(Some(_))),
        "udp echo answered the device"
    );
    assert_eq!(site.servers.tcp_accepts(), 0);
    assert_eq!(site.servers.udp_echo.get(), 0);
    // The device resolves the gateway's link-layer addresses.
    site.warm_neighbors().unwrap();
}

#[test]
fn gateway_namespace_has_no_default_route_and_no_forwarding() {
    require_root();
    let site = Site::new("harness-routes").unwrap();
    for fam in ["-4", "-6"] {
        let r = ip_in(&site.gw_ns, &[fam, "route", "show", "default"]).unwrap();
        assert!(
            r.trim().is_empty(),
            "gateway has a default route ({fam}): {r}"
        );
        let r = ip_in(&site.up_ns, &[fam, "route", "show", "default"]).unwrap();
        assert!(
            r.trim().is_empty(),
            "upstream has a default route ({fam}): {r}"
        );
    }
    let d = ip_in(&site.dev_ns, &["route", "show", "default"]).unwrap();
    assert!(d.contains("via 10.77.1.1"), "device default route: {d}");
    let d6 = ip_in(&site.dev_ns, &["-6", "route", "show", "default"]).unwrap();
    assert!(
        d6.contains("via fd77:1::1"),
        "device v6 default route: {d6}"
    );
    let fwd = in_ns(&site.gw_ns, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
    })
    .unwrap();
    assert_eq!(fwd.trim(), "0");
    let up_lo = ip_in(&site.up_ns, &["addr", "show", "dev", "lo"]).unwrap();
    assert!(up_lo.contains("10.77.9.9/32"), "{up_lo}");
}

/// A site whose test process died (SIGKILL, a session that ended) is
/// removed by the next run: namespaces, bpffs mount, run dir. A live
/// process's site is left alone.
#[test]
fn sites_of_dead_processes_are_swept() {
    require_root();
    let live = Site::new("harness-sweep-live").unwrap();
    // A pid that existed and is gone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let prefix = format!("mgdead{:02x}", dead & 0xff);
    let run_dir = Path::new("/run").join(&prefix);
    let ns = format!("{prefix}-dev");
    // A namespace a site added (Site::add_namespace) goes too.
    let added = format!("{prefix}-s1");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::write(run_dir.join("owner"), dead.to_string()).unwrap();
    std::fs::create_dir(run_dir.join("bpf")).unwrap();
    nix::mount::mount(
        Some("bpf"),
        &run_dir.join("bpf"),
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    ip(&["netns", "add", &ns]).unwrap();
    ip(&["netns", "add", &added]).unwrap();

    let removed = gateway_tests::site::sweep_stale_sites();
    assert!(
        removed
            .iter()
            .any(|(p, pid)| *p == prefix && *pid == dead as i32),
        "{removed:?}"
    );
    assert!(!run_dir.exists(), "{} still there", run_dir.display());
    for ns in [&ns, &added] {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} still there"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&prefix), "bpffs of {prefix} still mounted");
    for ns in [&live.dev_ns, &live.gw_ns, &live.up_ns] {
        assert!(Path::new("/run/netns").join(ns).exists(), "{ns} was swept");
    }
    assert!(!removed.iter().any(|(p, _)| *p == live.prefix));
}

/// An added namespace and a link: the two ends reach each other and
/// nothing else, a cut link drops traffic and a restored one carries it,
/// and both go with the site.
#[test]
fn added_namespaces_and_links_work_and_go_with_the_site() {
    require_root();
    let mut site = Site::new("harness-link").unwrap();
    let extra = site.add_namespace("x1").unwrap();
    assert!(site.add_namespace("x1").is_err(), "a second x1 was made");
    let link = site.link(&site.gw_ns, &extra, 20).unwrap();
    let listener = in_ns(&extra, || TcpListener::bind((link.b_v4, 7000)))
        .unwrap()
        .unwrap();
    let reach = |dst| {
        in_ns(&site.gw_ns, || {
            TcpStream::connect_timeout(&v4(dst, 7000), Duration::from_millis(700)).is_ok()
        })
        .unwrap()
    };
    assert!(
        reach(link.b_v4),
        "the gateway namespace did not reach the link's far end"
    );
    // The far end is not routed to anything else: not to the upstream.
    let out = in_ns(&extra, || {
        TcpStream::connect_timeout(&v4(addr::UP_V4, 8080), Duration::from_millis(500)).is_ok()
    })
    .unwrap();
    assert!(!out, "the added namespace reached the upstream host");
    link.cut().unwrap();
    assert!(!reach(link.b_v4), "a cut link still carried a connection");
    link.restore().unwrap();
    assert!(reach(link.b_v4), "a restored link carried nothing");
    drop(listener);
    drop(site);
    assert!(
        !Path::new("/run/netns").join(&extra).exists(),
        "{extra} outlived its site"
    );
}
