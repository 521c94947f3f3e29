//! Part 2 of the demo, the pulls: a device (trusting only the site CA,
//! holding no credentials) pulls the image cold, warm and with the
//! upstream link cut. Every pull is checked byte for byte against what was
//! pushed, every request's cache label against what it must be, and the
//! registry's access log against what reached it.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use gateway_tests::{
    Site,
    netns::in_ns,
    registry::{self, Client, OciGateway, Registry, oci_gateway::is_request},
};
use serde_json::Value;

use super::{
    image::{MIB, Pushed, REPO, TAG, TAG_TTL, blob_path, mib, tag_path},
    steps::secs,
    trail::short_digests,
};

/// The pulls, with what they need.
pub struct Pulls<'a, 's> {
    pub site: &'s Site,
    pub gw: &'a OciGateway<'s>,
    pub registry: &'a Registry<'s>,
    pub pushed: &'a Pushed,
}

impl Pulls<'_, '_> {
    fn reference() -> String {
        format!("{REPO}:{TAG}")
    }

    fn command() -> String {
        format!(
            "skopeo copy --all --src-cert-dir <site CA only> docker://{}/{} oci:<dir>:pulled",
            registry::HOST,
            Self::reference()
        )
    }

    /// `skopeo copy --all` by `device`, checked byte for byte.
    fn pull(&self, device: &Client) -> Result<Duration> {
        let start = Instant::now();
        let pulled = device.skopeo_copy(&Self::reference(), true)?;
        let took = start.elapsed();
        let index = &self.pushed.index;
        let tagged = pulled.tagged("pulled")?;
        ensure!(
            tagged == index.index,
            "pulled index {tagged:?} != pushed {:?}",
            index.index
        );
        for image in &index.images {
            pulled.check_image(image)?;
        }
        pulled.verify_blobs()?;
        // The big layer compared byte for byte, beyond its digest.
        for (digest, size) in self.pushed.blobs() {
            if size >= MIB {
                ensure!(
                    pulled.read_blob(&digest)? == self.pushed.layout.read_blob(&digest)?,
                    "blob {digest} differs from the pushed bytes"
                );
            }
        }
        Ok(took)
    }

    fn pulled_line(&self, took: Duration) -> String {
        format!(
            "pulled in {}: index {} and {} platforms, {} blobs ({}), byte-identical to what was pushed",
            secs(took),
            short_digests(&self.pushed.index.index.digest),
            self.pushed.index.images.len(),
            self.pushed.blobs().len(),
            mib(self.pushed.total_bytes())
        )
    }

