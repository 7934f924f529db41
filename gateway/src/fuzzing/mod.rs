//! The properties the `cargo fuzz` targets check (fuzz/fuzz_targets/*.rs), as plain functions of
//! arbitrary bytes, so that the corpus replay test (`gateway/tests/fuzz_corpus.rs`, part of a
//! plain `cargo test`) runs the very same checks on stable, without libFuzzer.
//!
//! Each function feeds the bytes to one parser the way the gateway feeds it and panics when a
//! property does not hold: not only "no panic", but what the parser promises (an accepted port is
//! in range and not reserved, a rewritten query keeps every other byte, a new flow is admitted
//! only for a well-formed IPv4 TCP SYN, ...). See docs/SECURITY.md and `cargo xtask fuzz`.
//!
//! Not part of the gateway's API: it exists for the fuzz crate and the tests.

mod bodies;
mod credentials;
mod dataplane;
mod durations;
mod host;
mod port_path;
mod util;

/// A target's property check: panics when the property does not hold for the input.
pub type Check = fn(&[u8]);

/// Every target: its name (the fuzz target `fuzz/fuzz_targets/{name}.rs` and the corpus
/// directory `fuzz/corpus/{name}/`) and its property check.
pub const TARGETS: &[(&str, Check)] = &[
    ("host", host::check),
    ("port_path", port_path::check),
    ("credentials", credentials::check),
    ("admin_body", bodies::admin),
    ("v0_body", bodies::v0),
    ("durations", durations::check),
    ("dataplane", dataplane::check),
];

pub use bodies::{admin as admin_body, v0 as v0_body};
pub use credentials::check as credentials;
pub use dataplane::check as dataplane;
pub use durations::check as durations;
pub use host::check as host;
pub use port_path::check as port_path;
