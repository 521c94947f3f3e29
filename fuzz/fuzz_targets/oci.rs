//! `cargo xtask fuzz --target oci`: see `gateway::fuzzing::oci`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::oci(data));
