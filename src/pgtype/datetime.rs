//! `date`, `timestamp` and `timestamptz`: text input (ISO and DateStyle-ordered numeric dates,
//! times, zones, the special words), text output in ISO DateStyle, and the conversions
//! between them that assignment casts perform in the session zone.

use super::calendar::{
    civil_from_pg_days, date_in_range, days_in_month, pg_days, timestamp_in_range, DATE_NOBEGIN,
    DATE_NOEND, DT_NOBEGIN, DT_NOEND, UNIX_TO_PG_DAYS, USECS_PER_DAY, USECS_PER_SEC,
};
use super::error::{pg_name, ValueError, ValueErrorKind};
use super::scalar::is_pg_space;
use super::time::{DateOrder, SessionTime};
use super::timezone::{parse_zone_token, Zone};
use crate::schema::LogicalType;

#[derive(Debug, Clone, Copy)]
enum ParsedDateTime {
    NoBegin,
    NoEnd,
    /// Days since 2000-01-01, µs into the day, explicit zone if one was written.
    Value {
        days: i64,
        time_us: i64,
        zone: Option<Zone>,
    },
}

fn take_digits(b: &[u8], i: &mut usize) -> Option<(i64, usize)> {
    let start = *i;
    let mut v: i64 = 0;
    while *i < b.len() && b[*i].is_ascii_digit() {
        if *i - start >= 10 {
            return None;
        }
        v = v * 10 + i64::from(b[*i] - b'0');
        *i += 1;
    }
    (*i > start).then_some((v, *i - start))
}

/// PostgreSQL's common numeric input: `YYYY-MM-DD` (also `/` or `.` between the fields),
/// `YYYYMMDD`, or `NN/NN/YYYY`-style dates read in the session's DateStyle field order (two-digit
/// years as PostgreSQL: 70–99 → 19xx, else 20xx), optionally followed by
/// ` ` or `T` and `HH:MM[:SS[.ffffff]]`, optionally a zone (`Z`, `UTC`, `GMT`, `±HH`,
/// `±HH:MM[:SS]`, `±HHMM`, an IANA name), optionally `BC`/`AD`; or `infinity`,
/// `-infinity`, `epoch`, `now`, `today`, `tomorrow`, `yesterday` (local to the session
/// zone). Month names (`Jan 5 2024`) and Julian dates are not accepted.
fn parse_datetime(
    s: &str,
    ty: LogicalType,
    tz: &SessionTime,
) -> Result<ParsedDateTime, ValueError> {
    let t = s.trim_matches(is_pg_space);
    let lower = t.to_ascii_lowercase();
    if let Some(special) = special_word(&lower, tz) {
        return Ok(special);
    }
    let (body, bc) = if let Some(rest) = lower
        .strip_suffix("bc")
        .filter(|r| r.ends_with(is_pg_space))
    {
        (rest.trim_end_matches(is_pg_space), true)
    } else if let Some(rest) = lower
        .strip_suffix("ad")
        .filter(|r| r.ends_with(is_pg_space))
    {
        (rest.trim_end_matches(is_pg_space), false)
    } else {
        (lower.as_str(), false)
    };
    let b = body.as_bytes();
    let mut i = 0;
    let days = date_fields(b, &mut i, bc, ty, tz)?;
    let time_us = time_of_day(body, &mut i, ty)?;

    // Zone.
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    let zone = if i == b.len() {
        None
    } else {
        // Zone names keep their case in the original text.
        let orig = &t[i..body.len()];
        let zone = parse_zone_token(orig);
        match zone {
            Some(z) => Some(z),
            // A word that is not a zone we know: PostgreSQL says "time zone not recognized".
            None if orig.contains('/') && !orig.contains(char::is_whitespace) => {
                return Err(ValueError::new(
                    ValueErrorKind::InvalidParameterValue,
                    format!("time zone not recognized in value of type {}", pg_name(ty)),
                ))
            }
            None => return Err(ValueError::syntax(ty)),
        }
    };
    Ok(ParsedDateTime::Value {
        days,
        time_us,
        zone,
    })
}

