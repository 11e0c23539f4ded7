//! Typed values: parsing what clients send (text or binary, any accepted spelling) into one
//! canonical byte string per value, and printing canonical values back in the wire format a
//! client asked for, exactly as PostgreSQL would (DateStyle ISO, bytea_output hex,
//! extra_float_digits 1).
//!
//! Canonical encodings (the plaintext that gets encrypted):
//!
//! | type | canonical bytes |
//! |---|---|
//! | text, varchar | the bytes as sent |
//! | int2 / int4 / int8 | 2 / 4 / 8 bytes big-endian |
//! | float8 | IEEE 754 big-endian (every NaN as the one quiet NaN; `-0` kept) |
//! | bool | one byte, 0 or 1 |
//! | date | i32 BE days since 2000-01-01 (`±infinity` as `i32::MAX` / `i32::MIN`) |
//! | timestamp, timestamptz | i64 BE µs since 2000-01-01 (timestamptz in UTC; `±infinity` as `i64::MAX` / `i64::MIN`) |
//! | uuid | 16 bytes |
//! | bytea | the raw bytes |
//! | numeric | normalized decimal text: `1.50` → `1.5`, `-0` → `0`, `NaN`, `Infinity`, `-Infinity` |
//! | jsonb | the text PostgreSQL's jsonb output prints |
//!
//! Error messages name the type, never the value (values are PHI).
//!
//! Known differences from PostgreSQL, all refused with an error rather than misread:
//! hexadecimal float input (`0x1p3`), dates with month names (`Jan 5 2024`) or Julian days,
//! timestamps with a POSIX zone rule inside the value. Text output is always ISO DateStyle
//! ([`SessionTime::output_is_iso`] tells when the session asked for another). Equality is
//! byte equality of the canonical form: float8 `-0` and `0`, and jsonb numbers that differ
//! only in scale (`1.5` / `1.50`, which jsonb prints differently), are distinct values here.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;

use crate::schema::LogicalType;

/// Format code of a parameter or result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    Text,
    Binary,
}

