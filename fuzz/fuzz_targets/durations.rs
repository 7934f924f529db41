//! `cargo xtask fuzz durations`: the properties of `gateway::fuzzing::durations`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::durations(data));
