//! `cargo xtask fuzz --target http`: see `gateway::fuzzing::http`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::http(data));
