//! Upstream faults end to end: the real registry behind a fault-injecting
//! proxy ([`gateway_tests::faulty`]), the gateway's site pointed at the
//! proxy, curl on the device.
//!
//! For each fault (a reset at 30% of a blob, a close one byte short, a
//! 1 KB/s trickle, a stall after the headers, a flipped byte, the gateway
//! killed mid-fill): the device gets an error and never the whole blob,
//! nothing is published under the digest, another blob is served while the
//! faulted fill is in progress, the temp file goes, the `request` record
//! blames upstream, and once the fault is cleared the same pull gets the
//! right bytes (sha256 checked) and stores them.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use gateway_tests::{
    Site,
    device::random_bytes,
    faulty::{Fault, Faulty},
    oci::{Layout, sha256_file},
    registry::{
        Client, CurlResponse, OciGateway, Registry, RegistryOptions,
        oci_gateway::start_oci_gateway_with,
    },
    require_root,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Bound on waiting for the proxy to reach a fault or the gateway to react.
const WAIT: Duration = Duration::from_secs(30);

/// A blob pushed to the registry.
struct Blob {
    digest: String,
    bytes: Vec<u8>,
    /// `/v2/app/blobs/<digest>`.
    path: String,
}

/// Registry, proxy, gateway and device. Fields drop in order: device,
/// gateway, proxy, registry.
struct Rig<'s> {
    device: Client,
    gw: OciGateway<'s>,
    faulty: Faulty,
    #[expect(dead_code, reason = "kept running until the rig drops")]
    registry: Registry<'s>,
    /// The blob that gets the fault (1 MiB).
    bad: Blob,
    /// A blob fetched meanwhile through the same proxy (256 KiB).
    good: Blob,
}

fn rig(site: &Site) -> Rig<'_> {
    rig_with(site, &[])
}

