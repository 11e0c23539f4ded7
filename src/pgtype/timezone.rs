//! Time zones: IANA names (case-insensitive, as PostgreSQL matches them), POSIX offset specs
//! of the `TimeZone` setting, the zone written inside a timestamp (`Z`, ISO offsets,
//! PostgreSQL's default abbreviations, IANA names), and UTC offsets at an instant or for a
//! local wall-clock time.

use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;

use super::calendar::{UNIX_TO_PG_DAYS, USECS_PER_DAY, USECS_PER_SEC};

/// A time zone: a fixed offset or an IANA zone with its rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Zone {
    /// Seconds east of UTC.
    Fixed(i32),
    Named(Tz),
}

impl Zone {
    /// Offset east of UTC, in seconds, at the UTC instant `utc_us` (µs since 2000-01-01).
    pub(super) fn offset_at_utc(self, utc_us: i64) -> i32 {
        match self {
            Zone::Fixed(east) => east,
            Zone::Named(tz) => {
                let ndt = naive_from_pg_us(utc_us);
                tz.offset_from_utc_datetime(&ndt).fix().local_minus_utc()
            }
        }
    }

    /// The UTC instant of the local wall-clock time `local_us`. Like PostgreSQL: a time that
    /// falls into a spring-forward gap uses the offset before the transition; an ambiguous
    /// time (fall back) uses the offset after it.
    pub(super) fn local_to_utc(self, local_us: i64) -> Option<i64> {
        let east = match self {
            Zone::Fixed(east) => east,
            Zone::Named(tz) => {
                let ndt = naive_from_pg_us(local_us);
                match tz.offset_from_local_datetime(&ndt) {
                    chrono::LocalResult::Single(off) => off.fix().local_minus_utc(),
                    chrono::LocalResult::Ambiguous(_, later) => later.fix().local_minus_utc(),
                    chrono::LocalResult::None => {
                        let before = ndt - chrono::Duration::days(1);
                        tz.offset_from_utc_datetime(&before).fix().local_minus_utc()
                    }
                }
            }
        };
        local_us.checked_sub(i64::from(east) * USECS_PER_SEC)
    }
}

/// An IANA zone by name, matched case-insensitively as PostgreSQL does.
pub(super) fn named_zone(value: &str) -> Option<Tz> {
    if let Ok(tz) = Tz::from_str(value) {
        return Some(tz);
    }
    // PostgreSQL matches zone names case-insensitively.
    chrono_tz::TZ_VARIANTS
        .iter()
        .copied()
        .find(|tz| tz.name().eq_ignore_ascii_case(value))
}

