//! `cargo xtask bench`: the gateway measured beside its peers (issue 5).
//!
//! One invocation builds one simulated site (see [`world`]), pushes the
//! same generated blobs to one origin registry, and measures each section
//! with the gateway and its peers interleaved run by run, so that every
//! ratio compares figures taken minutes apart on the same data:
//!
//! - (a) warm: a cached blob over TLS, 1 and 16 concurrent curl clients:
//!   the gateway vs nginx `proxy_cache` vs a direct transfer from the
//!   registry ([`warm`]);
//! - (b) cold: a blob nobody holds, 1 and 8 clients at once: the gateway
//!   vs the distribution registry as pull-through cache vs nginx with its
//!   cache lock; upstream GETs and bytes, and each client's time ([`cold`]);
//! - (c) full TLS handshakes per second for 1 and 1,000 names vs nginx with
//!   one static certificate ([`handshake`]);
//! - (d) manifest HEAD latency through the gateway vs direct ([`latency`]);
//! - (e) the TC program's cost per packet per verdict with
//!   `BPF_PROG_TEST_RUN`, and passthrough throughput vs direct ([`kernel`]);
//! - (f) the gateway's resident memory idle and with 1,000 open
//!   connections ([`memory`]);
//! - (g) a warm pull of a tag past `tag_ttl` with the upstream link up
//!   and cut, with and without `stale_while_revalidate` ([`offline`]);
//! - (h) DNS answers per CPU-second, throughput and p99 latency for an
//!   allowed and refused names, with dnsperf: the gateway vs dnsmasq
//!   ([`dns`]);
//! - (i) a blob through a gateway with a shared store (a three-node Garage
//!   cluster) held on local disk, held only by the store, and held by
//!   nobody (from the origin), in the same run ([`shared`]).
//!
//! Results go to `BENCHMARKS.md` and `benchmarks.json` in the output
//! directory ([`report`]). `--smoke` runs everything once with tiny sizes
//! so that `cargo xtask test` keeps this code working.

pub mod bare;
pub mod cold;
pub mod curl;
pub mod distribution;
pub mod dns;
pub mod handshake;
pub mod kernel;
pub mod latency;
pub mod machine;
pub mod memory;
pub mod nginx;
pub mod offline;
pub mod pki;
pub mod proc;
pub mod report;
pub mod shared;
pub mod stats;
pub mod tlsclient;
pub mod warm;
pub mod world;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use self::{
    curl::Target,
    nginx::Nginx,
    pki::PeerPki,
    report::Report,
    world::{BenchGateway, PEER_DISTRIBUTION, PEER_NGINX, PeerLink},
};
use crate::{
    garage::Garage,
    oci::{LINUX_AMD64, LayerSpec, Layout},
    registry::{self, HOST, Registry, RegistryOptions},
    site::Site,
};

/// What to run and how big.
#[derive(Clone, Debug)]
pub struct Opts {
    pub smoke: bool,
    /// Runs per figure (each figure is the median of these).
    pub runs: usize,
    /// Size of the warm and of the cold blob, bytes.
    pub blob_size: u64,
    /// Concurrent clients of the warm section.
    pub warm_clients: usize,
    /// Concurrent clients of the cold section.
    pub cold_clients: usize,
    /// Distinct names of the many-names handshake case.
    pub names: usize,
    /// Open connections of the memory section.
    pub conns: usize,
    /// Length of one handshake burst, seconds.
    pub handshake_secs: f64,
    /// Client threads of a handshake burst.
    pub handshake_threads: usize,
    /// HEAD requests per latency run.
    pub head_requests: usize,
    /// Length of one iperf3 run, seconds.
    pub iperf_secs: u64,
    /// `BPF_PROG_TEST_RUN` repetitions per packet and run.
    pub test_run_repeat: u32,
    /// Sections to run, in issue letters (`abcdefghi`).
    pub sections: String,
    /// Where BENCHMARKS.md and benchmarks.json go (none: print only).
    pub out_dir: Option<PathBuf>,
    /// `perf record` the gateway during the first run of the gateway's
    /// heavy measurements, into this directory (`--perf DIR`).
    pub perf_dir: Option<PathBuf>,
}

