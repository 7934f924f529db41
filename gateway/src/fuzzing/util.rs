//! Small helpers shared by the property checks.

/// Splits fuzz input into lines; each line's first byte is a tag, the rest its value. Lines
/// without a tag byte are skipped. (Readable seed files: `aBearer x\nx...`.)
pub fn tagged_lines(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    data.split(|b| *b == b'\n').filter_map(|line| line.split_first().map(|(tag, rest)| (*tag, rest)))
}

/// Strict `application/x-www-form-urlencoded` decoding of one component, written independently
/// of the gateway's: `+` is a space, `%` must be followed by two hex digits, the result UTF-8.
pub fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = (*b.get(i + 1)? as char).to_digit(16)?;
                let lo = (*b.get(i + 2)? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A fixed "now" for the checks that depend on the clock (2030-01-01T00:00:00Z), so a corpus
/// file means the same thing in every run.
pub fn fixed_now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
