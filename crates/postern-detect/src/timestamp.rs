//! Civil-time conversions without a clock: text timestamps to unix time, unix time to
//! hour-of-week. Pure functions; no time zone other than UTC exists here.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() {
        return None;
    }
    let mut value = 0u32;
    for &byte in bytes {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(byte - b'0');
    }
    Some(value)
}

/// Parses `YYYY-MM-DD HH:MM:SS` (a `T` separator is accepted too) into unix seconds, UTC.
/// Anything after the seconds (fractions, `Z`) is ignored; `None` when the prefix is malformed.
pub fn parse_civil_seconds(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    if bytes[10] != b' ' && bytes[10] != b'T' {
        return None;
    }
    let year = digits(&bytes[0..4])?;
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    let hour = digits(&bytes[11..13])?;
    let minute = digits(&bytes[14..16])?;
    let second = digits(&bytes[17..19])?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second))
}

/// Parses an RFC 3339 UTC timestamp with optional fraction (`2026-11-28T09:15:23.266Z`) into
/// unix milliseconds.
pub fn parse_rfc3339_millis(text: &str) -> Option<i64> {
    let seconds = parse_civil_seconds(text)?;
    let rest = &text.as_bytes()[19..];
    let mut millis = 0i64;
    if let Some(b'.') = rest.first() {
        let mut scale = 100;
        for &byte in rest[1..].iter().take_while(|byte| byte.is_ascii_digit()) {
            millis += i64::from(byte - b'0') * scale;
            scale /= 10;
        }
    }
    Some(seconds * 1_000 + millis)
}

/// Hour of the week, 0 = Monday 00:00–00:59 UTC, 167 = Sunday 23:00–23:59 UTC.
pub fn hour_of_week(unix_seconds: i64) -> usize {
    // 1970-01-01 was a Thursday: day 0 is weekday 3 when Monday = 0.
    let days = unix_seconds.div_euclid(86_400);
    let weekday = (days + 3).rem_euclid(7);
    let hour = unix_seconds.rem_euclid(86_400) / 3_600;
    (weekday * 24 + hour) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_and_rfc3339() {
        assert_eq!(parse_civil_seconds("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_civil_seconds("2014-07-01 00:30:00"),
            Some(1_404_174_600)
        );
        assert_eq!(
            parse_civil_seconds("2014-07-01 00:30:00.000000"),
            Some(1_404_174_600)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-28T09:15:23.266Z"),
            Some(1_795_857_323_266)
        );
        assert_eq!(parse_civil_seconds("2014-13-01 00:30:00"), None);
        // 2026-11-30 is a Monday.
        assert_eq!(
            hour_of_week(parse_civil_seconds("2026-11-30 05:10:00").unwrap()),
            5
        );
        assert_eq!(
            hour_of_week(parse_civil_seconds("2026-11-29 23:10:00").unwrap()),
            167
        );
    }
}

/// Year, month, day of a count of days since 1970-01-01 (Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats unix milliseconds as RFC 3339 UTC with milliseconds: `2026-11-28T09:15:23.266Z`.
pub fn format_rfc3339_millis(unix_ms: i64) -> String {
    let seconds = unix_ms.div_euclid(1_000);
    let millis = unix_ms.rem_euclid(1_000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "2026-11-28T09:15:23.266Z",
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T23:59:59.999Z",
        ] {
            assert_eq!(
                format_rfc3339_millis(parse_rfc3339_millis(text).unwrap()),
                text
            );
        }
    }
}
