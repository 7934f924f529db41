//! `cargo xtask fuzz dataplane`: the properties of `gateway::fuzzing::dataplane`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::dataplane(data));
