//! `cargo xtask fuzz admin_body`: the properties of `gateway::fuzzing::admin_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::admin_body(data));
