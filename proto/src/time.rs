//! Wall-clock timestamps as Unix nanoseconds, shown as RFC 3339 UTC.
//! Shared by the agent's JSON output and the collector's outputs so both
//! print time identically.
use std::fmt;

/// Nanoseconds since the Unix epoch; serializes as RFC 3339 text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_rfc3339(f, self.0 as i128)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Unix ns -> `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (proleptic Gregorian, UTC).
pub fn format_rfc3339(unix_ns: i128) -> String {
    let mut out = String::with_capacity(30);
    let _ = write_rfc3339(&mut out, unix_ns);
    out
}

/// Write Unix ns as RFC 3339 without allocating.
fn write_rfc3339(out: &mut impl fmt::Write, unix_ns: i128) -> fmt::Result {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (leap day) 12:34:56.000000789
        assert_eq!(
            format_rfc3339(951_827_696_000_000_789),
            "2000-02-29T12:34:56.000000789Z"
        );
        // 2026-11-24T19:37:02Z
        assert_eq!(
            format_rfc3339(1_795_549_022 * 1_000_000_000),
            "2026-11-24T19:37:02.000000000Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }
}
