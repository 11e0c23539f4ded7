//! The value codec (`pgveil::pgtype`) for every logical type: `canonical_from_text`,
//! `canonical_from_binary` (from every source type) and `to_wire` never panic, and a value
//! that was accepted prints in text and binary and reads back to the same canonical bytes
//! (the property `src/pgtype/tests.rs` checks on its fixed cases).
//!
//! Input: one selector byte, then the value. Selector bits 0-2 pick the session's TimeZone
//! and DateStyle, bits 3-4 what is done with the value: 0 text input, 1 binary input of the
//! type itself, 2 binary input declared as each known type, 3 the value taken as canonical
//! bytes (printed only) and as a TimeZone / DateStyle setting.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgveil::pgtype::{
    canonical_from_binary, canonical_from_text, oid, to_wire, SessionTime, WireFormat,
};
use pgveil::schema::LogicalType;

/// Every type OID the codec knows, and one it does not.
const SOURCE_TYPES: [u32; 21] = [
    oid::UNSPECIFIED,
    oid::BOOL,
    oid::BYTEA,
    oid::NAME,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::TEXT,
    oid::JSON,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::UNKNOWN,
    oid::BPCHAR,
    oid::VARCHAR,
    oid::DATE,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::NUMERIC,
    oid::UUID,
    oid::JSONB,
    600, // point
];

fn sessions() -> &'static [SessionTime; 8] {
    static SESSIONS: OnceLock<[SessionTime; 8]> = OnceLock::new();
    SESSIONS.get_or_init(|| {
        let at = |zone: &str, style: &str| {
            SessionTime::from_timezone(zone)
                .unwrap_or_else(|| panic!("zone {zone}"))
                .with_datestyle(style)
        };
        [
            at("UTC", "ISO, MDY"),
            at("Europe/Berlin", "ISO, DMY"),
            at("America/New_York", "ISO, MDY"),
            at("Australia/Lord_Howe", "ISO, YMD"),
            at("Asia/Kolkata", "SQL, DMY"),
            at("+02", "ISO, MDY"),
            at("-05:30", "German"),
            at("<-05:30>+05:30", "Postgres, YMD"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let tz = &sessions()[usize::from(selector & 7)];
    for ty in LogicalType::ALL {
        match (selector >> 3) & 3 {
            0 => {
                if let Ok(c) = canonical_from_text(ty, value, tz) {
                    round_trips(ty, &c, tz);
                }
            }
            1 => {
                if let Ok(c) = canonical_from_binary(ty, oid::UNSPECIFIED, value, tz) {
                    round_trips(ty, &c, tz);
                }
            }
            2 => {
                for source in SOURCE_TYPES {
                    if let Ok(c) = canonical_from_binary(ty, source, value, tz) {
                        round_trips(ty, &c, tz);
                    }
                }
            }
            _ => {
                // Not necessarily canonical: must be printed or refused, never panic.
                let _ = to_wire(ty, value, WireFormat::Text, tz);
                let _ = to_wire(ty, value, WireFormat::Binary, tz);
            }
        }
    }
    if (selector >> 3) & 3 == 3 {
        settings(value);
    }
});

/// A TimeZone or DateStyle setting from the fuzzer: read or refused; a zone that is read
/// keeps timestamps stable through text and binary.
fn settings(value: &[u8]) {
    let Ok(text) = std::str::from_utf8(value) else {
        return;
    };
    let fallback = SessionTime::from_timezone_or_utc(text);
    let _ = SessionTime::utc().with_datestyle(text);
    let Some(tz) = SessionTime::from_timezone(text) else {
        assert!(fallback.is_fallback());
        return;
    };
    for stamp in [
        "2024-03-31 02:30",
        "1999-12-31 23:59:59.999999",
        "0001-01-01 BC",
    ] {
        for ty in [
            LogicalType::Timestamptz,
            LogicalType::Timestamp,
            LogicalType::Date,
        ] {
            if let Ok(c) = canonical_from_text(ty, stamp.as_bytes(), &tz) {
                if ty != LogicalType::Timestamptz || readable_offset(ty, &c, &tz) {
                    round_trips(ty, &c, &tz);
                }
            }
        }
    }
}

/// PostgreSQL accepts `SET TIME ZONE 55` and prints `…+55`, but reads back offsets of at
/// most 15 hours (MAX_TZDISP_HOUR); pgveil does the same, so such a round trip is undefined.
fn readable_offset(ty: LogicalType, c: &[u8], tz: &SessionTime) -> bool {
    let Ok(printed) = to_wire(ty, c, WireFormat::Text, tz) else {
        return true;
    };
    let printed = String::from_utf8_lossy(&printed);
    let offset = printed
        .trim_end_matches(" BC")
        .rsplit(['+', '-'])
        .next()
        .unwrap_or("");
    let hours = offset.split(':').next().and_then(|h| h.parse::<u32>().ok());
    hours.is_none_or(|h| h <= 15)
}

/// What holds for every accepted value: printed in text it reads back the same, in binary
/// it reads back the same (declared as its own type or unspecified), and its text sent as
/// an unknown-typed binary parameter is text input.
fn round_trips(ty: LogicalType, c: &[u8], tz: &SessionTime) {
    let text = match to_wire(ty, c, WireFormat::Text, tz) {
        Ok(text) => text,
        Err(e) => panic!("{ty}: accepted value does not print: {e}"),
    };
    assert_eq!(
        canonical_from_text(ty, &text, tz).as_deref(),
        Ok(c),
        "{ty}: text {:?} read back differently",
        String::from_utf8_lossy(&text)
    );
    let binary = match to_wire(ty, c, WireFormat::Binary, tz) {
        Ok(binary) => binary,
        Err(e) => panic!("{ty}: accepted value has no binary form: {e}"),
    };
    assert_eq!(
        canonical_from_binary(ty, oid::UNSPECIFIED, &binary, tz).as_deref(),
        Ok(c),
        "{ty}: binary read back differently (unspecified)"
    );
    assert_eq!(
        canonical_from_binary(ty, ty.oid(), &binary, tz).as_deref(),
        Ok(c),
        "{ty}: binary read back differently (own type)"
    );
    assert_eq!(
        canonical_from_binary(ty, oid::UNKNOWN, &text, tz).as_deref(),
        Ok(c),
        "{ty}: unknown-typed text read back differently"
    );
}
