//! The session settings that change how values read and print: `TimeZone` (timestamptz input
//! without an offset, its text output, timestamp ↔ timestamptz conversions) and `DateStyle`
//! (the field order of ambiguous dates; whether the client expects ISO output).

use super::timezone::{named_zone, parse_posix_fixed, Zone};

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
    pub(super) fn offset_at_utc(&self, utc_us: i64) -> i32 {
        self.zone.offset_at_utc(utc_us)
    }

    /// The UTC instant of the local wall-clock time `local_us` in the session zone.
    pub(super) fn local_to_utc(&self, local_us: i64) -> Option<i64> {
        self.zone.local_to_utc(local_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgtype::canonical_from_text;
    use crate::pgtype::tests::out_text;
    use crate::schema::LogicalType as T;

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
}