impl WireFormat {
    /// From a protocol format code: 0 text, 1 binary.
    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Self::Text),
            1 => Some(Self::Binary),
            _ => None,
        }
    }

    pub fn code(self) -> i16 {
        match self {
            Self::Text => 0,
            Self::Binary => 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueErrorKind {
    /// 22P02
    InvalidText,
    /// 22003
    OutOfRange,
    /// 22008
    DatetimeOverflow,
    /// 22P03
    InvalidBinary,
    /// 42804
    DatatypeMismatch,
    /// 22P05 (jsonb `\u0000`)
    UntranslatableCharacter,
    /// 22007: date/time text that does not parse (PostgreSQL's code for these types)
    InvalidDatetimeFormat,
    /// 22023: unknown time zone in a timestamp, bad hex digits in bytea (as PostgreSQL)
    InvalidParameterValue,
    /// 54001 (nesting deeper than we parse)
    TooComplex,
}

/// A value that cannot be parsed or converted. The message names the type and never the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    kind: ValueErrorKind,
    message: String,
}

impl ValueError {
    pub fn kind(&self) -> ValueErrorKind {
        self.kind
    }

    pub fn sqlstate(&self) -> &'static str {
        match self.kind {
            ValueErrorKind::InvalidText => "22P02",
            ValueErrorKind::OutOfRange => "22003",
            ValueErrorKind::DatetimeOverflow => "22008",
            ValueErrorKind::InvalidBinary => "22P03",
            ValueErrorKind::DatatypeMismatch => "42804",
            ValueErrorKind::UntranslatableCharacter => "22P05",
            ValueErrorKind::InvalidDatetimeFormat => "22007",
            ValueErrorKind::InvalidParameterValue => "22023",
            ValueErrorKind::TooComplex => "54001",
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    fn syntax(ty: LogicalType) -> Self {
        let kind = match ty {
            LogicalType::Date | LogicalType::Timestamp | LogicalType::Timestamptz => {
                ValueErrorKind::InvalidDatetimeFormat
            }
            _ => ValueErrorKind::InvalidText,
        };
        Self {
            kind,
            message: format!("invalid input syntax for type {}", pg_name(ty)),
        }
    }

    fn range(ty: LogicalType) -> Self {
        let message = match ty {
            LogicalType::Numeric => "value overflows numeric format".to_string(),
            _ => format!("value out of range for type {}", pg_name(ty)),
        };
        Self {
            kind: ValueErrorKind::OutOfRange,
            message,
        }
    }

    fn datetime_range(ty: LogicalType) -> Self {
        let what = if ty == LogicalType::Date {
            "date"
        } else {
            "timestamp"
        };
        Self {
            kind: ValueErrorKind::DatetimeOverflow,
            message: format!("{what} out of range"),
        }
    }

    fn binary(ty: LogicalType) -> Self {
        Self {
            kind: ValueErrorKind::InvalidBinary,
            message: format!("incorrect binary data format for type {}", pg_name(ty)),
        }
    }

    fn mismatch(ty: LogicalType, source_oid: u32) -> Self {
        Self {
            kind: ValueErrorKind::DatatypeMismatch,
            message: format!(
                "a parameter of type oid {source_oid} cannot be assigned to type {}",
                pg_name(ty)
            ),
        }
    }

    /// A stored canonical value that does not have the shape of its type (should not happen
    /// for values this module produced).
    fn corrupt(ty: LogicalType) -> Self {
        Self {
            kind: ValueErrorKind::InvalidBinary,
            message: format!("stored value is not a valid canonical {}", pg_name(ty)),
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ValueError {}

/// The name PostgreSQL uses for the type in its own messages.
fn pg_name(ty: LogicalType) -> &'static str {
    match ty {
        LogicalType::Text => "text",
        LogicalType::Varchar => "character varying",
        LogicalType::Int2 => "smallint",
        LogicalType::Int4 => "integer",
        LogicalType::Int8 => "bigint",
        LogicalType::Numeric => "numeric",
        LogicalType::Float8 => "double precision",
        LogicalType::Bool => "boolean",
        LogicalType::Date => "date",
        LogicalType::Timestamp => "timestamp without time zone",
        LogicalType::Timestamptz => "timestamp with time zone",
        LogicalType::Uuid => "uuid",
        LogicalType::Bytea => "bytea",
        LogicalType::Jsonb => "json",
    }
}

// ---------------------------------------------------------------------------------------------
// Session time zone

#[derive(Debug, Clone, Copy, PartialEq)]
enum Zone {
    /// Seconds east of UTC.
    Fixed(i32),
    Named(Tz),
}

/// The session's `TimeZone`, needed for timestamptz text input without an offset, text
/// output, and timestamp ↔ timestamptz conversions.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTime {
    zone: Zone,
    fallback: bool,
    date_order: DateOrder,
    iso_output: bool,
}

/// Field order for dates written with a one- or two-digit first field (`01/05/2024`), from
/// the session's `DateStyle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateOrder {
    Mdy,
    Dmy,
    Ymd,
}

impl Default for SessionTime {
    fn default() -> Self {
        Self::utc()
    }
}

impl SessionTime {
    pub fn utc() -> Self {
        Self {
            zone: Zone::Fixed(0),
            fallback: false,
            date_order: DateOrder::Mdy,
            iso_output: true,
        }
    }

    /// Parses a `TimeZone` ParameterStatus value the way PostgreSQL interprets the setting:
    /// an IANA name (`UTC`, `Etc/UTC`, `Europe/Berlin`), a bare number of hours (`+02`, `-5.5`:
    /// ISO sign, east positive, as `SET TIME ZONE 2`), or a POSIX offset spec (`<+02>-02`,
    /// `-05:30`, `UTC+3`: POSIX sign, **west** positive — PostgreSQL shows
    /// `SET timezone = '-05:30'` as offset `+05:30`). `None` for anything else.
    pub fn from_timezone(value: &str) -> Option<Self> {
        let value = value.trim();
        if let Some(zone) = named_zone(value) {
            return Some(Self {
                zone: Zone::Named(zone),
                fallback: false,
                date_order: DateOrder::Mdy,
                iso_output: true,
            });
        }
        // A plain number of hours (PostgreSQL's check_timezone tries this first).
        if !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'+' || b == b'-' || b == b'.')
            && value.bytes().any(|b| b.is_ascii_digit())
            && !value.contains(':')
        {
            if let Ok(hours) = value.parse::<f64>() {
                if hours.is_finite() && hours.abs() <= 168.0 {
                    return Some(Self {
                        zone: Zone::Fixed((hours * 3600.0).round() as i32),
                        fallback: false,
                        date_order: DateOrder::Mdy,
                        iso_output: true,
                    });
                }
            }
        }
        parse_posix_fixed(value).map(|east| Self {
            zone: Zone::Fixed(east),
            fallback: false,
            date_order: DateOrder::Mdy,
            iso_output: true,
        })
    }

    /// Like [`SessionTime::from_timezone`] but falls back to UTC for an unknown zone;
    /// [`SessionTime::is_fallback`] then tells that it did.
    pub fn from_timezone_or_utc(value: &str) -> Self {
        Self::from_timezone(value).unwrap_or(Self {
            zone: Zone::Fixed(0),
            fallback: true,
            date_order: DateOrder::Mdy,
            iso_output: true,
        })
    }

    /// Applies a `DateStyle` ParameterStatus value (`ISO, MDY`, `SQL, DMY`, …): the field
    /// order for ambiguous date input. Output is always ISO (see
    /// [`SessionTime::output_is_iso`]).
    pub fn with_datestyle(mut self, datestyle: &str) -> Self {
        let upper = datestyle.to_ascii_uppercase();
        let mut parts = upper.split(',').map(str::trim);
        let style = parts.next().unwrap_or("ISO");
        let order = parts.next().unwrap_or("");
        self.iso_output = style == "ISO";
        self.date_order = if order.contains("DMY")
            || (order.is_empty() && matches!(style, "GERMAN" | "EUROPEAN"))
        {
            DateOrder::Dmy
        } else if order.contains("YMD") {
            DateOrder::Ymd
        } else {
            DateOrder::Mdy
        };
        self
    }

    pub fn date_order(&self) -> DateOrder {
        self.date_order
    }

    /// False when the session's DateStyle asks for a non-ISO output style (`SQL`, `Postgres`,
    /// `German`), which `to_wire` does not produce: it always prints ISO.
    pub fn output_is_iso(&self) -> bool {
        self.iso_output
    }

    /// True when the zone was not understood and UTC is used instead.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Offset east of UTC, in seconds, at the UTC instant `utc_us` (µs since 2000-01-01).
    fn offset_at_utc(&self, utc_us: i64) -> i32 {
        match self.zone {
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
    fn local_to_utc(&self, local_us: i64) -> Option<i64> {
        let east = match self.zone {
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

fn named_zone(value: &str) -> Option<Tz> {
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
fn parse_posix_fixed(value: &str) -> Option<i32> {
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

// ---------------------------------------------------------------------------------------------
// Calendar arithmetic (proleptic Gregorian, astronomical years: 1 BC = year 0)

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 1970-01-01 to 2000-01-01.
const UNIX_TO_PG_DAYS: i64 = 10_957;
/// Julian day of 2000-01-01.
const PG_EPOCH_JDATE: i64 = 2_451_545;
/// First day past the date range (5874898-01-01), as a Julian day.
const DATE_END_JULIAN: i64 = 2_147_483_494;
/// 4714-11-24 BC 00:00, the first valid timestamp.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// 294277-01-01 00:00, the first timestamp past the range.
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

const DATE_NOBEGIN: i32 = i32::MIN;
const DATE_NOEND: i32 = i32::MAX;
const DT_NOBEGIN: i64 = i64::MIN;
const DT_NOEND: i64 = i64::MAX;

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

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

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 2000-01-01 of a civil date.
fn pg_days(y: i64, m: u32, d: u32) -> i64 {
    days_from_civil(y, m, d) - UNIX_TO_PG_DAYS
}

fn date_in_range(days: i64) -> bool {
    let jd = days + PG_EPOCH_JDATE;
    (0..DATE_END_JULIAN).contains(&jd)
}

fn timestamp_in_range(us: i64) -> bool {
    (MIN_TIMESTAMP..END_TIMESTAMP).contains(&us)
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

// ---------------------------------------------------------------------------------------------
// Public entry points

/// Canonical bytes of a value the client sent in text format (PostgreSQL's input rules).
pub fn canonical_from_text(
    ty: LogicalType,
    text: &[u8],
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    match ty {
        LogicalType::Text | LogicalType::Varchar => Ok(text.to_vec()),
        LogicalType::Bytea => bytea_in(text),
        _ => {
            let s = std::str::from_utf8(text).map_err(|_| ValueError::syntax(ty))?;
            match ty {
                LogicalType::Int2 => Ok((int_in(s, ty, i64::from(i16::MIN), i64::from(i16::MAX))?
                    as i16)
                    .to_be_bytes()
                    .to_vec()),
                LogicalType::Int4 => Ok((int_in(s, ty, i64::from(i32::MIN), i64::from(i32::MAX))?
                    as i32)
                    .to_be_bytes()
                    .to_vec()),
                LogicalType::Int8 => Ok(int_in(s, ty, i64::MIN, i64::MAX)?.to_be_bytes().to_vec()),
                LogicalType::Numeric => Ok(numeric_in(s)?.normalized_text().into_bytes()),
                LogicalType::Float8 => Ok(float8_canonical(float8_in(s)?)),
                LogicalType::Bool => Ok(vec![u8::from(bool_in(s)?)]),
                LogicalType::Date => Ok(date_in(s, tz)?.to_be_bytes().to_vec()),
                LogicalType::Timestamp | LogicalType::Timestamptz => {
                    Ok(timestamp_in(s, ty, tz)?.to_be_bytes().to_vec())
                }
                LogicalType::Uuid => Ok(uuid_in(s)?.to_vec()),
                LogicalType::Jsonb => jsonb_in(s).map(String::into_bytes),
                LogicalType::Text | LogicalType::Varchar | LogicalType::Bytea => Ok(text.to_vec()),
            }
        }
    }
}

const OID_NAME: u32 = 19;
const OID_INT8: u32 = 20;
const OID_INT2: u32 = 21;
const OID_INT4: u32 = 23;
const OID_TEXT: u32 = 25;
const OID_JSON: u32 = 114;
const OID_FLOAT4: u32 = 700;
const OID_UNKNOWN: u32 = 705;
const OID_BPCHAR: u32 = 1042;
const OID_VARCHAR: u32 = 1043;
const OID_DATE: u32 = 1082;
const OID_TIMESTAMP: u32 = 1114;
const OID_TIMESTAMPTZ: u32 = 1184;

fn is_string_oid(oid: u32) -> bool {
    matches!(
        oid,
        OID_TEXT | OID_VARCHAR | OID_UNKNOWN | OID_BPCHAR | OID_NAME
    )
}

/// Canonical bytes of a value the client sent in binary format, declared as type
/// `source_type_oid` (0: unspecified, i.e. the logical type itself). Converts as PostgreSQL's
/// assignment cast would; other source types are a datatype mismatch (42804).
pub fn canonical_from_binary(
    ty: LogicalType,
    source_type_oid: u32,
    bytes: &[u8],
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    let src = if source_type_oid == 0 {
        ty.oid()
    } else {
        source_type_oid
    };
    if src == ty.oid() {
        return recv_own(ty, bytes);
    }
    if is_string_oid(src) {
        return match ty {
            // bpchar → text drops the blank padding, as PostgreSQL's rtrim cast does.
            LogicalType::Text | LogicalType::Varchar if src == OID_BPCHAR => {
                let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
                Ok(bytes[..end].to_vec())
            }
            _ => canonical_from_text(ty, bytes, tz),
        };
    }
    let int_src = || -> Result<i64, ValueError> {
        let src_ty = match src {
            OID_INT2 => LogicalType::Int2,
            OID_INT4 => LogicalType::Int4,
            _ => LogicalType::Int8,
        };
        let canon = recv_own(src_ty, bytes)?;
        read_int(&canon).ok_or_else(|| ValueError::binary(src_ty))
    };
    match (ty, src) {
        (LogicalType::Int2, OID_INT4 | OID_INT8) => {
            let v = int_src()?;
            let v = i16::try_from(v).map_err(|_| ValueError::range(ty))?;
            Ok(v.to_be_bytes().to_vec())
        }
        (LogicalType::Int4, OID_INT2 | OID_INT8) => {
            let v = int_src()?;
            let v = i32::try_from(v).map_err(|_| ValueError::range(ty))?;
            Ok(v.to_be_bytes().to_vec())
        }
        (LogicalType::Int8, OID_INT2 | OID_INT4) => Ok(int_src()?.to_be_bytes().to_vec()),
        (LogicalType::Numeric, OID_INT2 | OID_INT4 | OID_INT8) => {
            Ok(Decimal::from_i64(int_src()?).normalized_text().into_bytes())
        }
        (LogicalType::Float8, OID_INT2 | OID_INT4 | OID_INT8) => {
            Ok(float8_canonical(int_src()? as f64))
        }
        (LogicalType::Float8, OID_FLOAT4) => {
            let raw: [u8; 4] = bytes.try_into().map_err(|_| ValueError::binary(ty))?;
            Ok(float8_canonical(f64::from(f32::from_be_bytes(raw))))
        }
        (LogicalType::Timestamp | LogicalType::Timestamptz, OID_DATE) => {
            let canon = recv_own(LogicalType::Date, bytes)?;
            let days = read_i32(&canon).ok_or_else(|| ValueError::binary(LogicalType::Date))?;
            Ok(date_to_timestamp(days, ty, tz)?.to_be_bytes().to_vec())
        }
        (LogicalType::Timestamptz, OID_TIMESTAMP) => {
            let local = read_i64(&recv_own(LogicalType::Timestamp, bytes)?)
                .ok_or_else(|| ValueError::binary(ty))?;
            Ok(timestamp_to_timestamptz(local, tz)?.to_be_bytes().to_vec())
        }
        (LogicalType::Timestamp, OID_TIMESTAMPTZ) => {
            let utc = read_i64(&recv_own(LogicalType::Timestamptz, bytes)?)
                .ok_or_else(|| ValueError::binary(ty))?;
            Ok(timestamptz_to_timestamp(utc, tz)?.to_be_bytes().to_vec())
        }
        (LogicalType::Jsonb, OID_JSON) => {
            let s = std::str::from_utf8(bytes).map_err(|_| ValueError::binary(ty))?;
            jsonb_in(s).map(String::into_bytes)
        }
        // Every type converts to a string type by assignment (its text output; bool as
        // `true`/`false`, as PostgreSQL's bool-to-text cast prints it).
        (LogicalType::Text | LogicalType::Varchar, _) => {
            let src_ty = LogicalType::ALL
                .into_iter()
                .find(|t| t.oid() == src)
                .ok_or_else(|| ValueError::mismatch(ty, src))?;
            let canon = recv_own(src_ty, bytes)?;
            match (src_ty, canon.as_slice()) {
                (LogicalType::Bool, [1]) => Ok(b"true".to_vec()),
                (LogicalType::Bool, _) => Ok(b"false".to_vec()),
                _ => to_wire(src_ty, &canon, WireFormat::Text, tz),
            }
        }
        _ => Err(ValueError::mismatch(ty, src)),
    }
}

/// Prints a canonical value as PostgreSQL sends it to a client in `format`.
pub fn to_wire(
    ty: LogicalType,
    canonical: &[u8],
    format: WireFormat,
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    let bad = || ValueError::corrupt(ty);
    match (ty, format) {
        (LogicalType::Text | LogicalType::Varchar | LogicalType::Bytea, WireFormat::Binary) => {
            Ok(canonical.to_vec())
        }
        (LogicalType::Text | LogicalType::Varchar, WireFormat::Text) => Ok(canonical.to_vec()),
        (LogicalType::Bytea, WireFormat::Text) => {
            let mut out = Vec::with_capacity(2 + canonical.len() * 2);
            out.extend_from_slice(b"\\x");
            out.extend_from_slice(hex::encode(canonical).as_bytes());
            Ok(out)
        }
        (LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8, _) => {
            let expected = match ty {
                LogicalType::Int2 => 2,
                LogicalType::Int4 => 4,
                _ => 8,
            };
            if canonical.len() != expected {
                return Err(bad());
            }
            match format {
                WireFormat::Binary => Ok(canonical.to_vec()),
                WireFormat::Text => Ok(read_int(canonical)
                    .ok_or_else(bad)?
                    .to_string()
                    .into_bytes()),
            }
        }
        (LogicalType::Float8, _) => {
            let raw: [u8; 8] = canonical.try_into().map_err(|_| bad())?;
            match format {
                WireFormat::Binary => Ok(raw.to_vec()),
                WireFormat::Text => Ok(float8_out(f64::from_be_bytes(raw)).into_bytes()),
            }
        }
        (LogicalType::Bool, _) => match (canonical, format) {
            ([b @ (0 | 1)], WireFormat::Binary) => Ok(vec![*b]),
            ([0], WireFormat::Text) => Ok(b"f".to_vec()),
            ([1], WireFormat::Text) => Ok(b"t".to_vec()),
            _ => Err(bad()),
        },
        (LogicalType::Uuid, _) => {
            let raw: [u8; 16] = canonical.try_into().map_err(|_| bad())?;
            match format {
                WireFormat::Binary => Ok(raw.to_vec()),
                WireFormat::Text => Ok(uuid_out(&raw).into_bytes()),
            }
        }
        (LogicalType::Date, _) => {
            let days = read_i32(canonical).ok_or_else(bad)?;
            match format {
                WireFormat::Binary => Ok(canonical.to_vec()),
                WireFormat::Text => Ok(date_out(days).into_bytes()),
            }
        }
        (LogicalType::Timestamp | LogicalType::Timestamptz, _) => {
            let us = read_i64(canonical).ok_or_else(bad)?;
            match format {
                WireFormat::Binary => Ok(canonical.to_vec()),
                WireFormat::Text => Ok(timestamp_out(us, ty, tz).into_bytes()),
            }
        }
        (LogicalType::Numeric, _) => {
            let s = std::str::from_utf8(canonical).map_err(|_| bad())?;
            let dec = numeric_in(s).map_err(|_| bad())?;
            match format {
                WireFormat::Text => Ok(dec.normalized_text().into_bytes()),
                WireFormat::Binary => Ok(dec.normalized().to_send()),
            }
        }
        (LogicalType::Jsonb, _) => match format {
            WireFormat::Text => Ok(canonical.to_vec()),
            WireFormat::Binary => {
                let mut out = Vec::with_capacity(1 + canonical.len());
                out.push(1);
                out.extend_from_slice(canonical);
                Ok(out)
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Binary receive of the logical type itself

fn read_int(b: &[u8]) -> Option<i64> {
    match b.len() {
        2 => Some(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        4 => Some(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        8 => read_i64(b),
        _ => None,
    }
}

fn read_i32(b: &[u8]) -> Option<i32> {
    <[u8; 4]>::try_from(b).ok().map(i32::from_be_bytes)
}

fn read_i64(b: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(b).ok().map(i64::from_be_bytes)
}

fn recv_own(ty: LogicalType, bytes: &[u8]) -> Result<Vec<u8>, ValueError> {
    let bad = || ValueError::binary(ty);
    match ty {
        LogicalType::Text | LogicalType::Varchar | LogicalType::Bytea => Ok(bytes.to_vec()),
        LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 => {
            let len = match ty {
                LogicalType::Int2 => 2,
                LogicalType::Int4 => 4,
                _ => 8,
            };
            if bytes.len() == len {
                Ok(bytes.to_vec())
            } else {
                Err(bad())
            }
        }
        LogicalType::Float8 => {
            let raw: [u8; 8] = bytes.try_into().map_err(|_| bad())?;
            Ok(float8_canonical(f64::from_be_bytes(raw)))
        }
        LogicalType::Bool => match bytes {
            [b] => Ok(vec![u8::from(*b != 0)]),
            _ => Err(bad()),
        },
        LogicalType::Date => {
            let days = read_i32(bytes).ok_or_else(bad)?;
            if days != DATE_NOBEGIN && days != DATE_NOEND && !date_in_range(i64::from(days)) {
                return Err(ValueError::datetime_range(ty));
            }
            Ok(bytes.to_vec())
        }
        LogicalType::Timestamp | LogicalType::Timestamptz => {
            let us = read_i64(bytes).ok_or_else(bad)?;
            if us != DT_NOBEGIN && us != DT_NOEND && !timestamp_in_range(us) {
                return Err(ValueError::datetime_range(ty));
            }
            Ok(bytes.to_vec())
        }
        LogicalType::Uuid => {
            if bytes.len() == 16 {
                Ok(bytes.to_vec())
            } else {
                Err(bad())
            }
        }
        LogicalType::Numeric => Ok(numeric_recv(bytes)?.normalized_text().into_bytes()),
        LogicalType::Jsonb => match bytes.split_first() {
            Some((1, text)) => {
                let s = std::str::from_utf8(text).map_err(|_| bad())?;
                jsonb_in(s).map(String::into_bytes)
            }
            _ => Err(bad()),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// bool, integers, uuid, bytea

fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn bool_in(s: &str) -> Result<bool, ValueError> {
    let t = s.trim_matches(is_pg_space).to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Ok(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Ok(false)
    } else {
        Err(ValueError::syntax(LogicalType::Bool))
    }
}

fn int_in(s: &str, ty: LogicalType, min: i64, max: i64) -> Result<i64, ValueError> {
    let t = s.trim_matches(is_pg_space);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::syntax(ty));
    }
    // Accumulate negatively so that i64::MIN fits.
    let mut acc: i64 = 0;
    for b in digits.bytes() {
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_sub(i64::from(b - b'0')))
            .ok_or_else(|| ValueError::range(ty))?;
    }
    let v = if neg {
        acc
    } else {
        acc.checked_neg().ok_or_else(|| ValueError::range(ty))?
    };
    if v < min || v > max {
        return Err(ValueError::range(ty));
    }
    Ok(v)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn uuid_in(s: &str) -> Result<[u8; 16], ValueError> {
    let err = || ValueError::syntax(LogicalType::Uuid);
    let b = s.as_bytes();
    let mut i = 0;
    let braces = b.first() == Some(&b'{');
    if braces {
        i += 1;
    }
    let mut out = [0u8; 16];
    for (n, byte) in out.iter_mut().enumerate() {
        let hi = b.get(i).copied().and_then(hex_val).ok_or_else(err)?;
        let lo = b.get(i + 1).copied().and_then(hex_val).ok_or_else(err)?;
        *byte = hi << 4 | lo;
        i += 2;
        if n % 2 == 1 && n < 15 && b.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    if braces {
        if b.get(i) != Some(&b'}') {
            return Err(err());
        }
        i += 1;
    }
    if i != b.len() {
        return Err(err());
    }
    Ok(out)
}

fn uuid_out(raw: &[u8; 16]) -> String {
    let h = hex::encode(raw);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn bytea_in(text: &[u8]) -> Result<Vec<u8>, ValueError> {
    let err = || ValueError::syntax(LogicalType::Bytea);
    if let Some(hexpart) = text.strip_prefix(b"\\x") {
        let err = || ValueError {
            kind: ValueErrorKind::InvalidParameterValue,
            message: "invalid hexadecimal data for type bytea".to_string(),
        };
        let mut out = Vec::with_capacity(hexpart.len() / 2);
        let mut i = 0;
        while i < hexpart.len() {
            let c = hexpart[i];
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
                continue;
            }
            let hi = hex_val(c).ok_or_else(err)?;
            let lo = hexpart
                .get(i + 1)
                .copied()
                .and_then(hex_val)
                .ok_or_else(err)?;
            out.push(hi << 4 | lo);
            i += 2;
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
        } else if text.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let d = |k: usize, max: u8| {
                text.get(i + k)
                    .copied()
                    .filter(|c| (b'0'..=max).contains(c))
            };
            match (d(1, b'3'), d(2, b'7'), d(3, b'7')) {
                (Some(a), Some(b), Some(c)) => {
                    out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                    i += 4;
                }
                _ => return Err(err()),
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// numeric

/// Maximum digits before the decimal point and after it (PostgreSQL's numeric limits).
const NUMERIC_MAX_WEIGHT_DIGITS: i64 = 131_072;
const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Decimal {
    NaN,
    PosInf,
    NegInf,
    /// value = 0.d₀d₁… × 10^point; `digits` (0–9) carry no leading or trailing zeros (empty
    /// for zero); `dscale` is the number of fraction digits to print.
    Finite {
        neg: bool,
        digits: Vec<u8>,
        point: i64,
        dscale: i64,
    },
}

impl Decimal {
    fn from_i64(v: i64) -> Decimal {
        let digits: Vec<u8> = v
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        let int_len = digits.len() as i64;
        Decimal::finite(v < 0, digits, int_len, 0, 0)
    }

    /// Builds from raw digits where `int_len` of them are before the point, scaled by 10^exp.
    fn finite(neg: bool, mut digits: Vec<u8>, int_len: i64, exp: i64, dscale: i64) -> Decimal {
        let lead = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..lead);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let point = if digits.is_empty() {
            0
        } else {
            int_len - lead as i64 + exp
        };
        let neg = neg && !digits.is_empty();
        Decimal::Finite {
            neg,
            digits,
            point,
            dscale: dscale.max(0),
        }
    }

    fn check_range(self) -> Result<Decimal, ValueError> {
        if let Decimal::Finite { point, dscale, .. } = &self {
            if *point > NUMERIC_MAX_WEIGHT_DIGITS || *dscale > NUMERIC_DSCALE_MAX {
                return Err(ValueError::range(LogicalType::Numeric));
            }
        }
        Ok(self)
    }

    /// The same value with the display scale trimmed to its significant fraction digits.
    fn normalized(&self) -> Decimal {
        match self {
            Decimal::Finite {
                neg, digits, point, ..
            } => Decimal::Finite {
                neg: *neg,
                digits: digits.clone(),
                point: *point,
                dscale: (digits.len() as i64 - point).max(0),
            },
            other => other.clone(),
        }
    }

    fn normalized_text(&self) -> String {
        self.normalized().to_text()
    }

    /// numeric_out: all `dscale` fraction digits.
    fn to_text(&self) -> String {
        match self {
            Decimal::NaN => "NaN".to_string(),
            Decimal::PosInf => "Infinity".to_string(),
            Decimal::NegInf => "-Infinity".to_string(),
            Decimal::Finite {
                neg,
                digits,
                point,
                dscale,
            } => {
                let digit = |i: i64| -> char {
                    if i >= 0 && (i as usize) < digits.len() {
                        char::from(b'0' + digits[i as usize])
                    } else {
                        '0'
                    }
                };
                let mut s = String::with_capacity(
                    digits.len() + 3 + (*point).max(0) as usize + *dscale as usize,
                );
                if *neg {
                    s.push('-');
                }
                if *point <= 0 {
                    s.push('0');
                } else {
                    (0..*point).for_each(|i| s.push(digit(i)));
                }
                if *dscale > 0 {
                    s.push('.');
                    (0..*dscale).for_each(|k| s.push(digit(point + k)));
                }
                s
            }
        }
    }

    /// numeric_send: ndigits, weight, sign, dscale (i16/u16 BE), then base-10000 digits.
    fn to_send(&self) -> Vec<u8> {
        let (sign, neg, digits, point, dscale): (u16, bool, &[u8], i64, i64) = match self {
            Decimal::NaN => (0xC000, false, &[], 0, 0),
            // PostgreSQL 15 sends dscale 32 for infinities (bits of its short header read as
            // a display scale); mirrored so the bytes are identical.
            Decimal::PosInf => (0xD000, false, &[], 0, 32),
            Decimal::NegInf => (0xF000, false, &[], 0, 32),
            Decimal::Finite {
                neg,
                digits,
                point,
                dscale,
            } => (0, *neg, digits, *point, *dscale),
        };
        let mut groups: Vec<u16> = Vec::new();
        let mut weight: i64 = 0;
        if !digits.is_empty() {
            let lead_pad = (4 - point.rem_euclid(4)) % 4;
            let padded_point = point + lead_pad;
            let total = lead_pad as usize + digits.len();
            let total = total.div_ceil(4) * 4;
            let mut padded = vec![0u8; total];
            padded[lead_pad as usize..lead_pad as usize + digits.len()].copy_from_slice(digits);
            groups = padded
                .chunks(4)
                .map(|c| c.iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d)))
                .collect();
            weight = padded_point / 4 - 1;
            // The first digit is non-zero, so the first group is too; trim trailing zero groups.
            while groups.last() == Some(&0) {
                groups.pop();
            }
        }
        let sign = if neg { 0x4000 } else { sign };
        let mut out = Vec::with_capacity(8 + 2 * groups.len());
        out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&(dscale as u16).to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        out
    }
}

fn numeric_in(s: &str) -> Result<Decimal, ValueError> {
    let err = || ValueError::syntax(LogicalType::Numeric);
    let t = s.trim_matches(is_pg_space);
    match t.to_ascii_lowercase().as_str() {
        "nan" => return Ok(Decimal::NaN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Decimal::PosInf),
        "-infinity" | "-inf" => return Ok(Decimal::NegInf),
        _ => {}
    }
    let b = t.as_bytes();
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut digits = Vec::with_capacity(b.len());
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        digits.push(b[i] - b'0');
        i += 1;
    }
    let int_len = (i - int_start) as i64;
    let mut frac_len = 0i64;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            digits.push(b[i] - b'0');
            i += 1;
            frac_len += 1;
        }
    }
    if digits.is_empty() {
        return Err(err());
    }
    let mut exp: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            exp = exp
                .saturating_mul(10)
                .saturating_add(i64::from(b[i] - b'0'));
            i += 1;
        }
        if i == start {
            return Err(err());
        }
        if exp > 1_000_000 {
            return Err(ValueError::range(LogicalType::Numeric));
        }
        if eneg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(err());
    }
    Decimal::finite(neg, digits, int_len, exp, frac_len - exp).check_range()
}

fn numeric_recv(b: &[u8]) -> Result<Decimal, ValueError> {
    let bad = || ValueError::binary(LogicalType::Numeric);
    if b.len() < 8 {
        return Err(bad());
    }
    let ndigits = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let weight = i64::from(i16::from_be_bytes([b[2], b[3]]));
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = u16::from_be_bytes([b[6], b[7]]);
    if b.len() != 8 + 2 * ndigits || i64::from(dscale) > NUMERIC_DSCALE_MAX {
        return Err(bad());
    }
    match sign {
        0xC000 => return Ok(Decimal::NaN),
        0xD000 => return Ok(Decimal::PosInf),
        0xF000 => return Ok(Decimal::NegInf),
        0x0000 | 0x4000 => {}
        _ => return Err(bad()),
    }
    let mut digits = Vec::with_capacity(ndigits * 4);
    for pair in b[8..].chunks_exact(2) {
        let g = u16::from_be_bytes([pair[0], pair[1]]);
        if g >= 10_000 {
            return Err(bad());
        }
        digits.extend_from_slice(&[
            (g / 1000) as u8,
            (g / 100 % 10) as u8,
            (g / 10 % 10) as u8,
            (g % 10) as u8,
        ]);
    }
    Decimal::finite(
        sign == 0x4000,
        digits,
        (weight + 1) * 4,
        0,
        i64::from(dscale),
    )
    .check_range()
}

// ---------------------------------------------------------------------------------------------
// float8

fn float8_canonical(v: f64) -> Vec<u8> {
    if v.is_nan() {
        f64::NAN.to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

fn float8_in(s: &str) -> Result<f64, ValueError> {
    let ty = LogicalType::Float8;
    let t = s.trim_matches(is_pg_space);
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    let neg = lower.starts_with('-');
    match unsigned {
        "nan" => return Ok(f64::NAN),
        "inf" | "infinity" => {
            return Ok(if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        _ => {}
    }
    // strtod's decimal syntax: digits [. digits] [e [sign] digits], at least one digit.
    let b = unsigned.as_bytes();
    let mut i = 0;
    let mut mantissa_nonzero = false;
    let mut ndigits = 0;
    while i < b.len() && (b[i].is_ascii_digit() || (b[i] == b'.')) {
        if b[i] == b'.' {
            if b[..i].contains(&b'.') {
                return Err(ValueError::syntax(ty));
            }
        } else {
            ndigits += 1;
            mantissa_nonzero |= b[i] != b'0';
        }
        i += 1;
    }
    if ndigits == 0 {
        return Err(ValueError::syntax(ty));
    }
    if i < b.len() && b[i] == b'e' {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(ValueError::syntax(ty));
        }
    }
    if i != b.len() {
        return Err(ValueError::syntax(ty));
    }
    let v: f64 = t.parse().map_err(|_| ValueError::syntax(ty))?;
    if v.is_infinite() || (v == 0.0 && mantissa_nonzero) {
        return Err(ValueError::range(ty));
    }
    Ok(v)
}

/// float8out with extra_float_digits = 1: the shortest text that reads back exactly, in
/// fixed notation for decimal exponents -4..15 and `1.5e-05` style otherwise.
fn float8_out(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    if !(-4..15).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.unsigned_abs());
    }
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if exp < 0 {
        s.push_str("0.");
        (0..(-exp - 1)).for_each(|_| s.push('0'));
        s.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            s.push_str(&digits);
            (digits.len()..int_len).for_each(|_| s.push('0'));
        } else {
            s.push_str(&digits[..int_len]);
            s.push('.');
            s.push_str(&digits[int_len..]);
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// date, timestamp, timestamptz

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
    let syntax = || ValueError::syntax(ty);
    let field = || ValueError {
        kind: ValueErrorKind::DatetimeOverflow,
        message: format!(
            "date/time field value out of range for type {}",
            pg_name(ty)
        ),
    };
    let t = s.trim_matches(is_pg_space);
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "infinity" | "+infinity" => return Ok(ParsedDateTime::NoEnd),
        "-infinity" => return Ok(ParsedDateTime::NoBegin),
        "now" | "today" | "tomorrow" | "yesterday" => {
            let utc_now = chrono::Utc::now().timestamp_micros() - UNIX_TO_PG_DAYS * USECS_PER_DAY;
            let off = tz.offset_at_utc(utc_now);
            let local = utc_now + i64::from(off) * USECS_PER_SEC;
            let days = local.div_euclid(USECS_PER_DAY);
            return Ok(match lower.as_str() {
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
            });
        }
        "epoch" => {
            return Ok(ParsedDateTime::Value {
                days: -UNIX_TO_PG_DAYS,
                time_us: 0,
                zone: Some(Zone::Fixed(0)),
            })
        }
        _ => {}
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
    let (first, first_len) = take_digits(b, &mut i).ok_or_else(syntax)?;
    let sep = b
        .get(i)
        .copied()
        .filter(|c| matches!(c, b'-' | b'/' | b'.'));
    let (year, month, day) = if let Some(sep) = sep {
        i += 1;
        let (second, second_len) = take_digits(b, &mut i).ok_or_else(syntax)?;
        if b.get(i) != Some(&sep) || second_len > 2 {
            return Err(syntax());
        }
        i += 1;
        let (third, third_len) = take_digits(b, &mut i).ok_or_else(syntax)?;
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
            match tz.date_order {
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
        return Err(field());
    }
    let year = if bc { 1 - year } else { year };
    let (month, day) = (month as u32, day as u32);
    if day == 0 || day > days_in_month(year, month) {
        return Err(field());
    }
    let days = pg_days(year, month, day);

    // Time of day.
    let mut time_us = 0i64;
    let had_t = matches!(b.get(i), Some(b't'));
    let after_sep = if had_t {
        i + 1
    } else {
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    if after_sep < b.len() && b[after_sep].is_ascii_digit() && (had_t || after_sep > i) {
        i = after_sep;
        let (h, hl) = take_digits(b, &mut i).ok_or_else(syntax)?;
        if hl > 2 || b.get(i) != Some(&b':') {
            return Err(syntax());
        }
        i += 1;
        let (mi, ml) = take_digits(b, &mut i).ok_or_else(syntax)?;
        if ml != 2 {
            return Err(syntax());
        }
        let mut sec = 0;
        let mut frac_us = 0;
        if b.get(i) == Some(&b':') {
            i += 1;
            let (s2, sl) = take_digits(b, &mut i).ok_or_else(syntax)?;
            if sl != 2 {
                return Err(syntax());
            }
            sec = s2;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start {
                    return Err(syntax());
                }
                // As PostgreSQL: the fraction read as a double, rounded half-to-even to µs.
                let frac: f64 = body[start - 1..i].parse().map_err(|_| syntax())?;
                frac_us = (frac * 1_000_000.0).round_ties_even() as i64;
            }
        }
        if mi > 59 || sec > 60 || h > 24 || (h == 24 && (mi != 0 || sec != 0 || frac_us != 0)) {
            return Err(field());
        }
        time_us = ((h * 60 + mi) * 60 + sec) * USECS_PER_SEC + frac_us;
    } else if had_t {
        return Err(syntax());
    }

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
                return Err(ValueError {
                    kind: ValueErrorKind::InvalidParameterValue,
                    message: format!("time zone not recognized in value of type {}", pg_name(ty)),
                })
            }
            None => return Err(syntax()),
        }
    };
    Ok(ParsedDateTime::Value {
        days,
        time_us,
        zone,
    })
}

/// An explicit zone in a timestamp: `Z`, `UTC`, `GMT`, ISO offsets (east positive), or an
/// IANA name.
fn parse_zone_token(z: &str) -> Option<Zone> {
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

fn date_in(s: &str, tz: &SessionTime) -> Result<i32, ValueError> {
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

fn timestamp_in(s: &str, ty: LogicalType, tz: &SessionTime) -> Result<i64, ValueError> {
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
                let zone_time = match zone {
                    Some(z) => SessionTime {
                        zone: z,
                        fallback: false,
                        date_order: DateOrder::Mdy,
                        iso_output: true,
                    },
                    None => tz.clone(),
                };
                zone_time.local_to_utc(local).ok_or_else(range)?
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

fn date_to_timestamp(days: i32, ty: LogicalType, tz: &SessionTime) -> Result<i64, ValueError> {
    match days {
        DATE_NOBEGIN => Ok(DT_NOBEGIN),
        DATE_NOEND => Ok(DT_NOEND),
        _ => {
            let local = i64::from(days) * USECS_PER_DAY;
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

fn timestamp_to_timestamptz(local: i64, tz: &SessionTime) -> Result<i64, ValueError> {
    let ty = LogicalType::Timestamptz;
    match local {
        DT_NOBEGIN | DT_NOEND => Ok(local),
        _ => tz
            .local_to_utc(local)
            .filter(|us| timestamp_in_range(*us))
            .ok_or_else(|| ValueError::datetime_range(ty)),
    }
}

fn timestamptz_to_timestamp(utc: i64, tz: &SessionTime) -> Result<i64, ValueError> {
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
    let (y, m, d) = civil_from_days(days + UNIX_TO_PG_DAYS);
    let bc = y <= 0;
    let shown = if bc { 1 - y } else { y };
    out.push_str(&format!("{shown:04}-{m:02}-{d:02}"));
    bc
}

fn date_out(days: i32) -> String {
    match days {
        DATE_NOBEGIN => "-infinity".to_string(),
        DATE_NOEND => "infinity".to_string(),
        _ => {
            let mut s = String::with_capacity(13);
            if push_date(&mut s, i64::from(days)) {
                s.push_str(" BC");
            }
            s
        }
    }
}

fn timestamp_out(us: i64, ty: LogicalType, tz: &SessionTime) -> String {
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

// ---------------------------------------------------------------------------------------------
// jsonb

/// Deeper nesting is refused rather than risking the stack.
const JSON_MAX_DEPTH: usize = 1000;

enum Json {
    Null,
    Bool(bool),
    /// numeric_out text of the number (display scale kept, as jsonb does).
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

struct JsonParser<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn err() -> ValueError {
        ValueError::syntax(LogicalType::Jsonb)
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, ValueError> {
        if depth > JSON_MAX_DEPTH {
            return Err(ValueError {
                kind: ValueErrorKind::TooComplex,
                message: "json nesting too deep".to_string(),
            });
        }
        self.ws();
        match self.b.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.ws();
                    if self.b.get(self.i) != Some(&b'"') {
                        return Err(Self::err());
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        return Err(Self::err());
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    members.push((key, v));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(members));
                        }
                        _ => return Err(Self::err()),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(Self::err()),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'a'..=b'z') => {
                let start = self.i;
                while self.i < self.b.len() && self.b[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                match &self.b[start..self.i] {
                    b"true" => Ok(Json::Bool(true)),
                    b"false" => Ok(Json::Bool(false)),
                    b"null" => Ok(Json::Null),
                    _ => Err(Self::err()),
                }
            }
            _ => Err(Self::err()),
        }
    }

    fn number(&mut self) -> Result<Json, ValueError> {
        let b = self.b;
        let start = self.i;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            _ => return Err(Self::err()),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == s {
                return Err(Self::err());
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == s {
                return Err(Self::err());
            }
        }
        // A number runs into a following letter or digit ("01", "1x"): invalid, as in PostgreSQL.
        if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
            return Err(Self::err());
        }
        self.i = i;
        let text = std::str::from_utf8(&b[start..i]).map_err(|_| Self::err())?;
        Ok(Json::Num(numeric_in(text)?.to_text()))
    }

    fn hex4(&mut self) -> Result<u32, ValueError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .b
                .get(self.i)
                .copied()
                .and_then(hex_val)
                .ok_or_else(Self::err)?;
            v = v << 4 | u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, ValueError> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let c = *self.b.get(self.i).ok_or_else(Self::err)?;
            self.i += 1;
            match c {
                b'"' => break,
                0..=0x1F => return Err(Self::err()),
                b'\\' => {
                    let e = *self.b.get(self.i).ok_or_else(Self::err)?;
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0C),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(Self::err());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(Self::err());
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(Self::err());
                            }
                            if cp == 0 {
                                return Err(ValueError {
                                    kind: ValueErrorKind::UntranslatableCharacter,
                                    message: "unsupported Unicode escape sequence for type jsonb"
                                        .to_string(),
                                });
                            }
                            let ch = char::from_u32(cp).ok_or_else(Self::err)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(Self::err()),
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| Self::err())
    }
}

fn json_escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_write(out: &mut String, v: &Json) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(true) => out.push_str("true"),
        Json::Bool(false) => out.push_str("false"),
        Json::Num(n) => out.push_str(n),
        Json::Str(s) => json_escape(out, s),
        Json::Arr(items) => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                json_write(out, item);
            }
            out.push(']');
        }
        Json::Obj(members) => {
            out.push('{');
            for (k, (key, val)) in members.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                json_escape(out, key);
                out.push_str(": ");
                json_write(out, val);
            }
            out.push('}');
        }
    }
}

/// jsonb's normal form: keys sorted by length then bytes, the last of duplicate keys kept.
fn json_normalize(v: &mut Json) {
    match v {
        Json::Arr(items) => items.iter_mut().for_each(json_normalize),
        Json::Obj(members) => {
            // Stable: among equal keys the input order stays, so the last one is the last.
            members.sort_by(|a, b| {
                a.0.len()
                    .cmp(&b.0.len())
                    .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
            });
            let mut kept: Vec<(String, Json)> = Vec::with_capacity(members.len());
            for m in members.drain(..) {
                match kept.last_mut() {
                    Some(last) if last.0 == m.0 => *last = m,
                    _ => kept.push(m),
                }
            }
            kept.iter_mut().for_each(|(_, v)| json_normalize(v));
            *members = kept;
        }
        _ => {}
    }
}

fn jsonb_in(s: &str) -> Result<String, ValueError> {
    let mut p = JsonParser {
        b: s.as_bytes(),
        i: 0,
    };
    let mut v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(JsonParser::err());
    }
    json_normalize(&mut v);
    let mut out = String::with_capacity(s.len());
    json_write(&mut out, &v);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Helpers for masks (policy::mask)

/// January 1 of the year of a canonical date (days since 2000-01-01); infinities unchanged.
pub(crate) fn date_trunc_year(days: i32) -> i32 {
    match days {
        DATE_NOBEGIN | DATE_NOEND => days,
        _ => {
            let (y, _, _) = civil_from_days(i64::from(days) + UNIX_TO_PG_DAYS);
            // Within the date range January 1 of the same year is within range too, except
            // for the very first year (4714 BC starts in November): keep the first day then.
            let jan1 = pg_days(y, 1, 1);
            if date_in_range(jan1) {
                jan1 as i32
            } else {
                days
            }
        }
    }
}

/// January 1 00:00 of the year of a canonical timestamp (µs since 2000-01-01, read as
/// wall-clock time for timestamp and as UTC for timestamptz); infinities unchanged.
pub(crate) fn timestamp_trunc_year(us: i64) -> i64 {
    match us {
        DT_NOBEGIN | DT_NOEND => us,
        _ => {
            let days = us.div_euclid(USECS_PER_DAY);
            let (y, _, _) = civil_from_days(days + UNIX_TO_PG_DAYS);
            let jan1 = pg_days(y, 1, 1) * USECS_PER_DAY;
            if timestamp_in_range(jan1) {
                jan1
            } else {
                days * USECS_PER_DAY
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LogicalType as T;

    fn utc() -> SessionTime {
        SessionTime::utc()
    }

    fn canon(ty: LogicalType, text: &str) -> Vec<u8> {
        canonical_from_text(ty, text.as_bytes(), &utc())
            .unwrap_or_else(|e| panic!("{ty} {text:?}: {e}"))
    }

    fn out_text(ty: LogicalType, c: &[u8], tz: &SessionTime) -> String {
        String::from_utf8(to_wire(ty, c, WireFormat::Text, tz).unwrap()).unwrap()
    }

    fn err_of(ty: LogicalType, text: &str) -> ValueError {
        canonical_from_text(ty, text.as_bytes(), &utc()).expect_err(text)
    }

    /// PostgreSQL's output normalized the way pgveil promises: numeric trailing fraction
    /// zeros dropped; bool as boolout prints it.
    fn normalize_expected(ty: LogicalType, pg: &str) -> String {
        match ty {
            T::Bool => (if pg == "true" { "t" } else { "f" }).to_string(),
            T::Numeric if pg.contains('.') => {
                let t = pg.trim_end_matches('0').trim_end_matches('.');
                if t == "-0" {
                    "0".to_string()
                } else {
                    t.to_string()
                }
            }
            _ => pg.to_string(),
        }
    }

    /// Everything that must hold for a value that parsed: text output is stable, the binary
    /// form round-trips, and re-reading the output gives the same canonical bytes.
    fn check_round_trips(ty: LogicalType, c: &[u8], tz: &SessionTime) -> String {
        let text = out_text(ty, c, tz);
        assert_eq!(
            canonical_from_text(ty, text.as_bytes(), tz).unwrap(),
            c,
            "{ty} text {text:?} re-read"
        );
        let bin = to_wire(ty, c, WireFormat::Binary, tz).unwrap();
        assert_eq!(
            canonical_from_binary(ty, 0, &bin, tz).unwrap(),
            c,
            "{ty} binary (oid 0)"
        );
        assert_eq!(
            canonical_from_binary(ty, ty.oid(), &bin, tz).unwrap(),
            c,
            "{ty} binary (own oid)"
        );
        // Text sent in binary format with a string type is text input.
        assert_eq!(
            canonical_from_binary(ty, 705, text.as_bytes(), tz).unwrap(),
            c,
            "{ty} unknown-typed"
        );
        text
    }

    #[test]
    fn replays_postgres_text_output() {
        let data = include_str!("testdata/pg15_text_output.tsv");
        let mut n = 0;
        for line in data.lines() {
            let cols: Vec<&str> = line.split('\t').collect();
            let [zone, ty, input, expected] = cols[..] else {
                panic!("bad line {line:?}")
            };
            let tz = SessionTime::from_timezone(zone).unwrap_or_else(|| panic!("zone {zone}"));
            let ty = T::from_name(ty).unwrap();
            let c = canonical_from_text(ty, input.as_bytes(), &tz)
                .unwrap_or_else(|e| panic!("{ty} {input:?}: {e}"));
            let text = check_round_trips(ty, &c, &tz);
            assert_eq!(
                text,
                normalize_expected(ty, expected),
                "{zone} {ty} {input:?}"
            );
            n += 1;
        }
        assert!(n > 150, "{n}");
    }

    #[test]
    fn replays_postgres_input_errors() {
        let data = include_str!("testdata/pg15_input_errors.tsv");
        for line in data.lines() {
            // The input may itself contain a tab: type first, result last.
            let (ty, rest) = line.split_once('\t').unwrap();
            let (input, expected) = rest.rsplit_once('\t').unwrap();
            let ty = T::from_name(ty).unwrap();
            let got = canonical_from_text(ty, input.as_bytes(), &utc());
            match expected.strip_prefix("ERROR:  ") {
                Some(code) => {
                    let e = got.expect_err(input);
                    assert_eq!(e.sqlstate(), code, "{ty} {input:?}: {e}");
                    if input.trim().len() > 2 {
                        assert!(
                            !e.to_string().contains(input.trim()),
                            "message leaks the value: {e}"
                        );
                    }
                }
                None => assert_eq!(
                    out_text(ty, &got.unwrap(), &utc()),
                    expected,
                    "{ty} {input:?}"
                ),
            }
        }
    }

    #[test]
    fn every_type_round_trips() {
        let cases: &[(LogicalType, &[&str])] = &[
            (
                T::Text,
                &[
                    "",
                    "hello",
                    "Zoë Müller – 日本語 😀",
                    "  spaces kept  ",
                    "back\\slash",
                ],
            ),
            (T::Varchar, &["", "x", "ümlaut"]),
            (T::Int2, &["0", "-32768", "32767", "42"]),
            (T::Int4, &["0", "-2147483648", "2147483647", "5"]),
            (
                T::Int8,
                &["0", "-9223372036854775808", "9223372036854775807", "5"],
            ),
            (
                T::Numeric,
                &[
                    "0",
                    "1.5",
                    "-1.5",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "0.00000000000000000001",
                    "123456789012345678901234567890.5",
                ],
            ),
            (
                T::Float8,
                &[
                    "0",
                    "-0",
                    "1.5",
                    "1e+20",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "5e-324",
                    "0.1",
                ],
            ),
            (T::Bool, &["t", "f"]),
            (
                T::Date,
                &[
                    "2024-01-05",
                    "2000-01-01",
                    "1999-12-31",
                    "infinity",
                    "-infinity",
                    "0001-01-01 BC",
                ],
            ),
            (
                T::Timestamp,
                &[
                    "2024-01-05 10:00:00",
                    "2024-01-05 10:00:00.000001",
                    "infinity",
                    "1960-06-30 23:59:59.5",
                ],
            ),
            (
                T::Timestamptz,
                &[
                    "2024-01-05 10:00:00+00",
                    "1960-06-30 23:59:59.5+00",
                    "-infinity",
                ],
            ),
            (
                T::Uuid,
                &[
                    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                    "00000000-0000-0000-0000-000000000000",
                ],
            ),
            (T::Bytea, &["\\x", "\\x00ff10", "\\x414243"]),
            (
                T::Jsonb,
                &[
                    "{}",
                    "[]",
                    "null",
                    "\"\"",
                    "{\"a\": [1, 2.50, {\"b\": null}]}",
                    "-0.0015",
                ],
            ),
        ];
        for ty in T::ALL {
            let (_, inputs) = cases
                .iter()
                .find(|(t, _)| *t == ty)
                .unwrap_or_else(|| panic!("no case for {ty}"));
            for input in *inputs {
                let c = canon(ty, input);
                let text = check_round_trips(ty, &c, &utc());
                assert_eq!(&text, input, "{ty} prints its normal form unchanged");
            }
        }
    }

    #[test]
    fn canonical_byte_layouts() {
        assert_eq!(canon(T::Int2, "5"), [0, 5]);
        assert_eq!(canon(T::Int4, "-1"), [0xff; 4]);
        assert_eq!(canon(T::Int8, "256"), [0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(canon(T::Float8, "1"), 1f64.to_be_bytes());
        assert_eq!(canon(T::Bool, "yes"), [1]);
        assert_eq!(canon(T::Date, "2000-01-01"), [0, 0, 0, 0]);
        assert_eq!(canon(T::Date, "2024-01-05"), 8770i32.to_be_bytes()); // PostgreSQL: 8770 days
        assert_eq!(canon(T::Date, "infinity"), i32::MAX.to_be_bytes());
        assert_eq!(
            canon(T::Timestamp, "2000-01-01 00:00:01"),
            1_000_000i64.to_be_bytes()
        );
        assert_eq!(
            canon(T::Timestamptz, "2000-01-01 01:00:00+01"),
            0i64.to_be_bytes()
        );
        assert_eq!(canon(T::Timestamptz, "-infinity"), i64::MIN.to_be_bytes());
        assert_eq!(canon(T::Numeric, "1.50"), b"1.5");
        assert_eq!(
            canon(T::Jsonb, "{\"b\":1,\"a\":1.50}"),
            b"{\"a\": 1.50, \"b\": 1}"
        );
        assert_eq!(canon(T::Bytea, "\\x0001"), [0, 1]);
        assert_eq!(
            canon(T::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")[..2],
            [0xa0, 0xee]
        );
        // Every NaN is the same value.
        let odd_nan = f64::from_bits(0x7ff8_0000_0000_0001).to_be_bytes();
        assert_eq!(
            canonical_from_binary(T::Float8, 0, &odd_nan, &utc()).unwrap(),
            canon(T::Float8, "NaN")
        );
        assert_eq!(canon(T::Float8, "-nan"), canon(T::Float8, "NaN"));
    }

    #[test]
    fn equal_values_in_different_forms_are_equal() {
        let tz = utc();
        // date: text vs binary
        let bin_date = 8770i32.to_be_bytes();
        assert_eq!(
            canon(T::Date, "2024-01-05"),
            canonical_from_binary(T::Date, 1082, &bin_date, &tz).unwrap()
        );
        assert_eq!(canon(T::Date, " 2024-1-5 "), canon(T::Date, "20240105"));
        // numeric: 1.50, 1.5, 15e-1, binary numeric (dscale 2), int
        let bin_150 = [0, 2, 0, 0, 0, 0, 0, 2, 0, 1, 0x13, 0x88];
        let c = canon(T::Numeric, "1.5");
        assert_eq!(canon(T::Numeric, "1.50"), c);
        assert_eq!(canon(T::Numeric, "15e-1"), c);
        assert_eq!(canon(T::Numeric, " +1.500 "), c);
        assert_eq!(
            canonical_from_binary(T::Numeric, 1700, &bin_150, &tz).unwrap(),
            c
        );
        assert_eq!(
            canonical_from_binary(T::Numeric, 23, &5i32.to_be_bytes(), &tz).unwrap(),
            canon(T::Numeric, "5.000")
        );
        assert_eq!(canon(T::Numeric, "-0.00"), canon(T::Numeric, "0"));
        // int4 binary parameter for an int8 column vs text 5
        assert_eq!(
            canonical_from_binary(T::Int8, 23, &5i32.to_be_bytes(), &tz).unwrap(),
            canon(T::Int8, "5")
        );
        assert_eq!(
            canonical_from_binary(T::Int8, 21, &5i16.to_be_bytes(), &tz).unwrap(),
            canon(T::Int8, " 5 ")
        );
        // bool
        assert_eq!(
            canon(T::Bool, " true "),
            canonical_from_binary(T::Bool, 16, &[1], &tz).unwrap()
        );
        assert_eq!(canonical_from_binary(T::Bool, 0, &[7], &tz).unwrap(), [1]);
        assert_eq!(canon(T::Bool, "OFF"), canon(T::Bool, "0"));
        // uuid upper vs lower vs braces vs bare
        let u = canon(T::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(canon(T::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), u);
        assert_eq!(canon(T::Uuid, "{a0eebc999c0b4ef8bb6d6bb9bd380a11}"), u);
        // timestamps: T separator, offset forms
        assert_eq!(
            canon(T::Timestamptz, "2024-01-05T09:00:00Z"),
            canon(T::Timestamptz, "2024-01-05 10:00+01")
        );
        assert_eq!(
            canon(T::Timestamptz, "2024-01-05 10:00+0100"),
            canon(T::Timestamptz, "2024-01-05 10:00:00+01:00")
        );
        assert_eq!(
            canon(T::Timestamp, "2024-01-05"),
            canon(T::Timestamp, "2024-01-05 00:00:00.000")
        );
        // jsonb: whitespace, key order, duplicates
        assert_eq!(
            canon(T::Jsonb, "{\"b\" : 1, \"a\":2}"),
            canon(T::Jsonb, "{\"a\":2,\"b\":1}")
        );
        assert_eq!(
            canon(T::Jsonb, "{\"a\":0,\"a\":2}"),
            canon(T::Jsonb, "{\"a\":2}")
        );
        assert_eq!(
            canonical_from_binary(T::Jsonb, 114, b"{\"a\":\"\\u00e9\"}", &tz).unwrap(),
            canon(T::Jsonb, "{\"a\": \"\u{e9}\"}")
        );
        // bytea hex vs escape
        assert_eq!(canon(T::Bytea, "\\x41 5c"), canon(T::Bytea, "A\\\\"));
        // float8: exponent vs plain; float4 parameter
        assert_eq!(canon(T::Float8, "1.5e3"), canon(T::Float8, "1500"));
        assert_eq!(
            canonical_from_binary(T::Float8, 700, &1.5f32.to_be_bytes(), &tz).unwrap(),
            canon(T::Float8, "1.5")
        );
        assert_eq!(
            canonical_from_binary(T::Float8, 20, &3i64.to_be_bytes(), &tz).unwrap(),
            canon(T::Float8, "3")
        );
    }

    #[test]
    fn binary_conversions_follow_assignment_casts() {
        let tz = utc();
        let berlin = SessionTime::from_timezone("Europe/Berlin").unwrap();
        // Narrowing with range checks.
        assert_eq!(
            canonical_from_binary(T::Int2, 23, &300i32.to_be_bytes(), &tz).unwrap(),
            300i16.to_be_bytes()
        );
        let e = canonical_from_binary(T::Int2, 23, &70_000i32.to_be_bytes(), &tz).unwrap_err();
        assert_eq!(e.sqlstate(), "22003");
        let e = canonical_from_binary(T::Int4, 20, &(1i64 << 40).to_be_bytes(), &tz).unwrap_err();
        assert_eq!(e.sqlstate(), "22003");
        assert_eq!(
            canonical_from_binary(T::Int4, 21, &(-2i16).to_be_bytes(), &tz).unwrap(),
            (-2i32).to_be_bytes()
        );
        // Text-typed binary parameters are text input.
        for oid in [25, 1043, 705, 1042] {
            assert_eq!(
                canonical_from_binary(T::Int4, oid, b" 12 ", &tz).unwrap(),
                12i32.to_be_bytes()
            );
            assert_eq!(
                canonical_from_binary(T::Text, oid, b"abc", &tz).unwrap(),
                b"abc"
            );
        }
        assert_eq!(
            canonical_from_binary(T::Text, 1042, b"ab  ", &tz).unwrap(),
            b"ab"
        );
        // date → timestamp / timestamptz (midnight in the session zone)
        let d = 8770i32.to_be_bytes();
        assert_eq!(
            canonical_from_binary(T::Timestamp, 1082, &d, &tz).unwrap(),
            canon(T::Timestamp, "2024-01-05")
        );
        assert_eq!(
            canonical_from_binary(T::Timestamptz, 1082, &d, &berlin).unwrap(),
            canon(T::Timestamptz, "2024-01-04 23:00:00+00")
        );
        assert_eq!(
            canonical_from_binary(T::Timestamp, 1082, &i32::MAX.to_be_bytes(), &tz).unwrap(),
            canon(T::Timestamp, "infinity")
        );
        // timestamp ↔ timestamptz through the session zone
        let local = canon(T::Timestamp, "2024-07-01 12:00");
        let utc_instant = canonical_from_binary(T::Timestamptz, 1114, &local, &berlin).unwrap();
        assert_eq!(
            out_text(T::Timestamptz, &utc_instant, &tz),
            "2024-07-01 10:00:00+00"
        );
        assert_eq!(
            canonical_from_binary(T::Timestamp, 1184, &utc_instant, &berlin).unwrap(),
            local
        );
        // json → jsonb; jsonb binary needs version 1
        assert!(canonical_from_binary(T::Jsonb, 3802, b"\x01{}", &tz).is_ok());
        assert_eq!(
            canonical_from_binary(T::Jsonb, 3802, b"\x02{}", &tz)
                .unwrap_err()
                .sqlstate(),
            "22P03"
        );
        assert_eq!(
            canonical_from_binary(T::Jsonb, 114, b"{", &tz)
                .unwrap_err()
                .sqlstate(),
            "22P02"
        );
        // Wrong lengths are invalid binary representations.
        for ty in [
            T::Int2,
            T::Int4,
            T::Int8,
            T::Float8,
            T::Bool,
            T::Date,
            T::Timestamp,
            T::Timestamptz,
            T::Uuid,
        ] {
            let e = canonical_from_binary(ty, 0, &[0; 3], &tz).unwrap_err();
            assert_eq!(e.sqlstate(), "22P03", "{ty}");
        }
        assert_eq!(
            canonical_from_binary(T::Numeric, 0, &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10], &tz)
                .unwrap_err()
                .sqlstate(),
            "22P03"
        );
        assert_eq!(
            canonical_from_binary(T::Numeric, 0, &[0, 0, 0, 0, 0x12, 0, 0, 0], &tz)
                .unwrap_err()
                .sqlstate(),
            "22P03"
        );
        assert_eq!(
            canonical_from_binary(T::Date, 0, &(i32::MAX - 1).to_be_bytes(), &tz)
                .unwrap_err()
                .sqlstate(),
            "22008"
        );
        // Anything else is a datatype mismatch, naming the type, not the value.
        for (ty, oid) in [
            (T::Int4, 1700),
            (T::Date, 1184),
            (T::Uuid, 17),
            (T::Bool, 23),
            (T::Text, 600),
            (T::Bytea, 25),
            (T::Jsonb, 17),
        ] {
            let e = canonical_from_binary(ty, oid, &[0, 0, 0, 1], &tz);
            if ty == T::Bytea {
                // unknown/text typed bytes are bytea text input, so only non-string oids mismatch
                assert!(e.is_ok());
                continue;
            }
            let e = e.unwrap_err();
            assert_eq!(e.sqlstate(), "42804", "{ty} from {oid}");
            assert!(e.message().contains(pg_name(ty)), "{e}");
        }
    }

    #[test]
    fn numeric_binary_matches_postgres_numeric_send() {
        // numeric_send(trim_scale(x)) from PostgreSQL 15.
        let cases = [
            ("1.5", "000200000000000100011388"),
            ("-0.0001", "0001ffff400000040001"),
            ("12345678.9", "000300010000000104d2162e2328"),
            ("0", "0000000000000000"),
            ("100000", "0001000100000000000a"),
            ("NaN", "00000000c0000000"),
            ("Infinity", "00000000d0000020"),
            ("-Infinity", "00000000f0000020"),
            ("0.00000000000000000001", "0001fffb000000140001"),
            (
                "-123456789.000000001",
                "0006000240000009000109291a850000000003e8",
            ),
            ("9999.9999", "0002000000000004270f270f"),
            ("10000", "00010001000000000001"),
            ("0.5", "0001ffff000000011388"),
            ("123.456", "0002000000000003007b11d0"),
        ];
        for (text, hexbytes) in cases {
            let c = canon(T::Numeric, text);
            let bin = to_wire(T::Numeric, &c, WireFormat::Binary, &utc()).unwrap();
            assert_eq!(hex::encode(&bin), hexbytes, "{text}");
            assert_eq!(
                canonical_from_binary(T::Numeric, 0, &hex::decode(hexbytes).unwrap(), &utc())
                    .unwrap(),
                c
            );
        }
    }

    #[test]
    fn float8_text_is_shortest_round_trip() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_nan() {
                continue;
            }
            let s = float8_out(v);
            let back = float8_in(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(back.to_bits(), v.to_bits(), "{s}");
        }
        for (v, s) in [
            (1e20, "1e+20"),
            (1.5e-5, "1.5e-05"),
            (1e-100, "1e-100"),
            (123.0, "123"),
            (-0.5, "-0.5"),
        ] {
            assert_eq!(float8_out(v), s);
        }
    }

    #[test]
    fn error_codes_and_messages() {
        let cases: &[(LogicalType, &str, &str)] = &[
            (T::Int2, "99999", "22003"),
            (T::Int4, "", "22P02"),
            (T::Int8, "1e3", "22P02"),
            (T::Numeric, "1e9999999", "22003"),
            (T::Numeric, "1e-20000", "22003"),
            // PostgreSQL (glibc strtod) reads hex floats; pgveil does not.
            (T::Float8, "0x1p3", "22P02"),
            (T::Bool, "tru e", "22P02"),
            (T::Date, "2024-02-29x", "22007"),
            (T::Date, "2023-02-29", "22008"),
            (T::Timestamp, "2024-01-05 10:00:00.", "22007"),
            (T::Timestamptz, "2024-01-05 10:00 +25", "22007"),
            (T::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g", "22P02"),
            (T::Jsonb, "{\"a\" 1}", "22P02"),
            (T::Jsonb, "\"\\uDE00\"", "22P02"),
        ];
        for (ty, input, code) in cases {
            let e = err_of(*ty, input);
            assert_eq!(e.sqlstate(), *code, "{ty} {input:?}: {e}");
            if input.len() > 2 {
                assert!(!e.to_string().contains(input), "{e}");
            }
        }
        assert_eq!(
            err_of(T::Date, "2024-0a-05").to_string(),
            "invalid input syntax for type date"
        );
        assert_eq!(
            err_of(T::Int2, "40000").to_string(),
            "value out of range for type smallint"
        );
        // Deep nesting is refused, not a stack overflow.
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert_eq!(err_of(T::Jsonb, &deep).sqlstate(), "54001");
        let ok = "[".repeat(500) + &"]".repeat(500);
        assert_eq!(canon(T::Jsonb, &ok).len(), 1000);
    }

    #[test]
    fn text_is_bytes() {
        assert_eq!(canon(T::Text, ""), b"");
        assert_eq!(
            canonical_from_text(T::Text, b"\xff\xfe latin1", &utc()).unwrap(),
            b"\xff\xfe latin1"
        );
        assert_eq!(out_text(T::Text, "日本".as_bytes(), &utc()), "日本");
        // Non-UTF-8 for a parsed type is a syntax error, not a panic.
        assert_eq!(
            canonical_from_text(T::Int4, b"\xff1", &utc())
                .unwrap_err()
                .sqlstate(),
            "22P02"
        );
    }

    #[test]
    fn corrupt_canonical_values_are_errors() {
        for ty in T::ALL {
            if matches!(ty, T::Text | T::Varchar | T::Bytea | T::Jsonb) {
                continue;
            }
            let e = to_wire(ty, &[1, 2, 3], WireFormat::Text, &utc()).unwrap_err();
            assert_eq!(e.sqlstate(), "22P03", "{ty}");
        }
        assert!(to_wire(T::Bool, &[2], WireFormat::Binary, &utc()).is_err());
    }

    #[test]
    fn session_time_zones() {
        let at = |zone: &str, text: &str| {
            let tz = SessionTime::from_timezone(zone).unwrap_or_else(|| panic!("{zone}"));
            let c = canonical_from_text(T::Timestamptz, text.as_bytes(), &tz).unwrap();
            out_text(T::Timestamptz, &c, &tz)
        };
        assert_eq!(at("UTC", "2024-01-05 10:00"), "2024-01-05 10:00:00+00");
        assert_eq!(at("Etc/UTC", "2024-01-05 10:00"), "2024-01-05 10:00:00+00");
        assert_eq!(
            at("europe/berlin", "2024-07-05 10:00"),
            "2024-07-05 10:00:00+02"
        );
        // Verified against PostgreSQL 15: SET timezone = '+02' shows as <+02>-02, offset +02;
        // SET timezone = '-05:30' (POSIX sign) prints offset +05:30; '+02:00' prints -02.
        assert_eq!(at("+02", "2024-01-05 10:00"), "2024-01-05 10:00:00+02");
        assert_eq!(at("<+02>-02", "2024-01-05 10:00"), "2024-01-05 10:00:00+02");
        assert_eq!(
            at("-05:30", "2024-01-05 10:00"),
            "2024-01-05 10:00:00+05:30"
        );
        assert_eq!(at("+02:00", "2024-01-05 10:00"), "2024-01-05 10:00:00-02");
        assert_eq!(
            at("<-05:30>+05:30", "2024-01-05 10:00Z"),
            "2024-01-05 04:30:00-05:30"
        );
        assert_eq!(at("EST5EDT", "2024-07-05 10:00"), "2024-07-05 10:00:00-04");
        assert!(SessionTime::from_timezone("Mars/Base").is_none());
        let fallback = SessionTime::from_timezone_or_utc("Mars/Base");
        assert!(fallback.is_fallback());
        assert!(!SessionTime::from_timezone_or_utc("UTC").is_fallback());
        assert_eq!(
            fallback,
            SessionTime {
                zone: Zone::Fixed(0),
                fallback: true,
                date_order: DateOrder::Mdy,
                iso_output: true,
            }
        );
    }

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

    #[test]
    fn numeric_limits_match_postgres() {
        // Checked against PostgreSQL 15: 131072 integer digits and 16383 fraction digits are
        // the limits; beyond them 22003.
        assert_eq!(canon(T::Numeric, "1e131071").len(), 131_072);
        assert_eq!(canon(T::Numeric, "1e-16383").len(), 16_385);
        for bad in [
            "1e131072",
            "1e-16384",
            "0.0000e-16400",
            "1e-20000",
            "1e9999999",
        ] {
            assert_eq!(err_of(T::Numeric, bad).sqlstate(), "22003", "{bad}");
        }
        // A jsonb number is a numeric too.
        assert_eq!(err_of(T::Jsonb, "[1e131072]").sqlstate(), "22003");
    }

    #[test]
    fn wire_format_codes() {
        assert_eq!(WireFormat::from_code(0), Some(WireFormat::Text));
        assert_eq!(WireFormat::from_code(1), Some(WireFormat::Binary));
        assert_eq!(WireFormat::from_code(2), None);
        assert_eq!(WireFormat::Binary.code(), 1);
    }

    #[test]
    fn binary_output_shapes() {
        let tz = utc();
        assert_eq!(
            to_wire(T::Jsonb, b"{}", WireFormat::Binary, &tz).unwrap(),
            b"\x01{}"
        );
        assert_eq!(
            to_wire(T::Bytea, b"\x00\x01", WireFormat::Text, &tz).unwrap(),
            b"\\x0001"
        );
        assert_eq!(
            to_wire(T::Bytea, b"\x00\x01", WireFormat::Binary, &tz).unwrap(),
            b"\x00\x01"
        );
        assert_eq!(
            to_wire(T::Bool, &[1], WireFormat::Binary, &tz).unwrap(),
            [1]
        );
        assert_eq!(
            to_wire(T::Int4, &canon(T::Int4, "7"), WireFormat::Binary, &tz).unwrap(),
            7i32.to_be_bytes()
        );
    }

    #[test]
    fn calendar_helpers_agree() {
        for days in (-2_451_545i64..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d >= 1 && d <= days_in_month(y, m));
        }
        assert_eq!(
            date_trunc_year(8770),
            canon(T::Date, "2024-01-01")
                .as_slice()
                .try_into()
                .map(i32::from_be_bytes)
                .unwrap()
        );
    }
}
