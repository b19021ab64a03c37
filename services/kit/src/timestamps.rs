//! Times as clients read them: RFC 3339 in UTC with millisecond precision,
//! the same in every frame and every service (the gateway's frames, the
//! transcripts the handoff service puts in events).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    rfc3339_ms(OffsetDateTime::now_utc())
}

/// A stored time (milliseconds since the Unix epoch) as RFC 3339, UTC.
pub fn timestamp_of(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339_ms)
        .unwrap_or_else(|_| now_rfc3339())
}

/// RFC 3339 with millisecond precision.
fn rfc3339_ms(at: OffsetDateTime) -> String {
    let at = at
        .replace_nanosecond(at.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(at);
    at.format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_in_utc() {
        assert_eq!(timestamp_of(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp_of(0), "1970-01-01T00:00:00Z");
    }
}
