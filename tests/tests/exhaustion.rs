//! Connection exhaustion: one device opens thousands of connections and
//! sends nothing on them; the gateway holds at most its per-device cap of
//! them, refuses the rest at once (audited, rate limited), keeps its open
//! files bounded, and another device still pulls and reaches the manager.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use gateway_tests::{
    Site, device, in_ns,
    netns::ip_in,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{Client, OciKeys, Registry, RegistryOptions, oci_gateway::start_oci_gateway_with},
    require_root,
    site::{addr, v4},
};
use socket2::{Domain, Protocol, Socket, Type};

/// A second device on the same link: the one that floods.
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
const FLOOD: usize = 2000;
/// `proxy.max_connections_per_device`'s default.
const PER_DEVICE: usize = 256;

/// Lets this test process hold the flood's sockets.
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid, initialised structs for getrlimit/setrlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur as usize > FLOOD + 256,
        "hard limit {}",
        lim.rlim_cur
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn one_devices_idle_connections_cannot_starve_the_others() {
    require_root();
    raise_own_nofile();
    let site = Site::new("exhaust").unwrap();
    let registry = Registry::start(&site, RegistryOptions::default()).unwrap();
    let keys = OciKeys::for_registry(&registry, "5m");
    let mut config = keys.config(&site);
    // The flood's silent connections stay held for the whole test, however
    // slow the machine: what is shown is that the others are served
    // *while* they are held.
    config.first_bytes_timeout_secs = Some(600);
    let ogw = start_oci_gateway_with(&site, keys, config).unwrap();
    let device_client = ogw.device().unwrap();
    let gw = &ogw.gw;
    let mut layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let img = layout
        .image(LINUX_AMD64, &[LayerSpec::gzip(1 << 20, 41)], "app")
        .unwrap();
    layout.tag(&img.manifest, "1").unwrap();
    registry.push(&layout, "app", &img.manifest, "1").unwrap();
    ip_in(
        &site.dev_ns,
        &["addr", "add", &format!("{FLOODER}/24"), "dev", &site.dev_if],
    )
    .unwrap();
    gw.must(site.warm_neighbors());
    let pid = gw.pid().unwrap();
    let fds_before = open_fds(pid);

    // The flood: connections to an intercepted TLS port that never say a
    // word (not the manager's address: those would be passed through).
    let target = v4(addr::UNROUTED_V4, 443);
    let conns: Vec<TcpStream> = in_ns(&site.dev_ns, move || {
        (0..FLOOD)
            .filter_map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
                s.bind(&SocketAddr::new(IpAddr::V4(FLOODER), 0).into())
                    .ok()?;
                s.connect_timeout(&target.into(), Duration::from_secs(2))
                    .ok()?;
                Some(TcpStream::from(s))
            })
            .collect()
    })
    .unwrap();
    assert!(
        conns.len() > PER_DEVICE * 2,
        "only {} connections came up",
        conns.len()
    );
    // Those over the cap were closed at once: a read sees their end.
    std::thread::sleep(Duration::from_millis(500));
    let mut held = 0;
    let mut kinds = std::collections::BTreeMap::new();
    for mut c in &conns {
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut b = [0u8; 1];
        let got = c.read(&mut b);
        *kinds.entry(format!("{got:?}")).or_insert(0) += 1;
        match got {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                held += 1
            }
            _ => {}
        }
    }
    if held != PER_DEVICE {
        let mut counts = std::collections::BTreeMap::new();
        for r in gw.audit().unwrap() {
            *counts
                .entry(format!("{} {}", r["event"], r["reason"]))
                .or_insert(0) += 1;
        }
        panic!(
            "held {held} of {PER_DEVICE}; reads {kinds:?}; audit: {counts:?}\n{}",
            gw.stderr_tail(20)
        );
    }
    let fds_during = open_fds(pid);
    assert!(
        fds_during < fds_before + PER_DEVICE + 64,
        "gateway fds {fds_before} -> {fds_during} with {} connections thrown at it",
        conns.len()
    );

    // Meanwhile the other device pulls and reaches the manager.
    let r = gw.must(device_client.curl(&[
        &Client::url("/v2/app/manifests/1"),
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
    ]));
    assert_eq!(r.code, 200, "{}", r.describe());
    // And a layer, byte for byte (curl: skopeo's storage cannot live on
    // the VM runs' root, see the OCI suites).
    for d in img.blob_digests() {
        let r = gw.must(device_client.curl(&[&Client::url(&format!("/v2/app/blobs/{d}"))]));
        assert_eq!(r.code, 200, "{}", r.describe());
        let got = std::fs::read(&r.body_path).unwrap();
        assert_eq!(got, layout.read_blob(&d).unwrap(), "{d}");
    }
    gw.must(device::manager_echo(
        &site,
        v4(addr::UP_V4, addr::MANAGER_PORT),
        4096,
    ));
    // ...and the flood was held all along.
    let still = conns
        .iter()
        .filter(|c| {
            let mut b = [0u8; 1];
            matches!((&mut &**c).read(&mut b), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
        })
        .count();
    assert_eq!(
        still, PER_DEVICE,
        "the flood's held connections were let go meanwhile"
    );

    let rec = gw.must(gw.wait_audit(
        |r| r["event"] == "flow.denied" && r["reason"] == "too_many_connections_from_device",
        Duration::from_secs(10),
    ));
    assert!(
        rec["device"]
            .as_str()
            .unwrap()
            .starts_with(&FLOODER.to_string()),
        "{rec}"
    );
    let denied = gw
        .audit()
        .unwrap()
        .into_iter()
        .filter(|r| r["reason"] == "too_many_connections_from_device")
        .count();
    assert!(
        denied <= 15,
        "{denied} refusal records for {} refusals",
        conns.len() - PER_DEVICE
    );
    drop(conns);
}
