//! Timestamps and lifetimes as the APIs accept and answer them.
//!
//! Accepted timestamps: RFC 3339 with `Z`, `+00:00` (or any other offset), or no
//! offset at all (read as UTC), with or without fractional seconds; a space instead of `T` is
//! tolerated. Answers are always UTC with `Z`, to the millisecond when there is a fraction.
//! Lifetimes (`ttl`) are humantime durations: `"1h"`, `"24h"`, `"7d"`, `"90m"`, `"1h 30m"`.

use std::time::Duration;
use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

/// A UTC instant.
pub type Timestamp = OffsetDateTime;

/// The current instant, UTC.
pub fn now() -> Timestamp {
    OffsetDateTime::now_utc()
}

/// Why a timestamp or a lifetime was refused (the message is shown to API clients).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not a timestamp we read.
    #[error(
        "{0:?} is not a timestamp: use RFC 3339, e.g. \"2030-01-31T12:00:00Z\", \"2030-01-31T12:00:00.5+00:00\" or \"2030-01-31T12:00:00\" (UTC)"
    )]
    Timestamp(String),
    /// Not a duration we read.
    #[error("{0:?} is not a lifetime: use e.g. \"30m\", \"1h\", \"24h\" or \"7d\"")]
    Ttl(String),
    /// Zero or absurdly long.
    #[error("lifetime {0:?} is out of range (more than 0 s and at most 10 years)")]
    TtlRange(String),
}

/// The longest accepted lifetime.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Parses an accepted timestamp into UTC.
pub fn parse_timestamp(text: &str) -> Result<Timestamp, TimeError> {
    let err = || TimeError::Timestamp(text.to_string());
    let t = text.trim();
    if t.is_empty() || t.len() > 64 {
        return Err(err());
    }
    let mut s = t.to_ascii_uppercase().replacen(' ', "T", 1);
    // "…T12:00:00" or "…T12:00:00.123": no offset means UTC.
    let time_part = s.split_once('T').map(|(_, time)| time).ok_or_else(err)?;
    let has_offset = time_part.ends_with('Z') || time_part.contains(['+', '-']);
    if !has_offset {
        s.push('Z');
    }
    let parsed = OffsetDateTime::parse(&s, &Rfc3339).map_err(|_| err())?;
    // In UTC the year may leave 0000..=9999 (`9999-12-31T23:59:59-01:00`): such an instant
    // cannot be answered in RFC 3339, and `to_offset` would panic past the library's range.
    match parsed.checked_to_offset(UtcOffset::UTC) {
        Some(utc) if (0..=9999).contains(&utc.year()) => Ok(utc),
        _ => Err(err()),
    }
}

/// Formats an instant as RFC 3339 UTC with `Z` (milliseconds only when non-zero).
pub fn format_timestamp(t: Timestamp) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    let ms = t.millisecond();
    if ms == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// Truncates to whole milliseconds (what answers show, so what is stored).
pub fn truncate_millis(t: Timestamp) -> Timestamp {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000_000).unwrap_or(t)
}

/// Parses a lifetime such as `"1h"`, `"24h"`, `"7d"`.
pub fn parse_ttl(text: &str) -> Result<Duration, TimeError> {
    let d = humantime::parse_duration(text.trim()).map_err(|_| TimeError::Ttl(text.to_string()))?;
    if d.is_zero() || d > MAX_TTL {
        return Err(TimeError::TtlRange(text.to_string()));
    }
    Ok(d)
}

/// `t + d`, saturating at the far future.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(time::Duration::try_from(d).unwrap_or(time::Duration::MAX))
        .unwrap_or(Timestamp::new_utc(time::Date::MAX, time::Time::MIDNIGHT))
}

/// How long from `now` until `t` (zero if past).
pub fn until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(t - now).unwrap_or(Duration::ZERO)
}

/// Serde for a stored `Timestamp` (RFC 3339 UTC).
pub mod serde_ts {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as [`format_timestamp`].
    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(*t))
    }
    /// Deserializes with [`parse_timestamp`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse_timestamp(&s).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Timestamp>`.
    pub mod option {
        use super::*;
        /// Serializes `None` as null.
        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format_timestamp(*t)),
                None => s.serialize_none(),
            }
        }
        /// Deserializes null or a string.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => parse_timestamp(&s).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_accepted_form() {
        let z = parse_timestamp("2030-01-31T12:00:00Z").expect("Z");
        for text in [
            "2030-01-31T12:00:00+00:00",
            "2030-01-31T12:00:00",
            "2030-01-31 12:00:00",
            "2030-01-31T14:00:00+02:00",
            "2030-01-31T12:00:00.000Z",
            "2030-01-31t12:00:00z",
        ] {
            assert_eq!(parse_timestamp(text).expect(text), z, "{text}");
        }
        let frac = parse_timestamp("2030-01-31T12:00:00.123456").expect("fraction, no offset");
        assert_eq!(frac.nanosecond(), 123_456_000);
        assert_eq!(format_timestamp(frac), "2030-01-31T12:00:00.123Z");
        assert_eq!(format_timestamp(z), "2030-01-31T12:00:00Z");
        // Found by `cargo xtask fuzz durations`: the first panicked, the second was answered as
        // "-001-12-31T23:00:00Z", which does not read back.
        for bad in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} is outside 0000..=9999 in UTC");
        }
        assert!(parse_timestamp("9999-12-31T23:59:59.999Z").is_ok());
        for bad in ["", "tomorrow", "2030-01-31", "2030-13-01T00:00:00Z", "2030-01-31T12:00:00+02:00Z", "1h"] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("1h").expect("1h"), Duration::from_secs(3600));
        assert_eq!(parse_ttl("24h").expect("24h"), Duration::from_secs(86400));
        assert_eq!(parse_ttl("7d").expect("7d"), Duration::from_secs(7 * 86400));
        assert_eq!(parse_ttl("90s").expect("90s"), Duration::from_secs(90));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1 fortnight").is_err());
        assert!(parse_ttl("100y").is_err());
        assert!(parse_ttl("").is_err());
    }
}
