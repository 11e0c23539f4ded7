//! Column masks (`access = "mask:KIND"`): each turns a canonical value into the canonical
//! value of its mask, in the column's own logical type, so the masked value travels the same
//! output path (text or binary) as a decrypted one.

use crate::pgtype::calendar::{
    civil_from_pg_days, date_in_range, pg_days, timestamp_in_range, DATE_NOBEGIN, DATE_NOEND,
    DT_NOBEGIN, DT_NOEND, USECS_PER_DAY,
};
use crate::schema::LogicalType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// SQL NULL; every type.
    Null,
    /// The text `REDACTED`; text and varchar.
    Redact,
    /// All but the last four characters replaced by `*`; a value of four characters or fewer
    /// is returned unchanged. Text and varchar.
    Last4,
    /// January 1 of the value's year (00:00 for timestamps; for timestamptz January 1 00:00
    /// UTC of its UTC year). Date, timestamp, timestamptz. `±infinity` stay as they are.
    Year,
    /// The first three characters kept and **every** character after the third replaced by
    /// `0`, separators included: `02139` → `02100`, `90210-1234` → `9020000000`. Nothing of
    /// the value beyond the first three characters survives. Text and varchar.
    Zip3,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("mask {kind} does not apply to type {ty}")]
    NotApplicable { kind: &'static str, ty: LogicalType },
    #[error("stored value is not a valid {0}")]
    Corrupt(LogicalType),
}

impl MaskKind {
    pub const ALL: [MaskKind; 5] = [
        MaskKind::Null,
        MaskKind::Redact,
        MaskKind::Last4,
        MaskKind::Year,
        MaskKind::Zip3,
    ];

