//! RFC 3339 timestamps as the admin API accepts and answers them.
//!
//! Accepted: `2030-01-02T03:04:05Z`, `…+00:00` (or any other offset, converted to UTC), and no
//! offset at all (read as UTC), each with or without fractional seconds. Answered: UTC with `Z`.

use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

/// A timestamp that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 timestamp such as 2030-01-02T03:04:05Z ({reason})")]
pub struct TimestampError {
    /// What was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses an RFC 3339 timestamp; one without an offset is UTC. Returns it in UTC.
pub fn parse(text: &str) -> Result<OffsetDateTime, TimestampError> {
    let error = |reason: String| TimestampError { text: text.to_string(), reason };
    // The offset, if any, follows the time of day: after the `T` separator.
    let time_of_day =
        text.find(['T', 't']).map(|i| &text[i + 1..]).ok_or_else(|| error("no `T` between date and time".into()))?;
    let has_offset = time_of_day.ends_with(['Z', 'z']) || time_of_day.contains(['+', '-']);
    let parsed = if has_offset {
        OffsetDateTime::parse(text, &Rfc3339)
    } else {
        OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339)
    };
    parsed.map(|t| t.to_offset(UtcOffset::UTC)).map_err(|e| error(e.to_string()))
}

/// RFC 3339 in UTC (`Z`), fractional seconds only when there are some.
pub fn format(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> String {
        format(parse(text).unwrap_or_else(|e| panic!("{text}: {e}")))
    }

    #[test]
    fn accepted_forms() {
        for text in [
            "2030-01-02T03:04:05Z",
            "2030-01-02T03:04:05z",
            "2030-01-02t03:04:05Z",
            "2030-01-02T03:04:05+00:00",
            "2030-01-02T03:04:05-00:00",
            "2030-01-02T03:04:05",
            "2030-01-02T05:04:05+02:00",
            "2030-01-02T01:04:05-02:00",
        ] {
            assert_eq!(utc(text), "2030-01-02T03:04:05Z", "{text}");
        }
        assert_eq!(utc("2030-01-02T03:04:05.5Z"), "2030-01-02T03:04:05.5Z");
        assert_eq!(utc("2030-01-02T03:04:05.250"), "2030-01-02T03:04:05.25Z");
        assert_eq!(utc("2030-01-02T03:04:05.123456789+00:00"), "2030-01-02T03:04:05.123456789Z");
    }

    #[test]
    fn refused_forms() {
        for text in [
            "",
            "tomorrow",
            "2030-01-02",
            "2030-01-02 03:04:05Z",
            "2030-13-02T03:04:05Z",
            "2030-01-02T25:04:05Z",
            "2030-01-02T03:04Z",
            "2030-01-02T03:04:05+0200",
            "2030-01-02T03:04:05Zjunk",
            "1735689600",
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.to_string().contains("RFC 3339"), "{e}");
            assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
        }
    }
}