/// 22008, a date or time field out of its range (month 13, February 30, 25:00).
fn field_out_of_range(ty: LogicalType) -> ValueError {
    ValueError::new(
        ValueErrorKind::DatetimeOverflow,
        format!(
            "date/time field value out of range for type {}",
            pg_name(ty)
        ),
    )
}

/// The special input words (already lower-cased), or `None` for anything else.
fn special_word(lower: &str, tz: &SessionTime) -> Option<ParsedDateTime> {
    match lower {
        "infinity" | "+infinity" => Some(ParsedDateTime::NoEnd),
        "-infinity" => Some(ParsedDateTime::NoBegin),
        "now" | "today" | "tomorrow" | "yesterday" => {
            let utc_now = chrono::Utc::now().timestamp_micros() - UNIX_TO_PG_DAYS * USECS_PER_DAY;
            let off = tz.offset_at_utc(utc_now);
            let local = utc_now + i64::from(off) * USECS_PER_SEC;
            let days = local.div_euclid(USECS_PER_DAY);
            Some(match lower {
                "now" => ParsedDateTime::Value {
                    days,
                    time_us: local.rem_euclid(USECS_PER_DAY),
                    zone: Some(Zone::Fixed(off)),
                },
                word => ParsedDateTime::Value {
                    days: days
                        + match word {
                            "tomorrow" => 1,
                            "yesterday" => -1,
                            _ => 0,
                        },
                    time_us: 0,
                    zone: None,
                },
            })
        }
        "epoch" => Some(ParsedDateTime::Value {
            days: -UNIX_TO_PG_DAYS,
            time_us: 0,
            zone: Some(Zone::Fixed(0)),
        }),
        _ => None,
    }
}

/// The date at the start of `b` (advancing `i` past it), as days since 2000-01-01; `bc`
/// when the value ended in `BC`.
fn date_fields(
    b: &[u8],
    i: &mut usize,
    bc: bool,
    ty: LogicalType,
    tz: &SessionTime,
) -> Result<i64, ValueError> {
    let syntax = || ValueError::syntax(ty);
    let (first, first_len) = take_digits(b, i).ok_or_else(syntax)?;
    let sep = b
        .get(*i)
        .copied()
        .filter(|c| matches!(c, b'-' | b'/' | b'.'));
    let (year, month, day) = if let Some(sep) = sep {
        *i += 1;
        let (second, second_len) = take_digits(b, i).ok_or_else(syntax)?;
        if b.get(*i) != Some(&sep) || second_len > 2 {
            return Err(syntax());
        }
        *i += 1;
        let (third, third_len) = take_digits(b, i).ok_or_else(syntax)?;
        // Two-digit years as PostgreSQL reads them: 70–99 → 19xx, 00–69 → 20xx.
        let full_year = |y: i64, len: usize| match (len, y) {
            (3.., _) => y,
            (_, 0..=69) => y + 2000,
            _ => y + 1900,
        };
        if first_len >= 3 {
            if third_len > 2 {
                return Err(syntax());
            }
            (first, second, third)
        } else {
            match tz.date_order() {
                DateOrder::Mdy => (full_year(third, third_len), first, second),
                DateOrder::Dmy => (full_year(third, third_len), second, first),
                DateOrder::Ymd => (full_year(first, first_len), second, third),
            }
        }
    } else if first_len == 8 {
        (first / 10_000, first / 100 % 100, first % 100)
    } else {
        return Err(syntax());
    };
    if year == 0 || !(1..=12).contains(&month) {
        return Err(field_out_of_range(ty));
    }
    let year = if bc { 1 - year } else { year };
    let (month, day) = (month as u32, day as u32);
    if day == 0 || day > days_in_month(year, month) {
        return Err(field_out_of_range(ty));
    }
    Ok(pg_days(year, month, day))
}