    /// Parses the KIND of `mask:KIND` (exact, lower-case spelling).
    pub fn parse(name: &str) -> Option<MaskKind> {
        Some(match name {
            "null" => MaskKind::Null,
            "redact" => MaskKind::Redact,
            "last4" => MaskKind::Last4,
            "year" => MaskKind::Year,
            "zip3" => MaskKind::Zip3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            MaskKind::Null => "null",
            MaskKind::Redact => "redact",
            MaskKind::Last4 => "last4",
            MaskKind::Year => "year",
            MaskKind::Zip3 => "zip3",
        }
    }

    pub fn applies_to(self, ty: LogicalType) -> bool {
        match self {
            MaskKind::Null => true,
            MaskKind::Redact | MaskKind::Last4 | MaskKind::Zip3 => {
                matches!(ty, LogicalType::Text | LogicalType::Varchar)
            }
            MaskKind::Year => matches!(
                ty,
                LogicalType::Date | LogicalType::Timestamp | LogicalType::Timestamptz
            ),
        }
    }
}

impl std::fmt::Display for MaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Replaces characters by index: keeps those for which `keep(index, count)` holds.
/// Text that is not UTF-8 (another client_encoding) is masked byte by byte, which never
/// keeps more than the character-wise mask would.
fn mask_chars(canonical: &[u8], keep: impl Fn(usize, usize) -> bool, fill: char) -> Vec<u8> {
    match std::str::from_utf8(canonical) {
        Ok(s) => {
            let n = s.chars().count();
            s.chars()
                .enumerate()
                .map(|(i, c)| if keep(i, n) { c } else { fill })
                .collect::<String>()
                .into_bytes()
        }
        Err(_) => {
            let n = canonical.len();
            canonical
                .iter()
                .enumerate()
                .map(|(i, &b)| if keep(i, n) { b } else { fill as u8 })
                .collect()
        }
    }
}

/// The canonical value of the mask of `canonical` (a value of type `ty`); `None` is SQL NULL.
pub fn apply(
    kind: MaskKind,
    ty: LogicalType,
    canonical: &[u8],
) -> Result<Option<Vec<u8>>, MaskError> {
    if !kind.applies_to(ty) {
        return Err(MaskError::NotApplicable {
            kind: kind.name(),
            ty,
        });
    }
    Ok(match kind {
        MaskKind::Null => None,
        MaskKind::Redact => Some(b"REDACTED".to_vec()),
        MaskKind::Last4 => Some(mask_chars(canonical, |i, n| n <= 4 || i >= n - 4, '*')),
        MaskKind::Zip3 => Some(mask_chars(canonical, |i, _| i < 3, '0')),
        MaskKind::Year => match ty {
            LogicalType::Date => {
                let raw: [u8; 4] = canonical.try_into().map_err(|_| MaskError::Corrupt(ty))?;
                Some(
                    date_trunc_year(i32::from_be_bytes(raw))
                        .to_be_bytes()
                        .to_vec(),
                )
            }
            _ => {
                let raw: [u8; 8] = canonical.try_into().map_err(|_| MaskError::Corrupt(ty))?;
                Some(
                    timestamp_trunc_year(i64::from_be_bytes(raw))
                        .to_be_bytes()
                        .to_vec(),
                )
            }
        },
    })
}

/// January 1 of the year of a canonical date (days since 2000-01-01); infinities unchanged.
fn date_trunc_year(days: i32) -> i32 {
    match days {
        DATE_NOBEGIN | DATE_NOEND => days,
        _ => {
            let (y, _, _) = civil_from_pg_days(i64::from(days));
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
fn timestamp_trunc_year(us: i64) -> i64 {
    match us {
        DT_NOBEGIN | DT_NOEND => us,
        _ => {
            let days = us.div_euclid(USECS_PER_DAY);
            let (y, _, _) = civil_from_pg_days(days);
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
    use crate::pgtype::{canonical_from_text, to_wire, SessionTime, WireFormat};

    fn text_of(ty: LogicalType, canonical: &[u8], tz: &SessionTime) -> String {
        String::from_utf8(to_wire(ty, canonical, WireFormat::Text, tz).unwrap()).unwrap()
    }

    fn mask_text(kind: MaskKind, ty: LogicalType, input: &str, tz: &SessionTime) -> Option<String> {
        let c = canonical_from_text(ty, input.as_bytes(), tz).unwrap();
        apply(kind, ty, &c).unwrap().map(|m| text_of(ty, &m, tz))
    }

    #[test]
    fn parse_and_names() {
        for k in MaskKind::ALL {
            assert_eq!(MaskKind::parse(k.name()), Some(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(MaskKind::parse("last5"), None);
        assert_eq!(MaskKind::parse("LAST4"), None);
    }

    #[test]
    fn applicability_matrix() {
        for ty in LogicalType::ALL {
            assert!(MaskKind::Null.applies_to(ty));
            let texty = matches!(ty, LogicalType::Text | LogicalType::Varchar);
            let timey = matches!(
                ty,
                LogicalType::Date | LogicalType::Timestamp | LogicalType::Timestamptz
            );
            assert_eq!(MaskKind::Redact.applies_to(ty), texty, "{ty}");
            assert_eq!(MaskKind::Last4.applies_to(ty), texty, "{ty}");
            assert_eq!(MaskKind::Zip3.applies_to(ty), texty, "{ty}");
            assert_eq!(MaskKind::Year.applies_to(ty), timey, "{ty}");
            if !MaskKind::Year.applies_to(ty) {
                assert!(matches!(
                    apply(MaskKind::Year, ty, b""),
                    Err(MaskError::NotApplicable { .. })
                ));
            }
            if !texty {
                assert!(matches!(
                    apply(MaskKind::Last4, ty, b"12345"),
                    Err(MaskError::NotApplicable { .. })
                ));
            }
        }
    }

    #[test]
    fn null_for_every_type() {
        for ty in LogicalType::ALL {
            assert_eq!(apply(MaskKind::Null, ty, b"anything"), Ok(None));
        }
    }

    #[test]
    fn text_masks() {
        let tz = SessionTime::utc();
        for ty in [LogicalType::Text, LogicalType::Varchar] {
            assert_eq!(
                mask_text(MaskKind::Redact, ty, "123-45-6789", &tz).as_deref(),
                Some("REDACTED")
            );
            assert_eq!(
                mask_text(MaskKind::Redact, ty, "", &tz).as_deref(),
                Some("REDACTED")
            );
            assert_eq!(
                mask_text(MaskKind::Last4, ty, "123-45-6789", &tz).as_deref(),
                Some("*******6789")
            );
            assert_eq!(
                mask_text(MaskKind::Last4, ty, "12345", &tz).as_deref(),
                Some("*2345")
            );
            assert_eq!(
                mask_text(MaskKind::Last4, ty, "1234", &tz).as_deref(),
                Some("1234")
            );
            assert_eq!(mask_text(MaskKind::Last4, ty, "", &tz).as_deref(), Some(""));
            // Characters, not bytes.
            assert_eq!(
                mask_text(MaskKind::Last4, ty, "Zoë Müller", &tz).as_deref(),
                Some("******ller")
            );
            assert_eq!(
                mask_text(MaskKind::Last4, ty, "ääääää", &tz).as_deref(),
                Some("**ääää")
            );
            assert_eq!(
                mask_text(MaskKind::Zip3, ty, "02139", &tz).as_deref(),
                Some("02100")
            );
            assert_eq!(
                mask_text(MaskKind::Zip3, ty, "90210-1234", &tz).as_deref(),
                Some("9020000000")
            );
            assert_eq!(
                mask_text(MaskKind::Zip3, ty, "12", &tz).as_deref(),
                Some("12")
            );
            assert_eq!(mask_text(MaskKind::Zip3, ty, "", &tz).as_deref(), Some(""));
        }
        // Not UTF-8: masked bytewise, nothing beyond the kept part survives.
        assert_eq!(
            apply(MaskKind::Last4, LogicalType::Text, b"\xff\xfe12345")
                .unwrap()
                .unwrap(),
            b"***2345"
        );
        assert_eq!(
            apply(MaskKind::Zip3, LogicalType::Text, b"ab\xffcd")
                .unwrap()
                .unwrap(),
            b"ab\xff00"
        );
    }

    #[test]
    fn year_masks() {
        let utc = SessionTime::utc();
        let berlin = SessionTime::from_timezone("Europe/Berlin").unwrap();
        let d = LogicalType::Date;
        assert_eq!(
            mask_text(MaskKind::Year, d, "1984-07-14", &utc).as_deref(),
            Some("1984-01-01")
        );
        assert_eq!(
            mask_text(MaskKind::Year, d, "2000-01-01", &utc).as_deref(),
            Some("2000-01-01")
        );
        assert_eq!(
            mask_text(MaskKind::Year, d, "1999-12-31", &utc).as_deref(),
            Some("1999-01-01")
        );
        assert_eq!(
            mask_text(MaskKind::Year, d, "0044-03-15 BC", &utc).as_deref(),
            Some("0044-01-01 BC")
        );
        assert_eq!(
            mask_text(MaskKind::Year, d, "infinity", &utc).as_deref(),
            Some("infinity")
        );
        assert_eq!(
            mask_text(MaskKind::Year, d, "-infinity", &utc).as_deref(),
            Some("-infinity")
        );
        let ts = LogicalType::Timestamp;
        assert_eq!(
            mask_text(MaskKind::Year, ts, "1984-07-14 13:45:10.5", &utc).as_deref(),
            Some("1984-01-01 00:00:00")
        );
        assert_eq!(
            mask_text(MaskKind::Year, ts, "1969-12-31 23:59:59", &utc).as_deref(),
            Some("1969-01-01 00:00:00")
        );
        let tstz = LogicalType::Timestamptz;
        assert_eq!(
            mask_text(MaskKind::Year, tstz, "1984-07-14 13:45:10+02", &utc).as_deref(),
            Some("1984-01-01 00:00:00+00")
        );
        // UTC year, shown in the session zone: 2025-01-01 00:30 Berlin is still 2024 in UTC.
        assert_eq!(
            mask_text(MaskKind::Year, tstz, "2025-01-01 00:30", &berlin).as_deref(),
            Some("2024-01-01 01:00:00+01")
        );
        assert!(matches!(
            apply(MaskKind::Year, d, b"\0\0"),
            Err(MaskError::Corrupt(_))
        ));
        assert!(matches!(
            apply(MaskKind::Year, ts, b"\0\0\0\0"),
            Err(MaskError::Corrupt(_))
        ));
    }

    #[test]
    fn year_truncation_agrees_with_date_input() {
        // Moved from the codec's calendar test along with the helper.
        assert_eq!(
            date_trunc_year(8770),
            canonical_from_text(LogicalType::Date, b"2024-01-01", &SessionTime::utc())
                .unwrap()
                .as_slice()
                .try_into()
                .map(i32::from_be_bytes)
                .unwrap()
        );
    }
}