impl Opts {
    /// The issues' sizes: 1 GiB blobs, 16 and 8 clients, 1,000 names,
    /// 10,000 connections, medians of 5 runs.
    pub fn full() -> Self {
        Self {
            smoke: false,
            runs: 5,
            blob_size: 1 << 30,
            warm_clients: 16,
            cold_clients: 8,
            names: 1000,
            conns: 10_000,
            handshake_secs: 5.0,
            handshake_threads: 8,
            head_requests: 2000,
            iperf_secs: 5,
            test_run_repeat: 1_000_000,
            sections: "abcdefghi".to_owned(),
            out_dir: None,
            perf_dir: None,
        }
    }

    /// Tiny sizes and one run: proves the benchmark still works.
    pub fn smoke() -> Self {
        Self {
            smoke: true,
            runs: 1,
            blob_size: 2 << 20,
            warm_clients: 2,
            cold_clients: 2,
            names: 10,
            conns: 20,
            handshake_secs: 0.3,
            handshake_threads: 2,
            head_requests: 20,
            iperf_secs: 1,
            test_run_repeat: 1000,
            sections: "abcdefghi".to_owned(),
            out_dir: None,
            perf_dir: None,
        }
    }

    pub fn wants(&self, section: char) -> bool {
        self.sections.contains(section)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "smoke": self.smoke,
            "runs": self.runs,
            "blob_size": self.blob_size,
            "warm_clients": self.warm_clients,
            "cold_clients": self.cold_clients,
            "names": self.names,
            "conns": self.conns,
            "handshake_secs": self.handshake_secs,
            "handshake_threads": self.handshake_threads,
            "head_requests": self.head_requests,
            "iperf_secs": self.iperf_secs,
            "test_run_repeat": self.test_run_repeat,
            "sections": self.sections,
        })
    }
}

/// A blob the benchmark pushed: `GET /v2/<repo>/blobs/<digest>`.
#[derive(Clone, Debug)]
pub struct BlobRef {
    pub repo: String,
    pub digest: String,
    pub size: u64,
    /// The image's tag (its manifest is `…/manifests/<tag>`).
    pub tag: String,
}

impl BlobRef {
    pub fn path(&self) -> String {
        format!("/v2/{}/blobs/{}", self.repo, self.digest)
    }

    pub fn manifest_path(&self) -> String {
        format!("/v2/{}/manifests/{}", self.repo, self.tag)
    }
}

/// Everything a section needs.
pub struct Bench<'a, 's> {
    pub opts: Opts,
    pub site: &'s Site,
    pub registry: &'a Registry<'s>,
    pub gw: BenchGateway<'s>,
    pub nginx: Nginx,
    pub pki: PeerPki,
    /// The shared store of section (i), when it runs.
    pub garage: Option<&'a Garage>,
    pub warm: BlobRef,
    /// (a)'s second, smaller warm blob: see [`smaller_warm_size`].
    pub warm_small: BlobRef,
    pub cold: BlobRef,
    /// Scratch space of the peers and the gateway.
    pub dir: PathBuf,
    pub report: Report,
}

impl Bench<'_, '_> {
    /// The gateway as a device reaches it: the registry's address,
    /// intercepted, trusting the site CA.
    pub fn target_gateway(&self) -> Target {
        Target {
            label: "gateway",
            ns: self.site.dev_ns.clone(),
            addr: registry::ADDR_V4,
            ca: self.gw.site_ca.clone(),
        }
    }

    pub fn target_nginx(&self) -> Target {
        Target {
            label: "nginx",
            ns: self.site.dev_ns.clone(),
            addr: PEER_NGINX,
            ca: self.pki.ca_pem.clone(),
        }
    }

    pub fn target_distribution(&self) -> Target {
        Target {
            label: "distribution",
            ns: self.site.dev_ns.clone(),
            addr: PEER_DISTRIBUTION,
            ca: self.pki.ca_pem.clone(),
        }
    }