/// The time of day after the date, if any (advancing `i` past it), as µs into the day; 0
/// when the value has none.
fn time_of_day(body: &str, i: &mut usize, ty: LogicalType) -> Result<i64, ValueError> {
    let syntax = || ValueError::syntax(ty);
    let b = body.as_bytes();
    let had_t = matches!(b.get(*i), Some(b't'));
    let after_sep = if had_t {
        *i + 1
    } else {
        let mut j = *i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    if !(after_sep < b.len() && b[after_sep].is_ascii_digit() && (had_t || after_sep > *i)) {
        return if had_t { Err(syntax()) } else { Ok(0) };
    }
    *i = after_sep;
    let (h, hl) = take_digits(b, i).ok_or_else(syntax)?;
    if hl > 2 || b.get(*i) != Some(&b':') {
        return Err(syntax());
    }
    *i += 1;
    let (mi, ml) = take_digits(b, i).ok_or_else(syntax)?;
    if ml != 2 {
        return Err(syntax());
    }
    let mut sec = 0;
    let mut frac_us = 0;
    if b.get(*i) == Some(&b':') {
        *i += 1;
        let (s2, sl) = take_digits(b, i).ok_or_else(syntax)?;
        if sl != 2 {
            return Err(syntax());
        }
        sec = s2;
        if b.get(*i) == Some(&b'.') {
            *i += 1;
            let start = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            if *i == start {
                return Err(syntax());
            }
            // As PostgreSQL: the fraction read as a double, rounded half-to-even to µs.
            let frac: f64 = body[start - 1..*i].parse().map_err(|_| syntax())?;
            frac_us = (frac * 1_000_000.0).round_ties_even() as i64;
        }
    }
    if mi > 59 || sec > 60 || h > 24 || (h == 24 && (mi != 0 || sec != 0 || frac_us != 0)) {
        return Err(field_out_of_range(ty));
    }
    Ok(((h * 60 + mi) * 60 + sec) * USECS_PER_SEC + frac_us)
}

pub(super) fn date_in(s: &str, tz: &SessionTime) -> Result<i32, ValueError> {
    let ty = LogicalType::Date;
    match parse_datetime(s, ty, tz)? {
        ParsedDateTime::NoBegin => Ok(DATE_NOBEGIN),
        ParsedDateTime::NoEnd => Ok(DATE_NOEND),
        ParsedDateTime::Value { days, .. } => {
            if !date_in_range(days) {
                return Err(ValueError::datetime_range(ty));
            }
            Ok(days as i32)
        }
    }
}

pub(super) fn timestamp_in(s: &str, ty: LogicalType, tz: &SessionTime) -> Result<i64, ValueError> {
    let range = || ValueError::datetime_range(ty);
    match parse_datetime(s, ty, tz)? {
        ParsedDateTime::NoBegin => Ok(DT_NOBEGIN),
        ParsedDateTime::NoEnd => Ok(DT_NOEND),
        ParsedDateTime::Value {
            days,
            time_us,
            zone,
        } => {
            if !date_in_range(days) {
                return Err(range());
            }
            let local = days
                .checked_mul(USECS_PER_DAY)
                .and_then(|d| d.checked_add(time_us))
                .ok_or_else(range)?;
            let us = if ty == LogicalType::Timestamptz {
                let utc = match zone {
                    Some(zone) => zone.local_to_utc(local),
                    None => tz.local_to_utc(local),
                };
                utc.ok_or_else(range)?
            } else {
                local
            };
            if !timestamp_in_range(us) {
                return Err(range());
            }
            Ok(us)
        }
    }
}

pub(super) fn date_to_timestamp(
    days: i32,
    ty: LogicalType,
    tz: &SessionTime,
) -> Result<i64, ValueError> {
    match days {
        DATE_NOBEGIN => Ok(DT_NOBEGIN),
        DATE_NOEND => Ok(DT_NOEND),
        _ => {
            // A valid date reaches year 5874897, far past the last timestamp: out of range,
            // as in PostgreSQL's date2timestamp, not a wrapped product.
            let local = i64::from(days)
                .checked_mul(USECS_PER_DAY)
                .ok_or_else(|| ValueError::datetime_range(ty))?;
            let us = if ty == LogicalType::Timestamptz {
                tz.local_to_utc(local)
                    .ok_or_else(|| ValueError::datetime_range(ty))?
            } else {
                local
            };
            if !timestamp_in_range(us) {
                return Err(ValueError::datetime_range(ty));
            }
            Ok(us)
        }
    }
}

pub(super) fn timestamp_to_timestamptz(local: i64, tz: &SessionTime) -> Result<i64, ValueError> {
    let ty = LogicalType::Timestamptz;
    match local {
        DT_NOBEGIN | DT_NOEND => Ok(local),
        _ => tz
            .local_to_utc(local)
            .filter(|us| timestamp_in_range(*us))
            .ok_or_else(|| ValueError::datetime_range(ty)),
    }
}

pub(super) fn timestamptz_to_timestamp(utc: i64, tz: &SessionTime) -> Result<i64, ValueError> {
    let ty = LogicalType::Timestamp;
    match utc {
        DT_NOBEGIN | DT_NOEND => Ok(utc),
        _ => utc
            .checked_add(i64::from(tz.offset_at_utc(utc)) * USECS_PER_SEC)
            .filter(|us| timestamp_in_range(*us))
            .ok_or_else(|| ValueError::datetime_range(ty)),
    }
}

fn push_date(out: &mut String, days: i64) -> bool {
    let (y, m, d) = civil_from_pg_days(days);
    let bc = y <= 0;
    let shown = if bc { 1 - y } else { y };
    // Digits written directly: `format!` allocated a String per value, which was 7% of a
    // bulk COPY TO's CPU.
    push_zero_padded(out, shown.unsigned_abs(), 4);
    out.push('-');
    push_zero_padded(out, u64::from(m), 2);
    out.push('-');
    push_zero_padded(out, u64::from(d), 2);
    bc
}

/// `value` in decimal, zero-padded on the left to at least `width` digits.
fn push_zero_padded(out: &mut String, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let start = at.min(digits.len() - width.min(digits.len()));
    for &digit in &digits[start..] {
        out.push(char::from(digit));
    }
}

pub(super) fn date_out(days: i32) -> String {
    let mut s = String::with_capacity(13);
    push_date_text(&mut s, days);
    s
}

/// [`date_out`] into `out` (cleared first), for bulk output through a reused buffer.
pub(super) fn date_out_into(days: i32, out: &mut Vec<u8>) {
    out.clear();
    // A String over `out`'s own (now empty, so valid UTF-8) buffer: no allocation.
    let mut s = String::from_utf8(std::mem::take(out)).unwrap_or_default();
    push_date_text(&mut s, days);
    *out = s.into_bytes();
}

fn push_date_text(s: &mut String, days: i32) {
    match days {
        DATE_NOBEGIN => s.push_str("-infinity"),
        DATE_NOEND => s.push_str("infinity"),
        _ => {
            if push_date(s, i64::from(days)) {
                s.push_str(" BC");
            }
        }
    }
}

pub(super) fn timestamp_out(us: i64, ty: LogicalType, tz: &SessionTime) -> String {
    match us {
        DT_NOBEGIN => return "-infinity".to_string(),
        DT_NOEND => return "infinity".to_string(),
        _ => {}
    }
    let offset = if ty == LogicalType::Timestamptz {
        Some(tz.offset_at_utc(us))
    } else {
        None
    };
    let local = us.saturating_add(i64::from(offset.unwrap_or(0)) * USECS_PER_SEC);
    let days = local.div_euclid(USECS_PER_DAY);
    let tod = local.rem_euclid(USECS_PER_DAY);
    let mut s = String::with_capacity(32);
    let bc = push_date(&mut s, days);
    let secs = tod / USECS_PER_SEC;
    let frac = tod % USECS_PER_SEC;
    s.push_str(&format!(
        " {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ));
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    if let Some(off) = offset {
        s.push(if off < 0 { '-' } else { '+' });
        let a = off.unsigned_abs();
        s.push_str(&format!("{:02}", a / 3600));
        if a % 3600 != 0 {
            s.push_str(&format!(":{:02}", a / 60 % 60));
            if a % 60 != 0 {
                s.push_str(&format!(":{:02}", a % 60));
            }
        }
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgtype::canonical_from_text;
    use crate::pgtype::recv::{read_i32, read_i64};
    use crate::pgtype::tests::out_text;
    use crate::schema::LogicalType as T;

    #[test]
    fn relative_dates() {
        let berlin = SessionTime::from_timezone("Europe/Berlin").unwrap();
        let today = read_i32(&canonical_from_text(T::Date, b"today", &berlin).unwrap()).unwrap();
        let tomorrow =
            read_i32(&canonical_from_text(T::Date, b"Tomorrow", &berlin).unwrap()).unwrap();
        let yesterday =
            read_i32(&canonical_from_text(T::Date, b"yesterday", &berlin).unwrap()).unwrap();
        assert_eq!((tomorrow - today, today - yesterday), (1, 1));
        assert!(today > 9000, "after 2024");
        let now_tz =
            read_i64(&canonical_from_text(T::Timestamptz, b"now", &berlin).unwrap()).unwrap();
        let real_now = chrono::Utc::now().timestamp_micros() - UNIX_TO_PG_DAYS * USECS_PER_DAY;
        assert!((real_now - now_tz).abs() < 60 * USECS_PER_SEC);
        let now_local =
            read_i64(&canonical_from_text(T::Timestamp, b"now", &berlin).unwrap()).unwrap();
        let off = now_local - now_tz;
        // Two reads of the clock: allow a second between them.
        let near = |h: i64| (off - h * 3600 * USECS_PER_SEC).abs() < USECS_PER_SEC;
        assert!(near(1) || near(2), "{off}");
        let midnight =
            read_i64(&canonical_from_text(T::Timestamp, b"today", &berlin).unwrap()).unwrap();
        assert_eq!(midnight, i64::from(today) * USECS_PER_DAY);
    }

    #[test]
    fn date_order_from_datestyle() {
        // Checked against PostgreSQL 15 under each DateStyle.
        let cases = [
            ("01/05/2024", ["2024-01-05", "2024-05-01", "22008"]),
            ("01-05-2024", ["2024-01-05", "2024-05-01", "22008"]),
            ("01.05.2024", ["2024-01-05", "2024-05-01", "22008"]),
            ("1/5/24", ["2024-01-05", "2024-05-01", "2001-05-24"]),
            ("1/5/70", ["1970-01-05", "1970-05-01", "22008"]),
            ("13/05/2024", ["22008", "2024-05-13", "22008"]),
            ("01/05/2024 10:00", ["2024-01-05", "2024-05-01", "22008"]),
            ("2024.01.05", ["2024-01-05", "2024-01-05", "2024-01-05"]),
            ("01/05/2024 BC", ["2024-01-05 BC", "2024-05-01 BC", "22008"]),
        ];
        for (input, expected) in cases {
            for (style, want) in ["ISO, MDY", "ISO, DMY", "ISO, YMD"].iter().zip(expected) {
                let tz = SessionTime::utc().with_datestyle(style);
                match canonical_from_text(T::Date, input.as_bytes(), &tz) {
                    Ok(c) => assert_eq!(out_text(T::Date, &c, &tz), want, "{input} {style}"),
                    Err(e) => assert_eq!(e.sqlstate(), want, "{input} {style}"),
                }
            }
        }
        let sql = SessionTime::utc().with_datestyle("SQL, DMY");
        assert!(!sql.output_is_iso());
        assert_eq!(sql.date_order(), DateOrder::Dmy);
        assert!(SessionTime::utc()
            .with_datestyle("ISO, MDY")
            .output_is_iso());
        assert_eq!(SessionTime::utc().date_order(), DateOrder::Mdy);
    }
}