    /// The `request` records after the first `before`, once every GET a
    /// pull must make is among them and no more arrive (a record lands as
    /// its response body ends, a moment after the client has it).
    fn new_requests(&self, before: usize) -> Result<Vec<Value>> {
        let expected = self.pushed.expected_gets();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_len = usize::MAX;
        let mut stable_since = Instant::now();
        loop {
            let records: Vec<Value> = self.gw.requests()?.into_iter().skip(before).collect();
            let missing: Vec<&String> = expected
                .iter()
                .filter(|p| !records.iter().any(|r| is_request(r, "GET", p)))
                .collect();
            if records.len() != last_len {
                last_len = records.len();
                stable_since = Instant::now();
            }
            if missing.is_empty() && stable_since.elapsed() >= Duration::from_millis(300) {
                return Ok(records);
            }
            if Instant::now() > deadline {
                bail!("no request records for {missing:?} after 10 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the cache has committed every blob (the device has the
    /// last byte a moment before the fill is renamed into place).
    fn wait_committed(&self) -> Result<u64> {
        let want = self.pushed.total_bytes();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held = self.gw.cache_totals()?.bytes;
            if held >= want {
                return Ok(held);
            }
            if Instant::now() > deadline {
                bail!("the cache holds {held} bytes after 10 s, expected at least {want}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// (a) Cold: every document and blob is a miss, filled from upstream
    /// once. Returns when the pull started (the tag's age counts from then).
    pub fn cold(&self, device: &Client) -> Result<(Instant, String)> {
        let before = self.gw.requests()?.len();
        let started = Instant::now();
        let took = self.pull(device)?;
        let records = self.new_requests(before)?;
        check_ok(&records)?;
        for path in self.pushed.expected_gets() {
            let first = records
                .iter()
                .find(|r| is_request(r, "GET", &path))
                .context("record vanished")?;
            ensure!(
                first["cache"] == "miss",
                "first GET of {path} was not a miss: {first}"
            );
        }
        let mut upstream = 0;
        for (digest, _) in self.pushed.blobs() {
            let gets = self
                .registry
                .requests_from_gateway("GET", &blob_path(&digest))?;
            ensure!(
                gets.len() == 1,
                "the registry served {} GETs of blob {digest} to the gateway",
                gets.len()
            );
            upstream += gets.len();
        }
        let held = self.wait_committed()?;
        Ok((
            started,
            [
                format!("device: {}", Self::command()),
                self.pulled_line(took),
                format!("gateway audit: {}", labels(&records)),
                format!("registry access log: {upstream} blob GETs from the gateway, one per blob"),
                format!("gateway cache now holds {held} bytes"),
            ]
            .join("\n"),
        ))
    }

    /// (b) Warm: a fresh device client; every request is a hit and the
    /// registry sees nothing.
    pub fn warm(&self) -> Result<String> {
        let device = self.gw.device()?;
        let before = self.gw.requests()?.len();
        let log_before = self.registry.access_log()?;
        let took = self.pull(&device)?;
        let records = self.new_requests(before)?;
        check_ok(&records)?;
        for r in records.iter().filter(|r| r["path"] != "/v2/") {
            ensure!(r["cache"] == "hit", "warm request not a cache hit: {r}");
        }
        let new = new_upstream(self.registry, log_before.len())?;
        let blob_gets = new
            .iter()
            .filter(|l| l.method == "GET" && l.path.contains("/blobs/"))
            .count();
        ensure!(
            new.is_empty(),
            "the registry saw {} new requests ({blob_gets} blob GETs): {new:?}",
            new.len()
        );
        Ok([
            format!("a fresh device client: {}", Self::command()),
            self.pulled_line(took),
            format!("gateway audit: {}", labels(&records)),
            "registry access log: 0 new requests (0 blob GETs)".to_owned(),
        ]
        .join("\n"))
    }

    /// (c) Offline: the tag is older than `tag_ttl` and the upstream link
    /// is down; the pull succeeds from the cache, the tag served `stale`.
    /// The link is restored afterwards and the tag revalidated.
    pub fn offline(&self, cold_started: Instant) -> Result<String> {
        let mut shown = Vec::new();
        let wait = (TAG_TTL + Duration::from_millis(500)).saturating_sub(cold_started.elapsed());
        shown.push(format!(
            "waiting {} until the tag is older than tag_ttl ({} s): the gateway must then ask upstream",
            secs(wait),
            TAG_TTL.as_secs()
        ));
        thread::sleep(wait);

        registry::cut_upstream(self.site)?;
        let result = self.offline_pull(&mut shown);
        // Restored whatever happened.
        let restored = registry::restore_upstream(self.site);
        result?;
        restored?;
        self.wait_upstream_reachable()?;
        shown.push(format!(
            "link restored (ip link set {} up): the gateway reaches {}:443 again",
            self.site.gw_up_if,
            registry::ADDR_V4
        ));

        // Back online: the stale tag is revalidated with a HEAD upstream,
        // once the wait the site set itself after the outage's failed
        // attempts has passed (1 s, doubling; the gateway serves the held
        // tag at once until then).
        let log_before = self.registry.access_log()?.len();
        let device = self.gw.device()?;
        let back = Instant::now();
        let rec = loop {
            let before = self.gw.requests()?.len();
            let r = device.get(&tag_path())?;
            ensure!(r.code == 200, "GET of the tag: {}", r.describe());
            ensure!(
                r.body()
                    == self
                        .pushed
                        .layout
                        .read_blob(&self.pushed.index.index.digest)?,
                "the tag's index differs from the pushed one"
            );
            let rec = self.wait_new_request(before, &tag_path())?;
            let backing_off = rec["cache"] == "stale"
                && rec["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("last attempt"));
            if !backing_off || back.elapsed() > Duration::from_secs(65) {
                break rec;
            }
            thread::sleep(Duration::from_millis(500));
        };
        ensure!(
            rec["cache"] == "revalidated",
            "tag after the link came back: {rec}"
        );
        if back.elapsed() > Duration::from_secs(1) {
            shown.push(format!(
                "served from the cache for {} more after the link came back: the gateway waits before asking an upstream it found down again",
                secs(back.elapsed())
            ));
        }
        let upstream = new_upstream(self.registry, log_before)?;
        let heads = upstream
            .iter()
            .filter(|l| l.method == "HEAD" && l.path == tag_path())
            .count();
        ensure!(
            heads >= 1 && upstream.iter().all(|l| l.method == "HEAD"),
            "after the link came back the registry saw {upstream:?}, expected HEADs of the tag only"
        );
        shown.push(format!(
            "curl GET {}: 200, cache revalidated after {} ms (upstream answered a HEAD with the same digest)",
            tag_path(),
            rec["upstream_ms"]
        ));
        shown.push(format!(
            "registry access log since the link came back: {heads} HEAD(s) of the tag, nothing else: nothing re-downloaded"
        ));
        if heads > 1 {
            shown.push(
                "  (the HEAD tried during the outage went out on a kept-alive connection; TCP delivered it once the link was back)"
                    .to_owned(),
            );
        }
        Ok(shown.join("\n"))
    }

    fn offline_pull(&self, shown: &mut Vec<String>) -> Result<()> {
        let target = SocketAddr::from((registry::ADDR_V4, registry::PORT));
        let reach = in_ns(&self.site.gw_ns, || {
            TcpStream::connect_timeout(&target, Duration::from_secs(1))
        })?;
        if let Ok(s) = reach {
            bail!(
                "the gateway namespace still reaches {target} from {:?}",
                s.local_addr()
            );
        }
        shown.push(format!(
            "link cut (ip link set {} down): from the gateway namespace, connect to {target} fails ({})",
            self.site.gw_up_if,
            reach.err().map(|e| e.to_string()).unwrap_or_default()
        ));
        let device = self.gw.device()?;
        let before = self.gw.requests()?.len();
        let log_before = self.registry.access_log()?.len();
        let took = self.pull(&device)?;
        let records = self.new_requests(before)?;
        check_ok(&records)?;
        for r in records.iter().filter(|r| r["path"] != "/v2/") {
            if r["path"] == tag_path().as_str() {
                ensure!(
                    r["cache"] == "stale" && r["fault"] == "upstream",
                    "the expired tag was not served stale: {r}"
                );
            } else {
                ensure!(r["cache"] == "hit", "offline request not a hit: {r}");
            }
        }
        let new = new_upstream(self.registry, log_before)?;
        ensure!(new.is_empty(), "the registry was reached: {new:?}");
        shown.push(format!("a fresh device client: {}", Self::command()));
        shown.push(self.pulled_line(took));
        shown.push(format!("gateway audit: {}", labels(&records)));
        let stale = records
            .iter()
            .find(|r| is_request(r, "GET", &tag_path()))
            .context("no record of the tag")?;
        shown.push(format!(
            "the tag, older than tag_ttl, could not be revalidated ({}, after {} ms): its last good copy was served, cache stale",
            stale["detail"].as_str().unwrap_or("upstream failed"),
            stale["upstream_ms"]
        ));
        shown.push("manifests and blobs by digest are immutable: cache hits".to_owned());
        Ok(())
    }

    /// The first `GET path` record after the first `before` records.
    fn wait_new_request(&self, before: usize, path: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .gw
                .requests()?
                .into_iter()
                .skip(before)
                .find(|r| is_request(r, "GET", path));
            if let Some(r) = found {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("no request record for GET {path} after 10 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_upstream_reachable(&self) -> Result<()> {
        let target = SocketAddr::from((registry::ADDR_V4, registry::PORT));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = in_ns(&self.site.gw_ns, || {
                TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_ok()
            })?;
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{target} unreachable from the gateway 10 s after the link came back");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every record answered 200 and names the registry.
fn check_ok(records: &[Value]) -> Result<()> {
    ensure!(!records.is_empty(), "no request records");
    for r in records {
        ensure!(r["status"] == 200, "request not answered 200: {r}");
        ensure!(r["host"] == registry::HOST, "request for another host: {r}");
    }
    Ok(())
}

/// `12 requests: 10 hit, 1 stale, 1 answered by the gateway (/v2/)`.
fn labels(records: &[Value]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        let label = r["cache"].as_str().unwrap_or("none");
        *counts.entry(label).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(label, n)| match *label {
            "none" => format!("{n} answered by the gateway itself (/v2/)"),
            _ => format!("{n} {label}"),
        })
        .collect();
    format!("{} requests: {}", records.len(), parts.join(", "))
}

/// The registry's access lines after the first `before`.
fn new_upstream(registry: &Registry<'_>, before: usize) -> Result<Vec<registry::AccessLine>> {
    Ok(registry.access_log()?.into_iter().skip(before).collect())
}