/// `[<name>|alpha-name][+|-]hh[:mm[:ss]]` with POSIX sign; returns seconds east.
pub(super) fn parse_posix_fixed(value: &str) -> Option<i32> {
    let rest = if let Some(stripped) = value.strip_prefix('<') {
        let end = stripped.find('>')?;
        &stripped[end + 1..]
    } else {
        value.trim_start_matches(|c: char| c.is_ascii_alphabetic())
    };
    let name_len = value.len() - rest.len();
    if !value.starts_with('<') && name_len > 0 && name_len < 3 {
        return None;
    }
    let (sign, digits) = match rest.as_bytes().first()? {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        b'0'..=b'9' => (1, rest),
        _ => return None,
    };
    let mut parts = digits.split(':');
    let mut secs = 0i32;
    for (i, unit) in [3600, 60, 1].iter().enumerate() {
        match parts.next() {
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                let n: i32 = p.parse().ok()?;
                if i > 0 && n > 59 {
                    return None;
                }
                secs += n * unit;
            }
            None if i > 0 => break,
            _ => return None,
        }
    }
    if parts.next().is_some() || secs > 168 * 3600 {
        return None;
    }
    // POSIX: positive means west of Greenwich.
    Some(-sign * secs)
}
/// chrono's range is narrower than PostgreSQL's; zone offsets far outside it are taken at
/// its edge (LMT in the past, the last rule in the future).
fn naive_from_pg_us(us: i64) -> NaiveDateTime {
    let unix_us = us.saturating_add(UNIX_TO_PG_DAYS * USECS_PER_DAY);
    let min = DateTime::<chrono::Utc>::MIN_UTC.timestamp_micros();
    let max = DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros();
    DateTime::from_timestamp_micros(unix_us.clamp(min, max))
        .map(|dt| dt.naive_utc())
        .unwrap_or_default()
}
/// An explicit zone in a timestamp: `Z`, `UTC`, `GMT`, ISO offsets (east positive), or an
/// IANA name.
pub(super) fn parse_zone_token(z: &str) -> Option<Zone> {
    if let Some(rest) = z.strip_prefix(['+', '-']) {
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let b = rest.as_bytes();
        if b.is_empty() || !b.iter().all(|c| c.is_ascii_digit() || *c == b':') {
            return None;
        }
        let secs = if rest.contains(':') {
            let mut parts = rest.split(':');
            let h: i32 = parts
                .next()
                .filter(|p| (1..=2).contains(&p.len()))?
                .parse()
                .ok()?;
            let m: i32 = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
            let s: i32 = match parts.next() {
                Some(p) if p.len() == 2 => p.parse().ok()?,
                Some(_) => return None,
                None => 0,
            };
            if parts.next().is_some() || m > 59 || s > 59 {
                return None;
            }
            h * 3600 + m * 60 + s
        } else {
            match b.len() {
                1 | 2 => rest.parse::<i32>().ok()? * 3600,
                4 => {
                    let v: i32 = rest.parse().ok()?;
                    if v % 100 > 59 {
                        return None;
                    }
                    v / 100 * 3600 + v % 100 * 60
                }
                6 => {
                    let v: i32 = rest.parse().ok()?;
                    if v % 100 > 59 || v / 100 % 100 > 59 {
                        return None;
                    }
                    v / 10_000 * 3600 + v / 100 % 100 * 60 + v % 100
                }
                _ => return None,
            }
        };
        if secs > 15 * 3600 + 59 * 60 + 59 {
            return None;
        }
        return Some(Zone::Fixed(sign * secs));
    }
    let lower = z.to_ascii_lowercase();
    if let Ok(k) = ZONE_ABBREVIATIONS.binary_search_by(|(name, _)| (*name).cmp(lower.as_str())) {
        return Some(Zone::Fixed(ZONE_ABBREVIATIONS[k].1));
    }
    named_zone(z).map(Zone::Named)
}

