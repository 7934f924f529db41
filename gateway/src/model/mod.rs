//! The domain model shared by every layer above it: sandboxes and their declared ports, access
//! tokens, previews with their tokens, timestamps and lifetimes, and the name rules. Plain data
//! and pure functions: no I/O, no locks.

/// The hash map of the request path's lookups: keyed by foldhash with a per-process random seed,
/// several times cheaper per lookup than the standard SipHash. Its keys (sandbox labels and
/// addresses, preview ids, token digest buckets, upstream addresses) are chosen by the operator
/// or derived from secrets, never by a client, so SipHash's resistance to chosen collisions is
/// not needed.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod fleet;
pub mod preview;
pub mod sandbox;
pub mod time;

/// Whether `s` is a DNS label as the gateway uses them (workspace, sandbox and preview names):
/// 1 to 63 characters among lower-case a-z, 0-9 and '-', not starting or ending with '-'.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` can name a network interface (1 to 15 printable bytes, no '/' or ':').
pub fn is_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < libc::IFNAMSIZ
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}