    /// The registry itself, from the gateway namespace (one veth hop, like
    /// the device's hop to the gateway).
    pub fn target_direct(&self) -> Target {
        Target {
            label: "direct",
            ns: self.site.gw_ns.clone(),
            addr: registry::ADDR_V4,
            ca: self.registry.ca_pem.clone(),
        }
    }

    /// Starts `perf record` of the gateway as `<perf dir>/<name>.data` when
    /// profiling was asked for and this is the first run.
    pub fn perf(&self, name: &str, run: usize) -> Result<Option<proc::Perf>> {
        match (&self.opts.perf_dir, run) {
            (Some(dir), 0) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{name}.data"));
                progress(format!(
                    "recording a profile of the gateway into {}",
                    path.display()
                ));
                Ok(Some(proc::Perf::start(self.gw.pid()?, &path)?))
            }
            _ => Ok(None),
        }
    }

    /// Human size of the blobs: `1 GiB`, `2 MiB`.
    pub fn size_text(&self) -> String {
        size_text(self.opts.blob_size)
    }
}

pub fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

/// Prints a progress line (stderr: stdout carries the table).
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// Rotates `items` by `run`: each run starts with another subject, so no
/// subject always runs first (cold page cache, a burst of other load).
pub fn rotated<T: Clone>(items: &[T], run: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = run % v.len();
        v.rotate_left(k);
    }
    v
}

