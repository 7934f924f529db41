//! `cargo xtask fuzz port_path`: the properties of `gateway::fuzzing::port_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::port_path(data));
