//! `cargo xtask fuzz --target sni`: see `gateway::fuzzing::sni`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::sni(data));
