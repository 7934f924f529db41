//! `cargo xtask fuzz credentials`: the properties of `gateway::fuzzing::credentials`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::credentials(data));
