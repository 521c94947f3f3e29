//! Harness for the root-only integration tests and the demo.
//!
//! A [`Site`] is a world of three network namespaces (device, gateway,
//! upstream) joined by veth pairs, with servers in the upstream namespace; a
//! [`Gateway`] is the daemon under test running inside the gateway namespace.
//! Everything is created inside namespaces whose names carry a prefix unique
//! to this process and site, and removed by `Drop` (also on panic): the root
//! namespace's interfaces, routes, rules and firewall are never touched.
//!
//! The kernel is inspected through [`kernel`] with iproute2 and raw BPF
//! queries, never through the gateway's own code, so a bug there cannot hide
//! itself from the tests.

pub mod audit;
/// `cargo xtask bench` (issue 5): the gateway beside its peers.
pub mod bench;
pub mod config;
/// A stock containerd (`ctr`) in a site namespace.
pub mod containerd;
pub mod device;
/// DNS and NTP clients in the device namespace (issue 10).
pub mod dns;
/// A fault-injecting proxy in front of the registry (issue 11).
pub mod faulty;
/// A three-node Garage cluster: the shared store of issue 16.
pub mod garage;
pub mod gateway;
/// Helm chart repositories and a client that pulls like `helm pull`.
pub mod helm;
/// Docker Hub's shape (registry, token server, CDN) and a wrong resolver.
pub mod hub;
pub mod kernel;
pub mod netns;
/// nginx as a static origin (files and helm sites, the hub's CDN).
pub mod nginx;
pub mod oci;
/// Prometheus and promtool from target/tools (issue 12).
pub mod prometheus;
pub mod registry;
pub mod servers;
pub mod site;
/// Squid as the site's corporate proxy (issue 14, `upstream_proxy`).
pub mod squid;
pub mod tls;

pub use audit::{is_rfc3339, records_with_event};
pub use config::GatewayConfig;
pub use gateway::Gateway;
pub use netns::{in_ns, spawn_in_ns};
pub use site::Site;

/// Whether the tests run on an emulated CPU: a TCG guest of `cargo xtask
/// vm`, which says so in `MARGO_VM_ACCEL`. Such a CPU is tens of times
/// slower, so tests shrink sizes, counts and the time windows they need
/// for their own steps; never which tests run or what they check.
pub fn emulated() -> bool {
    std::env::var("MARGO_VM_ACCEL").is_ok_and(|a| a == "tcg")
}

/// `bytes`, for a size incidental to what a test checks (an image's layers,
/// say): as given on a real CPU, a quarter of it under TCG, where each byte
/// is generated, hashed, compressed, encrypted and written by emulated code
/// several times over (the harness, the registry, the gateway, the client).
pub fn incidental(bytes: u64) -> u64 {
    if emulated() {
        (bytes / 4).max(4096)
    } else {
        bytes
    }
}

/// Fails loudly unless running as root: a silent pass of a test that never
/// touched the kernel would be a defect (the xtask runner never runs these
/// tests as non-root).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (CAP_NET_ADMIN, CAP_BPF): run `cargo xtask test` as root");
    }
}
