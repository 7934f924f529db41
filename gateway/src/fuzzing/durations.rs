//! Target `durations`: timestamps (`expiresAt`), lifetimes (`ttl`) and configuration durations
//! (`"500ms"`, `"10s"`, ...). The input is the text.
//!
//! Properties: an accepted timestamp is UTC, answered in a form that reads back to the stored
//! (millisecond) value; an accepted lifetime is positive, at most `MAX_TTL`, and an expiry
//! computed from it is that far in the future; a configuration duration reads as humantime reads
//! it (the syntax of `ttl` too) and is printed in a form that reads back to the same value.

use super::util::fixed_now;
use crate::{
    config::HumanDuration,
    model::time::{MAX_TTL, add, format_timestamp, parse_timestamp, parse_ttl, truncate_millis, until},
};
use std::time::Duration;

/// Runs the checks on one input.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = parse_timestamp(text) {
        assert_eq!(t.offset(), time::UtcOffset::UTC, "{text:?}");
        let shown = format_timestamp(t);
        assert_eq!(parse_timestamp(&shown), Ok(truncate_millis(t)), "{text:?} → {t} is answered as {shown:?}");
        assert_eq!(format_timestamp(truncate_millis(t)), shown);
    }
    if let Ok(d) = parse_ttl(text) {
        assert!(!d.is_zero() && d <= MAX_TTL, "ttl {text:?} = {d:?}");
        let now = fixed_now();
        let at = add(now, d);
        assert!(at > now);
        assert_eq!(until(at, now), d, "ttl {text:?}");
        assert_eq!(until(now, at), Duration::ZERO);
    }
    if let Ok(h) = text.parse::<HumanDuration>() {
        let shown = h.to_string();
        assert_eq!(shown.parse::<HumanDuration>(), Ok(h), "{text:?} is shown as {shown:?}");
        assert_eq!(humantime::parse_duration(text).ok(), Some(h.get()), "{text:?}");
        assert!(shown.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' '), "{text:?} is shown as {shown:?}");
    }
}
