//! Times as the API writes and reads them (docs/api.md): RFC 3339 strings on output, always in
//! UTC with `Z` and exactly three fraction digits (`2026-12-01T02:00:00.000Z`), so that they sort
//! as text; on input any offset and any number of fraction digits. A time is an `i64` of
//! milliseconds since the Unix epoch. (The server's `signaling::rfc3339` puts these functions
//! behind serde, and also reads the integer milliseconds that earlier clients sent.)
//!
//! Written here rather than taken from a date crate because the work is two small conversions
//! between a day count and a civil date (Howard Hinnant's algorithms), and the output must have
//! this one fixed shape.

/// `0000-01-01T00:00:00.000Z`, the earliest time RFC 3339's four-digit years can write.
pub const EARLIEST_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the latest.
pub const LATEST_MS: i64 = 253_402_300_799_999;

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1–12, `day` 1–31).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (year, month 1–12, day 1–31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction: 1–12 and 1–31.
    (year, month as u32, day as u32)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// `ms` (since the epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`; `None` outside the years 0000–9999.
pub fn format(ms: i64) -> Option<String> {
    if !(EARLIEST_MS..=LATEST_MS).contains(&ms) {
        return None;
    }
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, milli) = (in_day / 1000 % 60, in_day % 1000);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z"
    ))
}

/// Why a text is not an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 time such as 2026-12-01T09:00:00+07:00 ({0})")]
pub struct ParseError(&'static str);

/// Milliseconds since the epoch of an RFC 3339 date-time (`2026-12-01T09:00:00+07:00`,
/// `2026-12-01T02:00:00.5Z`, …). Fraction digits past the millisecond are dropped (rounded
/// down). A leap second (`:60`) is refused: nothing this server schedules needs one.
pub fn parse(text: &str) -> Result<i64, ParseError> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize, what: &'static str| -> Result<i64, ParseError> {
        let part = b.get(from..from + len).ok_or(ParseError(what))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(ParseError(what));
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let expect = |at: usize, allowed: &[u8], what: &'static str| -> Result<(), ParseError> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(ParseError(what)),
        }
    };
    let year = digits(0, 4, "the year")?;
    expect(4, b"-", "a '-' after the year")?;
    let month = digits(5, 2, "the month")?;
    expect(7, b"-", "a '-' after the month")?;
    let day = digits(8, 2, "the day")?;
    expect(10, b"Tt ", "a 'T' between the date and the time")?;
    let hour = digits(11, 2, "the hour")?;
    expect(13, b":", "a ':' after the hour")?;
    let minute = digits(14, 2, "the minutes")?;
    expect(16, b":", "a ':' after the minutes")?;
    let second = digits(17, 2, "the seconds")?;
    if !(1..=12).contains(&month) {
        return Err(ParseError("the month is not 01 to 12"));
    }
    // The month is 1–12 here, so the conversion cannot fail.
    let month = month as u32;
    if day < 1 || day > i64::from(days_in_month(year, month)) {
        return Err(ParseError("the day is not in the month"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(ParseError("the time of day is out of range"));
    }
    let mut at = 19;
    let mut milli = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                milli = milli * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(ParseError("no digits after the '.'"));
        }
        for _ in (at - start)..3 {
            milli *= 10;
        }
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            let sign = if *sign == b'-' { -1 } else { 1 };
            let hours = digits(at + 1, 2, "the offset's hours")?;
            expect(at + 3, b":", "a ':' in the offset")?;
            let minutes = digits(at + 4, 2, "the offset's minutes")?;
            if hours > 23 || minutes > 59 {
                return Err(ParseError("the offset is out of range"));
            }
            at += 6;
            sign * (hours * 60 + minutes)
        }
        _ => return Err(ParseError("no offset: end with 'Z' or '+07:00'")),
    };
    if at != b.len() {
        return Err(ParseError("text after the offset"));
    }
    let days = days_from_civil(year, month, day as u32);
    Ok(
        days * DAY_MS + hour * 3_600_000 + minute * 60_000 + second * 1000 + milli
            - offset_minutes * 60_000,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_times_are_written_in_one_shape() {
        assert_eq!(format(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            format(1_800_000_000_123).as_deref(),
            Some("2027-01-15T08:00:00.123Z")
        );
        assert_eq!(format(-1).as_deref(), Some("1969-12-31T23:59:59.999Z"));
        assert_eq!(
            format(951_782_400_000).as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(
            format(EARLIEST_MS).as_deref(),
            Some("0000-01-01T00:00:00.000Z")
        );
        assert_eq!(
            format(LATEST_MS).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        assert_eq!(format(LATEST_MS + 1), None);
        assert_eq!(format(EARLIEST_MS - 1), None);
        assert_eq!(format(i64::MIN), None);
    }

    #[test]
    fn offsets_fractions_and_separators_are_read() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse("2027-01-15T08:00:00.123Z"), Ok(1_800_000_000_123));
        assert_eq!(
            parse("2027-01-15T15:00:00.123+07:00"),
            Ok(1_800_000_000_123)
        );
        assert_eq!(
            parse("2027-01-15t03:30:00.123-04:30"),
            Ok(1_800_000_000_123)
        );
        assert_eq!(parse("2027-01-15 08:00:00.1239999z"), Ok(1_800_000_000_123));
        assert_eq!(parse("2027-01-15T08:00:00.1Z"), Ok(1_800_000_000_100));
        assert_eq!(parse("1969-12-31T23:59:59.999Z"), Ok(-1));
        assert_eq!(parse("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
    }

    #[test]
    fn what_is_not_a_time_is_refused_without_panicking() {
        for bad in [
            "",
            "2027",
            "2027-01-15",
            "2027-01-15T08:00:00",
            "2027-01-15T08:00Z",
            "2027-13-01T00:00:00Z",
            "2027-00-01T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2027-04-31T00:00:00Z",
            "2027-01-15T24:00:00Z",
            "2027-01-15T08:60:00Z",
            "2027-01-15T08:00:60Z",
            "2027-01-15T08:00:00.Z",
            "2027-01-15T08:00:00+7:00",
            "2027-01-15T08:00:00+07:60",
            "2027-01-15T08:00:00+0700",
            "2027-01-15T08:00:00Z ",
            "2027-01-15T08:00:00ZZ",
            "+2027-01-15T08:00:00Z",
            "２０２７-01-15T08:00:00Z",
            "2027-01-15T08:00:00.１Z",
            "2027-01-15T08:00:00é",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn every_day_of_four_centuries_goes_there_and_back() {
        let start = days_from_civil(1900, 1, 1);
        let end = days_from_civil(2300, 1, 1);
        for days in start..end {
            let ms = days * DAY_MS + 45_296_789;
            let text = format(ms).expect("in range");
            assert_eq!(parse(&text), Ok(ms), "{text}");
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