/// PostgreSQL 15's default time zone abbreviations (`pg_timezone_abbrevs`, the `Default`
/// set): lower-cased name and fixed offset east in seconds. In timestamp input they take
/// precedence over zone names, so `CET` is always +01 and `CEST` +02, as in PostgreSQL.
/// (PostgreSQL resolves a few of them, e.g. `MSK`, historically by date; here they are fixed.)
const ZONE_ABBREVIATIONS: &[(&str, i32)] = &[
    ("acdt", 37800),
    ("acsst", 37800),
    ("acst", 34200),
    ("act", -18000),
    ("acwst", 31500),
    ("adt", -10800),
    ("aedt", 39600),
    ("aesst", 39600),
    ("aest", 36000),
    ("aft", 16200),
    ("akdt", -28800),
    ("akst", -32400),
    ("almst", 25200),
    ("almt", 21600),
    ("amst", 14400),
    ("amt", -14400),
    ("anast", 43200),
    ("anat", 43200),
    ("arst", -10800),
    ("art", -10800),
    ("ast", -14400),
    ("awsst", 32400),
    ("awst", 28800),
    ("azost", 0),
    ("azot", -3600),
    ("azst", 14400),
    ("azt", 14400),
    ("bdst", 7200),
    ("bdt", 21600),
    ("bnt", 28800),
    ("bort", 28800),
    ("bot", -14400),
    ("bra", -10800),
    ("brst", -7200),
    ("brt", -10800),
    ("bst", 3600),
    ("btt", 21600),
    ("cadt", 37800),
    ("cast", 34200),
    ("cct", 28800),
    ("cdt", -18000),
    ("cest", 7200),
    ("cet", 3600),
    ("cetdst", 7200),
    ("chadt", 49500),
    ("chast", 45900),
    ("chut", 36000),
    ("ckt", -36000),
    ("clst", -10800),
    ("clt", -10800),
    ("cot", -18000),
    ("cst", -21600),
    ("cxt", 25200),
    ("davt", 25200),
    ("ddut", 36000),
    ("easst", -18000),
    ("east", -18000),
    ("eat", 10800),
    ("edt", -14400),
    ("eest", 10800),
    ("eet", 7200),
    ("eetdst", 10800),
    ("egst", 0),
    ("egt", -3600),
    ("est", -18000),
    ("fet", 10800),
    ("fjst", 46800),
    ("fjt", 43200),
    ("fkst", -10800),
    ("fkt", -10800),
    ("fnst", -3600),
    ("fnt", -7200),
    ("galt", -21600),
    ("gamt", -32400),
    ("gest", 14400),
    ("get", 14400),
    ("gft", -10800),
    ("gilt", 43200),
    ("gmt", 0),
    ("gyt", -14400),
    ("hkt", 28800),
    ("hst", -36000),
    ("ict", 25200),
    ("idt", 10800),
    ("iot", 21600),
    ("irkst", 28800),
    ("irkt", 28800),
    ("irt", 12600),
    ("ist", 7200),
    ("jayt", 32400),
    ("jst", 32400),
    ("kdt", 36000),
    ("kgst", 21600),
    ("kgt", 21600),
    ("kost", 39600),
    ("krast", 25200),
    ("krat", 25200),
    ("kst", 32400),
    ("lhdt", 39600),
    ("lhst", 37800),
    ("ligt", 36000),
    ("lint", 50400),
    ("lkt", 19800),
    ("magst", 39600),
    ("magt", 39600),
    ("mart", -34200),
    ("mawt", 18000),
    ("mdt", -21600),
    ("mest", 7200),
    ("mesz", 7200),
    ("met", 3600),
    ("metdst", 7200),
    ("mez", 3600),
    ("mht", 43200),
    ("mmt", 23400),
    ("mpt", 36000),
    ("msd", 14400),
    ("msk", 10800),
    ("mst", -25200),
    ("must", 18000),
    ("mut", 14400),
    ("mvt", 18000),
    ("myt", 28800),
    ("ndt", -9000),
    ("nft", -12600),
    ("novst", 25200),
    ("novt", 25200),
    ("npt", 20700),
    ("nst", -12600),
    ("nut", -39600),
    ("nzdt", 46800),
    ("nzst", 43200),
    ("nzt", 43200),
    ("omsst", 21600),
    ("omst", 21600),
    ("pdt", -25200),
    ("pet", -18000),
    ("petst", 43200),
    ("pett", 43200),
    ("pgt", 36000),
    ("pht", 28800),
    ("pkst", 21600),
    ("pkt", 18000),
    ("pmdt", -7200),
    ("pmst", -10800),
    ("pont", 39600),
    ("pst", -28800),
    ("pwt", 32400),
    ("pyst", -10800),
    ("pyt", -10800),
    ("ret", 14400),
    ("sadt", 37800),
    ("sast", 7200),
    ("sct", 14400),
    ("sgt", 28800),
    ("taht", -36000),
    ("tft", 18000),
    ("tjt", 18000),
    ("tkt", 46800),
    ("tmt", 18000),
    ("tot", 46800),
    ("trut", 36000),
    ("tvt", 43200),
    ("uct", 0),
    ("ulast", 32400),
    ("ulat", 28800),
    ("ut", 0),
    ("utc", 0),
    ("uyst", -7200),
    ("uyt", -10800),
    ("uzst", 21600),
    ("uzt", 18000),
    ("vet", -14400),
    ("vlast", 36000),
    ("vlat", 36000),
    ("volt", 10800),
    ("vut", 39600),
    ("wadt", 28800),
    ("wakt", 43200),
    ("wast", 25200),
    ("wat", 3600),
    ("wdt", 32400),
    ("wet", 0),
    ("wetdst", 3600),
    ("wft", 43200),
    ("wgst", -7200),
    ("wgt", -10800),
    ("xjt", 21600),
    ("yakst", 32400),
    ("yakt", 32400),
    ("yapt", 36000),
    ("yekst", 21600),
    ("yekt", 18000),
    ("z", 0),
    ("zulu", 0),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgtype::tests::{canon, out_text, utc};
    use crate::schema::LogicalType as T;

    #[test]
    fn zone_abbreviations_as_postgres() {
        assert!(ZONE_ABBREVIATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        // Checked against PostgreSQL 15 with TimeZone UTC.
        for (input, expected) in [
            ("2024-07-01 10:00 CET", "2024-07-01 09:00:00+00"),
            ("2024-07-01 10:00 cest", "2024-07-01 08:00:00+00"),
            ("2024-07-01 10:00 IST", "2024-07-01 08:00:00+00"),
            ("2024-07-01 10:00 MSK", "2024-07-01 07:00:00+00"),
            ("2024-01-05 10:00 PST", "2024-01-05 18:00:00+00"),
            ("2024-01-05 10:00 zulu", "2024-01-05 10:00:00+00"),
        ] {
            assert_eq!(
                out_text(T::Timestamptz, &canon(T::Timestamptz, input), &utc()),
                expected,
                "{input}"
            );
        }
    }
}
