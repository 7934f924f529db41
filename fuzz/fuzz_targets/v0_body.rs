//! `cargo xtask fuzz v0_body`: the properties of `gateway::fuzzing::v0_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::v0_body(data));
