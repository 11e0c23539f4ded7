//! Calendar arithmetic as PostgreSQL does it: the proleptic Gregorian calendar with
//! astronomical years (1 BC = year 0), dates as days and timestamps as microseconds since
//! 2000-01-01, their valid ranges and the `±infinity` sentinels.

pub const USECS_PER_SEC: i64 = 1_000_000;
pub const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 1970-01-01 to 2000-01-01.
pub const UNIX_TO_PG_DAYS: i64 = 10_957;
/// Julian day of 2000-01-01.
const PG_EPOCH_JDATE: i64 = 2_451_545;
/// First day past the date range (5874898-01-01), as a Julian day.
const DATE_END_JULIAN: i64 = 2_147_483_494;
/// 4714-11-24 BC 00:00, the first valid timestamp.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// 294277-01-01 00:00, the first timestamp past the range.
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

/// `-infinity` and `infinity` as dates.
pub const DATE_NOBEGIN: i32 = i32::MIN;
pub const DATE_NOEND: i32 = i32::MAX;
/// `-infinity` and `infinity` as timestamps.
pub const DT_NOBEGIN: i64 = i64::MIN;
pub const DT_NOEND: i64 = i64::MAX;

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a number of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 2000-01-01 of a civil date.
pub fn pg_days(y: i64, m: u32, d: u32) -> i64 {
    days_from_civil(y, m, d) - UNIX_TO_PG_DAYS
}

/// The civil date (year, month, day) of a number of days since 2000-01-01.
pub fn civil_from_pg_days(days: i64) -> (i64, u32, u32) {
    civil_from_days(days + UNIX_TO_PG_DAYS)
}

/// Whether a day (since 2000-01-01) is a valid finite date.
pub fn date_in_range(days: i64) -> bool {
    let jd = days + PG_EPOCH_JDATE;
    (0..DATE_END_JULIAN).contains(&jd)
}

/// Whether a microsecond count (since 2000-01-01) is a valid finite timestamp.
pub fn timestamp_in_range(us: i64) -> bool {
    (MIN_TIMESTAMP..END_TIMESTAMP).contains(&us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_helpers_agree() {
        for days in (-2_451_545i64..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d >= 1 && d <= days_in_month(y, m));
        }
    }
}
