//! `cargo xtask fuzz host`: the properties of `gateway::fuzzing::host`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::host(data));