/// Runs the benchmark: builds the world, runs the sections, writes and
/// prints the report. Fails if any section failed (after writing what the
/// others measured).
pub fn run(opts: Opts) -> Result<Report> {
    crate::require_root();
    let started = Instant::now();
    let nofile = proc::raise_nofile()?;
    progress(format!("open-file limit {nofile}"));
    // (f) holds `conns` sockets in this process and as many in the server.
    let wanted = opts.conns as u64 + 1024;
    if opts.wants('f') && nofile < wanted {
        bail!(
            "(f) opens {} connections but the open-file limit is {nofile} (wanted {wanted}): \
             raise it (ulimit -Hn) or pass --conns",
            opts.conns
        );
    }
    let report = Report::new(&opts)?;

    progress("building the site (namespaces dev/gw/up, veths, registry)");
    let mut site = Site::new("bench")?;
    // Section (i)'s store: its namespaces are added to the site before
    // anything borrows it.
    let garage = if opts.wants('i') {
        progress("starting a three-node Garage cluster for (i)");
        let garage = Garage::start(&mut site)?;
        garage.attach(&site, &site.gw_ns, 21)?;
        Some(garage)
    } else {
        None
    };
    let _peer_link = PeerLink::create(&site)?;
    world::tune_client_ns(&site.dev_ns)?;
    world::tune_client_ns(&site.gw_ns)?;
    site.warm_neighbors()?;
    let registry = Registry::start(&site, RegistryOptions::default())?;
    let dir = site.tmp_dir().join("bench");
    std::fs::create_dir_all(&dir)?;

    let small = smaller_warm_size(opts.blob_size);
    progress(format!(
        "generating and pushing two {} images and one of {}",
        size_text(opts.blob_size),
        size_text(small)
    ));
    let layout = Layout::create(&dir.join("layout"))?;
    let warm = push_image(&registry, &layout, "bench/warm", opts.blob_size, 1)?;
    let warm_small = push_image(&registry, &layout, "bench/warm-small", small, 3)?;
    let cold = push_image(&registry, &layout, "bench/cold", opts.blob_size, 2)?;
    // The generated layout is no longer needed: free its disk space.
    drop(layout);
    let _ = std::fs::remove_dir_all(dir.join("layout"));

    let pki = PeerPki::create(&dir.join("pki"), HOST)?;
    progress("starting the gateway (release build expected for real numbers)");
    let gw = BenchGateway::start(&site, &registry, 0, &dir.join("gateway"))?;
    progress("starting nginx");
    let nginx = Nginx::start(
        &site.gw_ns,
        &dir.join("nginx"),
        PEER_NGINX,
        &pki,
        &registry.ca_pem,
    )?;

    let mut bench = Bench {
        opts: opts.clone(),
        site: &site,
        registry: &registry,
        gw,
        nginx,
        pki,
        garage: garage.as_ref(),
        warm,
        warm_small,
        cold,
        dir,
        report,
    };

    // Order: the sections that need the main gateway config first; (c)
    // re-creates the gateway with many names, so it runs last.
    let mut failures = Vec::new();
    let sections: [(char, &str, SectionFn); 9] = [
        ('a', "warm blob", warm::run),
        ('b', "cold blob", cold::run),
        ('d', "manifest HEAD latency", latency::run),
        ('f', "resident memory", memory::run),
        ('e', "kernel path", kernel::run),
        ('h', "DNS", dns::run),
        // (i), (g) and (c) each replace the gateway with one of their own.
        ('i', "shared store", shared::run),
        ('g', "no stall while upstream is down", offline::run),
        ('c', "TLS handshakes", handshake::run),
    ];
    for (letter, what, f) in sections {
        if !opts.wants(letter) {
            continue;
        }
        progress(format!("== ({letter}) {what} =="));
        let t = Instant::now();
        if let Err(e) = f(&mut bench) {
            let msg = format!("({letter}) {what} failed: {e:#}");
            progress(&msg);
            bench.report.notes.push(msg.clone());
            failures.push(msg);
        }
        progress(format!("({letter}) took {:.0}s", t.elapsed().as_secs_f64()));
    }

    let mut report = std::mem::replace(&mut bench.report, Report::new(&opts)?);
    drop(bench);
    report.finish(started.elapsed());
    println!("{}", report.table());
    if let Some(dir) = &opts.out_dir {
        report.write(dir)?;
        progress(format!(
            "wrote {} and {}",
            dir.join("BENCHMARKS.md").display(),
            dir.join("benchmarks.json").display()
        ));
    }
    if !failures.is_empty() {
        bail!(
            "{} section(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(report)
}

type SectionFn = fn(&mut Bench<'_, '_>) -> Result<()>;

/// (a)'s second case (issue 15 item 3b): 256 MiB beside the 1 GiB blob,
/// or half the blob size when that is 256 MiB or less (the smoke run).
pub fn smaller_warm_size(blob_size: u64) -> u64 {
    const SMALL: u64 = 256 << 20;
    if blob_size > SMALL {
        SMALL
    } else {
        (blob_size / 2).max(1)
    }
}

/// Generates a one-layer image whose layer is `size` bytes (an
/// uncompressed tar holding seeded random bytes) and pushes it as
/// `<repo>:v1`.
fn push_image(
    registry: &Registry<'_>,
    layout: &Layout,
    repo: &str,
    size: u64,
    seed: u64,
) -> Result<BlobRef> {
    // The tar adds a header and padding: aim the file so the layer blob
    // comes out close to `size`.
    let payload = size.saturating_sub(3 * 512).max(1);
    let image = layout.image(LINUX_AMD64, &[LayerSpec::tar(payload, seed)], repo)?;
    let t = Instant::now();
    // The harness's push streams blobs from their files: fine for GiBs.
    registry
        .push(layout, repo, &image.manifest, "v1")
        .with_context(|| format!("pushing {repo}:v1"))?;
    let layer = image.layers[0].clone();
    progress(format!(
        "pushed {repo}:v1, layer {} ({} bytes) in {:.1}s",
        layer.digest,
        layer.size,
        t.elapsed().as_secs_f64()
    ));
    Ok(BlobRef {
        repo: repo.to_owned(),
        digest: layer.digest,
        size: layer.size,
        tag: "v1".to_owned(),
    })
}

/// Generous bound on one transfer of `size` bytes by `clients` at once.
pub fn transfer_timeout(size: u64, clients: usize) -> Duration {
    // 20 MiB/s per client at worst, plus a minute.
    let secs = (size as f64 * clients as f64) / (20.0 * 1024.0 * 1024.0) + 60.0;
    Duration::from_secs_f64(secs)
}
