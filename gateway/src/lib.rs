//! The Margo site egress gateway: a transparent proxy fed by eBPF programs
//! on the device-facing interfaces. See the README for the data path.

pub mod audit;
pub mod cache;
pub mod children;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod ebpf;
pub mod flows;
/// Fuzz target entry points (`fuzz/`, `cargo xtask fuzz`); not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod pidfile;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod sites;
pub mod status;
pub mod store;
pub mod time;
pub mod tls;
pub mod udp;
pub mod upstream;
