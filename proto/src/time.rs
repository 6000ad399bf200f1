//! Wall-clock timestamps as Unix nanoseconds, shown as RFC 3339 UTC.
//! Shared by the agent's JSON output and the collector's outputs so both
//! print time identically.
use std::fmt;

/// Nanoseconds since the Unix epoch; serializes as RFC 3339 text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_rfc3339(f, i128::from(self.0))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Digits written straight into a fixed buffer: this runs for every
        // event of every output, and core::fmt costs several times more.
        match rfc3339_bytes(i128::from(self.0)) {
            Some(b) => s.serialize_str(std::str::from_utf8(&b).unwrap_or_default()),
            None => s.collect_str(self),
        }
    }
}

/// Unix ns -> `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (proleptic Gregorian, UTC).
pub fn format_rfc3339(unix_ns: i128) -> String {
    let mut out = String::with_capacity(30);
    let _ = write_rfc3339(&mut out, unix_ns);
    out
}

/// The civil fields of Unix ns: (year, month, day, hour, minute, second,
/// nanosecond), by Howard Hinnant's civil_from_days.
fn civil(unix_ns: i128) -> (i64, i64, i64, i64, i64, i64, u32) {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        nanos,
    )
}

/// The 30 bytes of the RFC 3339 text, for years 0 to 9999 (None outside).
fn rfc3339_bytes(unix_ns: i128) -> Option<[u8; 30]> {
    let (year, month, day, h, m, sec, nanos) = civil(unix_ns);
    if !(0..=9999).contains(&year) {
        return None;
    }
    fn put(dst: &mut [u8], mut v: u64) {
        for d in dst.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    // Every field is in range here: the casts cannot wrap.
    put(&mut b[0..4], year as u64);
    put(&mut b[5..7], month as u64);
    put(&mut b[8..10], day as u64);
    put(&mut b[11..13], h as u64);
    put(&mut b[14..16], m as u64);
    put(&mut b[17..19], sec as u64);
    put(&mut b[20..29], u64::from(nanos));
    Some(b)
}

/// Write Unix ns as RFC 3339 without allocating.
fn write_rfc3339(out: &mut impl fmt::Write, unix_ns: i128) -> fmt::Result {
    if let Some(b) = rfc3339_bytes(unix_ns) {
        return out.write_str(std::str::from_utf8(&b).unwrap_or_default());
    }
    let (year, month, day, h, m, sec, nanos) = civil(unix_ns);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{nanos:09}Z"
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

    #[test]
    fn the_fast_path_and_core_fmt_agree() {
        // years outside 0..=9999 take core::fmt; both must print alike
        let fmt_only = |ns: i128| {
            let (year, month, day, h, m, sec, nanos) = civil(ns);
            format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{nanos:09}Z")
        };
        let mut ns: i128 = -62_167_219_200_000_000_000; // 0000-01-01
        let step: i128 = 3_217_000_000_123_457; // ~37 days and a bit
        while ns < 253_402_300_800_000_000_000 {
            assert_eq!(format_rfc3339(ns), fmt_only(ns));
            ns += step;
        }
        assert_eq!(rfc3339_bytes(-62_167_219_200_000_000_001), None);
        assert_eq!(
            serde_json::to_string(&Timestamp(1_795_549_022_000_000_789)).unwrap(),
            "\"2026-11-24T19:37:02.000000789Z\""
        );
    }
}