/// [`rig`] with `upstream:` settings (timeouts, progress floor).
fn rig_with<'s>(site: &'s Site, upstream: &[(&'static str, u64)]) -> Rig<'s> {
    let registry = Registry::start(site, RegistryOptions::default()).unwrap();
    let layout = Layout::create(&site.tmp_dir().join("src")).unwrap();
    let push = |n: usize| {
        let bytes = random_bytes(n);
        let desc = layout.write_blob(LAYER, &bytes).unwrap();
        registry.push_blob(&layout, "app", &desc).unwrap();
        Blob {
            path: format!("/v2/app/blobs/{}", desc.digest),
            digest: desc.digest,
            bytes,
        }
    };
    let bad = push(MIB);
    let good = push(MIB / 4);
    let faulty = Faulty::start(&registry).unwrap();
    let keys = faulty.keys(&registry, "5m");
    let mut config = keys.config(site);
    config.upstream = upstream.to_vec();
    let gw = start_oci_gateway_with(site, keys, config).unwrap();
    let device = gw.device().unwrap();
    Rig {
        device,
        gw,
        faulty,
        registry,
        bad,
        good,
    }
}

/// Releases the proxy's held faults when dropped, also on a panic, so a
/// failed assertion cannot leave the device's curl waiting.
struct ReleaseOnDrop<'a>(&'a Faulty);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Rig<'_> {
    fn fetch_bad(&self, flag: &str) -> anyhow::Result<CurlResponse> {
        self.device.curl(&[flag, &Client::url(&self.bad.path)])
    }

    /// Where a verified blob would be published.
    fn published_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.gw.keys.cache_dir.join("blobs/sha256").join(hex)
    }

    /// The state while the faulted fill is in progress: a temp file,
    /// nothing published, and another blob served through the same
    /// gateway and proxy meanwhile.
    fn check_meanwhile(&self) {
        let gw = &self.gw;
        let tmp = gw.must(gw.cache_tmp_files());
        assert!(!tmp.is_empty(), "no fill in progress while in the fault");
        assert!(
            !self.published_path(&self.bad.digest).exists(),
            "published before the fill ended"
        );
        let good = gw.must(self.device.get(&self.good.path));
        assert!(
            good.complete() && good.code == 200,
            "the healthy blob during the fault: {}",
            good.describe()
        );
        assert_eq!(gw.must(good.body_digest()), self.good.digest);
    }

    /// The device got an error and less than the whole blob, and what it
    /// got is the beginning of what upstream sent: the blob's, or with
    /// [`Fault::FlipByte`] the blob's with its middle byte flipped (blobs
    /// stream while they fill; the cut, not a digest check the device
    /// makes, is what keeps the wrong blob from passing as a success).
    fn check_device_error(&self, r: &CurlResponse, flipped: bool) {
        eprintln!("the device saw {}", r.describe());
        assert!(
            !(r.complete() && r.code == 200),
            "the device got a faulted blob as a success: {}",
            r.describe()
        );
        let got = r.body();
        assert!(
            got.len() < self.bad.bytes.len(),
            "the device got all {} bytes of a faulted blob: {}",
            got.len(),
            r.describe()
        );
        let mut sent = self.bad.bytes.clone();
        if flipped {
            let mid = sent.len() / 2;
            sent[mid] ^= 0xff;
        }
        assert!(
            got[..] == sent[..got.len()],
            "the device's {} bytes are not the beginning of what upstream sent",
            got.len()
        );
    }

    /// The failure's aftermath: nothing published, no temp file, the
    /// request record blames upstream.
    fn check_failure_recorded(&self) {
        let gw = &self.gw;
        let records = gw.must(gw.wait_requests("GET", &self.bad.path, 1));
        eprintln!("records: {records:?}");
        assert!(
            records.iter().all(|r| r["fault"] == "upstream"),
            "the fault not blamed on upstream: {records:?}"
        );
        assert!(
            !self.published_path(&self.bad.digest).exists(),
            "a faulted fill was published"
        );
        self.gw.wait_no_temp_files();
    }

    /// The request record names the progress floor as the cause (not the
    /// idle timeout, not the device going away).
    fn check_cut_by_the_floor(&self) {
        let gw = &self.gw;
        let records = gw.must(gw.wait_requests("GET", &self.bad.path, 1));
        let needle = "below the floor of 4096 B/s (upstream.min_body_rate)";
        assert!(
            records
                .iter()
                .any(|r| r["detail"].as_str().is_some_and(|d| d.contains(needle))),
            "no record names `{needle}`: {records:?}"
        );
    }

    /// The gateway closed its connection to the faulted answer (the
    /// proxy no longer holds it in the fault).
    fn wait_hung_up(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.faulty.in_fault() > 0 {
            assert!(Instant::now() < deadline, "{what} is still being read");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// With the fault cleared, the same pull gets the right bytes and the
    /// blob is stored: the positive control for the checks before.
    fn check_recovers(&self) {
        let gw = &self.gw;
        assert!(
            self.faulty.applied() >= 1,
            "the fault never struck: the test proved nothing"
        );
        self.faulty.clear();
        let r = gw.must(self.device.get(&self.bad.path));
        assert!(r.complete() && r.code == 200, "{}", r.describe());
        assert_eq!(gw.must(r.body_digest()), self.bad.digest);
        // The response completes at the digest check; the rename into
        // the store follows it.
        let stored = self.published_path(&self.bad.digest);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stored.exists() {
            assert!(
                Instant::now() < deadline,
                "the recovered blob was not stored"
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(gw.must(sha256_file(&stored)), self.bad.digest);
        self.gw.wait_no_temp_files();
    }
}

/// A fault that holds at its cut point: the fill is observed in progress,
/// then the fault strikes.
fn held_fault(name: &str, fault: Fault, flag: &str) {
    require_root();
    let site = Site::new(name).unwrap();
    let rig = rig(&site);
    rig.faulty.set(&rig.bad.path, fault);
    let bad = thread::scope(|s| {
        let _release = ReleaseOnDrop(&rig.faulty);
        let fetch = s.spawn(|| rig.fetch_bad(flag));
        rig.gw.must(rig.faulty.wait_in_fault(WAIT));
        rig.check_meanwhile();
        rig.faulty.release();
        fetch.join().unwrap()
    });
    let bad = rig.gw.must(bad);
    rig.check_device_error(&bad, fault == Fault::FlipByte);
    rig.check_failure_recorded();
    rig.check_recovers();
}

#[test]
fn a_reset_at_30_percent_of_a_blob_is_an_error_and_stores_nothing() {
    held_fault("fault-reset", Fault::ResetAt { percent: 30 }, "--http1.1");
}

#[test]
fn a_blob_one_byte_short_is_an_error_and_stores_nothing() {
    held_fault("fault-short", Fault::OneByteShort, "--http2");
}

#[test]
fn a_flipped_byte_is_an_error_and_stores_nothing() {
    // The device may see the flipped byte before the digest check fails
    // (blobs stream while they fill), never the whole blob as a success.
    held_fault("fault-flip", Fault::FlipByte, "--http2");
}

/// Headers, then nothing: the gateway's wait for body bytes
/// (`upstream.body_idle_secs`, 10 s here instead of the default 30 s: long
/// enough for the checks made meanwhile) ends the fill.
#[test]
fn a_stall_after_the_headers_is_cut_off_by_the_gateway() {
    require_root();
    let site = Site::new("fault-stall").unwrap();
    let rig = rig_with(&site, &[("body_idle_secs", 10)]);
    rig.faulty.set(&rig.bad.path, Fault::StallAfterHeaders);
    let bad = thread::scope(|s| {
        let _release = ReleaseOnDrop(&rig.faulty);
        let fetch = s.spawn(|| rig.fetch_bad("--http1.1"));
        rig.gw.must(rig.faulty.wait_in_fault(WAIT));
        rig.check_meanwhile();
        // No release: the gateway must give up by itself.
        fetch.join().unwrap()
    });
    let bad = rig.gw.must(bad);
    rig.check_device_error(&bad, false);
    rig.check_failure_recorded();
    rig.wait_hung_up("the stalled answer");
    rig.check_recovers();
}

/// A 1 KB/s trickle that ends in a reset: while it trickles the fill makes
/// progress, nothing is published and other blobs are served; when it
/// breaks, the device gets an error and the temp file goes.
#[test]
fn a_trickle_holds_up_nothing_else_and_its_break_stores_nothing() {
    require_root();
    let site = Site::new("fault-trickle").unwrap();
    let rig = rig(&site);
    rig.faulty
        .set(&rig.bad.path, Fault::Trickle { bytes_per_sec: KIB });
    let gw = &rig.gw;
    let bad = thread::scope(|s| {
        let _release = ReleaseOnDrop(&rig.faulty);
        let fetch = s.spawn(|| rig.fetch_bad("--http2"));
        gw.must(rig.faulty.wait_in_fault(WAIT));
        // The trickle reaches the temp file.
        let written = || -> u64 {
            gw.must(gw.cache_tmp_files())
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        };
        let first = written();
        let deadline = Instant::now() + WAIT;
        while written() <= first {
            assert!(Instant::now() < deadline, "the trickle made no progress");
            thread::sleep(Duration::from_millis(100));
        }
        rig.check_meanwhile();
        rig.faulty.release();
        fetch.join().unwrap()
    });
    let bad = gw.must(bad);
    rig.check_device_error(&bad, false);
    rig.check_failure_recorded();
    rig.check_recovers();
}

/// A trickle that never breaks must still end: the gateway gives up on an
/// upstream body that crawls (the progress floor, `upstream.min_body_rate`,
/// here over 3 s windows instead of the default 30 s), blames upstream and
/// frees the temp file, before the device's own patience runs out.
#[test]
fn an_endless_trickle_is_cut_off_by_the_gateway() {
    require_root();
    let site = Site::new("fault-trickle-end").unwrap();
    // 1 KiB/s against a floor of 4 KiB/s: about 3 KiB in each 3 s window,
    // a quarter of the floor.
    let rig = rig_with(
        &site,
        &[("min_body_rate", 4096), ("min_body_rate_window_secs", 3)],
    );
    rig.faulty
        .set(&rig.bad.path, Fault::Trickle { bytes_per_sec: KIB });
    let bad = {
        let _release = ReleaseOnDrop(&rig.faulty);
        // No release before the fetch returns: the gateway must give up
        // by itself.
        let bad = rig.gw.must(rig.fetch_bad("--http1.1"));
        rig.wait_hung_up("the trickle");
        bad
    };
    rig.check_device_error(&bad, false);
    assert!(
        !bad.body().is_empty(),
        "the device got nothing: a stall, not a trickle"
    );
    rig.check_failure_recorded();
    rig.check_cut_by_the_floor();
    rig.check_recovers();
}

/// kill -9 mid-fill, then a restart on the same cache dir: the crash
/// leaves a temp file and nothing published; the restart removes it and
/// the next pull fills the blob afresh. (A killed gateway writes no
/// record of the request it was serving.)
#[test]
fn sigkill_mid_fill_publishes_nothing_and_restart_reclaims_the_temp_file() {
    require_root();
    let site = Site::new("fault-kill").unwrap();
    let mut rig = rig(&site);
    rig.faulty
        .set(&rig.bad.path, Fault::ResetAt { percent: 30 });
    let bad = thread::scope(|s| {
        let rig = &rig;
        let _release = ReleaseOnDrop(&rig.faulty);
        let fetch = s.spawn(|| rig.fetch_bad("--http1.1"));
        rig.gw.must(rig.faulty.wait_in_fault(WAIT));
        rig.check_meanwhile();
        assert!(
            !fetch.is_finished(),
            "the device's pull ended before the kill"
        );
        // By pid, the gateway this test started; reaped below.
        let pid = i32::try_from(rig.gw.gw.pid().unwrap()).unwrap();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        fetch.join().unwrap()
    });
    let gw = &mut rig.gw;
    let status = gw.gw.wait_exit(Duration::from_secs(10));
    eprintln!("gateway exit: {:?}", gw.gw.must(status));
    let bad = gw.must(bad);
    rig.check_device_error(&bad, false);
    rig.faulty.clear();
    rig.faulty.release();
    let left = rig.gw.must(rig.gw.cache_tmp_files());
    assert!(!left.is_empty(), "the killed fill left no temp file");
    assert!(
        !rig.published_path(&rig.bad.digest).exists(),
        "a killed fill was published"
    );

    let restarted = rig.gw.gw.restart();
    rig.gw.must(restarted);
    let after = rig.gw.must(rig.gw.cache_tmp_files());
    assert!(after.is_empty(), "temp files after the restart: {after:?}");
    rig.check_recovers();
}
