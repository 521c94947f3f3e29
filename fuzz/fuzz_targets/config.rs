//! `cargo xtask fuzz --target config`: see `gateway::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::config(data));
