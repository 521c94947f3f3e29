//! The Margo site egress gateway: a transparent proxy fed by eBPF programs
//! on the device-facing interfaces. See the README for the data path.

pub mod audit;
pub mod config;
pub mod daemon;
pub mod ebpf;
pub mod policy;
pub mod proxy;
pub mod status;
