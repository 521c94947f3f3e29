//! `cargo xtask fuzz --target dns`: see `gateway::fuzzing::dns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::dns(data));
